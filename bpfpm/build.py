"""Kernel build: work tree, patches, config, out-of-tree make with ccache,
and finished kernels published under their key.

Layout under the cache dir (see paths.cache_dir):
  kernels/<key>/   finished kernels, immutable, one per key (source, series,
                   config, toolchain): bzImage, vmlinux, System.map, .config,
                   include/config/kernel.release and bpfpm-build.json (the
                   stamp, written last). Copied into a unique temp dir beside
                   it and renamed into place, so a kernel dir is complete or
                   absent. A run using one holds its .lock shared
                   (KernelBuild.hold) and `bpfpm cache prune` skips it.
  trees/linux/     the work tree of 6.12 (trees/linux-<kernel>/ of the other
                   kernels, bpfpm.kernels): the chosen source rsynced in
                   (mtimes kept), then the series applied
  builds/{base,debug}[-variant]/  O= build dir per config of 6.12
                   (builds/<config>-<kernel>/ of the others), rebuilt in
                   place for speed; its stamp is removed before a rebuild
                   starts and written (atomically) only after make succeeded
  ccache/          compiler cache (base_dir = cache dir)
  logs/            one log per build
  build.lock       one build at a time (make inherits it, so a make outliving
                   its bpfpm still holds it)
Whatever the source of a kernel (Debian's, a developer's tree, patched or
not), it is synced into that kernel's tree path, so make's own dependency
tracking rebuilds only what differs and ccache (whose keys contain those
paths) hits when a variant comes back. Asking for a key already in kernels/ returns at once,
without a lock; a build re-checks kernels/<key> once it holds build.lock,
since another run may have built it meanwhile.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from . import cache, kconfig, kernels, log, patches, source
from .errors import BpfpmError, DiskFull
from .paths import cache_dir

COLD_STEPS = 2302
LINK_SECONDS = 120      # the last few steps (vmlinux link, BTF, bzImage), measured here
_PROGRESS = re.compile(r"^\s+(CC|AS|LD|AR|BTF|GEN|HOSTCC|OBJCOPY|CHK)\s+(\S+)")
_ERROR = re.compile(r"(error:|Error \d+|undefined reference|\*\*\* )")


@dataclasses.dataclass(frozen=True)
class KernelBuild:
    key: str
    bzimage: Path
    vmlinux: Path
    build_dir: Path
    src_dir: Path       # the work tree (scripts/decode_stacktrace.sh); may move on
    info: dict
    lock: Path | None = None    # kernels/<key>/.lock; None for BPFPM_KERNEL_BUILD

    def hold(self):
        """`with kb.hold():` while booting/using this kernel, so that
        `bpfpm cache prune` does not remove it underneath (shared flock)."""
        if self.lock is None:
            return contextlib.nullcontext(self)
        return _holding(self)

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


# What every kernel compile gets beyond kbuild's own flags. -g without
# variable-location tracking: BTF takes types and prototypes from DWARF, not
# where a variable lives at each instruction, and that tracking was about
# all of what -g costs (measured here: kernel/bpf/verifier.c 5.1 s -> 4.3 s,
# -g0 4.2 s). The line tables that stack traces and addr2line use stay.
# Upstream's DEBUG_INFO_REDUCED does the same, but BTF depends on it being off.
KCFLAGS = "-fno-var-tracking"


def toolchain_id() -> str:
    try:
        out = subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout
    except FileNotFoundError:
        raise BpfpmError("gcc not found: run `make setup` (scripts/setup-host.sh)") from None
    return out.splitlines()[0] if out else "gcc?"


@contextlib.contextmanager
def _holding(kb: KernelBuild):
    assert kb.lock is not None
    with cache.hold(kb.lock.parent):
        yield kb


def BuildLock():
    """One kernel build at a time on this machine (2 cores); yields the lock
    file, whose fd make inherits."""
    return cache.flock(cache_dir() / "build.lock", "waiting for another kernel build to finish")


def make_env() -> dict[str, str]:
    """Environment for make in a kernel tree: ccache in the cache dir and
    reproducible build identifiers. ccache in depend mode: a miss runs the
    compiler once and takes the included files from the .d file kbuild asks
    for anyway; in its default mode a miss runs the preprocessor first to
    make the key, which cost 15-25 % more per compile on a cold build
    (kernel/sched/core.c: 2.4 s plain, 2.8 s through ccache, 2.4 s in
    depend mode). Hits are found as before, by the direct-mode manifest."""
    c = cache_dir()
    env = dict(os.environ)
    env.update(CCACHE_DIR=str(c / "ccache"), CCACHE_BASEDIR=str(c),
               CCACHE_NOHASHDIR="1", CCACHE_MAXSIZE=env.get("CCACHE_MAXSIZE", "8G"),
               CCACHE_COMPILERCHECK="content", CCACHE_DEPEND="1",
               KBUILD_BUILD_TIMESTAMP="bpfpm", KBUILD_BUILD_USER="bpfpm",
               KBUILD_BUILD_HOST="bpfpm", LC_ALL="C")
    return env


MANIFEST = ".bpfpm-manifest.json"
CONFIGURED = ".bpfpm-config-key"    # in a build dir: the config key its .config has


def sync_tree(src: source.KernelSource, tree: Path) -> list[str]:
    """rsync the source into the work tree; the files rsync rewrote."""
    tree.mkdir(parents=True, exist_ok=True)
    argv = ["rsync", "-a", "--delete", "--exclude=/.git", f"--exclude=/{MANIFEST}",
            "--out-format=%i %n", f"{src.path}/", f"{tree}/"]
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        if cache.says_no_space(r.stderr):
            raise cache.no_space()
        raise BpfpmError(f"syncing {src.path} into the work tree {tree} failed: "
                         f"{r.stderr.strip()[-1500:]}")
    return [ln.split(" ", 1)[1] for ln in r.stdout.splitlines() if ln.startswith(">f")]


def stamp_changes(tree: Path, changed: list[str]) -> int:
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
    cache.atomic_write(mpath, json.dumps(manifest))
    return really


def _first_error(logfile: Path) -> str:
    lines = logfile.read_text(errors="replace").splitlines()
    for i, line in enumerate(lines):
        if _ERROR.search(line):
            return "\n".join(lines[max(0, i - 3): i + 6])
    return "\n".join(lines[-20:])


GRACE = 5.0     # seconds make gets after SIGTERM before SIGKILL


def _stop_group(proc: subprocess.Popen) -> None:
    """Take make and every compiler it started down: SIGTERM to its process
    group, SIGKILL after GRACE seconds, then reap (bounded)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=GRACE)
        except subprocess.TimeoutExpired:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)     # compilers make left behind
        break
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=GRACE)


