"""Load, attach and inspect BPF programs in the guest: loaded and pinned
by bpftool, attached and detached, and their maps read, with libbpf (see
map_dump).

Objects are pinned under /sys/fs/bpf/bpfpm/<name>/ (prog + maps/) and
attached to the root cgroup v2 as BPF_CGROUP_SOCK_OPS.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess

from . import libbpf

BPFFS = "/sys/fs/bpf"
CGROUP = "/sys/fs/cgroup"
PIN_ROOT = f"{BPFFS}/bpfpm"


class BpftoolError(RuntimeError):
    pass


def _bpftool(*args: str) -> str:
    r = subprocess.run(["bpftool", *args], capture_output=True, text=True)
    if r.returncode != 0:
        lines = (r.stderr or r.stdout).strip().splitlines()
        raise BpftoolError(f"bpftool {' '.join(args)} failed:\n" + "\n".join(lines[-60:]))
    return r.stdout


def _mounted(path: str, fstype: str) -> bool:
    with open("/proc/mounts") as f:
        return any(ln.split()[1] == path and ln.split()[2] == fstype for ln in f)


def ensure_mounts() -> None:
    if not _mounted(BPFFS, "bpf"):
        os.makedirs(BPFFS, exist_ok=True)
        subprocess.run(["mount", "-t", "bpf", "bpf", BPFFS], check=True)
    if not _mounted(CGROUP, "cgroup2"):
        os.makedirs(CGROUP, exist_ok=True)
        subprocess.run(["mount", "-t", "cgroup2", "none", CGROUP], check=True)


def load(obj: str, name: str) -> None:
    ensure_mounts()
    d = f"{PIN_ROOT}/{name}"
    if os.path.exists(d):
        unload(name)
    os.makedirs(f"{d}/maps", exist_ok=True)
    try:
        _bpftool("prog", "load", obj, f"{d}/prog", "type", "sockops", "pinmaps", f"{d}/maps")
    except BpftoolError:
        shutil.rmtree(d, ignore_errors=True)
        raise


def attach(name: str) -> None:
    libbpf.cgroup_sock_ops(f"{PIN_ROOT}/{name}/prog", CGROUP, attach=True)


def unload(name: str) -> None:
    d = f"{PIN_ROOT}/{name}"
    try:
        libbpf.cgroup_sock_ops(f"{d}/prog", CGROUP, attach=False)
    except OSError as e:
        if e.errno != errno.ENOENT:     # not loaded, or not attached
            raise
    shutil.rmtree(d, ignore_errors=True)


def map_dump(name: str, map: str, nonzero: bool = False, bpftool: bool = False) -> list:
    """[{"key": ..., "value": ...}] formatted from the map's BTF, read with
    libbpf (bpftool's formatting, without its 0.9 s for a 2048-slot array
    under TCG); `nonzero` leaves out array slots that are all zero.
    bpftool=True asks bpftool itself (the reference the test compares to)."""
    path = f"{PIN_ROOT}/{name}/maps/{map}"
    if not bpftool:
        got = libbpf.dump(path, nonzero)
        if got is not None:
            return got
    entries = json.loads(_bpftool("-j", "map", "dump", "pinned", path))
    res = []
    for e in entries:
        f = e.get("formatted", e)
        if nonzero and not any(x != "0x00" for x in e.get("value", ())):
            continue
        res.append({"key": f.get("key"), "value": f.get("value")})
    return res


def map_update(name: str, map: str, key: int, value: list[int]) -> None:
    kb = [str(b) for b in key.to_bytes(4, "little")]
    _bpftool("map", "update", "pinned", f"{PIN_ROOT}/{name}/maps/{map}",
             "key", *kb, "value", *[str(b) for b in value])

