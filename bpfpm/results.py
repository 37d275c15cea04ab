"""Run directories: results/<run>/ with results/latest pointing at the newest."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .paths import results_root


def new_run(label: str = "run") -> Path:
    root = results_root()
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run = root / f"{stamp}-{label}"
    n = 1
    while run.exists():
        n += 1
        run = root / f"{stamp}-{label}-{n}"
    run.mkdir()
    latest = root / "latest"
    tmp = root / f".latest-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run.name)
    os.replace(tmp, latest)
    return run


def current_run(label: str = "pytest") -> Path:
    """The run dir chosen by `bpfpm test` (BPFPM_RUN_DIR), or a new one."""
    env = os.environ.get("BPFPM_RUN_DIR")
    if env:
        p = Path(env)
        p.mkdir(parents=True, exist_ok=True)
        return p
    run = new_run(label)
    os.environ["BPFPM_RUN_DIR"] = str(run)
    return run


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")
