"""`make series-check`: each patch of the series on its own, as a maintainer
checks a submission before applying it.

The patches of the chosen kernel (BPFPM_KERNEL) are applied one by one to a
pristine copy of its source (its own work tree in the cache, one per
kernel, never the build tree). After each one:
checkpatch --strict on that patch, then a W=1 build of the objects the
series touches (every directory holding a touched .c file, plus net/ipv4/
and net/mptcp/ for the headers) with the guest config, and of net/mptcp/
without CONFIG_BPF_SYSCALL (the series' stubs). A warning counts
against the patch only if it names a file of the series and was not there
before the patch. The table also gives the lines each patch adds to the
kernel proper (tools/, Documentation/ and selftests not counted: the
project's ≤ 650 line budget).

The full bzImage of the whole series is what every other target builds;
this check builds objects, so that eight steps cost minutes, not an hour.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

from . import build, kconfig, kernels, log, patches, results, source
from .errors import BpfpmError, DiskFull
from .paths import cache_dir

# name: (options switched off, directories built; None: all of _targets()).
# Without the BPF syscall net/mptcp/bpf.c is not built: net/mptcp/ then
# builds against the series' stubs.
CONFIGS = {"guest": ([], None), "no-bpf-syscall": (["BPF_SYSCALL"], ["net/mptcp/"])}
ALWAYS = ["net/ipv4/", "net/mptcp/"]
_WARNING = re.compile(r"^(\S+?):\d+:\d+: (warning|error): (.*)$")


def _kernel_proper(f: str) -> bool:
    return not f.startswith(("tools/", "Documentation/")) and "selftests" not in f


def kernel_lines(patch: Path) -> dict[str, int]:
    """Added lines per file, kernel proper only."""
    out: dict[str, int] = {}
    f = None
    for line in patch.read_text(errors="replace").splitlines():
        if line.startswith("+++ "):
            name = line[4:].split("\t")[0]
            f = name.split("/", 1)[1] if "/" in name else name
            if not _kernel_proper(f):
                f = None
        elif f and line.startswith("+"):
            out[f] = out.get(f, 0) + 1
    return out


def _checkpatch(tree: Path, patch: Path) -> str:
    r = subprocess.run(["perl", str(tree / "scripts/checkpatch.pl"), "--strict", "--no-tree",
                        "--terse", "--no-summary", str(patch)],
                       capture_output=True, text=True)
    return (r.stdout + r.stderr).strip()


def _targets(series: list[Path]) -> list[str]:
    dirs = set(ALWAYS)
    for p in series:
        for f in patches.touched_files(p):
            if f.endswith(".c") and _kernel_proper(f):
                dirs.add(str(Path(f).parent) + "/")
    return sorted(dirs)


def _configure(tree: Path, bdir: Path, disable: list[str], guest: Path, logf) -> None:
    """The guest config (kconfig.configure), or a copy of it with `disable`
    switched off and olddefconfig resolving what depends on them."""
    if not disable:
        kconfig.configure(tree, bdir, False, logf)
        return
    bdir.mkdir(parents=True, exist_ok=True)
    (bdir / ".config").write_text((guest / ".config").read_text())
    for argv in (["scripts/config", "--file", str(bdir / ".config"),
                  *[x for opt in disable for x in ("-d", opt)]],
                 ["make", f"O={bdir}", "olddefconfig"]):
        logf.write(f"$ {' '.join(argv)}\n")
        logf.flush()
        if subprocess.run(argv, cwd=tree, stdout=logf, stderr=subprocess.STDOUT).returncode:
            raise BpfpmError(f"configuring {bdir} failed; see {logf.name}")
    final = kconfig.parse((bdir / ".config").read_text())
    still = [o for o in disable if final.get(f"CONFIG_{o}", "n") != "n"]
    if still or final.get("CONFIG_MPTCP") != "y":
        raise BpfpmError(f"{bdir}/.config: {still or 'MPTCP'} not as needed; see {logf.name}")


def _make(tree: Path, bdir: Path, targets: list[str], logfile: Path) -> tuple[int, list[str]]:
    """build.make (progress, make's process group taken down on Ctrl-C, a
    full disk named) with W=1; make's status and the diagnostics it printed."""
    with open(logfile, "w") as f:
        try:
            build.make(tree, bdir, ["W=1", *targets], f, 0)
            rc = 0
        except DiskFull:
            raise
        except BpfpmError:
            rc = 1
    diags = []
    for line in logfile.read_text(errors="replace").splitlines():
        m = _WARNING.match(line)
        if m:
            diags.append(f"{m.group(1).removeprefix(str(tree) + '/')}: {m.group(2)}: {m.group(3)}")
    return rc, diags


