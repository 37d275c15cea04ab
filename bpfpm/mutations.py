"""`make mutation-test`: each fix of the series proven by a test that
fails without it.

Each kernel/mutations/<base>/*.patch undoes one fix of the series (most
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
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import log, patches, results
from .errors import BpfpmError
from .paths import KERNEL_DIR, ROOT

_EXPECT = re.compile(r"^Expect-Fail:\s*(\S+)\s*$", re.M)


def mutations(base: str = patches.BASE) -> dict[Path, list[str]]:
    out = {}
    for p in sorted((KERNEL_DIR / "mutations" / base).glob("*.patch")):
        tests = _EXPECT.findall(p.read_text(errors="replace").split("\n---\n", 1)[0])
        if not tests:
            raise BpfpmError(f"{p}: no 'Expect-Fail: <test id>' line names what catches it")
        out[p] = tests
    return out


def _pytest(tests: list[str], run: Path, extra: Path | None) -> tuple[int, float]:
    """`bpfpm test TESTS` in a child, with `run` as its results root."""
    env = dict(os.environ, BPFPM_RESULTS=str(run))
    if extra:
        env["BPFPM_EXTRA_PATCHES"] = str(extra)
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "bpfpm.cli", "test", *tests],
                                   env=env, cwd=ROOT, stdin=subprocess.DEVNULL)
    try:
        rc = proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        proc.wait()
        raise
    return rc, time.monotonic() - t0


def main(a) -> int:
    muts = mutations()
    if a.names:
        muts = {p: t for p, t in muts.items() if p.stem in a.names}
        if not muts:
            raise BpfpmError(f"no mutation named {' '.join(a.names)}; see "
                             f"{KERNEL_DIR / 'mutations' / patches.BASE}")
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
        verdict = {0: "SURVIVED", 1: "caught"}.get(rc, f"error (exit {rc})")
        bad += verdict != "caught"
        rows.append({"mutation": p.stem, "tests": tests, "verdict": verdict,
                     "seconds": round(secs, 1), "results": str(run / p.stem)})
        log.step(f"mutation {p.stem}: {verdict} in {secs:.0f}s")
    (run / "mutations.json").write_text(json.dumps(rows, indent=2))
    lines = ["| mutation | must fail | verdict |", "|---|---|---|"]
    lines += [f"| {r['mutation']} | {'<br>'.join(r['tests'])} | {r['verdict']} |" for r in rows]
    (run / "mutations.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    results.finish_run(run)
    return 1 if bad else 0
