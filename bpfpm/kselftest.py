"""`make kselftest`: upstream MPTCP and BPF selftests, unpatched vs patched kernel.

Both kernels come from the same source (that of the kernel BPFPM_KERNEL
chooses; the patched one with its series); the selftests are built from
that source (kselftest `install`) against the build's exported headers, in
a cache dir per kernel, and run in the guest, each script under `timeout`.
"test_progs" is the subset of selftests/bpf in BPF_TESTS, built per kernel
against its vmlinux (from the pristine source plus, for the patched
kernel, the series' tools/ hunks). A script may carry arguments
("mptcp_join.sh -f -s": only those groups). Results are compared script by
script and, from the scripts' own TAP output, subtest by subtest. The exit
status is 1 when the patched kernel fails anything the unpatched one passes.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import re
import shutil
import shlex
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from . import kernels, log, results
from .errors import BpfpmError
from .paths import cache_dir

if TYPE_CHECKING:
    from .build import KernelBuild

# The BPF selftests that cover what the series touches: sock_ops programs
# (ops, fields, reply, helpers), MPTCP from BPF, the dumped struct
# bpf_sock_ops and the verifier's context checks. Built as a subset of
# selftests/bpf (the whole of test_progs is ~900 programs), with clang-19.
# Not here: setget_sockopt and verifier_sock, which cannot load on the guest
# config (an LSM program: CONFIG_BPF_LSM; an XSKMAP: CONFIG_XDP_SOCKETS).
BPF_TESTS = ["mptcp", "tcpbpf_user", "tcp_hdr_options", "tcp_rtt", "socket_cookie",
             "netns_cookie", "cgrp_local_storage", "btf_dump", "ctx_rewrite", "verifier_ctx"]
BPF_LLVM = "19"
BPF_PACKAGES = [f"clang-{BPF_LLVM}", f"llvm-{BPF_LLVM}", "libelf-dev", "zlib1g-dev"]
TEST_PROGS = "test_progs"

# Scripts run by default, fastest first. mptcp_join.sh (~170 subtests) and
# simult_flows.sh take well over an hour each under TCG; name them (or some
# mptcp_join.sh groups, e.g. "mptcp_join.sh -f -s -r") with --scripts.
DEFAULT = ["pm_netlink.sh", "diag.sh", "mptcp_sockopt.sh", "userspace_pm.sh",
           "mptcp_connect.sh", TEST_PROGS]
SCRIPT_TIMEOUT = 5400
KSFT_SKIP = 4
# the scripts' own TAP lines: "ok 3 - mptcp_join: single subflow # time=..."
_SUBTEST = re.compile(r"^(not ok|ok) \d+ - (.*?)(?: # (SKIP|TODO|time=)\S*.*)?$")


def install(kb: KernelBuild, label: str) -> Path:
    from .build import make_env
    name = kernels.current().cache_name(label)      # patched, patched-7.2...
    out = cache_dir() / "kselftest" / name
    hdr = out.parent / f"{name}-headers"     # kernels/<key>/ is never written to
    logf = out.parent / f"{name}.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(logf, "w") as f:
        steps = [
            ["make", "-C", str(kb.src_dir), f"O={hdr}", "headers_install"],
            ["make", "-C", str(kb.src_dir / "tools/testing/selftests"), "TARGETS=net/mptcp",
             f"KHDR_INCLUDES=-isystem {hdr}/usr/include",
             f"INSTALL_PATH={out}", "install"],
        ]
        for argv in steps:
            f.write(f"$ {shlex.join(argv)}\n")
            f.flush()
            r = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env=make_env())
            if r.returncode:
                raise BpfpmError(f"building the MPTCP selftests failed; see {logf}")
    return out


def _tools_hunks(patch: Path) -> str:
    """The parts of a patch that touch tools/ (selftests, the UAPI copy)."""
    parts = re.split(r"(?m)^(?=diff --git )", patch.read_text())
    return "".join(p for p in parts[1:] if p.startswith("diff --git a/tools/"))


def _bpf_subset_source(src: Path, series: list[Path], dst: Path) -> Path:
    """selftests/bpf of `src` (+ the series' tools/ hunks) reduced to
    BPF_TESTS, in a scratch tree: tools/ and kernel/bpf/ copied, the rest
    linked read-only to the pristine source."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for d in ("tools", "kernel/bpf"):
        (dst / d).parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src / d, dst / d, symlinks=True)
    for d in ("include", "scripts", "arch", "Makefile"):
        (dst / d).symlink_to(src / d)
    for p in series:
        hunks = _tools_hunks(p)
        if hunks:
            r = subprocess.run(["patch", "-p1", "--forward", "-d", str(dst)], input=hunks,
                               text=True, capture_output=True)
            if r.returncode:
                raise BpfpmError(f"{p.name}: its tools/ part does not apply:\n{r.stdout}")
    sel = dst / "tools/testing/selftests/bpf"
    tests = {t for t in BPF_TESTS if not t.startswith("verifier_")}
    verifier = [t for t in BPF_TESTS if t.startswith("verifier_")]
    keep_progs = set(verifier)
    for f in (sel / "prog_tests").glob("*.c"):
        name = f.stem
        if name in tests:
            text = f.read_text()
            keep_progs.update(re.findall(r'#include "(\w+)\.(?:l?skel)\.h"', text))
            keep_progs.update(re.findall(r'"(\w+)\.bpf\.o"', text))
            keep_progs.update(re.findall(r'"(btf_dump_test_case_\w+)"', text))
        elif name != "verifier" or not verifier:
            f.unlink()
    if verifier:
        _prune_verifier(sel / "prog_tests/verifier.c", verifier)
    for f in (sel / "progs").glob("*.c"):
        if f.stem not in keep_progs:
            f.unlink()
    return sel


