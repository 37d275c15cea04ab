"""The cache dir shared by concurrent runs, and `bpfpm cache`.

Two terminals, a bisection and a CI job may use one cache at once, so
nothing in it is ever half-written under its final name: files are written
to a unique temp name and renamed, finished kernels (kernels/<key>/) are
published by renaming a complete temp dir and never change afterwards,
builds take build.lock, and a run that uses a kernel holds
kernels/<key>/.lock shared so that `bpfpm cache prune` leaves it alone.
A full disk says so in one line instead of a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

from . import log
from .errors import BpfpmError, DiskFull
from .paths import cache_dir

STAMP = "bpfpm-build.json"   # written last: a kernel dir without it is not a kernel
LOCK = ".lock"               # in kernels/<key>/: shared while in use
KEEP = 3                     # kernels `prune` keeps by default
KEEP_LOGS = 5                # build logs `prune` keeps besides those of kept kernels
_FULL = (errno.ENOSPC, errno.EDQUOT)


# -- writing safely -------------------------------------------------------

def atomic_write(path: Path, text: str) -> None:
    """Write `path` through a unique temp file in its dir + os.replace, so a
    reader (or a crash) never sees half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)        # mkstemp's 0600 would hide it from other users
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def trash(d: Path) -> None:
    """Remove a dir: renamed out of the way first, so nobody sees it half gone."""
    gone = d.parent / f".prune-{d.name}-{secrets.token_hex(4)}"
    try:
        os.rename(d, gone)
    except FileNotFoundError:
        return
    shutil.rmtree(gone, ignore_errors=True)


# -- disk full and other OS errors ----------------------------------------

def free_gib(path: Path | None = None) -> float:
    try:
        return shutil.disk_usage(path or cache_dir()).free / 2**30
    except OSError:
        return float("nan")


def no_space() -> DiskFull:
    c = cache_dir()
    return DiskFull(f"no space left on {c} ({free_gib(c):.1f} GiB free): run "
                      "`bpfpm cache prune` or set BPFPM_CACHE to a bigger disk")


def says_no_space(text: str) -> bool:
    """Tool output (rsync, patch, make, apt) telling of a full disk or quota."""
    return "No space left on device" in text or "Disk quota exceeded" in text


@contextlib.contextmanager
def disk_errors(what: str, hint: str = ""):
    """Turn an OSError or failed command while doing `what` into a BpfpmError
    that says what failed (and a full disk into the one-line no_space)."""
    try:
        yield
    except OSError as e:
        if e.errno in _FULL:
            raise no_space() from e
        raise BpfpmError(f"{what} failed: {e}" + (f"; {hint}" if hint else "")) from e
    except subprocess.CalledProcessError as e:
        out = "\n".join(str(x) for x in (e.stdout, e.stderr) if x)
        if says_no_space(out):
            raise no_space() from e
        cmd = e.cmd if isinstance(e.cmd, str) else " ".join(map(str, e.cmd))
        raise BpfpmError(f"{what} failed: `{cmd}` exited {e.returncode}"
                         + (f":\n{out.strip()[-1500:]}" if out.strip() else "")
                         + (f"\n{hint}" if hint else "")) from e


# -- locks ------------------------------------------------------------------

@contextlib.contextmanager
def flock(path: Path, waiting: str):
    """Exclusive flock on `path` (created); says `waiting` when it must wait.
    Yields the open file, whose fd a child may inherit to keep the lock."""
    f = open(path, "a+")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            log.step(f"{waiting} ({f.read().strip() or 'pid ?'})")
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        yield f
    finally:
        f.close()


def kernels_dir() -> Path:
    return cache_dir() / "kernels"


