"""`git bisect run` over a developer's kernel tree with one scenario as oracle.

    bpfpm bisect --good v6.12-base --bad HEAD -- vmtests/test_hooks.py -k created

runs `git bisect start BAD GOOD` in KERNEL_SRC, then `git bisect run` with
`bpfpm bisect-step`, which builds the checked-out commit and runs the
pytest selection against it: 0 good, 1 a test failed, 125 skip (the commit
does not build or its kernel does not boot), 128 stop the bisection (a
usage or collection error, an interrupt, a lost guest: nothing said about
the commit, so no verdict is made up). The series in kernel/patches is not applied: the tree under
bisection is expected to carry the change itself.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import build, log, runner, session
from .errors import BpfpmError
from .paths import ROOT

SKIP = 125
STEPS = "steps.jsonl"


@dataclasses.dataclass
class Outcome:
    rc: int                     # git bisect run's exit status
    first_bad: str | None       # the commit it named, if it named one
    run: Path                   # the run directory: bisect log, steps


def _git(tree: Path, *args: str, check: bool = True) -> str:
    r = subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise BpfpmError(f"git {' '.join(args)} in {tree} failed: {r.stderr.strip()}")
    return r.stdout.strip()


def _tree() -> Path:
    src = os.environ.get("KERNEL_SRC")
    if not src or not (Path(src) / ".git").exists():
        raise BpfpmError("bisect needs KERNEL_SRC=/path/to/a/linux/git/tree (a Debian "
                         "source tree has no history: see README, 'Bisecting')")
    return Path(src).resolve()


def run(good: str, bad: str, selector: list[str], apply_series: bool = False,
        runs: int = 1) -> Outcome:
    """`git bisect run` over KERNEL_SRC; the tree is back where it was
    (branch and commit, no bisect state) whatever happens, Ctrl-C included."""
    tree = _tree()
    if _git(tree, "status", "--porcelain", "--untracked-files=no"):
        raise BpfpmError(f"{tree} has uncommitted changes; commit or stash them before bisecting")
    if (tree / ".git" / "BISECT_START").exists():
        raise BpfpmError(f"{tree} is already bisecting; `git -C {tree} bisect reset` first")
    start = _git(tree, "symbolic-ref", "-q", "--short", "HEAD", check=False) or \
        _git(tree, "rev-parse", "HEAD")
    with session.run_dir("bisect") as rdir:
        log.step(f"bisecting {tree} from {start}: good {good}, bad {bad}; run dir {rdir}")
        try:
            _git(tree, "bisect", "start", bad, good)
            step = [sys.executable, "-m", "bpfpm.cli", "bisect-step", "--run-dir", str(rdir),
                    "--runs", str(runs), "--", *selector]
            env = dict(os.environ)
            if not apply_series:
                env["BPFPM_PATCHES"] = "none"
            rc = _bisect_run(tree, step, env, rdir / "bisect-run.log")
            text = (rdir / "bisect-run.log").read_text(errors="replace")
            m = re.search(r"^([0-9a-f]{40}) is the first bad commit", text, re.M)
            (rdir / "bisect.log").write_text(_git(tree, "bisect", "log", check=False) + "\n")
        finally:
            r = subprocess.run(["git", "-C", str(tree), "bisect", "reset", start],
                               capture_output=True, text=True)
            if r.returncode != 0:
                log.error(f"`git bisect reset {start}` in {tree} failed: {r.stderr.strip()}; "
                          "run it by hand")
        print_steps(rdir)
        if m:
            log.step(f"first bad commit: {m.group(1)} "
                     f"{_git(tree, 'log', '-1', '--format=%s', m.group(1))}")
        else:
            log.error(f"git bisect run ended with status {rc} and named no commit; "
                      f"see {rdir / 'bisect-run.log'}")
        return Outcome(rc, m.group(1) if m else None, rdir)


def _bisect_run(tree: Path, step: list[str], env: dict, logf: Path) -> int:
    """`git bisect run`, its output shown and kept. It runs in a process
    group of its own (and dies with us): an interrupt is passed on once, and
    the tree is reset only after the step has stopped its guest (EOF on its
    output), or after GRACE."""
    with open(logf, "w") as out:
        proc = subprocess.Popen(["git", "-C", str(tree), "bisect", "run", *step], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, errors="replace",
                                process_group=0, preexec_fn=runner.die_with_parent)
        try:
            for line in proc.stdout:
                out.write(line)
                sys.stderr.write(line)
            return proc.wait()
        except KeyboardInterrupt:
            log.warn("interrupted: stopping the bisection step")
            try:
                os.killpg(proc.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + runner.GRACE + 5
            try:
                while time.monotonic() < deadline and proc.stdout.readline():
                    pass
            except (KeyboardInterrupt, OSError):
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            raise


def print_steps(rdir: Path) -> None:
    """The steps' table: commit, verdict, and where the time went."""
    f = rdir / STEPS
    if not f.exists():
        return
    rows = [json.loads(ln) for ln in f.read_text().splitlines() if ln.strip()]
    names = {0: "good", 1: "bad", SKIP: "skip"}
    print(f"\n{'step':>4} {'commit':12} {'verdict':8} {'build':>7} {'boot':>6} {'test':>6} "
          f"{'total':>7}  subject")
    for i, r in enumerate(rows, 1):
        print(f"{i:>4} {r['commit'][:12]} {names.get(r['verdict'], 'abort'):8} "
              f"{r['build_s']:>6.0f}s {r['boot_s']:>5.0f}s {r['test_s']:>5.0f}s "
              f"{r['total_s']:>6.0f}s  {r['subject'][:50]}")
    total = sum(r["total_s"] for r in rows)
    print(f"{len(rows)} steps, {total:.0f}s in all ({total / max(1, len(rows)):.0f}s a step)\n")


