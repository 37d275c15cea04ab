"""The kernel patch series: kernel/patches/<kernel>/series + *.patch, for
the kernel BPFPM_KERNEL chooses (bpfpm.kernels)."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path

from . import cache, kernels, log
from .errors import BpfpmError
from .kernels import Kernel


def series_dir(kernel: Kernel | None = None) -> Path:
    return (kernel or kernels.current()).series_dir


def series(kernel: Kernel | None = None) -> list[Path]:
    """Patches in order; empty when disabled with BPFPM_PATCHES=none. The
    files in BPFPM_EXTRA_PATCHES (':'-separated) go on top (mutations)."""
    if os.environ.get("BPFPM_PATCHES", "") == "none":
        return []
    kernel = kernel or kernels.current()
    d = series_dir(kernel)
    if not (d / "series").is_file():
        have = [k for k in kernels.KERNELS if (series_dir(kernels.get(k)) / "series").is_file()]
        raise BpfpmError(f"kernel {kernel.name} has no patch series: {d / 'series'} does not "
                         f"exist (kernels with a series: {', '.join(have) or 'none'}); "
                         "BPFPM_PATCHES=none builds the kernel without one")
    out = []
    for line in (d / "series").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            p = d / line
            if not p.exists():
                raise BpfpmError(f"{d / 'series'} lists {line}, which does not exist")
            out.append(p)
    for extra in filter(None, os.environ.get("BPFPM_EXTRA_PATCHES", "").split(":")):
        p = Path(extra).resolve()
        if not p.is_file():
            raise BpfpmError(f"BPFPM_EXTRA_PATCHES: {extra} is not a file")
        out.append(p)
    return out


def series_key(patches: list[Path]) -> str:
    h = hashlib.sha256()
    for p in patches:
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def touched_files(patch: Path) -> list[str]:
    files = []
    for line in patch.read_text(errors="replace").splitlines():
        if line.startswith("+++ "):
            name = line[4:].split("\t")[0].strip()
            if name != "/dev/null":
                files.append(name.split("/", 1)[1] if "/" in name else name)
    return files


def _patch(tree: Path, patch: Path, *extra: str) -> subprocess.CompletedProcess:
    """patch(1) with fuzz 0, as quilt does: a hunk whose context does not
    match exactly is refused rather than put at a guessed place."""
    return subprocess.run(["patch", "-p1", "-F0", "--batch", "--no-backup-if-mismatch",
                           "-r", "-", *extra, "-i", str(patch)],
                          cwd=tree, capture_output=True, text=True)


def already_applied(tree: Path, patches: list[Path]) -> bool:
    """True when the tree already carries the series (a developer's tree):
    the last patch reverts cleanly and no patch applies. The reverse alone
    is not enough: a patch that only deletes lines (a mutation) also
    "reverts" on a tree that never had it."""
    if not patches:
        return False
    if _patch(tree, patches[-1], "-R", "--dry-run", "--force").returncode != 0:
        return False
    return all(_patch(tree, p, "--dry-run", "--forward").returncode != 0 for p in patches)


def failure_report(patch: Path, output: str) -> str:
    current = None
    failed = []
    for line in output.splitlines():
        m = re.match(r"patching file (\S+)", line)
        if m:
            current = m.group(1)
        if "FAILED" in line or "can't find file" in line or "Reversed" in line:
            failed.append(f"{current}: {line.strip()}")
    detail = "\n  ".join(failed) or output.strip()[-800:]
    return (f"patch {patch.name} does not apply:\n  {detail}\n"
            f"refresh it against this tree (quilt refresh / git format-patch) "
            f"or check the base in {patch.parent / 'series'}")


def apply(tree: Path, patches: list[Path]) -> list[str]:
    """Apply the series to the work tree; the files it touched."""
    touched: set[str] = set()
    for p in patches:
        r = _patch(tree, p, "--forward")
        if r.returncode != 0:
            if cache.says_no_space(r.stdout + r.stderr):
                raise cache.no_space()
            raise BpfpmError(failure_report(p, r.stdout + r.stderr))
        touched.update(touched_files(p))
    if patches:
        log.step(f"applied {len(patches)} patches ({len(touched)} files)")
    return sorted(touched)
