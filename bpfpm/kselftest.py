"""`make kselftest`: upstream MPTCP selftests, unpatched vs patched kernel.

Both kernels come from the same source; the selftests are built from that
source (kselftest `install`) against the build's exported headers and run
in the guest, each script under `timeout`. A script may carry arguments
("mptcp_join.sh -f -s": only those groups). Results are compared script by
script and, from the scripts' own TAP output, subtest by subtest. The exit
status is 1 when the patched kernel fails anything the unpatched one passes.
"""

from __future__ import annotations

import concurrent.futures
import re
import shlex
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from . import log, results
from .errors import BpfpmError
from .paths import cache_dir

if TYPE_CHECKING:
    from .build import KernelBuild

# Scripts run by default, fastest first. mptcp_join.sh (~170 subtests) and
# simult_flows.sh take well over an hour each under TCG; name them (or some
# mptcp_join.sh groups, e.g. "mptcp_join.sh -f -s -r") with --scripts.
DEFAULT = ["pm_netlink.sh", "diag.sh", "mptcp_sockopt.sh", "userspace_pm.sh",
           "mptcp_connect.sh"]
SCRIPT_TIMEOUT = 5400
KSFT_SKIP = 4
# the scripts' own TAP lines: "ok 3 - mptcp_join: single subflow # time=..."
_SUBTEST = re.compile(r"^(not ok|ok) \d+ - (.*?)(?: # (SKIP|TODO|time=)\S*.*)?$")


def install(kb: KernelBuild, label: str) -> Path:
    from .build import make_env
    out = cache_dir() / "kselftest" / label
    hdr = out.parent / f"{label}-headers"    # kernels/<key>/ is never written to
    logf = out.parent / f"{label}.log"
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


def _verdict(rc: int) -> str:
    return {0: "pass", KSFT_SKIP: "skip", 124: "timeout"}.get(rc, "fail")


def _file(script: str) -> str:
    return re.sub(r"[^\w.-]+", "_", script)


def prepare(patched: bool) -> tuple[KernelBuild, Path]:
    from . import build
    label = "patched" if patched else "unpatched"
    kb = build.build(patched=patched)
    return kb, install(kb, label) / "net" / "mptcp"


def run_variant(patched: bool, scripts: list[str], run: Path, cpus: int = 2) -> dict[str, dict]:
    from . import session
    label = "patched" if patched else "unpatched"
    kb, inst = prepare(patched)
    out: dict[str, dict] = {}
    with session.boot(kb, run, name=f"kselftest-{label}", memory="2G", cpus=cpus) as vm:
        for s in scripts:
            t0 = time.monotonic()
            log.step(f"[{label}] {s} ...")
            res = vm.run(f"cd {shlex.quote(str(inst))} && timeout {SCRIPT_TIMEOUT} ./{s}",
                         timeout=SCRIPT_TIMEOUT + 120, check=False)
            tap = res.stdout + res.stderr
            (run / f"{label}-{_file(s)}.log").write_text(tap)
            sub = subtests(res.stdout)
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
    if a.parallel:
        # both kernels built first (one build at a time), then two one-vCPU
        # guests side by side: each script's wall time roughly halves, and
        # both kernels see the same host load
        prepare(False)
        prepare(True)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            jobs = [pool.submit(run_variant, p, scripts, run, 1) for p in (False, True)]
            plain, patched = (j.result() for j in jobs)
    else:
        plain = run_variant(False, scripts, run)
        patched = run_variant(True, scripts, run)
    w = max(24, *(len(s) for s in scripts))
    print(f"\n{'script':{w}} {'unpatched':>14} {'patched':>14}   (verdict, subtests passed)")
    for s in scripts:
        print(f"{s:{w}} {_cell(plain[s]):>14} {_cell(patched[s]):>14}")
    regressions = compare(plain, patched)
    results.write_json(run / "kselftest.json", {"unpatched": plain, "patched": patched,
                                                "regressions": regressions})
    if regressions:
        log.error("patched kernel fails what the unpatched one passes:\n  "
                  + "\n  ".join(regressions) + f"\nlogs in {run}")
        return 1
    log.step(f"patched == unpatched or better on every script and subtest; logs in {run}")
    return 0
