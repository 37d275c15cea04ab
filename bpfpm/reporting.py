"""What a test run reports, in the formats CI systems read.

A pytest plugin (pyproject's addopts load it: `-p bpfpm.reporting`) in two
halves:

- where a test runs (the pytest process, or an xdist worker): the
  evidence a test leaves (its kernel log, the console of its guest, its
  transfers, and on failure a pcap and a guest-state dump) is named in the
  test's user properties as `bpfpm.<kind>` = a path relative to the run
  directory (`attach`); a failing test gets its kernel log and the console
  tail as report sections, which JUnit writes into its `system-out`; a
  failure that is the kernel's (a crash, a splat, a leak) is marked so.
- where reports arrive (the pytest process, or the xdist controller): one
  record per test, its final attempt plus the attempts that were rerun
  (a test cut short by an interrupt or a crashed worker is an error, never
  dropped); at the end `tests.jsonl`, `results.ktap`, `kcidb.json`
  (validated), the rerun attempts added to `junit.xml`, and links on
  pytest-html's page.

Reruns: a test marked `known_flaky(reason=...)` is rerun once when it
fails; every other VM test is rerun once, on a fresh guest, only when the
infrastructure failed under it (the guest never booted, its channel
dropped, QEMU froze or vanished). The kernel's own faults are never rerun:
a crash, a splat, a leak, or a freeze whose console shows a lockup, a hung
task or an RCU stall are verdicts. Reruns are counted apart everywhere:
pytest's summary line, JUnit (Maven Surefire's `flaky*`/`rerun*` elements
and a `bpfpm.reruns` property), KTAP and KCIDB.

`--shard=i/n` keeps every n-th test of the selection (after -k/-m), from
the i-th on: a deterministic slice for a CI matrix (`bpfpm report merge`
joins the shards' KCIDB, KTAP and tests.jsonl).
"""

from __future__ import annotations

import collections
import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from _pytest import junitxml     # its xml_key and name mangling: one truth

from . import kcidb, ktap, results
from .errors import BootFailed, ChannelLost, GuestCrashed, GuestFrozen, QemuExited

# The infrastructure failures worth one more attempt on a fresh guest.
INFRA_ERRORS = [BootFailed, ChannelLost, GuestFrozen, QemuExited]
# The kernel's faults, never rerun: a crash, what the per-test log check
# finds, and a freeze that the console shows is the kernel's (the frozen
# guest's report carries the console tail).
KERNEL_FAULTS = [GuestCrashed, r"splat\(s\)", "kmemleak",
                 r"soft lockup|hung_task|blocked for more than|rcu.{0,20}stall"]
# ... nor the boot breaker's refusal: the kernel did not boot before
NOT_INFRA = [*KERNEL_FAULTS, "not booting again"]
KERNEL_FAULT = pytest.StashKey[bool]()

KLOG_LINES = 200        # of a failing test's kernel log, in its report
CONSOLE_LINES = 40      # of the console's tail
PREFIX = "bpfpm."


# -- where a test runs ----------------------------------------------------
def attach(item: pytest.Item, kind: str, path: Path) -> None:
    """Name `path` as the test's `kind` evidence (dmesg, console, pcap...)."""
    rel = os.path.relpath(path, results.run_root())
    item.user_properties[:] = [(k, v) for k, v in item.user_properties
                               if k != PREFIX + kind]
    item.user_properties.append((PREFIX + kind, rel))


