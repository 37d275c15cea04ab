"""Kernel configuration: allnoconfig + kvm_guest.config + our fragments:
base.config, then the kernel's own <kernel>.config where it has one (what
differs on that kernel: options renamed, moved or gone), debug.config,
the BPFPM_CONFIG variants.

olddefconfig silently drops options whose dependencies are not met, so
after merging, every option a fragment asks for is checked against the
resulting .config and the ones that did not stick are named.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path

from . import kernels
from .errors import BpfpmError
from .paths import KERNEL_DIR

CONFIGS = KERNEL_DIR / "configs"
# The make target the fragments are merged over (part of the config key).
BASE = "allnoconfig"
_LINE = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


def variants() -> list[str]:
    """Extra fragments named by BPFPM_CONFIG (e.g. "no-cgroup-bpf"), applied
    after base.config: kernels built to test what the series does on
    configurations the usual guest does not have."""
    names = [n.strip() for n in os.environ.get("BPFPM_CONFIG", "").split(",") if n.strip()]
    for n in names:
        if n in kernels.KERNELS:
            raise BpfpmError(f"BPFPM_CONFIG={n}: {CONFIGS / (n + '.config')} is kernel {n}'s "
                             "own fragment, applied on that kernel by itself (BPFPM_KERNEL)")
        if not (CONFIGS / f"{n}.config").is_file():
            have = sorted(f.stem for f in CONFIGS.glob("*.config")
                          if f.stem not in ("base", "debug", *kernels.KERNELS))
            raise BpfpmError(f"BPFPM_CONFIG={n}: no {CONFIGS / (n + '.config')}; "
                             f"the variants are: {', '.join(have)}")
    return names


def fragments(debug: bool) -> list[Path]:
    """In the order they are merged (a later one overrides an earlier one).
    Their names and contents make the config key: a kernel's own fragment
    puts its name in the key of that kernel's configurations."""
    frags = [CONFIGS / "base.config"]
    own = kernels.current().config_fragment
    if own.is_file():
        frags.append(own)
    if debug:
        frags.append(CONFIGS / "debug.config")
    frags += [CONFIGS / f"{n}.config" for n in variants()]
    return frags


def parse(text: str) -> dict[str, str]:
    """Map CONFIG_X -> value, with 'n' for '# CONFIG_X is not set'."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        m = _LINE.match(line)
        if m:
            out[m.group(1)] = m.group(2)
            continue
        m = _UNSET.match(line)
        if m:
            out[m.group(1)] = "n"
    return out


def requested(frags: list[Path]) -> dict[str, str]:
    req: dict[str, str] = {}
    for f in frags:
        req.update(parse(f.read_text()))
    return req


def mismatches(req: dict[str, str], final: dict[str, str]) -> list[str]:
    """Options whose final value differs from what was requested."""
    bad = []
    for opt, want in req.items():
        got = final.get(opt, "n")
        if got != want:
            bad.append(f"{opt}: asked {want}, got {got}")
    return bad


def config_key(debug: bool) -> str:
    h = hashlib.sha256(BASE.encode() + b"\0")
    for f in fragments(debug):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def configure(src: Path, build: Path, debug: bool, logf) -> None:
    frags = fragments(debug)
    kvm = src / "kernel" / "configs" / "kvm_guest.config"

    def run(argv: list[str]) -> None:
        logf.write(f"$ {' '.join(argv)}\n")
        logf.flush()
        r = subprocess.run(argv, cwd=src, stdout=logf, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            raise BpfpmError(f"kernel configuration step failed: {' '.join(argv)}; "
                             f"see {logf.name}")

    run(["make", f"O={build}", BASE])
    run([str(src / "scripts" / "kconfig" / "merge_config.sh"), "-m", "-O", str(build),
         str(build / ".config"), str(kvm), *map(str, frags)])
    run(["make", f"O={build}", "olddefconfig"])
    bad = mismatches(requested(frags), parse((build / ".config").read_text()))
    if bad:
        raise BpfpmError(
            "kernel config options did not end up as requested (unmet dependencies?):\n  "
            + "\n  ".join(bad)
            + f"\nfix kernel/configs/*.config; resolved config: {build / '.config'}")