@contextlib.contextmanager
def hold(kdir: Path):
    """Shared flock on kernels/<key>/.lock while the kernel is in use; prune
    skips held kernels. Marks the kernel as just used (prune keeps the most
    recently used)."""
    try:
        fd = os.open(kdir / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:
        raise BpfpmError(f"kernel {kdir.name} is gone from {kdir.parent} (pruned meanwhile?); "
                         "run again to rebuild it") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        if not (kdir / STAMP).exists() or not _same_file(fd, kdir / LOCK):
            # pruned while we waited for the lock
            raise BpfpmError(f"kernel {kdir.name} was pruned just now; run again to rebuild it")
        with contextlib.suppress(OSError):
            os.utime(fd)
        yield
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def is_held(kdir: Path) -> bool:
    try:
        fd = os.open(kdir / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def mark_used(kdir: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(kdir / LOCK)


# -- what is in the cache -------------------------------------------------

def kernels() -> list[Path]:
    """Published kernels, most recently built or used first."""
    d = kernels_dir()
    if not d.is_dir():
        return []
    ks = [k for k in d.iterdir() if not k.name.startswith(".") and (k / STAMP).exists()]
    return sorted(ks, key=_last_used, reverse=True)


def _last_used(k: Path) -> float:
    return max((p.stat().st_mtime for p in (k / STAMP, k / LOCK) if p.exists()), default=0.0)


def stamp(k: Path) -> dict:
    try:
        return json.loads((k / STAMP).read_text())
    except (OSError, ValueError):
        return {}


def du(path: Path) -> int:
    """Bytes on disk under `path` (hard links counted once)."""
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    total = st.st_blocks * 512
    seen: set[tuple[int, int]] = set()
    stack = [str(path)] if stat.S_ISDIR(st.st_mode) else []
    while stack:
        try:
            it = os.scandir(stack.pop())
        except OSError:
            continue
        with it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if st.st_nlink > 1:
                    if (st.st_dev, st.st_ino) in seen:
                        continue
                    seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
                if stat.S_ISDIR(st.st_mode):
                    stack.append(e.path)
    return total


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _describe(k: Path) -> str:
    """Two lines: where the kernel comes from; when built/used and if in use."""
    info = stamp(k)
    when = info.get("published") or time.strftime(
        "%Y-%m-%d %H:%M", time.localtime((k / STAMP).stat().st_mtime))
    used = time.strftime("%Y-%m-%d %H:%M", time.localtime(_last_used(k)))
    origin = str(info.get("source", "?")).split(" (")[0]
    if info.get("kernel"):          # stamps of 6.12 kernels built before the choice lack it
        origin = f"kernel {info['kernel']}: {origin}"
    cfg = ("debug " if info.get("debug") else "") + f"config {info.get('config_key', '?')}"
    held = "IN USE" if is_held(k) else "not in use"
    return (f"{origin}, {len(info.get('patches', []))} patches, {cfg}\n"
            f"{'':22}built {str(when)[:16]}, last used {used}, {held}")


# parts of the cache, in the order shown, with what they are
PARTS = [("kernels", "finished kernels, one dir per key (immutable)"),
         ("builds", "incremental build dirs (make O=), per kernel and config"),
         ("trees", "work trees the sources are synced into, one per kernel"),
         ("ccache", "compiler cache"),
         ("source/apt", "private apt lists and cache"),
         ("source", "Debian kernel source: .debs and unpacked trees"),
         ("logs", "build logs"),
         ("pms", "BPF path managers compiled per kernel")]


def show() -> None:
    c = cache_dir()
    print(f"cache: {c} ({free_gib(c):.1f} GiB free on its disk)")
    total = 0
    shown = set()
    for name, what in PARTS:
        p = c / name
        if not p.exists() and name != "kernels":
            continue
        size = du(p)
        if name == "source":            # source/apt has its own line
            size -= du(c / "source" / "apt")
        total += size
        shown.add(name)
        print(f"  {name + '/':<12} {human(size):>10}  {what}")
        if name == "kernels":
            if not kernels():
                print("    (none yet)")
            for k in kernels():
                print(f"    {k.name} {human(du(k)):>10}  {_describe(k)}")
    for p in sorted(c.iterdir()):
        if p.is_dir() and p.name not in shown:
            size = du(p)
            total += size
            print(f"  {p.name + '/':<12} {human(size):>10}")
    print(f"  {'total':<12} {human(total):>10}")


# -- prune -------------------------------------------------------------------

def prune(keep: int = KEEP) -> int:
    """Remove all but the `keep` most recently used unheld kernels (and the
    BPF objects built against them), leftovers of interrupted runs, and old
    build logs; the bytes freed. Held kernels are never removed."""
    d = kernels_dir()
    freed = 0
    kept = 0
    for k in kernels():
        fd = os.open(k / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.step(f"kernel {k.name} is in use; kept")
                continue
            if kept < keep:
                kept += 1
                continue
            size = du(k)
            gone = d / f".prune-{k.name}-{secrets.token_hex(4)}"
            os.rename(k, gone)          # under the lock: a holder waiting on it sees it gone
        finally:
            os.close(fd)
        shutil.rmtree(gone, ignore_errors=True)
        # BPF objects built against it: pms/<key>-<vmlinux size>-<mtime>
        for pms in [*(cache_dir() / "pms").glob(f"{k.name}-*"), cache_dir() / "pms" / k.name]:
            size += du(pms)
            trash(pms)
        freed += size
        log.step(f"removed kernel {k.name} ({human(size)})")
    freed += _prune_leftovers(d)
    freed += _prune_logs(cache_dir() / "logs")
    return freed


def _prune_leftovers(d: Path) -> int:
    """Dirs of a prune or a publication that was killed half-way. A
    publication's temp dir is only removed when no build runs."""
    if not d.is_dir():
        return 0
    freed = 0
    for p in d.glob(".prune-*"):
        freed += du(p)
        shutil.rmtree(p, ignore_errors=True)
    with open(cache_dir() / "build.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return freed
        for p in d.glob(".publish-*"):
            freed += du(p)
            shutil.rmtree(p, ignore_errors=True)
    return freed


def _prune_logs(logs: Path) -> int:
    """Keep the logs of the kernels still there and the KEEP_LOGS newest."""
    if not logs.is_dir():
        return 0
    wanted = {stamp(k).get("log") for k in kernels()}
    for b in (cache_dir() / "builds").glob(f"*/{STAMP}"):
        with contextlib.suppress(OSError, ValueError):
            wanted.add(json.loads(b.read_text()).get("log"))
    old = sorted(logs.glob("*.log"), key=lambda p: p.stat().st_mtime, reverse=True)[KEEP_LOGS:]
    freed = 0
    for p in old:
        if str(p) not in wanted:
            freed += du(p)
            p.unlink(missing_ok=True)
    return freed


def main(a) -> int:
    if getattr(a, "action", None) == "prune":
        freed = prune(a.keep)
        print(f"freed {human(freed)}; {free_gib():.1f} GiB free on {cache_dir()}")
        return 0
    show()
    return 0
