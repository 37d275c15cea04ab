"""A run's results as KTAP version 1 (Documentation/dev-tools/ktap.rst), the
flat list kselftest prints, so kernel tooling and TAP readers can count it.

What goes where, and why:
- A test's diagnostics come before its result line, as the spec asks: the
  failure message, the end of the failure text, earlier failed attempts,
  the artifacts to look at.
- A test that passed only on rerun did pass, and every parser must go on
  reading it as "ok"; so it is "ok" with diagnostic data after " # " on the
  result line ("passed only after 1 rerun"), which is no directive: the
  spec's directives are SKIP, TODO, XFAIL, TIMEOUT and ERROR.
- Setup/teardown errors are "not ok ... # ERROR message", the spec's ERROR
  directive, so they stay apart from assertion failures.
- Nothing we print can be read as a line of another kind: names and
  result-line data carry no "#" (kunit_parser.py takes "# SKIP" anywhere on
  the line as a skip) and no line breaks; quoted lines cannot look like a
  "# Subtest:" header, nor like the console lines at which kunit.py stops
  reading.
"""

from __future__ import annotations

import re

TAIL_LINES = 30     # of a failure's full text, shown before its result line
MAX_LINE = 400      # characters of one quoted line; past that it is cut

_SPACE = re.compile(r"\s+")                 # newlines, tabs, \u2028...: all of them
_CTRL = re.compile(r"[\x00-\x1f\x7f]")
# kunit.py (tools/testing/kunit/kunit_parser.py, KTAP_END) stops reading a log
# at these; a guest's panic quoted in a diagnostic must not end our report.
_KUNIT_END = {"List of all partitions:": "list of all partitions:",
              "Kernel panic - not syncing: VFS:": "kernel panic - not syncing: VFS:",
              "reboot: System halted": "reboot: system halted"}
_TOTALS = re.compile(r"^# Totals: (.*)$", re.MULTILINE)


def _quote(line: str, limit: int = MAX_LINE) -> str:
    """One line of someone else's text, made safe to print after "#"."""
    line = _CTRL.sub("", line.expandtabs(8)).rstrip()
    for bad, good in _KUNIT_END.items():
        line = line.replace(bad, good)
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _line(text: str, limit: int = MAX_LINE) -> str:
    """Text of any length folded into one line: a diagnostic's."""
    return _quote(_SPACE.sub(" ", text).strip(), limit)


def _flat(text: str, limit: int = MAX_LINE) -> str:
    """Text for a result line: one line, no "#"."""
    return _line(text.replace("#", "_"), limit)


def name(nodeid: str) -> str:
    """The KTAP test name of a pytest node id: the node id, readable, but with
    neither "#" (it would start a directive) nor line breaks."""
    return _flat(nodeid, limit=10_000) or "unnamed"


def _short(nodeid: str) -> str:
    """The test function and its parameters: enough to tag diagnostics."""
    return name(nodeid.rsplit("::", 1)[-1])


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _diagnostics(rec: dict) -> list[str]:
    tag = _short(rec["nodeid"])
    outcome = rec.get("outcome")
    reruns = rec.get("reruns") or 0
    bad = outcome not in ("passed", "skipped")
    out = []
    if bad:
        out.append(f"# {tag}: {outcome}: {_line(rec.get('message') or '(no message)')}")
    if reruns:
        reasons = _line("; ".join(str(r) for r in rec.get("rerun_reasons") or []))
        out.append(f"# {tag}: {_plural(reruns, 'earlier attempt')} failed"
                   + (f": {reasons}" if reasons else ""))
    if bad:
        lines = (rec.get("longrepr") or "").splitlines()
        if len(lines) > TAIL_LINES:
            out.append(f"#   [{len(lines) - TAIL_LINES} earlier lines cut]")
        out += [f"#   {_quote(ln)}".rstrip() for ln in lines[-TAIL_LINES:]]
    if bad or reruns:
        for kind, path in (rec.get("files") or {}).items():
            out.append(f"# {tag}: {_line(str(kind))}: {_line(str(path))}")
    return out


def _result(n: int, rec: dict) -> str:
    """The result line; unknown outcomes are errors, never passes."""
    outcome = rec.get("outcome")
    reruns = rec.get("reruns") or 0
    line = name(rec["nodeid"])
    if outcome == "passed":
        if not reruns:
            return f"ok {n} {line}"
        known = " (known flaky)" if rec.get("flaky") else ""
        return f"ok {n} {line} # passed only after {_plural(reruns, 'rerun')}{known}"
    if outcome == "skipped":
        return f"ok {n} {line} # SKIP {_flat(rec.get('message') or '')}".rstrip()
    if outcome == "failed":
        return f"not ok {n} {line}" + (f" # failed after {_plural(reruns, 'rerun')}"
                                       if reruns else "")
    why = (rec.get("message") or "") if outcome == "error" else f"unknown outcome {outcome!r}"
    return f"not ok {n} {line} # ERROR {_flat(why)}".rstrip()


def counts(records: list[dict]) -> dict[str, int]:
    """pass/fail/skip/error as kselftest counts them (a pass on rerun is a
    pass), plus reruns (attempts rerun), rerun_tests and passed_on_rerun."""
    c = dict.fromkeys(("pass", "fail", "xfail", "xpass", "skip", "error",
                       "reruns", "rerun_tests", "passed_on_rerun"), 0)
    key = {"passed": "pass", "failed": "fail", "skipped": "skip"}
    for rec in records:
        c[key.get(rec.get("outcome"), "error")] += 1
        reruns = rec.get("reruns") or 0
        if reruns:
            c["reruns"] += reruns
            c["rerun_tests"] += 1
            c["passed_on_rerun"] += rec.get("outcome") == "passed"
    return c


def render(records: list[dict], title: str = "bpfpm") -> str:
    """KTAP version 1 for `records` (tests.jsonl lines), in the given order."""
    out = ["KTAP version 1", f"1..{len(records)}"]
    if title:
        out.append(f"# {_line(title)}")
    for n, rec in enumerate(records, 1):
        out += _diagnostics(rec)
        out.append(_result(n, rec))
    c = counts(records)
    out.append("# Totals: " + " ".join(f"{k}:{c[k]}" for k in
                                       ("pass", "fail", "xfail", "xpass", "skip", "error")))
    out.append(f"# Reruns: {c['reruns']} ({_plural(c['rerun_tests'], 'test')} rerun, "
               f"{c['passed_on_rerun']} passed only after rerun)")
    return "\n".join(out) + "\n"


def parse_totals(text: str) -> dict[str, int]:
    """The counts of the last "# Totals:" line of a KTAP text ({} if none)."""
    found = _TOTALS.findall(text)
    if not found:
        return {}
    return {k: int(v) for k, v in (f.split(":", 1) for f in found[-1].split())}