def add_sections(item: pytest.Item, report: pytest.TestReport) -> None:
    """A failing test's kernel log and the console's tail, as sections of
    the report that closes it (its teardown's), which JUnit puts in the
    test's system-out."""
    files = dict(item.user_properties)
    if not any(k.startswith(PREFIX) for k in files):
        return
    root = results.run_root()
    for kind, title, lines in (("dmesg", "kernel log of this test", KLOG_LINES),
                               ("console", "console tail", CONSOLE_LINES)):
        rel = files.get(PREFIX + kind)
        if not rel:
            continue
        try:
            text = (root / rel).read_text(errors="replace")
        except OSError as e:
            text = f"({e})"
        tail = text.splitlines()[-lines:]
        # JUnit keeps a section's text, not its title: the title goes in too
        report.sections.append((f"Captured stdout {title}",
                                f"--- {title}, last {len(tail)} lines of {root / rel}\n"
                                + "\n".join(tail) + "\n"))


def attempt_failed(item: pytest.Item) -> bool:
    return any(getattr(getattr(item, f"rep_{w}", None), "failed", False)
               for w in ("setup", "call", "teardown"))


def _shard(spec: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)/(\d+)", spec or "")
    if not m or not 1 <= int(m[1]) <= int(m[2]):
        raise pytest.UsageError(f"--shard={spec}: expected i/n with 1 <= i <= n, e.g. 2/3")
    return int(m[1]), int(m[2])


def kernel_fault(item: pytest.Item) -> None:
    """The test's failure is the kernel's (a splat, a leak): a verdict
    (failed, KCIDB FAIL), never an infrastructure error, never rerun."""
    item.stash[KERNEL_FAULT] = True


def pytest_addoption(parser):
    parser.addoption("--shard", metavar="i/n", default=None,
                     help="run only the i-th of n deterministic slices of the selected tests "
                     "(every n-th test in collection order, after -k/-m)")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "known_flaky(reason): a known race; the test is rerun once on any "
        "failure, and the rerun is reported")
    if config.getoption("shard"):
        _shard(config.getoption("shard"))
    if not hasattr(config, "workerinput"):      # the process that gets the reports
        if getattr(config.option, "numprocesses", None):
            results.current_run()               # one run directory for all workers
        config.pluginmanager.register(Collector(config), "bpfpm-collector")


@pytest.hookimpl(trylast=True)         # after -k/-m/--deselect
def pytest_collection_modifyitems(config, items):
    spec = config.getoption("shard")
    if spec:
        i, n = _shard(spec)
        keep = [it for k, it in enumerate(items) if k % n == i - 1]
        dropped = [it for k, it in enumerate(items) if k % n != i - 1]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
        items[:] = keep
    for item in items:
        if item.get_closest_marker("flaky"):
            continue                    # rerunfailures' own marker: as written
        if item.get_closest_marker("known_flaky"):
            item.add_marker(pytest.mark.flaky(reruns=1, rerun_except=KERNEL_FAULTS))
        elif item.get_closest_marker("vm"):
            item.add_marker(pytest.mark.flaky(reruns=1, only_rerun=INFRA_ERRORS,
                                              rerun_except=NOT_INFRA))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    # an attempt's evidence and verdicts are its own: a rerun starts afresh
    item.user_properties[:] = [(k, v) for k, v in item.user_properties
                               if not k.startswith(PREFIX)]
    for when in ("setup", "call", "teardown"):
        item.__dict__.pop(f"rep_{when}", None)
    if KERNEL_FAULT in item.stash:
        del item.stash[KERNEL_FAULT]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    if report.failed and (item.stash.get(KERNEL_FAULT, False) or
                          (call.excinfo and call.excinfo.errisinstance(GuestCrashed))):
        report.bpfpm_kernel_fault = True       # a plain attribute: xdist carries it
    if report.when == "teardown" and (attempt_failed(item) or report.failed):
        add_sections(item, report)
    return report


# -- where reports arrive ---------------------------------------------------
def _message(report) -> str:
    crash = getattr(getattr(report.longrepr, "reprcrash", None), "message", None)
    if crash:
        return crash.splitlines()[0][:500]
    if isinstance(report.longrepr, tuple):          # a skip: (path, line, reason)
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    text = report.longreprtext.strip()
    return text.splitlines()[-1][:500] if text else ""


