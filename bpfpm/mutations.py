"""`make mutation-test`: each fix of the series proven by a test that
fails without it.

Each kernel/mutations/<kernel>/*.patch undoes one fix of the series (most
bring back what the v1 series did) and names, in "Expect-Fail:" lines of
its message, the tests that must catch it. First the named tests run on
the series itself (the control: they must pass). Then, per mutation, the
kernel is built with the series plus that patch (BPFPM_EXTRA_PATCHES: an
incremental build with a key of its own) and the tests run against it:
the mutation is "caught" when pytest reports a failed test (exit 1) and
"survived" when they all pass. A build failure, a lost guest or a usage
error is an error of the check, never a verdict.
"""

from __future__ import annotations

import json
import os
import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from unittest import mock

from . import kernels, log, results, runner
from .errors import BpfpmError
from .paths import KERNEL_DIR

_EXPECT = re.compile(r"^Expect-Fail:\s*(\S+)\s*$", re.M)


def mutations_dir() -> Path:
    """The mutations of the chosen kernel's series."""
    return KERNEL_DIR / "mutations" / kernels.current().name


def mutations(d: Path | None = None) -> dict[Path, list[str]]:
    out = {}
    for p in sorted((d or mutations_dir()).glob("*.patch")):
        tests = _EXPECT.findall(p.read_text(errors="replace").split("\n---\n", 1)[0])
        if not tests:
            raise BpfpmError(f"{p}: no 'Expect-Fail: <test id>' line names what catches it")
        out[p] = tests
    return out


def _pytest(tests: list[str], run: Path, extra: Path | None) -> tuple[int, float]:
    """`bpfpm test TESTS` (runner.run_pytest: build, then pytest in a child
    that an interrupt stops once, guests reaped) with `run` as its results
    root and `extra` on top of the series."""
    env = {"BPFPM_RESULTS": str(run), "BPFPM_EXTRA_PATCHES": str(extra) if extra else ""}
    t0 = time.monotonic()
    with mock.patch.dict(os.environ, env):
        try:
            rc = runner.run_pytest(tests)
        except BpfpmError as e:         # e.g. the kernel does not build with it
            log.error(str(e))
            rc = -1
    return rc, time.monotonic() - t0


def _failed(results_root: Path, tests: list[str]) -> dict[str, str]:
    """test id -> the first line of its failure (or "" when it passed), from
    the JUnit of the run under `results_root`; parametrized ids count as
    failed when any of their cases failed."""
    got = {t: "" for t in tests}
    junit = results_root / "latest" / "junit.xml"
    if not junit.exists():
        return got
    for tc in ET.parse(junit).iter("testcase"):
        tid = tc.get("classname", "").replace(".", "/") + ".py::" + \
            tc.get("name", "").split("[")[0]
        bad = tc.find("failure")      # not "error": a setup error catches nothing
        if tid in got and bad is not None and not got[tid]:
            got[tid] = (bad.get("message") or bad.tag).splitlines()[0][:160]
        elif tid in got and tc.find("error") is not None and not got[tid]:
            got[tid] = None             # no verdict: the test could not run
    return got


def main(a) -> int:
    muts = mutations()
    if not muts:        # no tests to run: pytest would run the whole suite
        raise BpfpmError(f"kernel {kernels.current().name} has no mutations: "
                         f"{mutations_dir()}/*.patch")
    if a.names:
        muts = {p: t for p, t in muts.items() if p.stem in a.names}
        if not muts:
            raise BpfpmError(f"no mutation named {' '.join(a.names)}; see {mutations_dir()}")
    run = results.new_run("mutations")
    log.step(f"{len(muts)} mutations; results in {run}")
    control = sorted({t for ts in muts.values() for t in ts})
    rc, secs = _pytest(control, run / "control", None)
    if rc != 0:
        raise BpfpmError(f"the control run (the series as it is) did not pass (exit {rc}): "
                         f"the mutations would prove nothing; see {run / 'control'}")
    rows, bad = [], 0
    for p, tests in muts.items():
        log.step(f"mutation {p.stem}: {len(tests)} tests must fail")
        rc, secs = _pytest(tests, run / p.stem, p)
        failed = _failed(run / p.stem, tests)
        if rc == 1 and all(failed.values()):
            verdict = "caught"
        elif any(f is None for f in failed.values()):
            verdict = "error (a test could not run; see its JUnit)"
        elif rc in (0, 1):
            verdict = "SURVIVED by " + ", ".join(t.split("::")[1] for t, f in failed.items()
                                                 if not f)
        else:
            verdict = f"error (exit {rc})"
        bad += verdict != "caught"
        rows.append({"mutation": p.stem, "tests": tests, "verdict": verdict, "failures": failed,
                     "seconds": round(secs, 1), "results": str(run / p.stem)})
        log.step(f"mutation {p.stem}: {verdict} in {secs:.0f}s")
    (run / "mutations.json").write_text(json.dumps(rows, indent=2))
    lines = ["| mutation | must fail | verdict | how |", "|---|---|---|---|"]
    lines += [f"| {r['mutation']} | {'<br>'.join(t.split('::')[1] for t in r['tests'])} | "
              f"{r['verdict']} | {'<br>'.join(f or '-' for f in r['failures'].values())} |"
              for r in rows]
    (run / "mutations.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    results.finish_run(run)
    return 1 if bad else 0
