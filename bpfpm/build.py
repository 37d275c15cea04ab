"""Kernel build: work tree, patches, config, out-of-tree make with ccache.

Layout under the cache dir (see paths.cache_dir):
  trees/linux/     the one work tree: the chosen source rsynced in (mtimes
                   kept), then the series applied
  builds/{base,debug}/  O= build dir per config; a fragment edit re-runs the
                   config step and kbuild rebuilds only what depends on it
  ccache/          compiler cache (base_dir = cache dir)
  logs/            one log per build
Whatever the source (Debian's, a developer's tree, patched or not), it is
synced into the same tree path, so make's own dependency tracking rebuilds
only what differs and ccache (whose keys contain those paths) hits when a
variant comes back. A build dir remembers the key of its last successful
build; asking for the same key again returns at once.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import kconfig, log, patches, source
from .errors import BpfpmError
from .paths import cache_dir

_PROGRESS = re.compile(r"^\s+(CC|AS|LD|AR|BTF|GEN|HOSTCC|OBJCOPY|CHK)\s+(\S+)")
_ERROR = re.compile(r"(error:|Error \d+|undefined reference|\*\*\* )")


@dataclasses.dataclass(frozen=True)
class KernelBuild:
    key: str
    bzimage: Path
    vmlinux: Path
    build_dir: Path
    src_dir: Path
    info: dict

    @property
    def release(self) -> str:
        for f in (self.build_dir / "include" / "config" / "kernel.release",
                  self.build_dir / "kernel.release"):
            if f.exists():
                return f.read_text().strip()
        return "?"


def prebuilt(d: Path) -> KernelBuild:
    """A kernel built elsewhere (BPFPM_KERNEL_BUILD=dir): bzImage + vmlinux."""
    bz = next((p for p in (d / "arch/x86/boot/bzImage", d / "bzImage") if p.exists()), None)
    if bz is None or not (d / "vmlinux").exists():
        raise BpfpmError(f"BPFPM_KERNEL_BUILD={d} needs bzImage (or arch/x86/boot/bzImage) "
                         "and vmlinux")
    stamp = d / "bpfpm-build.json"
    info = json.loads(stamp.read_text()) if stamp.exists() else {"key": "prebuilt"}
    src = d / "source" if (d / "source").exists() else d
    return KernelBuild(info.get("key", "prebuilt"), bz, d / "vmlinux", d, src, info)


def _h(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def toolchain_id() -> str:
    out = subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else "gcc?"


class BuildLock:
    """One kernel build at a time on this machine (2 cores)."""

    def __init__(self):
        self.path = cache_dir() / "build.lock"

    def __enter__(self):
        self.f = open(self.path, "a+")
        try:
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.f.seek(0)
            log.step(f"waiting for another kernel build to finish ({self.f.read().strip()})")
            fcntl.flock(self.f, fcntl.LOCK_EX)
        self.f.seek(0)
        self.f.truncate()
        self.f.write(f"pid {os.getpid()}")
        self.f.flush()
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.f, fcntl.LOCK_UN)
        self.f.close()


def make_env() -> dict[str, str]:
    """Environment for make in a kernel tree: ccache in the cache dir and
    reproducible build identifiers."""
    c = cache_dir()
    env = dict(os.environ)
    env.update(CCACHE_DIR=str(c / "ccache"), CCACHE_BASEDIR=str(c),
               CCACHE_NOHASHDIR="1", CCACHE_MAXSIZE=env.get("CCACHE_MAXSIZE", "8G"),
               CCACHE_COMPILERCHECK="content",
               KBUILD_BUILD_TIMESTAMP="bpfpm", KBUILD_BUILD_USER="bpfpm",
               KBUILD_BUILD_HOST="bpfpm", LC_ALL="C")
    return env


MANIFEST = ".bpfpm-manifest.json"


def _sync_tree(src: source.KernelSource, tree: Path) -> list[str]:
    """rsync the source into the work tree; the files rsync rewrote."""
    tree.mkdir(parents=True, exist_ok=True)
    argv = ["rsync", "-a", "--delete", "--exclude=/.git", f"--exclude=/{MANIFEST}",
            "--out-format=%i %n", f"{src.path}/", f"{tree}/"]
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise BpfpmError(f"syncing the work tree failed: {r.stderr.strip()}")
    return [ln.split(" ", 1)[1] for ln in r.stdout.splitlines() if ln.startswith(">f")]


def _stamp_changes(tree: Path, changed: list[str]) -> int:
    """Give make the right idea of what changed since the last build.

    rsync keeps the source's mtimes and patches get the patch's, so a file
    switched back to an older version (unpatched after patched, an earlier
    commit in a bisection) could look older than its object and not be
    rebuilt. Every rewritten file is compared with what the tree held at the
    last build: new content gets mtime = now, same content its old mtime
    back (no rebuild). Returns how many files really changed.
    """
    mpath = tree / MANIFEST
    manifest = json.loads(mpath.read_text()) if mpath.exists() else {}
    now = time.time()
    really = 0
    for rel in sorted(set(changed)):
        f = tree / rel
        if not f.is_file():
            manifest.pop(rel, None)
            continue
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        old = manifest.get(rel)
        if old and old[0] == digest:
            os.utime(f, (old[1], old[1]))
            continue
        os.utime(f, (now, now))
        manifest[rel] = [digest, now]
        really += 1
    tmp = mpath.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest))
    tmp.replace(mpath)
    return really


def _first_error(logfile: Path) -> str:
    lines = logfile.read_text(errors="replace").splitlines()
    for i, line in enumerate(lines):
        if _ERROR.search(line):
            return "\n".join(lines[max(0, i - 3): i + 6])
    return "\n".join(lines[-20:])


def _make(src: Path, build: Path, targets: list[str], logf, total_hint: int) -> int:
    jobs = os.environ.get("BPFPM_JOBS", str(os.cpu_count() or 1))
    argv = ["make", "-C", str(src), f"O={build}", f"-j{jobs}",
            "CC=ccache gcc", "HOSTCC=ccache gcc", *targets]
    logf.write(f"$ {' '.join(argv)}\n")
    logf.flush()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=make_env(), text=True, errors="replace")
    count = 0
    last = ""
    done = threading.Event()
    t0 = time.monotonic()
    interactive = sys.stderr.isatty()

    def ticker():
        while not done.wait(10 if interactive else 30):
            pct = f" ~{min(99, 100 * count // total_hint)}%" if total_hint else ""
            log.step(f"  build {int(time.monotonic() - t0)}s: {count} steps{pct}, at {last}")

    th = threading.Thread(target=ticker, daemon=True)
    th.start()
    assert proc.stdout
    try:
        for line in proc.stdout:
            logf.write(line)
            m = _PROGRESS.match(line)
            if m:
                count += 1
                last = m.group(2)
        rc = proc.wait()
    except BaseException:
        # interrupted (Ctrl-C, SIGTERM): take make and its compilers down too
        proc.terminate()
        proc.wait()
        raise
    finally:
        done.set()
        th.join()
    logf.flush()
    if rc != 0:
        raise BpfpmError(f"kernel build failed (make exit {rc}); first error:\n"
                         f"{_first_error(Path(logf.name))}\nfull log: {logf.name}")
    return count


def build(debug: bool | None = None, patched: bool = True) -> KernelBuild:
    """Build (or reuse) the guest kernel; `patched=False` leaves the series out."""
    if os.environ.get("BPFPM_KERNEL_BUILD"):
        return prebuilt(Path(os.environ["BPFPM_KERNEL_BUILD"]))
    if debug is None:
        debug = os.environ.get("DEBUG", "0") not in ("", "0")
    src = source.resolve()
    series = patches.series() if patched else []
    skey = patches.series_key(series)
    ckey = kconfig.config_key(debug)
    key = _h(src.ident, skey, ckey, toolchain_id())
    c = cache_dir()
    tree = c / "trees" / "linux"
    bdir = c / "builds" / ("debug" if debug else "base")
    stamp = bdir / "bpfpm-build.json"
    result = KernelBuild(key, bdir / "arch/x86/boot/bzImage", bdir / "vmlinux", bdir, tree, {})
    if stamp.exists() and result.bzimage.exists():
        info = json.loads(stamp.read_text())
        if info.get("key") == key:
            log.step(f"kernel {key} up to date: {result.bzimage}")
            return dataclasses.replace(result, info=info)

    with BuildLock():
        logs = c / "logs"
        logs.mkdir(exist_ok=True)
        logfile = logs / f"build-{time.strftime('%Y%m%d-%H%M%S')}-{key}.log"
        t0 = time.monotonic()
        log.step(f"kernel source: {src.description}")
        log.step(f"building kernel {key} ({len(series)} patches, config {ckey}"
                 f"{', debug' if debug else ''}) in {bdir}; log {logfile}")
        bdir.mkdir(parents=True, exist_ok=True)
        with open(logfile, "w") as logf:
            synced = _sync_tree(src, tree)
            if series and patches.already_applied(tree, series):
                log.step("the source tree already carries the series; not applying it")
                applied: list[str] = []
            else:
                applied = patches.apply(tree, series)
            n = _stamp_changes(tree, synced + applied)
            log.step(f"work tree: {n} files differ from the last build")
            prev = json.loads(stamp.read_text()) if stamp.exists() else {}
            if prev.get("config_key") != ckey or not (bdir / ".config").exists():
                log.step("configuring (defconfig + kvm_guest + " +
                         ", ".join(f.name for f in kconfig.fragments(debug)) + ")")
                kconfig.configure(tree, bdir, debug, logf)
            hint = prev.get("steps", 0)
            steps = _make(tree, bdir, ["bzImage"], logf, hint)
        elapsed = time.monotonic() - t0
        info = {"key": key, "source": src.description, "source_ident": src.ident,
                "patches": [p.name for p in series], "patched_files": applied,
                "series_key": skey, "config_key": ckey, "debug": debug,
                "toolchain": toolchain_id(), "steps": max(steps, hint),
                "seconds": round(elapsed, 1), "log": str(logfile)}
        stamp.write_text(json.dumps(info, indent=2))
        log.step(f"kernel built in {elapsed:.0f}s: {result.bzimage}")
        return dataclasses.replace(result, info=info)
