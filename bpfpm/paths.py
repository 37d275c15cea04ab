"""Where bpfpm keeps things: the checkout, the content-keyed cache, runs."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KERNEL_DIR = ROOT / "kernel"
PMS_DIR = ROOT / "bpf-pms"


def cache_dir() -> Path:
    """Build cache outside the checkout; BPFPM_CACHE overrides."""
    env = os.environ.get("BPFPM_CACHE")
    if env:
        d = Path(env)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        d = Path(base) / "bpfpm"
    d.mkdir(parents=True, exist_ok=True)
    return d


def results_root() -> Path:
    return Path(os.environ.get("BPFPM_RESULTS", ROOT / "results"))
