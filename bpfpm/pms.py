"""BPF path managers: build them against the kernel, load them in the guest.

Build: vmlinux.h from the built kernel's BTF (bpftool btf dump), then clang
-target bpf for each bpf-pms/*.bpf.c, into the cache dir keyed by the
kernel build (nothing lands in the checkout). Load/attach, in the guest
through the agent: bpftool prog load + pinmaps, then a sock_ops cgroup
attach by libbpf (bpfpm.guest.bpf).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import subprocess
from pathlib import Path

from . import log
from .channel import AgentError
from .build import KernelBuild
from .errors import BpfpmError
from .paths import PMS_DIR, cache_dir
from .scenario import poll

# -fms-extensions: since 6.19 the kernel embeds named structs as anonymous
# members (struct ns_tree; ...), and vmlinux.h dumps them so; selftests/bpf
# builds with the same two flags. Harmless where there are none (6.12).
CFLAGS = ["-g", "-O2", "-target", "bpf", "-mcpu=v3", "-D__TARGET_ARCH_x86",
          "-Wall", "-Werror", "-Wno-unused-function",
          "-fms-extensions", "-Wno-microsoft-anon-tag"]


def available() -> list[str]:
    return sorted(p.name[:-len(".bpf.c")] for p in PMS_DIR.glob("*.bpf.c"))


def out_dir(kernel: KernelBuild) -> Path:
    """vmlinux.h and the objects for this kernel. Named by the key and by
    the vmlinux file itself: a kernel published again under the same key
    (a bad build removed from the cache and rebuilt) must not get the old
    kernel's vmlinux.h and objects."""
    st = kernel.vmlinux.stat()
    d = cache_dir() / "pms" / f"{kernel.key}-{st.st_size:x}-{st.st_mtime_ns:x}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def vmlinux_h(kernel: KernelBuild) -> Path:
    out = out_dir(kernel) / "vmlinux.h"
    if not out.exists():
        r = subprocess.run(["bpftool", "btf", "dump", "file", str(kernel.vmlinux), "format", "c"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise BpfpmError(f"bpftool btf dump of {kernel.vmlinux} failed: {r.stderr.strip()}"
                             "\nis CONFIG_DEBUG_INFO_BTF=y and pahole installed?")
        tmp = out.with_name(f".{out.name}.{os.getpid()}")
        tmp.write_text(r.stdout)
        os.replace(tmp, out)
    return out


def build_all(kernel: KernelBuild) -> dict[str, Path | BpfpmError]:
    """Every PM: name -> object, or the error that stopped it from building."""
    out: dict[str, Path | BpfpmError] = {}
    for name in available():
        try:
            out.update(build(kernel, [name]))
        except BpfpmError as e:
            out[name] = e
    return out


@functools.cache
def _digest(vmlinux: Path) -> bytes:
    """vmlinux.h's digest, read once per process: build_all asks build()
    for one PM at a time, and the file (4 MB) never changes once written."""
    return hashlib.sha256(vmlinux.read_bytes()).digest()


def build(kernel: KernelBuild, names: list[str] | None = None) -> dict[str, Path]:
    """Compile the PMs (all by default); returns name -> object path.
    An object is named by what it is built from: its source, the headers,
    the flags and vmlinux.h. A kernel whose types did not change (an edit
    to a .c file of the kernel) reuses the objects another kernel built
    (a hard link), instead of a clang run per PM on the edit-to-verdict
    path."""
    vmlinux = vmlinux_h(kernel)
    inc = vmlinux.parent
    types = _digest(vmlinux)
    headers = sorted(PMS_DIR.glob("*.h"))
    objs = {}
    for name in names or available():
        src = PMS_DIR / f"{name}.bpf.c"
        if not src.exists():
            raise BpfpmError(f"no BPF path manager {name!r}; have: {', '.join(available())}")
        h = hashlib.sha256(src.read_bytes())
        for hd in headers:
            h.update(hd.read_bytes())
        h.update(" ".join(CFLAGS).encode())
        h.update(types)
        obj = inc / f"{name}.{h.hexdigest()[:12]}.bpf.o"
        tmp = obj.with_name(f".{obj.name}.{os.getpid()}")
        same = None if obj.exists() else next(inc.parent.glob(f"*/{obj.name}"), None)
        if same is not None:
            with contextlib.suppress(FileNotFoundError):   # pruned meanwhile: built below
                os.link(same, tmp)
                os.replace(tmp, obj)
        if not obj.exists():
            argv = ["clang", *CFLAGS, f"-I{inc}", f"-I{PMS_DIR}", "-c", str(src),
                    "-o", str(tmp)]
            r = subprocess.run(argv, capture_output=True, text=True)
            if r.returncode != 0:
                raise BpfpmError(f"compiling {src.name} failed:\n{r.stderr.strip()[-3000:]}")
            os.replace(tmp, obj)
            log.step(f"built {src.name} -> {obj}")
        objs[name] = obj
    return objs


class LoadedPM:
    """A BPF program loaded and attached to the guest's root cgroup.

        with LoadedPM(agent, obj, "ndiffports") as pm:
            pm.set_config(4)
    """

    def __init__(self, guest, obj: Path, name: str):
        self.guest, self.obj, self.name = guest, obj, name
        self.attached = False

    def __enter__(self) -> "LoadedPM":
        try:
            self.guest.call("bpf.load", obj=str(self.obj), name=self.name)
        except AgentError as e:
            raise BpfpmError(f"loading BPF path manager {self.name} failed "
                             f"(verifier log tail follows):\n{e}") from None
        self.guest.call("bpf.attach", name=self.name)
        self.attached = True
        return self

    def __exit__(self, *exc) -> None:
        self.unload()

    def unload(self) -> None:
        """Detach and unload (what a user does to a PM mid-connection)."""
        if self.attached:
            self.attached = False
            self.guest.call("bpf.unload", name=self.name)

    def map(self, map_name: str, nonzero: bool = False, bpftool: bool = False) -> list[dict]:
        """The map's entries, formatted from its BTF; `nonzero`: without
        the array slots that are all zero (unused)."""
        return self.guest.call("bpf.map_dump", name=self.name, map=map_name, nonzero=nonzero,
                               bpftool=bpftool)

    def update(self, map_name: str, key: int, value: bytes) -> None:
        self.guest.call("bpf.map_update", name=self.name, map=map_name, key=key,
                        value=list(value))

    def set_config(self, value: int) -> None:
        self.update("config", 0, value.to_bytes(4, "little"))

    def wait(self, cond, timeout: float = 30, what: str = "the awaited map state") -> None:
        """Poll cond() (which reads this program's maps) until it is true."""
        poll(cond, timeout, 0.2, lambda t: f"{self.name}: {what} not seen within {t:.0f}s",
             self.guest.time_scale)

    def results(self) -> dict[int, int]:
        """errno -> count of kfunc calls (0 = success), from pm_results."""
        out = {}
        for ent in self.map("pm_results"):
            if ent["value"]:
                out[ent["key"]] = ent["value"]
        return out
