"""KTAP reports: what a KTAP reader (and the kernel's own) makes of them."""

import importlib
import re
import sys
from pathlib import Path

import pytest

from bpfpm import ktap


def rec(nodeid, outcome="passed", **kw):
    r = {"nodeid": nodeid, "outcome": outcome, "duration": 1.0, "start": 1765000000.5,
         "reruns": 0, "rerun_reasons": [], "message": "", "longrepr": "",
         "worker": None, "flaky": False, "files": {}}
    return r | kw


RUN = [
    rec("vmtests/test_hooks.py::test_created[ipv4]",
        files={"dmesg": "dmesg/created.log"}),
    rec("vmtests/test_hooks.py::test_closed", "failed", message="assert 1 == 2",
        longrepr="def test_closed():\n>       assert 1 == 2\nE       assert 1 == 2",
        files={"dmesg": "dmesg/closed.log", "pcap": "pcap/closed.pcap"}),
    rec("vmtests/test_hooks.py::test_flaky", reruns=1, rerun_reasons=["timeout"],
        flaky=True),
    rec("vmtests/test_hooks.py::test_v6", "skipped", message="no IPv6 in the guest"),
    rec("vmtests/test_hooks.py::test_splat", "error",
        message="kernel warning: WARNING: CPU: 1 PID: 42 at net/mptcp/pm.c:1",
        files={"console": "guest1.console.log"}),
    rec("vmtests/test_hooks.py::test_stuck", "failed", message="timed out",
        reruns=2, rerun_reasons=["timed out", "guest lost"]),
]

RESULT = re.compile(r"^(ok|not ok) (\d+) ")


def results(text):
    return [ln for ln in text.splitlines() if RESULT.match(ln)]


def test_header_plan_and_one_result_per_record_in_order():
    text = ktap.render(RUN)
    lines = text.splitlines()
    assert lines[:2] == ["KTAP version 1", "1..6"]
    assert [RESULT.match(ln).group(2) for ln in results(text)] == ["1", "2", "3", "4", "5", "6"]
    assert results(text)[0] == "ok 1 vmtests/test_hooks.py::test_created[ipv4]"


def test_totals_count_like_kselftest_and_a_line_counts_reruns():
    text = ktap.render(RUN)
    assert ktap.parse_totals(text) == {"pass": 2, "fail": 2, "xfail": 0, "xpass": 0,
                                       "skip": 1, "error": 1}
    assert "# Reruns: 3 (2 tests rerun, 1 passed only after rerun)" in text.splitlines()


def test_a_failure_is_explained_before_its_result_line():
    lines = ktap.render(RUN).splitlines()
    end = lines.index("not ok 2 vmtests/test_hooks.py::test_closed")
    start = lines.index("ok 1 vmtests/test_hooks.py::test_created[ipv4]") + 1
    diag = lines[start:end]
    assert diag and all(ln.startswith("#") for ln in diag)
    assert "# test_closed: failed: assert 1 == 2" in diag
    assert "#   >       assert 1 == 2" in diag          # indentation kept
    assert "# test_closed: dmesg: dmesg/closed.log" in diag
    assert "# test_closed: pcap: pcap/closed.pcap" in diag


def test_a_plain_pass_has_no_diagnostics():
    lines = ktap.render(RUN).splitlines()
    assert lines[3] == "ok 1 vmtests/test_hooks.py::test_created[ipv4]"
    assert lines[2] == "# bpfpm"


def test_long_failure_text_is_cut_to_its_end():
    longrepr = "\n".join(f"line {i}" for i in range(100))
    text = ktap.render([rec("t.py::test_long", "failed", longrepr=longrepr)])
    assert "#   [70 earlier lines cut]" in text
    assert "#   line 99" in text and "#   line 70" in text and "#   line 69" not in text