class Abort(BpfpmError):
    """Not a verdict on the commit: `git bisect run` must stop (exit > 127)."""

    exit_code = 128


# pytest's exit codes: 0 all passed, 1 some failed, 2 interrupted or a
# usage error, 3 internal error, 4 command-line usage error, 5 no tests
PYTEST_VERDICTS = {0: 0, 1: 1}


def verdict(pytest_rc: int, junit: Path | None = None) -> int:
    """A bisect verdict from pytest's exit code: 0 good, 1 bad, 125 skip;
    Abort for anything that says nothing about the commit. A run whose
    failures are all lost guests (boot failure, crash... infrastructure) is
    no verdict either: a commit whose kernel does not boot is skipped."""
    if pytest_rc == 1 and junit is not None:
        kinds = _failure_kinds(junit)
        if kinds and kinds <= {"BootFailed"}:
            return SKIP
        if kinds & {"GuestFrozen", "ChannelLost", "QemuExited"}:
            raise Abort(f"the test run lost its guest ({', '.join(sorted(kinds))}), an "
                        "infrastructure error, not a verdict on this commit; see "
                        f"{junit.parent} and start again")
    if pytest_rc in PYTEST_VERDICTS:
        return PYTEST_VERDICTS[pytest_rc]
    what = {2: "pytest was interrupted or given bad arguments",
            3: "pytest hit an internal error", 4: "pytest could not use its arguments "
            "(a test path that does not exist, or a typo in -k?)",
            5: "the selection collected no test"}.get(pytest_rc, f"pytest exited {pytest_rc}")
    raise Abort(f"{what}: that says nothing about this commit, so the bisection stops; "
                "fix the selection (try it with `bpfpm test ...` first) and start again")


def _failure_kinds(junit: Path) -> set[str]:
    """How each failed test failed: a lost-guest type, or "test"."""
    try:
        text = junit.read_text(errors="replace")
    except OSError:
        return set()
    kinds = set()
    for msg in re.findall(r"<(?:failure|error)\b[^>]*message=\"([^\"]*)\"", text):
        m = re.search(r"\b(BootFailed|GuestFrozen|ChannelLost|QemuExited|GuestCrashed)\b", msg)
        kinds.add(m.group(1) if m else "test")
    return kinds