def _run_make(argv: list[str], logf, total_hint: int, keep_fds: tuple[int, ...] = ()) -> int:
    """Run make with its output in the log and a progress line every so often;
    the number of build steps. Make runs in its own session (its own process
    group, taken down whole on Ctrl-C/SIGTERM) and inherits `keep_fds` (the
    build lock)."""
    logf.write(f"$ {' '.join(argv)}\n")
    logf.flush()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=make_env(), text=True, errors="replace",
                            start_new_session=True, pass_fds=keep_fds)
    count = 0
    last = ""
    done = threading.Event()
    t0 = time.monotonic()
    interactive = sys.stderr.isatty()

    def ticker():
        while not done.wait(10 if interactive else 30):
            took = time.monotonic() - t0
            eta = ""
            if total_hint and count:
                left = max(0, total_hint - count) * took / count
                if "vmlinux" not in last:   # linking + BTF: ~2 min at the end
                    left += LINK_SECONDS
                eta = f" of ~{total_hint} ({min(99, 100 * count // total_hint)}%, " \
                      f"~{int(left // 60)} min {int(left % 60)} s left)"
            log.step(f"  build {int(took)}s: {count} steps{eta}, at {last}")

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
        _stop_group(proc)
        raise
    finally:
        done.set()
        th.join()
        proc.stdout.close()
    logf.flush()
    if rc != 0:
        if cache.says_no_space(Path(logf.name).read_text(errors="replace")):
            raise cache.no_space()
        raise BpfpmError(f"kernel build failed (make exit {rc}); first error:\n"
                         f"{_first_error(Path(logf.name))}\nfull log: {logf.name}")
    return count