def test_pass_on_rerun_is_ok_but_never_plain():
    text = ktap.render(RUN)
    line = results(text)[2]
    assert line == ("ok 3 vmtests/test_hooks.py::test_flaky"
                    " # passed only after 1 rerun (known flaky)")
    # What follows " # " is diagnostic data, not a directive.
    data = line.split(" # ", 1)[1]
    assert data.split()[0].upper() not in ("SKIP", "TODO", "XFAIL", "TIMEOUT", "ERROR")
    lines = text.splitlines()
    assert lines[lines.index(line) - 1] == "# test_flaky: 1 earlier attempt failed: timeout"


def test_failure_after_reruns_says_so():
    text = ktap.render(RUN)
    assert results(text)[5] == "not ok 6 vmtests/test_hooks.py::test_stuck # failed after 2 reruns"
    assert "# test_stuck: 2 earlier attempts failed: timed out; guest lost" in text


def test_skip_and_error_directives():
    res = results(ktap.render(RUN))
    assert res[3] == "ok 4 vmtests/test_hooks.py::test_v6 # SKIP no IPv6 in the guest"
    assert res[4] == ("not ok 5 vmtests/test_hooks.py::test_splat"
                      " # ERROR kernel warning: WARNING: CPU: 1 PID: 42 at net/mptcp/pm.c:1")


def test_an_unknown_outcome_is_an_error_not_a_pass():
    text = ktap.render([rec("t.py::test_odd", "xpassed")])
    assert results(text) == ["not ok 1 t.py::test_odd # ERROR unknown outcome 'xpassed'"]
    assert ktap.parse_totals(text)["error"] == 1


def test_names_and_result_data_cannot_break_the_line():
    nasty = rec("t.py::test_x[a#b\nnot ok 9 fake\u2028ok 10 # SKIP]", "failed",
                message="boom # SKIP not really\nsecond line")
    text = ktap.render([nasty])
    (line,) = results(text)
    assert line == "not ok 1 t.py::test_x[a_b not ok 9 fake ok 10 _ SKIP]"
    assert len(text.splitlines()) == len(text.split("\n")) - 1    # no stray separators
    assert ktap.name("a  b\tc#d") == "a b c_d"
    skipped = results(ktap.render([rec("t.py::test_s", "skipped", message="x # y\nz")]))
    assert skipped == ["ok 1 t.py::test_s # SKIP x _ y z"]


def test_quoted_kernel_output_cannot_end_a_kunit_read():
    text = ktap.render([rec("t.py::test_boot", "error", message="guest did not boot",
                            longrepr="Kernel panic - not syncing: VFS: Unable to mount root fs"
                                     "\nreboot: System halted")])
    assert "Kernel panic - not syncing: VFS:" not in text
    assert "reboot: System halted" not in text
    assert "#   kernel panic - not syncing: VFS: Unable to mount root fs" in text


def test_no_records():
    text = ktap.render([])
    assert text.splitlines()[:2] == ["KTAP version 1", "1..0"]
    assert ktap.parse_totals(text)["pass"] == 0


def _kunit_parser():
    """The kernel tree's KTAP parser, from a source tree bpfpm unpacked."""
    cache = Path.home() / ".cache" / "bpfpm"
    found = sorted(cache.glob("source/*/linux/tools/testing/kunit/kunit_parser.py")) + \
        sorted(cache.glob("trees/*/tools/testing/kunit/kunit_parser.py"))
    if not found:
        pytest.skip(f"no kernel tree with tools/testing/kunit/kunit_parser.py under {cache}")
    sys.path.insert(0, str(found[0].parent))
    try:
        return importlib.import_module("kunit_parser")
    finally:
        sys.path.remove(str(found[0].parent))


def test_the_kernels_kunit_parser_reads_our_counts_and_names():
    kp = _kunit_parser()
    main = kp.parse_run_tests(ktap.render(RUN).splitlines(keepends=True))
    c = main.counts
    assert (c.passed, c.failed, c.skipped, c.crashed, c.errors) == (2, 3, 1, 0, 0)
    assert [t.name.strip() for t in main.subtests] == [ktap.name(r["nodeid"]) for r in RUN]
    ok = kp.TestStatus.SUCCESS
    assert main.subtests[2].status == ok                   # the pass on rerun
    assert main.subtests[3].status == kp.TestStatus.SKIPPED
