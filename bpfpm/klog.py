"""Kernel log checks: find splats in the lines a test produced.

Anything matching SPLATS fails the test that produced it. A report is the
splat with its trace, decoded with scripts/decode_stacktrace.sh against the
build's vmlinux when that is available.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path

# (name, pattern): the first line of a report of that kind.
SPLATS: list[tuple[str, re.Pattern]] = [(n, re.compile(p)) for n, p in [
    ("warning", r"WARNING: (CPU: \d+ PID: \d+ at|.* at )"),
    ("bug", r"\bBUG: "),
    ("oops", r"\bOops: |\bOops\b.*PREEMPT"),
    ("panic", r"Kernel panic - not syncing"),
    ("kasan", r"BUG: KASAN: |KASAN: "),
    ("ubsan", r"UBSAN: "),
    ("lockdep", r"WARNING: (possible circular locking|possible recursive locking|"
                r"inconsistent lock state|suspicious RCU usage|lock held when returning|"
                r"bad unlock balance|held lock freed)|INFO: possible irq lock inversion"),
    ("kmemleak", r"kmemleak: \d+ new suspected memory leaks|unreferenced object 0x"),
    ("hung_task", r"INFO: task .* blocked for more than \d+ seconds"),
    ("rcu_stall", r"rcu: INFO: rcu_(sched|preempt) (self-)?detected stall|"
                  r"rcu_(sched|preempt) kthread starved"),
    ("soft_lockup", r"watchdog: BUG: soft lockup"),
    ("refcount", r"refcount_t: (underflow|saturated|addition on 0)"),
    ("sleep_in_atomic", r"BUG: sleeping function called from invalid context"),
]]

# Timestamps, e.g. "[   12.345678] ".
_TS = re.compile(r"^\[\s*\d+\.\d+\]\s?")
_TRACE_END = re.compile(r"---\[ end (trace|Kernel panic)")


@dataclasses.dataclass
class Splat:
    kind: str
    first_line: str
    text: str

    def __str__(self) -> str:
        return f"kernel {self.kind}: {self.first_line}\n{self.text}"


def scan(text: str, max_lines: int = 80) -> list[Splat]:
    """Return every splat in `text`, each with its following trace lines."""
    lines = text.splitlines()
    out: list[Splat] = []
    i = 0
    while i < len(lines):
        bare = _TS.sub("", lines[i])
        hit = next((name for name, pat in SPLATS if pat.search(bare)), None)
        if hit is None:
            i += 1
            continue
        # lockdep reports start with a WARNING line too: prefer the specific kind.
        for name, pat in SPLATS:
            if name in ("lockdep", "kasan", "sleep_in_atomic") and pat.search(bare):
                hit = name
        j = i + 1
        while j < len(lines) and j - i < max_lines:
            if _TRACE_END.search(lines[j]):
                j += 1
                break
            if any(p.search(_TS.sub("", lines[j])) for _, p in SPLATS) and j - i > 3:
                break
            j += 1
        out.append(Splat(hit, bare.strip(), "\n".join(lines[i:j])))
        i = j
    return out


def between(text: str, start_mark: str, end_mark: str | None) -> str:
    """The part of a kernel log after start_mark and before end_mark."""
    i = text.find(start_mark)
    if i < 0:
        return text if end_mark is None else ""
    i = text.find("\n", i) + 1
    if end_mark is None:
        return text[i:]
    j = text.find(end_mark, i)
    if j < 0:
        return text[i:]
    return text[i:text.rfind("\n", i, j) + 1]


def decode(text: str, vmlinux: Path, src: Path) -> str:
    """Resolve addresses with decode_stacktrace.sh; the raw text on failure."""
    script = src / "scripts" / "decode_stacktrace.sh"
    if not (script.exists() and vmlinux.exists()):
        return text
    try:
        r = subprocess.run([str(script), str(vmlinux), str(src)], input=text,
                           capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return text
    return r.stdout if r.returncode == 0 and r.stdout.strip() else text