def make(src: Path, build: Path, targets: list[str], logf, total_hint: int,
         keep_fds: tuple[int, ...] = ()) -> int:
    """make `targets` of `src` out of tree in `build` (ccache, BPFPM_JOBS
    jobs), with progress against `total_hint` steps (0: unknown), output in
    logf, make's process group taken down on an interrupt; the steps made.
    A failure is a BpfpmError naming the first error, DiskFull for a full
    disk."""
    jobs = os.environ.get("BPFPM_JOBS", str(os.cpu_count() or 1))
    argv = ["make", "-C", str(src), f"O={build}", f"-j{jobs}",
            "CC=ccache gcc", "HOSTCC=ccache gcc", f"KCFLAGS={KCFLAGS}", *targets]
    return _run_make(argv, logf, total_hint, keep_fds)


# what a finished kernel is: build-dir path -> name in kernels/<key>/
ARTIFACTS = {"arch/x86/boot/bzImage": "bzImage", "vmlinux": "vmlinux",
             "System.map": "System.map", ".config": ".config",
             "include/config/kernel.release": "include/config/kernel.release"}


def _read_stamp(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warn(f"ignoring unreadable {path}: {e}")
        return {}


def _published(kdir: Path, tree: Path) -> KernelBuild | None:
    """The finished kernel in kernels/<key>/, if there is one."""
    info = _read_stamp(kdir / cache.STAMP)
    if not info:
        return None
    cache.mark_used(kdir)
    return KernelBuild(kdir.name, kdir / "bzImage", kdir / "vmlinux", kdir, tree, info,
                       kdir / cache.LOCK)


def _publish(bdir: Path, kdir: Path, info: dict) -> None:
    """Copy the build's artifacts into a fresh temp dir beside kernels/<key>
    and rename it into place; the stamp goes in last. Caller holds the build
    lock, so any other temp dir there is a leftover of a killed run."""
    parent = kdir.parent
    parent.mkdir(parents=True, exist_ok=True)
    for old in parent.glob(".publish-*"):
        shutil.rmtree(old, ignore_errors=True)
    if kdir.exists():           # a dir without a stamp: not a kernel, a leftover
        cache.trash(kdir)
    tmp = Path(tempfile.mkdtemp(prefix=f".publish-{kdir.name}-", dir=parent))
    try:
        with cache.disk_errors(f"publishing the kernel into {kdir}",
                               f"the build itself is complete in {bdir}; run again"):
            for rel, name in ARTIFACTS.items():
                dest = tmp / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(bdir / rel, dest)
            (tmp / cache.LOCK).touch()
            published = info | {"published": time.strftime("%Y-%m-%d %H:%M:%S")}
            cache.atomic_write(tmp / cache.STAMP, json.dumps(published, indent=2))
            os.chmod(tmp, 0o755)
            os.rename(tmp, kdir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _new_log(logs: Path, key: str):
    """A new build log (open file, path); never one another build wrote."""
    base = f"build-{time.strftime('%Y%m%d-%H%M%S')}-{key}"
    for n in range(1, 1000):
        p = logs / (f"{base}.log" if n == 1 else f"{base}-{n}.log")
        try:
            return open(p, "x"), p
        except FileExistsError:
            continue
    raise BpfpmError(f"too many build logs named {base}* in {logs}")


def _build_in_place(src: source.KernelSource, series: list[Path], key: str, debug: bool,
                    tree: Path, bdir: Path, lock_fd: int) -> dict:
    """Sync, patch, configure and make in builds/<config>; the new stamp."""
    skey = patches.series_key(series)
    ckey = kconfig.config_key(debug)
    stamp = bdir / cache.STAMP
    prev = _read_stamp(stamp)
    c = cache_dir()
    logs = c / "logs"
    with cache.disk_errors(f"preparing {bdir}"):
        stamp.unlink(missing_ok=True)   # from here on the build dir is not complete
        logs.mkdir(exist_ok=True)
        bdir.mkdir(parents=True, exist_ok=True)
        logf, logfile = _new_log(logs, key)
    t0 = time.monotonic()
    log.step(f"kernel {kernels.current().name}: source {src.description}")
    log.step(f"building kernel {key} ({len(series)} patches, config {ckey}"
             f"{', debug' if debug else ''}) in {bdir}; log {logfile}")
    try:
        with logf:
            with cache.disk_errors(f"syncing {src.path} into the work tree {tree}"):
                synced = sync_tree(src, tree)
            with cache.disk_errors(f"applying the patch series to {tree}"):
                # only a developer's tree can carry the series already
                if series and not src.writable and patches.already_applied(tree, series):
                    log.step("the source tree already carries the series; not applying it")
                    applied: list[str] = []
                else:
                    applied = patches.apply(tree, series)
                n = stamp_changes(tree, synced + applied)
            log.step(f"work tree: {n} files differ from the last build")
            with cache.disk_errors(f"building the kernel in {bdir}", f"see {logfile}"):
                # the config's key is kept apart from the stamp: an
                # interrupted build keeps its .config, and configuring again
                # would make every object look out of date
                configured = bdir / CONFIGURED
                reconfigured = False
                if not (bdir / ".config").exists() or not configured.exists() or \
                        configured.read_text() != ckey:
                    log.step(f"configuring ({kconfig.BASE} + kvm_guest + " +
                             ", ".join(f.name for f in kconfig.fragments(debug)) + ")")
                    configured.unlink(missing_ok=True)
                    kconfig.configure(tree, bdir, debug, logf)
                    cache.atomic_write(configured, ckey)
                    reconfigured = True
                # the ETA is for a build from scratch: steps of the last full
                # build here, or of a cold build of the base config (2302);
                # an incremental build is short and its size unknown. A new
                # config rebuilds about everything (autoconf.h changes).
                cold = reconfigured or not (bdir / "vmlinux").exists()
                hint = (prev.get("steps", 0) or COLD_STEPS) if cold else 0
                steps = make(tree, bdir, ["bzImage"], logf, hint, (lock_fd,))
    except BpfpmError as e:
        if not isinstance(e, DiskFull) and logfile.exists() and \
                cache.says_no_space(logfile.read_text(errors="replace")):
            raise cache.no_space() from e
        raise
    elapsed = time.monotonic() - t0
    info = {"key": key, "kernel": kernels.current().name, "source": src.description,
            "source_ident": src.ident,
            "patches": [p.name for p in series], "patched_files": applied,
            "series_key": skey, "config_key": ckey, "debug": debug,
            "toolchain": toolchain_id(), "kcflags": KCFLAGS,
            "steps": max(steps, prev.get("steps", 0)),
            "seconds": round(elapsed, 1), "log": str(logfile)}
    with cache.disk_errors(f"writing {stamp}"):
        cache.atomic_write(stamp, json.dumps(info, indent=2))
    log.step(f"kernel built in {elapsed:.0f}s")
    return info


def _inputs(debug: bool | None, patched: bool):
    """What a build is made of: source, series, its key, debug or not."""
    if debug is None:
        debug = os.environ.get("DEBUG", "0") not in ("", "0")
    src = source.resolve()
    with cache.disk_errors("reading the patch series and config fragments"):
        series = patches.series() if patched else []
        key = _h(src.ident, patches.series_key(series), kconfig.config_key(debug),
                 toolchain_id(), KCFLAGS)
    return src, series, key, debug


def key(debug: bool | None = None, patched: bool = True) -> str:
    """The key build() would use with this environment, without building."""
    return _inputs(debug, patched)[2]


def build(debug: bool | None = None, patched: bool = True) -> KernelBuild:
    """Build (or reuse) the guest kernel; `patched=False` leaves the series out."""
    if os.environ.get("BPFPM_KERNEL_BUILD"):
        return prebuilt(Path(os.environ["BPFPM_KERNEL_BUILD"]))
    src, series, key, debug = _inputs(debug, patched)
    kernel = kernels.current()
    tree = kernel.tree_dir()
    kdir = cache.kernels_dir() / key
    kb = _published(kdir, tree)
    if kb:
        log.step(f"kernel {key} up to date: {kb.bzimage}")
        return kb
    # one incremental tree per kernel and configuration: switching does not rebuild
    bdir = kernel.build_dir("-".join(["debug" if debug else "base", *kconfig.variants()]))
    with cache.disk_errors(f"building kernel {key}"), BuildLock() as lock:
        kb = _published(kdir, tree)         # another run may have built it meanwhile
        if kb:
            log.step(f"kernel {key} built meanwhile by another run: {kb.bzimage}")
            return kb
        info = _read_stamp(bdir / cache.STAMP)
        if info.get("key") == key and all((bdir / rel).exists() for rel in ARTIFACTS):
            log.step(f"kernel {key} finished in {bdir}; publishing it")
        else:
            info = _build_in_place(src, series, key, debug, tree, bdir, lock.fileno())
        _publish(bdir, kdir, info)
        kb = _published(kdir, tree)
        assert kb is not None
        log.step(f"kernel {key} ready: {kb.bzimage}")
        return kb
