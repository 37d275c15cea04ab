"""Host quirks, probed once: acceleration; process state; Debian packages.

KVM is used only when it can really run a guest. On nested hosts /dev/kvm
can exist while the CPU shows no vmx/svm flag: QEMU's `-cpu host` then
fails on MSR 0x10a and a guest never gets past "Decompressing Linux...".
BPFPM_ACCEL=kvm|tcg forces either.
"""

from __future__ import annotations

import functools
import os
import subprocess

from . import log
from .errors import BpfpmError


@functools.cache
def accel() -> str:
    forced = os.environ.get("BPFPM_ACCEL", "").lower()
    if forced in ("kvm", "tcg"):
        if forced == "kvm" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
            raise BpfpmError("BPFPM_ACCEL=kvm but /dev/kvm is not usable; unset it to use TCG")
        log.step(f"accel: {forced} (forced by BPFPM_ACCEL)")
        return forced
    if forced:
        raise BpfpmError(f"BPFPM_ACCEL={forced!r}: expected 'kvm' or 'tcg'")
    why = kvm_unusable_reason()
    if why:
        log.step(f"accel: tcg ({why}; BPFPM_ACCEL=kvm to force)")
        return "tcg"
    log.step("accel: kvm")
    return "kvm"


def test_jobs() -> int:
    """How many guests `bpfpm test --jobs auto` runs at once: one per host
    core (a TCG vCPU keeps a core busy), and 3 GiB of RAM each (2 for the
    guest, the rest for QEMU and the host side); 8 at most."""
    try:
        with open("/proc/meminfo") as f:
            mem_kib = int(next(ln.split()[1] for ln in f if ln.startswith("MemTotal:")))
    except (OSError, StopIteration, ValueError):
        mem_kib = 0
    return max(1, min(os.cpu_count() or 1, mem_kib // (3 << 20), 8))


def guest_cpus() -> int:
    """vCPUs per guest of this pytest process (under xdist, of its worker)."""
    return guest_cpus_for(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1))


def guest_cpus_for(guests: int) -> int:
    """BPFPM_VCPUS if set; else 2 (SMP, where races between CPUs can show),
    or the host's cores shared among `guests`. The suite waits more than it
    computes (one guest used 27 % of this 2-core host): two guests of 2
    vCPUs each (BPFPM_VCPUS=2 JOBS=2) ran it in 5 min 14 s-6 min 33 s
    against 7 min 30 s for one, but 1 run in 6 lost a timing race there;
    `make test`'s two lanes (bpfpm.lanes) keep scenarios apart instead."""
    want = os.environ.get("BPFPM_VCPUS", "")
    if want:
        if not want.isdigit() or int(want) < 1:
            raise BpfpmError(f"BPFPM_VCPUS={want}: expected a number of vCPUs (1 or more)")
        return int(want)
    return max(1, min(2, (os.cpu_count() or 2) // guests))


def kvm_unusable_reason() -> str | None:
    if not os.path.exists("/dev/kvm"):
        return "no /dev/kvm"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm not accessible"
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln for ln in f if ln.startswith("flags")), "")
    except OSError:
        flags = ""
    if " vmx" not in flags and " svm" not in flags:
        return "/dev/kvm exists but the CPU has no vmx/svm flag (nested host)"
    return None


def pid_running(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def missing_packages(pkgs: list[str]) -> list[str]:
    r = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n", *pkgs],
                       capture_output=True, text=True)
    installed = {ln.split()[0] for ln in r.stdout.splitlines() if ln.endswith(" installed")}
    return [p for p in pkgs if p not in installed]


def ensure_packages(pkgs: list[str], why: str) -> None:
    """Install the Debian packages of `pkgs` that are missing (from the
    host's own apt sources), for `why`; an error saying so if that fails."""
    missing = missing_packages(pkgs)
    if not missing:
        return
    log.step(f"installing {' '.join(missing)} for {why}")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in ([*sudo, "apt-get", "update", "-q"],
                 [*sudo, "apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]):
        r = subprocess.run(argv, capture_output=True, text=True, env=env)
        if r.returncode:
            raise BpfpmError(f"{' '.join(argv)} failed ({r.returncode}), needed for {why}:\n"
                             f"{r.stderr.strip()[-2000:]}")
