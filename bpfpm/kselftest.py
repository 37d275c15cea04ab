"""`make kselftest`: upstream MPTCP selftests, unpatched vs patched kernel.

Both kernels come from the same source; the selftests are built from that
source (kselftest `install`) against the build's exported headers and run
in the guest with run_kselftest.sh. Results are shown side by side; the
exit status is 1 when the patched kernel fails a script the unpatched one
passes.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import time
from pathlib import Path

from . import build, log, results
from .build import KernelBuild, _env
from .errors import BpfpmError
from .paths import cache_dir
from .vm import VM

# Scripts run by default, fastest first. mptcp_join.sh takes well over an
# hour under TCG; add it with --scripts when you have the time.
DEFAULT = ["pm_netlink.sh", "diag.sh", "mptcp_sockopt.sh", "userspace_pm.sh",
           "mptcp_connect.sh"]
_TAP = re.compile(r"^(not ok|ok) \d+ selftests: net/mptcp: (\S+)(.*)$")


def install(kb: KernelBuild, label: str) -> Path:
    out = cache_dir() / "kselftest" / label
    logf = out.parent / f"{label}.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(logf, "w") as f:
        steps = [
            ["make", "-C", str(kb.src_dir), f"O={kb.build_dir}", "headers_install"],
            ["make", "-C", str(kb.src_dir / "tools/testing/selftests"), "TARGETS=net/mptcp",
             f"KHDR_INCLUDES=-isystem {kb.build_dir}/usr/include",
             f"INSTALL_PATH={out}", "install"],
        ]
        for argv in steps:
            f.write(f"$ {shlex.join(argv)}\n")
            f.flush()
            r = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env=_env())
            if r.returncode:
                raise BpfpmError(f"building the MPTCP selftests failed; see {logf}")
    return out


def run_variant(patched: bool, scripts: list[str], run: Path) -> dict[str, str]:
    label = "patched" if patched else "unpatched"
    kb = build.build(patched=patched)
    inst = install(kb, label)
    verdicts: dict[str, str] = {}
    with VM(kb, run, name=f"kselftest-{label}", memory="2G") as vm:
        for s in scripts:
            t0 = time.monotonic()
            log.step(f"[{label}] {s} ...")
            res = vm.run(f"cd {shlex.quote(str(inst))} && ./run_kselftest.sh -t net/mptcp:{s}",
                         timeout=5400, check=False)
            (run / f"{label}-{s}.tap").write_text(res.stdout + res.stderr)
            v = "missing"
            for line in res.stdout.splitlines():
                m = _TAP.match(line.strip())
                if m and m.group(2) == s:
                    v = "pass" if m.group(1) == "ok" else "fail"
                    if "SKIP" in m.group(3):
                        v = "skip"
                    elif "TIMEOUT" in m.group(3):
                        v = "timeout"
            verdicts[s] = v
            log.step(f"[{label}] {s}: {v} ({time.monotonic() - t0:.0f}s)")
    return verdicts


def main(a) -> int:
    run = results.new_run("kselftest")
    scripts = a.scripts or DEFAULT
    plain = run_variant(False, scripts, run)
    patched = run_variant(True, scripts, run)
    print(f"\n{'script':24} {'unpatched':>10} {'patched':>10}")
    regressions = []
    for s in scripts:
        print(f"{s:24} {plain[s]:>10} {patched[s]:>10}")
        if plain[s] == "pass" and patched[s] != "pass":
            regressions.append(s)
    results.write_json(run / "kselftest.json", {"unpatched": plain, "patched": patched})
    if regressions:
        log.error(f"patched kernel regresses: {', '.join(regressions)} (TAP in {run})")
        return 1
    return 0