def main(a) -> int:
    series = patches.series()
    if not series:
        raise BpfpmError("BPFPM_PATCHES=none: there is no series to check")
    run = results.new_run("series-check")
    src = source.resolve()
    kernel = kernels.current()
    work = cache_dir() / kernel.cache_name("series-check")
    tree = work / "tree"
    touched = {f for p in series for f in patches.touched_files(p)}
    targets = _targets(series)
    rows, failed = [], 0
    t0 = time.monotonic()
    with build.BuildLock():
        log.step(f"series check of kernel {kernel.name}: {len(series)} patches on "
                 f"{src.description}; "
                 f"W=1 objects in {' '.join(targets)}; logs in {run}")
        build.stamp_changes(tree, build.sync_tree(src, tree))
        before: dict[str, set[str]] = {}
        for name, (variant, dirs) in CONFIGS.items():
            bdir = work / f"build-{name}"
            with open(run / f"configure-{name}.log", "w") as logf:
                _configure(tree, bdir, variant, work / "build-guest", logf)
            log.step(f"[{name}] the source without the series (the baseline's warnings)")
            rc, diags = _make(tree, bdir, dirs or targets, run / f"00-{name}.log")
            if rc:
                raise BpfpmError(f"the pristine source does not build ({name}); "
                                 f"see {run / f'00-{name}.log'}")
            before[name] = {d for d in diags if d.split(":", 1)[0] in touched}
        for i, p in enumerate(series, 1):
            build.stamp_changes(tree, patches.apply(tree, [p]))
            cp = _checkpatch(tree, p)
            lines = kernel_lines(p)
            row = {"patch": p.name, "kernel_lines": sum(lines.values()), "files": lines,
                   "checkpatch": cp.splitlines(), "builds": {}}
            for name, (_, dirs) in CONFIGS.items():
                bdir = work / f"build-{name}"
                logfile = run / f"{i:02d}-{name}.log"
                t = time.monotonic()
                rc, diags = _make(tree, bdir, dirs or targets, logfile)
                new = sorted({d for d in diags if d.split(":", 1)[0] in touched} - before[name])
                row["builds"][name] = {"rc": rc, "new_warnings": new, "log": str(logfile),
                                       "seconds": round(time.monotonic() - t, 1)}
            bad = bool(cp) or any(b["rc"] or b["new_warnings"] for b in row["builds"].values())
            failed += bad
            log.step(f"{i}/{len(series)} {p.name}: +{row['kernel_lines']} lines, checkpatch "
                     f"{'clean' if not cp else f'{len(cp.splitlines())} reports'}, " +
                     ", ".join(f"{n} {'ok' if not b['rc'] and not b['new_warnings'] else 'FAIL'}"
                               f" ({b['seconds']:.0f}s)" for n, b in row["builds"].items()))
            for b in row["builds"].values():
                for w in b["new_warnings"]:
                    log.warn(f"  {w}")
            for c in cp.splitlines():
                log.warn(f"  {c}")
            rows.append(row)
    total = sum(r["kernel_lines"] for r in rows)
    (run / "series-check.json").write_text(json.dumps(rows, indent=2))
    table = ["| patch | + lines (kernel) | checkpatch --strict | " +
             " | ".join(f"W=1 {n}" for n in CONFIGS) + " |",
             "|---|---|---|" + "---|" * len(CONFIGS)]
    for r in rows:
        table.append(f"| {r['patch']} | {r['kernel_lines']} | "
                     f"{'clean' if not r['checkpatch'] else len(r['checkpatch'])} | " +
                     " | ".join("ok" if not b["rc"] and not b["new_warnings"] else
                                f"rc {b['rc']}, {len(b['new_warnings'])} new warnings"
                                for b in r["builds"].values()) + " |")
    table.append(f"| total | {total} | | |")
    (run / "series-check.md").write_text("\n".join(table) + "\n")
    results.finish_run(run)
    print("\n".join(table))
    log.step(f"series check done in {time.monotonic() - t0:.0f}s: "
             f"{'all patches clean' if not failed else f'{failed} patches with problems'}; "
             f"{run / 'series-check.md'}")
    return 1 if failed else 0
