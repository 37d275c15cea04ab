"""The shared kernel cache: publication, locks, prune, a full disk, and an
interrupted make (no kernel is built here: make and the source are faked)."""

import errno
import fcntl
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from bpfpm import build, cache, kconfig, patches, source
from bpfpm.errors import BpfpmError


@pytest.fixture(autouse=True)
def cache_env(tmp_path, monkeypatch):
    c = tmp_path / "cache"
    monkeypatch.setenv("BPFPM_CACHE", str(c))
    monkeypatch.delenv("BPFPM_KERNEL_BUILD", raising=False)
    monkeypatch.delenv("DEBUG", raising=False)
    return c


def fake_build_dir(bdir: Path, key: str) -> Path:
    for rel in build.ARTIFACTS:
        (bdir / rel).parent.mkdir(parents=True, exist_ok=True)
        (bdir / rel).write_text(f"{rel} of {key}\n")
    (bdir / cache.STAMP).write_text(json.dumps({"key": key, "source": "fake"}))
    return bdir


@pytest.fixture
def fake_source(tmp_path, monkeypatch):
    """build() computes its key from a fake source; nothing is compiled."""
    src = source.KernelSource(tmp_path / "src", "fake-src", "fake source", False)
    monkeypatch.setattr(source, "resolve", lambda: src)
    monkeypatch.setattr(patches, "series", lambda: [])
    monkeypatch.setattr(kconfig, "config_key", lambda debug: "cfg")
    monkeypatch.setattr(build, "toolchain_id", lambda: "gcc-test")
    return build._h(src.ident, patches.series_key([]), "cfg", "gcc-test", build.KCFLAGS)


def no_build(*a, **kw):
    raise AssertionError("must not build")


def publish(key: str, cache_dir: Path, age: float = 0) -> Path:
    bdir = fake_build_dir(cache_dir / "bsrc" / key, key)
    kdir = cache.kernels_dir() / key
    build._publish(bdir, kdir, {"key": key})
    if age:
        t = time.time() - age
        for f in (kdir / cache.STAMP, kdir / cache.LOCK):
            os.utime(f, (t, t))
    return kdir


def test_publish_is_complete_and_leaves_no_temp(cache_env):
    kdir = publish("k1", cache_env)
    names = {str(p.relative_to(kdir)) for p in kdir.rglob("*") if p.is_file()}
    assert names == {"bzImage", "vmlinux", "System.map", ".config",
                     "include/config/kernel.release", cache.STAMP, cache.LOCK}
    assert json.loads((kdir / cache.STAMP).read_text())["key"] == "k1"
    assert [p.name for p in kdir.parent.iterdir()] == ["k1"]


def test_failed_publish_leaves_nothing(cache_env):
    bdir = fake_build_dir(cache_env / "b", "k1")
    (bdir / "vmlinux").unlink()
    with pytest.raises(BpfpmError, match="publishing the kernel"):
        build._publish(bdir, cache.kernels_dir() / "k1", {"key": "k1"})
    assert list(cache.kernels_dir().iterdir()) == []


def test_published_kernel_returns_without_the_build_lock(cache_env, fake_source, monkeypatch):
    publish(fake_source, cache_env)
    monkeypatch.setattr(build, "_build_in_place", no_build)
    with open(cache_env / "build.lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)       # a build of something else runs
        t0 = time.monotonic()
        kb = build.build()
        assert time.monotonic() - t0 < 2
    assert kb.key == fake_source
    assert kb.bzimage == cache.kernels_dir() / fake_source / "bzImage"
    assert kb.vmlinux.read_text() == f"vmlinux of {fake_source}\n"
    assert kb.release == f"include/config/kernel.release of {fake_source}"


def test_build_rechecks_after_taking_the_lock(cache_env, fake_source, monkeypatch):
    real = build.BuildLock

    def lock_while_another_run_publishes():
        publish(fake_source, cache_env)
        return real()

    monkeypatch.setattr(build, "BuildLock", lock_while_another_run_publishes)
    monkeypatch.setattr(build, "_build_in_place", no_build)
    assert build.build().build_dir == cache.kernels_dir() / fake_source


def test_warm_build_dir_with_the_same_key_is_published_without_make(cache_env, fake_source,
                                                                    monkeypatch):
    fake_build_dir(cache_env / "builds" / "base", fake_source)
    monkeypatch.setattr(build, "_build_in_place", no_build)
    kb = build.build()
    assert (kb.build_dir / cache.STAMP).exists()
    assert kb.bzimage.read_text() == f"arch/x86/boot/bzImage of {fake_source}\n"


def test_interrupted_build_removes_the_stamp_and_publishes_nothing(cache_env, fake_source,
                                                                   monkeypatch):
    bdir = fake_build_dir(cache_env / "builds" / "base", "an-older-key")
    monkeypatch.setattr(build, "sync_tree",
                        lambda src, tree: tree.mkdir(parents=True, exist_ok=True) or [])
    monkeypatch.setattr(kconfig, "configure", lambda *a: None)
    (bdir / build.CONFIGURED).unlink(missing_ok=True)

    def make(*a, **kw):
        assert not (bdir / cache.STAMP).exists(), "stamp must be gone before make starts"
        assert (bdir / build.CONFIGURED).read_text() == "cfg"
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "make", make)
    with pytest.raises(KeyboardInterrupt):
        build.build()
    assert not (bdir / cache.STAMP).exists()
    assert not (cache.kernels_dir() / fake_source).exists()
    assert not list(cache.kernels_dir().glob(".publish-*"))

    # the next build compiles in place, then stamps and publishes; the
    # interrupted build's .config is kept (configuring again would date
    # every object)
    configured = []
    monkeypatch.setattr(kconfig, "configure", lambda *a: configured.append(a))
    monkeypatch.setattr(build, "make", lambda *a, **kw: 42)
    kb = build.build()
    assert configured == []
    assert json.loads((bdir / cache.STAMP).read_text())["key"] == fake_source
    assert kb.info["steps"] == 42 and (kb.build_dir / "vmlinux").exists()