def _prune_verifier(path: Path, keep: list[str]) -> None:
    """prog_tests/verifier.c with only the RUN() lines of `keep`."""
    out = []
    head = True
    for line in path.read_text().splitlines():
        m = re.match(r'#include "(\w+)\.skel\.h"', line)     # 7.2 has irq.skel.h too
        if m and m.group(1) not in keep:
            continue
        if head:
            out.append(line)
            head = not line.startswith("#define RUN(")
            continue
        m = re.match(r"void test_(\w+)\(void\)\s*\{ RUN(?:_TESTS)?\((\w+)\); \}$", line)
        if m and m.group(2) in keep:
            out.append(line)
    path.unlink()               # a fresh file, never written through a link
    path.write_text("\n".join(out) + "\n")


def install_bpf(kb: KernelBuild, patched: bool) -> Path:
    """test_progs with BPF_TESTS, built for kernel `kb` (cached per kernel)."""
    from . import build, host, patches, source
    out = cache_dir() / "kselftest" / f"bpf-{kb.key}"
    binary = out / "out" / TEST_PROGS
    stamp = out / ("built-" + re.sub(r"\W", "_", ",".join(BPF_TESTS)))
    if binary.exists() and stamp.exists():
        return binary.parent
    host.ensure_packages(BPF_PACKAGES, why="building the BPF selftests")
    logf = out.parent / f"bpf-{kb.key}.log"
    sel = _bpf_subset_source(source.resolve().path, patches.series() if patched else [],
                             out / "src")
    llvm = BPF_LLVM
    # no light (signed or not) or linked skeletons, no libarena, no modules:
    # only what BPF_TESTS load; btf_dump compares its dumps with the C files
    # it was built from
    extra = [str(p.relative_to(sel)) for p in sorted(sel.glob("progs/btf_dump_test_case_*.c"))]
    argv = ["make", "-C", str(sel), f"OUTPUT={out / 'out'}", f"VMLINUX_BTF={kb.vmlinux}",
            f"CLANG=clang-{llvm}", f"LLC=llc-{llvm}", f"LLVM_STRIP=llvm-strip-{llvm}",
            f"LLVM_OBJCOPY=llvm-objcopy-{llvm}", "BPFTOOL_LLVM=", "LSKELS=", "LSKELS_EXTRA=",
            "LSKELS_SIGNED=", "LIBARENA_SKEL=", "LIBARENA_ASAN_SKEL=", "LINKED_SKELS=",
            "TRUNNER_EXTRA_FILES=" + " ".join(extra),
            f"-j{os.cpu_count() or 1}", str(binary)]
    (out / "out").mkdir(exist_ok=True)
    log.step(f"building test_progs ({len(BPF_TESTS)} tests) for {kb.key}; log {logf}")
    t0 = time.monotonic()
    with open(logf, "w") as f:
        f.write(f"$ {shlex.join(argv)}\n")
        f.flush()
        r = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env=build.make_env())
    if r.returncode:
        raise BpfpmError(f"building the BPF selftests failed; see {logf}")
    stamp.touch()
    log.step(f"test_progs built in {time.monotonic() - t0:.0f}s")
    return binary.parent


