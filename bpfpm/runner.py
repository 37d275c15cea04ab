"""`bpfpm test`: pytest in a child process that always gets to clean up.

The kernel and the PMs are built first, here, with progress on the
terminal and outside any test timeout. pytest then runs in a process group
of its own, so a Ctrl-C reaches it exactly once (forwarded from here, a
second signal during its teardown would cut the teardown short), and it
gets SIGTERM if this process dies (PR_SET_PDEATHSIG). On an interrupt,
pytest tears its guests down; whatever is still running after GRACE
seconds is killed, QEMU included (found by the pid files every VM leaves
in the run directory).
"""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import host, kernels, log, session

GRACE = 10.0
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn: SIGTERM when the parent dies, whatever killed it."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def needs_vm(args: list[str]) -> bool:
    """False when every path given is under tests/ (unit tests only)."""
    paths = [a for a in args if not a.startswith("-") and ("/" in a or a.endswith(".py")
                                                           or Path(a).is_dir())]
    return not paths or any(not a.split("::")[0].startswith("tests") for a in paths)


def reap(run: Path) -> list[str]:
    """Kill what the VMs of `run` left running: vng's process groups and
    QEMU. Returns what was killed."""
    killed = []
    # pytest-xdist's workers keep their guests in <run>/<worker>/
    for f in sorted(run.rglob("*.vng.pid")) + sorted(run.rglob("*.qemu.pid")):
        try:
            pid = int(f.read_text().strip())
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if "qemu" not in cmd and "vng" not in cmd and "virtme" not in cmd:
            continue        # the pid was reused
        try:
            if f.name.endswith(".vng.pid"):
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
            killed.append(f"{f.name.split('.')[0]} {f.name.split('.')[1]} pid {pid}")
        except (ProcessLookupError, PermissionError):
            pass
        f.unlink(missing_ok=True)
    return killed


def _stop(proc: subprocess.Popen, run: Path) -> None:
    """Ask pytest to stop (one SIGINT), give it GRACE s, then kill."""
    log.warn(f"interrupted: stopping pytest and its guests (at most {GRACE:.0f}s)")
    t0 = time.monotonic()
    try:
        os.killpg(proc.pid, signal.SIGINT)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=GRACE)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        log.warn("pytest did not stop in time (or a second interrupt): killing it")
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    killed = reap(run)
    if killed:
        log.warn(f"killed what was left: {', '.join(killed)}")
    log.step(f"stopped in {time.monotonic() - t0:.1f}s; results so far in {run}")


def pytest(argv: list[str], run: Path, cwd: Path | None = None) -> int:
    """pytest (argv after `python -m pytest`) with `run` as its run
    directory; its exit status. Interrupts end it as described above."""
    # a run started from inside an xdist worker (a test of the runner) is
    # not one of that worker's: it gets its own run dir and all the cores
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST_")}
    env["BPFPM_RUN_DIR"] = str(run)
    full = [sys.executable, "-m", "pytest", *argv]
    (run / "pytest.cmdline").write_text(shlex.join(full) + "\n")
    proc = subprocess.Popen(full, env=env, stdin=subprocess.DEVNULL, process_group=0,
                            preexec_fn=die_with_parent, cwd=cwd)
    try:
        rc = proc.wait()
    except KeyboardInterrupt:
        _stop(proc, run)
        raise
    reap(run)
    return rc


def run_pytest(args: list[str], jobs: str | None = None) -> int:
    """`bpfpm test`: build first, then pytest into a new run directory;
    `jobs` guests at once (a number, "auto": host.test_jobs(), or "lanes":
    lanes_args())."""
    with session.run_dir("test") as run:
        log.step(f"results: {run}")
        if needs_vm(args):
            log.step(f"kernel {kernels.current().name} (BPFPM_KERNEL; make KERNEL=)")
            session.build_all()
            if jobs == "lanes":
                args = lanes_args(args)
                jobs = None
            n = host.test_jobs() if jobs == "auto" else int(jobs or 1)
            if n > 1:
                log.step(f"{n} guests at once (pytest-xdist; --jobs 1 for one at a time), "
                         f"{host.guest_cpus_for(n)} vCPU each")
                args = ["-n", str(n), *args]
        return pytest([*report_args(run), *args], run)


def lanes_args(args: list[str]) -> list[str]:
    """--jobs lanes: the framework's self-tests and the scenarios on two
    workers (bpfpm.lanes), each guest with the vCPUs one guest alone would
    have; one worker where the host has a single core or under 6 GiB."""
    if host.test_jobs() < 2:
        log.step("one guest at a time: this host has one core or under 6 GiB "
                 "(--jobs lanes needs two guests)")
        return args
    os.environ.setdefault("BPFPM_VCPUS", str(host.guest_cpus_for(1)))
    log.step(f"two lanes (pytest-xdist): framework self-tests and scenarios, one guest "
             f"each of {os.environ['BPFPM_VCPUS']} vCPU; --jobs 1 for one at a time")
    return ["-n", "2", "--lanes", *args]


def report_args(run: Path) -> list[str]:
    """JUnit (a failing test's kernel log and console tail in its
    system-out) and pytest-html's page in the run directory; the KTAP and
    KCIDB files come from bpfpm.reporting."""
    # xunit1: the schema that has testcase properties (the evidence, reruns)
    return [f"--junitxml={run / 'junit.xml'}", "-o", "junit_family=xunit1",
            "-o", "junit_logging=system-out", f"--html={run / 'index.html'}"]
