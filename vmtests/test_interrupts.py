"""Ctrl-C and SIGTERM on a whole `bpfpm test` run, as a terminal or CI
sends them (to the process group): every process it started ends within
15 s, and what it did so far is kept. The run is started as a script's
background job is, with SIGINT ignored: an interrupt must still work."""

import os
import signal
import subprocess
import sys
import time

import pytest

from bpfpm.host import pid_running
from bpfpm.paths import ROOT

pytestmark = pytest.mark.vm

CLEAN_WITHIN = 15


def _wait(what, cond, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"{what} not reached within {timeout}s")


def _children(pid):
    try:
        return [int(c) for t in os.listdir(f"/proc/{pid}/task")
                for c in open(f"/proc/{pid}/task/{t}/children").read().split()]
    except OSError:
        return []


def _descendants(pid):
    """pytest, and under xdist its workers."""
    kids = _children(pid)
    return kids + [d for k in kids for d in _descendants(k)]


def _as_a_background_job():
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _pid(f):
    try:
        return int(f.read_text().strip())
    except (OSError, ValueError):
        return None


@pytest.mark.parametrize("sig,stage,jobs", [(signal.SIGINT, "test", 1),
                                            (signal.SIGTERM, "boot", 1),
                                            (signal.SIGINT, "test", 2)],
                         ids=["ctrl-c-during-a-test", "sigterm-during-boot",
                              "ctrl-c-in-make-tests-two-lanes"])
def test_interrupt_ends_every_process_and_keeps_results(kernel, tmp_path, sig, stage, jobs,
                                                       measure):
    env = {k: v for k, v in os.environ.items() if k != "BPFPM_RUN_DIR"}
    env["BPFPM_RESULTS"] = str(tmp_path)
    out = open(tmp_path / "outer.log", "wb")
    # two guests: `make test`'s lanes (bpfpm.lanes), a file of each lane
    spread = ["--jobs", "lanes", "vmtests/test_lifecycle.py"] if jobs > 1 else []
    p = subprocess.Popen([sys.executable, "-m", "bpfpm.cli", "test", *spread,
                          "vmtests/test_kernel_pm.py"],
                         cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                         stderr=subprocess.STDOUT, start_new_session=True,
                         preexec_fn=_as_a_background_job)
    try:
        run = _wait("run directory", lambda: next(tmp_path.glob("*-test"), None), 120)
        # pytest-xdist's workers keep their guests in <run>/gw<i>/
        dirs = [run] if jobs == 1 else [run / f"gw{i}" for i in range(jobs)]
        consoles = [d / "guest1.console.log" for d in dirs]
        for d in dirs:
            _wait(f"QEMU started in {d.name}", lambda: _pid(d / "guest1.qemu.pid"), 300)
        if stage == "test":
            for console in consoles:
                _wait("a test running", lambda: console.exists() and
                      "bpfpm-mark-" in console.read_text(errors="replace"), 300)
        pids = {"bpfpm": p.pid}
        for d in dirs:
            pids[f"qemu {d.name}"] = _pid(d / "guest1.qemu.pid")
            pids[f"vng {d.name}"] = _pid(d / "guest1.vng.pid")
        pids.update({f"pytest {c}": c for c in _descendants(p.pid)})
        workers = jobs if jobs > 1 else 0
        assert all(pids.values()) and len(pids) >= 2 + 2 * jobs + workers, pids
        t0 = time.monotonic()
        os.killpg(p.pid, sig)
        p.wait(timeout=60)
        _wait("every process gone", lambda: not any(pid_running(x) for x in pids.values()), 60)
        took = time.monotonic() - t0
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    log = (tmp_path / "outer.log").read_text(errors="replace")
    measure("cleanup_seconds", round(took, 1))
    assert took <= CLEAN_WITHIN, f"cleanup took {took:.1f}s:\n{log[-3000:]}"
    assert p.returncode == 130, f"exit {p.returncode}:\n{log[-3000:]}"
    for console in consoles:
        assert console.exists() and console.stat().st_size > 0, "the console log must be kept"
    assert not list(run.rglob("*.qemu.pid")), "a QEMU pid file means a VM was not stopped"