def test_make_failing_for_a_full_disk_says_so(cache_env, tmp_path):
    logf = open(tmp_path / "build.log", "w")
    with pytest.raises(BpfpmError) as e:
        build._run_make(["sh", "-c", "echo 'foo.o: No space left on device'; exit 2"], logf, 0)
    assert str(e.value).startswith(f"no space left on {cache_env} (")
    assert "bpfpm cache prune" in str(e.value) and "BPFPM_CACHE" in str(e.value)


def test_oserror_enospc_becomes_one_line(cache_env):
    with pytest.raises(BpfpmError, match=r"^no space left on .* GiB free\): run `bpfpm cache"):
        with cache.disk_errors("copying"):
            raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(BpfpmError, match="copying x failed: .*Permission denied; fix it"):
        with cache.disk_errors("copying x", "fix it"):
            raise PermissionError(errno.EACCES, "Permission denied")
    with pytest.raises(BpfpmError, match="unpacking failed: `false` exited 1"):
        with cache.disk_errors("unpacking"):
            subprocess.run(["false"], check=True)


def test_interrupted_make_takes_its_whole_process_group_down(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "GRACE", 0.5)
    pidfile = tmp_path / "pids"
    # a "make" whose children ignore SIGTERM, like a compiler stuck in I/O
    script = (f"sh -c 'trap \"\" TERM; sleep 60' & echo $! > {pidfile}; "
              "trap '' TERM; sleep 60")
    logf = open(tmp_path / "build.log", "w")
    main = threading.main_thread().ident
    timer = threading.Timer(1.0, signal.pthread_kill, (main, signal.SIGINT))   # Ctrl-C
    timer.start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        build._run_make(["sh", "-c", script], logf, 0)
    assert time.monotonic() - t0 < 10
    child = int(pidfile.read_text())
    time.sleep(0.2)
    assert not Path(f"/proc/{child}").exists() or \
        Path(f"/proc/{child}/stat").read_text().split()[2] == "Z"


def test_hold_keeps_a_kernel_from_prune(cache_env):
    old = [publish(f"old{i}", cache_env, age=1000 * (i + 1)) for i in range(3)]
    new = [publish(f"new{i}", cache_env, age=10 * (i + 1)) for i in range(2)]
    kb = build._published(old[2], cache_env / "trees" / "linux")
    os.utime(old[2] / cache.LOCK, (1, 1))           # oldest of all, but in use
    with kb.hold():
        assert cache.is_held(old[2])
        cache.prune(keep=2)
        assert old[2].exists()
    assert all(k.exists() for k in new)
    assert not any(k.exists() for k in old[:2])
    assert not list(cache.kernels_dir().glob(".prune-*"))
    assert not cache.is_held(old[2])


def test_hold_of_a_pruned_kernel_says_so(cache_env):
    kdir = publish("k1", cache_env)
    kb = build._published(kdir, cache_env)
    cache.prune(keep=0)
    with pytest.raises(BpfpmError, match="k1 is gone"):
        with kb.hold():
            pass


def test_prebuilt_kernel_hold_is_a_no_op(tmp_path):
    d = fake_build_dir(tmp_path / "pre", "x")
    kb = build.prebuilt(d)
    with kb.hold() as held:
        assert held is kb


def test_prune_removes_old_logs_but_not_those_of_kept_kernels(cache_env):
    logs = cache_env / "logs"
    logs.mkdir(parents=True)
    kdir = publish("k1", cache_env)
    for i in range(10):
        p = logs / f"build-{i}.log"
        p.write_text("x")
        os.utime(p, (i, i))
    info = json.loads((kdir / cache.STAMP).read_text()) | {"log": str(logs / "build-0.log")}
    (kdir / cache.STAMP).write_text(json.dumps(info))
    cache.prune()
    left = sorted(p.name for p in logs.iterdir())
    assert left == ["build-0.log"] + [f"build-{i}.log" for i in range(5, 10)]


def test_cache_show_lists_each_part_and_kernel(cache_env, capsys):
    publish("k1", cache_env)
    (cache_env / "ccache").mkdir()
    (cache_env / "ccache" / "f").write_bytes(b"x" * 10000)
    cache.show()
    out = capsys.readouterr().out
    assert f"cache: {cache_env}" in out
    assert "kernels/" in out and "k1" in out and "not in use" in out
    assert "ccache/" in out and "total" in out


def test_atomic_write_leaves_no_temp_file(tmp_path):
    p = tmp_path / "x.json"
    cache.atomic_write(p, "1")
    cache.atomic_write(p, "2")
    assert p.read_text() == "2" and [q.name for q in tmp_path.iterdir()] == ["x.json"]