def subtests(tap: str) -> dict[str, str]:
    """name -> pass/fail/skip, from a script's TAP output (repeats numbered)."""
    out: dict[str, str] = {}
    for line in tap.splitlines():
        m = _SUBTEST.match(line.strip())
        if not m:
            continue
        name = m.group(2).strip()
        verdict = "skip" if m.group(3) == "SKIP" else ("pass" if m.group(1) == "ok" else "fail")
        key, n = name, 2
        while key in out:
            key, n = f"{name} #{n}", n + 1
        out[key] = verdict
    return out


_TEST_PROGS_LINE = re.compile(r"^#\d+(?:/\d+)?\s+(\S.*?):(OK|FAIL|SKIP)\b")


def test_progs_results(out: str) -> dict[str, str]:
    """name -> pass/fail/skip from test_progs' "#12/3 mptcp/base:OK" lines."""
    verdicts = {"OK": "pass", "FAIL": "fail", "SKIP": "skip"}
    return {m.group(1): verdicts[m.group(2)]
            for m in map(_TEST_PROGS_LINE.match, out.splitlines()) if m}


def _verdict(rc: int) -> str:
    return {0: "pass", KSFT_SKIP: "skip", 124: "timeout"}.get(rc, "fail")


def _file(script: str) -> str:
    return re.sub(r"[^\w.-]+", "_", script)


def prepare(patched: bool, scripts: list[str]) -> tuple[KernelBuild, Path, Path | None]:
    """The kernel, the installed MPTCP selftests, test_progs (if asked for)."""
    from . import build
    label = "patched" if patched else "unpatched"
    kb = build.build(patched=patched)
    bpf = install_bpf(kb, patched) if any(_is_bpf(s) for s in scripts) else None
    return kb, install(kb, label) / "net" / "mptcp", bpf


def _is_bpf(script: str) -> bool:
    return script.split()[0] == TEST_PROGS


def _command(script: str, mptcp: Path, bpf: Path | None) -> str:
    if _is_bpf(script):
        args = script.split()[1:] or ["-t", ",".join(BPF_TESTS)]
        return f"cd {shlex.quote(str(bpf))} && timeout {SCRIPT_TIMEOUT} ./{TEST_PROGS} " \
               + " ".join(shlex.quote(a) for a in args)
    return f"cd {shlex.quote(str(mptcp))} && timeout {SCRIPT_TIMEOUT} ./{script}"


# the guests running selftests, killed at once on an interrupt: the worker
# threads are blocked in long guest commands and would not see it
_GUESTS: set = set()
_GUESTS_LOCK = threading.Lock()


def _gather(jobs: list, what: str) -> list:
    """The jobs' results; on an interrupt every selftest guest is killed
    first, so that the workers return and nothing is left running."""
    try:
        return [j.result() for j in jobs]
    except KeyboardInterrupt:
        with _GUESTS_LOCK:
            guests = list(_GUESTS)
        log.warn(f"interrupted: killing {len(guests)} selftest guests ({what})")
        for vm in guests:
            vm.kill()
        for j in jobs:
            j.cancel()
        concurrent.futures.wait(jobs)
        raise


@contextlib.contextmanager
def _registered(vm):
    with _GUESTS_LOCK:
        _GUESTS.add(vm)
    try:
        yield
    finally:
        with _GUESTS_LOCK:
            _GUESTS.discard(vm)


