"""Run directories: results/<run>/, and results/latest naming the last run
that finished (a run still going, or two at once, never moves it early)."""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path

from .paths import results_root


def new_run(label: str = "run") -> Path:
    root = results_root()
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run = root / f"{stamp}-{label}"
    n = 1
    while True:
        try:
            run.mkdir()             # not exists() then mkdir(): runs start at once
            return run
        except FileExistsError:
            n += 1
            run = root / f"{stamp}-{label}-{n}"


def finish_run(run: Path) -> None:
    """Point results/latest at `run`, now that it is over: a symlink under a
    unique temp name, renamed over the old one (atomic, last finisher wins)."""
    root = results_root()
    same = run.parent.resolve() == root.resolve()
    target = run.name if same else str(run.resolve())
    while True:
        tmp = root / f".latest-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            tmp.symlink_to(target)
            break
        except FileExistsError:
            continue
    try:
        os.replace(tmp, root / "latest")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def current_run(label: str = "pytest") -> Path:
    """The run dir chosen by `bpfpm test` (BPFPM_RUN_DIR), or a new one
    (whose creator calls finish_run at its end)."""
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


def run_root() -> Path:
    """The run directory of this test session (`bpfpm test` names it in
    BPFPM_RUN_DIR; pytest-xdist's workers inherit it)."""
    return current_run()


def worker_dir() -> Path:
    """Where this process's guests keep their files: the run directory, or
    under pytest-xdist a subdirectory per worker (gw0, gw1...), so that two
    workers' guest1 never meet."""
    run = run_root()
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return run
    d = run / worker
    d.mkdir(exist_ok=True)
    return d


# what each worker appends to, joined into the run directory at the end
WORKER_FILES = ("failures.jsonl", "measurements.jsonl", "calls.jsonl", "boots.jsonl")


def merge_worker_files(run: Path) -> None:
    """The workers' jsonl files appended to the run directory's own, each
    line tagged with its worker."""
    for name in WORKER_FILES:
        parts = sorted(run.glob(f"gw*/{name}"))
        if not parts:
            continue
        with open(run / name, "a") as out:
            for part in parts:
                for line in part.read_text().splitlines():
                    if line.strip():
                        out.write(json.dumps(json.loads(line) | {"worker": part.parent.name})
                                  + "\n")


def kernel_info(run: Path) -> dict:
    """The kernel the run's guests booted (kernel.json), or {} for a run
    without guests."""
    for p in [run / "kernel.json", *sorted(run.glob("gw*/kernel.json"))]:
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError):
            continue
    return {}