class Collector:
    """One record per test from the reports as they arrive; the files at
    the end of the session."""

    def __init__(self, config: pytest.Config):
        self.config = config
        self.records: dict[str, dict] = {}
        self.attempts: dict[str, dict] = {}
        self.problems: list[str] = []       # reports that could not be written

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        a = self.attempts.get(report.nodeid)
        if report.when == "setup" or a is None:
            prev = self.attempts.get(report.nodeid, {})
            a = self.attempts[report.nodeid] = {
                "reruns": prev.get("reruns", 0), "rerun_reasons": prev.get("rerun_reasons", []),
                "rerun_files": prev.get("rerun_files", []),
                "outcome": "passed", "duration": 0.0, "start": getattr(report, "start", None),
                "message": "", "longrepr": "", "rerun": False,
                "worker": getattr(getattr(getattr(report, "node", None), "gateway", None),
                                  "id", None)}
        a["duration"] += report.duration
        if report.outcome == "rerun":
            if not a["rerun"]:
                a["rerun"] = True
                a["reruns"] += 1
                a["rerun_reasons"].append(f"{report.when}: {_message(report)}")
        elif report.failed and a["outcome"] in ("passed", "skipped"):
            # set-up/teardown errors are the rig's, unless the kernel is at fault
            kernel = getattr(report, "bpfpm_kernel_fault", False)
            a["outcome"] = "failed" if report.when == "call" or kernel else "error"
            a["message"] = (f"{report.when}: " if report.when != "call" else "") + \
                _message(report)
            a["longrepr"] = report.longreprtext[-20000:]
        elif report.skipped and a["outcome"] == "passed":
            a["outcome"] = "skipped"
            a["message"] = _message(report)
        if report.when in ("setup", "call"):
            return
        # teardown; or "???": the xdist worker running the test crashed
        files = {k[len(PREFIX):]: v for k, v in report.user_properties if k.startswith(PREFIX)}
        # pytest-html: a link per piece of evidence, relative to index.html
        if files:
            from pytest_html import extras
            report.extras = [*getattr(report, "extras", []),
                             *(extras.url(v, name=k) for k, v in sorted(files.items()))]
        if a["rerun"] and report.when == "teardown":
            a["rerun_files"].append(files)          # another attempt follows
            return
        if report.when != "teardown" and a["outcome"] == "passed":
            a["outcome"], a["message"] = "error", f"the xdist worker crashed: {_message(report)}"
        self._record(report.nodeid, a, files, "known_flaky" in report.keywords)

    def _record(self, nodeid: str, a: dict, files: dict, flaky: bool) -> None:
        self.records[nodeid] = {
            "nodeid": nodeid, "outcome": a["outcome"],
            "duration": round(a["duration"], 3), "start": a["start"],
            "reruns": a["reruns"], "rerun_reasons": a["rerun_reasons"],
            "rerun_files": a["rerun_files"],
            "message": a["message"], "longrepr": a["longrepr"],
            "worker": a["worker"], "flaky": flaky, "files": files}
        self.attempts.pop(nodeid, None)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session, exitstatus):
        """After junitxml has written its file (trylast)."""
        # the tests an interrupt (or a lost worker) cut short: errors, not gone
        for nodeid, a in list(self.attempts.items()):
            a["outcome"] = "error"
            a["message"] = a["message"] or "interrupted before the test ended"
            self._record(nodeid, a, {}, False)
        if not self.records or "BPFPM_RUN_DIR" not in os.environ:
            return                  # no run directory: unit tests alone
        run = results.run_root()
        recs = sorted(self.records.values(), key=lambda r: r["nodeid"])
        # each step on its own: one that fails must not cost the others
        self._step("tests.jsonl", lambda: (run / "tests.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in recs)))
        self._step("the workers' jsonl files", lambda: results.merge_worker_files(run))
        self._step("results.ktap", lambda: (run / "results.ktap").write_text(ktap.render(recs)))
        self._step("kcidb.json", lambda: results.write_json(run / "kcidb.json", kcidb.report(
            recs, results.kernel_info(run), run.name, run_dir=run,
            base_url=os.environ.get("BPFPM_RESULTS_URL"))))
        xml = self.config.stash.get(junitxml.xml_key, None)
        if xml is not None and Path(xml.logfile).exists():
            self._step("junit.xml's reruns", lambda: finish_junit(Path(xml.logfile), recs))

    def _step(self, what: str, fn) -> None:
        try:
            fn()
        except Exception as e:      # noqa: BLE001 - said on the terminal, and in the run
            self.problems.append(f"{what} not written: {type(e).__name__}: {e}")
            with open(results.run_root() / "reports.error", "a") as f:
                f.write(self.problems[-1] + "\n")

    def pytest_terminal_summary(self, terminalreporter):
        recs = list(self.records.values())
        if not recs or "BPFPM_RUN_DIR" not in os.environ:
            return
        tr = terminalreporter
        run = results.run_root()
        rerun = [r for r in recs if r["reruns"]]
        for r in rerun:
            verdict = "passed on rerun" if r["outcome"] == "passed" else r["outcome"]
            tr.write_line(f"RERUN {r['nodeid']}: {verdict} after {r['reruns']} failed "
                          f"attempt(s): {'; '.join(r['rerun_reasons'])[:300]}")
        for problem in self.problems:
            tr.write_line(f"REPORT PROBLEM: {problem}", red=True)
        written = [f for f in ("junit.xml", "results.ktap", "kcidb.json", "index.html")
                   if (run / f).exists()]
        tr.write_line(f"bpfpm: {len(recs)} tests, {len(rerun)} rerun "
                      f"({sum(r['outcome'] == 'passed' for r in rerun)} passed only on rerun); "
                      f"reports in {run}: {' '.join(written)}")


def _junit_names(nodeid: str) -> tuple[str, str]:
    """pytest's junitxml classname and name for a node id (its own mangling)."""
    names = junitxml.mangle_test_address(nodeid)
    return ".".join(names[:-1]), names[-1]


def finish_junit(path: Path, recs: list[dict]) -> None:
    """JUnit as its readers expect it. The rerun attempts as Maven Surefire
    writes them (Jenkins and most JUnit viewers read these): one testcase
    per test, its final attempt, with a `flakyFailure` per earlier attempt
    when it passed on rerun, a `rerunFailure` when it failed again, and a
    `bpfpm.reruns` property (pytest's junitxml leaves a testcase per
    attempt). And no empty system-out: pytest writes one for every test
    that printed nothing."""
    rerun = {_junit_names(r["nodeid"]): r for r in recs if r["reruns"]}
    tree = ET.parse(path)
    for suite in tree.iter("testsuite"):
        last = {}
        for case in suite.findall("testcase"):
            key = (case.get("classname"), case.get("name"))
            if key in rerun:
                if key in last:
                    suite.remove(last[key])         # an earlier attempt's
                last[key] = case
            for out in case.findall("system-out"):
                if not re.sub(r"-+ Captured Out -+", "", out.text or "").strip():
                    case.remove(out)
        for key, case in last.items():
            r = rerun[key]
            props = case.find("properties")
            if props is None:
                props = ET.Element("properties")
                case.insert(0, props)
            ET.SubElement(props, "property", name="bpfpm.reruns", value=str(r["reruns"]))
            for reason in r["rerun_reasons"]:
                # Surefire: Failure for the test body, Error for set-up/teardown
                kind = "Failure" if reason.startswith("call:") else "Error"
                tag = ("flaky" if r["outcome"] == "passed" else "rerun") + kind
                ET.SubElement(case, tag, message=reason[:1000], type="rerun").text = reason
        if last:
            suite.set("reruns", str(sum(rerun[k]["reruns"] for k in last)))
    tree.write(path, encoding="utf-8", xml_declaration=True)


@pytest.hookimpl(optionalhook=True)
def pytest_html_report_title(report):
    if "BPFPM_RUN_DIR" in os.environ:
        report.title = f"bpfpm {results.run_root().name}"


@pytest.hookimpl(optionalhook=True)
def pytest_html_results_summary(prefix, summary, postfix, session):
    if "BPFPM_RUN_DIR" not in os.environ:
        return
    k = results.kernel_info(results.run_root())
    if k:
        prefix.append(f"<p>kernel {k.get('kernel', '?')}: {k.get('release', '?')} "
                      f"({k.get('source', '?')}), "
                      f"{len(k.get('patches', []))} patches (series {k.get('series_key', '?')}), "
                      f"config {k.get('config_key', '?')}, {k.get('toolchain', '?')}</p>")
    prefix.append('<p>machine-readable: <a href="junit.xml">junit.xml</a> '
                  '<a href="results.ktap">results.ktap</a> <a href="kcidb.json">kcidb.json</a> '
                  '<a href="tests.jsonl">tests.jsonl</a></p>')


# -- after the run: `bpfpm report` ------------------------------------------
def load(run: Path) -> list[dict]:
    """The records of a finished run (tests.jsonl)."""
    path = run / "tests.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no test records (a run older than the reports, "
                                "or one that was interrupted before its end)")
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def summary(run: Path) -> str:
    """What a developer reads first: counts, then each failure and rerun with
    where its evidence is."""
    recs = load(run)
    counts = {o: sum(r["outcome"] == o for r in recs)
              for o in ("passed", "failed", "error", "skipped")}
    rerun = sum(1 for r in recs if r["reruns"])
    lines = [f"{run}: {len(recs)} tests, " + ", ".join(f"{v} {k}" for k, v in counts.items())
             + f", {rerun} rerun"]
    for r in recs:
        if r["outcome"] in ("failed", "error") or r["reruns"]:
            what = r["outcome"].upper() + (f" after {r['reruns']} rerun(s)" if r["reruns"]
                                           else "")
            lines.append(f"  {what} {r['nodeid']}: {r['message'] or '-'}")
            lines += [f"      {k}: {run / v}" for k, v in sorted(r["files"].items())]
    page = run / "index.html"
    lines.append(f"page: {page}" if page.exists() else "no index.html (pytest-html not run)")
    return "\n".join(lines)


def merge(runs: list[Path], out: Path) -> Path:
    """Shards of one suite (`--shard=i/n`, maybe on several machines) as one
    report in `out`: kcidb.json (kcidb.merge: one checkout and build, every
    test), tests.jsonl and results.ktap."""
    out.mkdir(parents=True, exist_ok=True)
    recs, reports = [], []
    def rebase(run: Path, files: dict) -> dict:
        return {k: os.path.relpath(run / v, out) for k, v in files.items()}

    for run in runs:
        recs += [r | {"files": rebase(run, r["files"]),
                      "rerun_files": [rebase(run, f) for f in r.get("rerun_files", [])]}
                 for r in load(run)]
        try:
            reports.append(json.loads((run / "kcidb.json").read_text()))
        except FileNotFoundError:
            raise FileNotFoundError(f"{run / 'kcidb.json'}: missing (see kcidb.error "
                                    "there)") from None
    recs.sort(key=lambda r: r["nodeid"])
    dup = [n for n, c in collections.Counter(r["nodeid"] for r in recs).items() if c > 1]
    if dup:
        raise ValueError(f"{len(dup)} tests ran in more than one of these runs (not shards "
                         f"of one suite?), e.g. {sorted(dup)[0]}")
    with open(out / "tests.jsonl", "w") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")
    (out / "results.ktap").write_text(ktap.render(recs))
    results.write_json(out / "kcidb.json", kcidb.merge(reports))
    return out