def step(selector: list[str], rdir: Path, runs: int = 1) -> int:
    """One bisection step, run by `git bisect run` in the tree: build the
    checked-out commit (with the series when BPFPM_PATCHES is not none),
    boot once, run the selection `runs` times. 0 good (every run passed),
    1 bad, 125 skip (does not build, the series does not apply, does not
    boot); Abort (exit 128: git stops) when the run says nothing about it."""
    try:
        return _step(selector, rdir, runs)
    except Abort:
        raise
    except KeyboardInterrupt:
        raise Abort("interrupted") from None
    except Exception as e:      # anything else says nothing about the commit
        raise Abort(f"the step itself failed ({type(e).__name__}: {e})") from None


# A build error that is the commit's: make failed, or the series does not
# apply to it. Anything else (disk full, rsync, locks) is ours: abort.
_COMMITS_FAULT = ("kernel build failed", "does not apply", "kernel configuration step failed",
                  "kernel config options did not end up as requested")


def _step(selector: list[str], rdir: Path, runs: int) -> int:
    tree = Path.cwd()
    commit = _git(tree, "rev-parse", "HEAD")
    subject = _git(tree, "log", "-1", "--format=%s")
    t0 = time.monotonic()
    os.environ["KERNEL_SRC"] = str(tree)
    sdir = rdir / f"step-{len(list(rdir.glob('step-*'))) + 1:02d}-{commit[:12]}"
    sdir.mkdir()
    record = {"commit": commit, "subject": subject, "build_s": 0.0, "boot_s": 0.0,
              "test_s": 0.0}
    try:
        kb = build.build()
    except BpfpmError as e:
        (sdir / "build-error.txt").write_text(str(e) + "\n")
        if not any(k in str(e) for k in _COMMITS_FAULT):
            _record(rdir, record, 128, t0)
            raise Abort(f"building {commit[:12]} failed for a reason that is not the "
                        f"commit's: {str(e).splitlines()[0]}") from None
        log.warn(f"{commit[:12]}: does not build (or the series does not apply), "
                 f"skipping it: {str(e).splitlines()[0]}")
        return _record(rdir, record, SKIP, t0)
    record["build_s"] = time.monotonic() - t0
    _keep_build_log(kb, sdir)
    junit = sdir / "junit.xml"
    argv = ["-x", "-q", "-p", "no:cacheprovider", f"--rootdir={ROOT}",
            f"--junitxml={junit}", *selector]
    if runs > 1:
        argv += ["--count", str(runs)]      # pytest-repeat: racy regressions
    t1 = time.monotonic()
    rc = runner.pytest(argv, sdir, cwd=ROOT)
    record["test_s"] = time.monotonic() - t1
    record["boot_s"] = _boot_seconds(sdir)
    record["test_s"] -= record["boot_s"]
    try:
        v = verdict(rc, junit)
    except Abort:
        _record(rdir, record, 128, t0)
        raise
    return _record(rdir, record, v, t0)


def _record(rdir: Path, record: dict, v: int, t0: float) -> int:
    record.update(verdict=v, total_s=time.monotonic() - t0)
    with open(rdir / STEPS, "a") as f:
        f.write(json.dumps(record) + "\n")
    log.step(f"step {record['commit'][:12]}: {({0: 'good', 1: 'bad', SKIP: 'skip'}).get(v, 'abort')}"
             f" in {record['total_s']:.0f}s (build {record['build_s']:.0f}s, boot "
             f"{record['boot_s']:.0f}s, test {record['test_s']:.0f}s)")
    return v


def _keep_build_log(kb, sdir: Path) -> None:
    logf = Path(str(kb.info.get("log", "")))
    if logf.is_file():
        lines = logf.read_text(errors="replace").splitlines()
        (sdir / "build.log.tail").write_text("\n".join(lines[-60:]) + "\n")


def _boot_seconds(sdir: Path) -> float:
    f = sdir / "boots.jsonl"
    if not f.exists():
        return 0.0
    total = 0.0
    for ln in f.read_text().splitlines():
        try:
            total += json.loads(ln)["seconds"]
        except (ValueError, KeyError):      # a line cut short by a killed run
            pass
    return total
