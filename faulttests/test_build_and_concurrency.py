"""The long fault injections (`make test-faults`): they build kernels.

- Ctrl-C during a kernel build: make and its compilers end within 15 s,
  nothing is published, the build dir is not taken as complete, and the
  next build finishes the job.
- Two runs at once on two kernels (patched and BPFPM_PATCHES=none): both
  pass, and neither changes the other's kernel.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from bpfpm import cache
from bpfpm.host import pid_running
from bpfpm.paths import ROOT

UNPATCHED = dict(os.environ, BPFPM_PATCHES="none")
PATCHED = {k: v for k, v in os.environ.items() if k != "BPFPM_PATCHES"}
# builds and two whole runs: far beyond the suite's per-test timeout
pytestmark = pytest.mark.timeout(3600)


def _bpfpm(*args, env=None, **kw):
    return subprocess.Popen([sys.executable, "-m", "bpfpm.cli", *args], cwd=ROOT,
                            env=env or dict(os.environ), stdin=subprocess.DEVNULL,
                            start_new_session=True, **kw)


def _key(env) -> str:
    """The key `bpfpm kernel build` would use, without building."""
    out = subprocess.run([sys.executable, "-c", "from bpfpm import build; print(build.key())"],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def _makes() -> set[int]:
    out = subprocess.run(["pgrep", "-x", "make"], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def _other_variant() -> dict:
    """The environment of the variant (patched or not) the build dir does
    not hold now: building it is a real incremental build (a minute or
    more: the series changes include/uapi/linux/bpf.h), not a no-op."""
    stamp = cache_dir_build_stamp()
    last = json.loads(stamp.read_text()).get("key") if stamp.exists() else None
    return UNPATCHED if last == _key(PATCHED) else PATCHED


def test_ctrl_c_during_a_build_publishes_nothing_and_leaves_nothing(tmp_path):
    env = _other_variant()
    key = _key(env)
    kdir = cache.kernels_dir() / key
    if kdir.exists():               # built before: remove it, so this run builds
        assert not cache.is_held(kdir), f"{kdir} is in use by another run"
        shutil.rmtree(kdir)
    before = _makes()
    out = open(tmp_path / "build.log", "wb")
    p = _bpfpm("kernel", "build", env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not (_makes() - before) and time.monotonic() < deadline:
        assert p.poll() is None, (tmp_path / "build.log").read_text()
        time.sleep(0.5)
    time.sleep(10)                     # well into compiling
    makes = _makes() - before
    assert makes, "make never started"
    t0 = time.monotonic()
    os.killpg(p.pid, signal.SIGINT)
    p.wait(timeout=60)
    while any(pid_running(m) for m in makes) and time.monotonic() - t0 < 60:
        time.sleep(0.2)
    took = time.monotonic() - t0
    log = (tmp_path / "build.log").read_text(errors="replace")
    assert took <= 15, f"make still running {took:.0f}s after Ctrl-C:\n{log[-2000:]}"
    assert p.returncode == 130, log[-2000:]
    assert not kdir.exists(), "an interrupted build was published"
    stamp = cache_dir_build_stamp()
    assert not stamp.exists() or json.loads(stamp.read_text()).get("key") != key, \
        "the interrupted build dir is marked complete"
    # the next build finishes the job
    done = subprocess.run([sys.executable, "-m", "bpfpm.cli", "kernel", "build"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (kdir / "bzImage").exists() and (kdir / "bpfpm-build.json").exists()


def cache_dir_build_stamp():
    from bpfpm.paths import cache_dir
    return cache_dir() / "builds" / "base" / "bpfpm-build.json"


def test_two_runs_at_once_on_two_kernels_both_pass(tmp_path):
    runs = {}
    for name, env in (("patched", dict(os.environ)), ("unpatched", UNPATCHED)):
        env = {k: v for k, v in env.items() if k != "BPFPM_RUN_DIR"}
        env["BPFPM_RESULTS"] = str(tmp_path / name)
        log = open(tmp_path / f"{name}.log", "wb")
        runs[name] = _bpfpm("test", "vmtests/test_kernel_pm.py", "vmtests/test_framework.py",
                            "-k", "not unbootable", env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    for name, p in runs.items():
        p.wait(timeout=3600)
    for name, p in runs.items():
        text = (tmp_path / f"{name}.log").read_text(errors="replace")
        assert p.returncode == 0, f"{name} run failed:\n{text[-4000:]}"
    kernels = {json.loads(next((tmp_path / n).glob("*-test/kernel.json")).read_text())["key"]
               for n in runs}
    assert len(kernels) == 2, "the two runs must have used two kernels"
