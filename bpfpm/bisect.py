"""`git bisect run` over a developer's kernel tree with one scenario as oracle.

    bpfpm bisect --good v6.12-base --bad HEAD -- vmtests/test_hooks.py -k created

runs `git bisect start BAD GOOD` in KERNEL_SRC, then `git bisect run` with
`bpfpm bisect-step`, which builds the checked-out commit (exit 125 = skip
when it does not build) and runs the pytest selection against it (0 good,
1 bad). The series in kernel/patches is not applied: the tree under
bisection is expected to carry the change itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from . import build, log, results
from .errors import BpfpmError

SKIP = 125


def _tree() -> Path:
    src = os.environ.get("KERNEL_SRC")
    if not src or not (Path(src) / ".git").exists():
        raise BpfpmError("bisect needs KERNEL_SRC=/path/to/a/linux/git/tree")
    return Path(src)


def run(good: str, bad: str, selector: list[str]) -> int:
    tree = _tree()
    git = ["git", "-C", str(tree)]
    if subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                      capture_output=True, text=True).stdout.strip():
        raise BpfpmError(f"{tree} has uncommitted changes; commit or stash them before bisecting")
    subprocess.run([*git, "bisect", "start", bad, good], check=True)
    try:
        step = [sys.executable, "-m", "bpfpm.cli", "bisect-step", "--", *selector]
        rc = subprocess.call([*git, "bisect", "run", *step],
                             env=dict(os.environ, BPFPM_PATCHES="none"))
        subprocess.call([*git, "bisect", "log"])
        return rc
    finally:
        subprocess.call([*git, "bisect", "reset"])


def step(selector: list[str]) -> int:
    """One bisection step: 0 good, 1 bad, 125 skip (does not build)."""
    os.environ["BPFPM_PATCHES"] = "none"
    try:
        build.build()
    except BpfpmError as e:
        log.warn(f"this commit does not build, skipping it: {str(e).splitlines()[0]}")
        return SKIP
    run_dir = results.new_run("bisect-step")
    env = dict(os.environ, BPFPM_RUN_DIR=str(run_dir))
    rc = subprocess.call([sys.executable, "-m", "pytest", "-x", "-q",
                          f"--junitxml={run_dir / 'junit.xml'}", *selector],
                         env=env, stdin=subprocess.DEVNULL)
    if rc in (0, 1):
        return rc
    if rc == 5:
        raise BpfpmError(f"the selection {selector} collected no test")
    return 1