def run_variant(patched: bool, scripts: list[str], run: Path, cpus: int = 2,
                guests: int = 1) -> dict[str, dict]:
    """The scripts on one kernel, spread over `guests` guests at once (the
    mptcp_join.sh groups wait on timers far more than they compute)."""
    kb, inst, bpf = prepare(patched, scripts)
    shares = [scripts[i::guests] for i in range(guests) if scripts[i::guests]]
    if len(shares) == 1:
        return _run_guest(patched, shares[0], run, cpus, kb, inst, bpf, "")
    out: dict[str, dict] = {}
    with concurrent.futures.ThreadPoolExecutor(len(shares)) as pool:
        jobs = [pool.submit(_run_guest, patched, share, run, cpus, kb, inst, bpf, f"-{i + 1}")
                for i, share in enumerate(shares)]
        for r in _gather(jobs, "patched" if patched else "unpatched"):
            out.update(r)
    return {s: out[s] for s in scripts}


def _run_guest(patched: bool, scripts: list[str], run: Path, cpus: int, kb, inst: Path,
               bpf: Path | None, suffix: str) -> dict[str, dict]:
    from . import session
    label = "patched" if patched else "unpatched"
    out: dict[str, dict] = {}
    with session.boot(kb, run, name=f"kselftest-{label}{suffix}", memory="2G",
                      cpus=cpus) as vm, _registered(vm):
        for s in scripts:
            t0 = time.monotonic()
            log.step(f"[{label}] {s} ...")
            res = vm.run(_command(s, inst, bpf), timeout=SCRIPT_TIMEOUT + 120, check=False)
            tap = res.stdout + res.stderr
            (run / f"{label}-{_file(s)}.log").write_text(tap)
            sub = (test_progs_results if _is_bpf(s) else subtests)(res.stdout)
            out[s] = {"verdict": _verdict(res.rc), "rc": res.rc,
                      "seconds": round(time.monotonic() - t0), "subtests": sub}
            fails = [k for k, v in sub.items() if v == "fail"]
            log.step(f"[{label}] {s}: {out[s]['verdict']} ({out[s]['seconds']}s; "
                     f"{len(sub)} subtests, {len(fails)} failed)")
    return out


def _cell(r: dict) -> str:
    sub = r["subtests"]
    if not sub:
        return r["verdict"]
    ok = sum(v == "pass" for v in sub.values())
    return f"{r['verdict']} {ok}/{len(sub)}"


def compare(plain: dict[str, dict], patched: dict[str, dict]) -> list[str]:
    """What the patched kernel fails that the unpatched one passes."""
    out = []
    for s in plain:
        a, b = plain[s], patched[s]
        if a["verdict"] == "pass" and b["verdict"] != "pass":
            out.append(f"{s}: {b['verdict']}")
        for name, v in a["subtests"].items():
            if v == "pass" and b["subtests"].get(name, "missing") != "pass":
                out.append(f"{s}: {name}: {b['subtests'].get(name, 'missing')}")
    return out


def main(a) -> int:
    from . import session
    with session.run_dir("kselftest") as run:
        return _main(a, run)


def _main(a, run) -> int:
    scripts = a.scripts or DEFAULT
    log.step(f"kernel {kernels.current().name}: {len(scripts)} selftest scripts, "
             "unpatched and patched")
    if a.parallel:
        # both kernels built first (one build at a time), then two one-vCPU
        # guests side by side: each script's wall time roughly halves, and
        # both kernels see the same host load
        prepare(False, scripts)
        prepare(True, scripts)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            jobs = [pool.submit(run_variant, p, scripts, run, 1, a.guests) for p in (False, True)]
            plain, patched = _gather(jobs, "both kernels")
    else:
        plain = run_variant(False, scripts, run, guests=a.guests)
        patched = run_variant(True, scripts, run, guests=a.guests)
    w = max(24, *(len(s) for s in scripts))
    print(f"\n{'script':{w}} {'unpatched':>14} {'patched':>14}   (verdict, subtests passed)")
    for s in scripts:
        print(f"{s:{w}} {_cell(plain[s]):>14} {_cell(patched[s]):>14}")
    regressions = compare(plain, patched)
    results.write_json(run / "kselftest.json", {"kernel": kernels.current().name,
                                                "unpatched": plain, "patched": patched,
                                                "regressions": regressions})
    if regressions:
        log.error("patched kernel fails what the unpatched one passes:\n  "
                  + "\n  ".join(regressions) + f"\nlogs in {run}")
        return 1
    log.step(f"patched == unpatched or better on every script and subtest; logs in {run}")
    return 0
