"""Reading the MPTCP selftests' TAP output and comparing two kernels."""

from bpfpm.kselftest import compare, subtests

JOIN = """\
# 001 no JOIN
ok 1 - mptcp_join: no JOIN # time=21808ms
ok 2 - mptcp_join: single subflow # time=31759ms
not ok 3 - mptcp_join: multiple subflows # time=30324ms
ok 4 - mptcp_join: userspace pm # SKIP ip mptcp not supported
ok 5 - mptcp_join: single subflow # time=1ms
"""


def result(verdict, tap=""):
    return {"verdict": verdict, "subtests": subtests(tap)}


def test_subtests_read_verdicts_and_number_repeats():
    assert subtests(JOIN) == {
        "mptcp_join: no JOIN": "pass",
        "mptcp_join: single subflow": "pass",
        "mptcp_join: multiple subflows": "fail",
        "mptcp_join: userspace pm": "skip",
        "mptcp_join: single subflow #2": "pass",
    }


def test_same_results_are_no_regression():
    assert compare({"j": result("fail", JOIN)}, {"j": result("fail", JOIN)}) == []


def test_subtest_passing_only_unpatched_is_a_regression():
    worse = JOIN.replace("ok 1 - mptcp_join: no JOIN", "not ok 1 - mptcp_join: no JOIN")
    assert compare({"j": result("fail", JOIN)}, {"j": result("fail", worse)}) == \
        ["j: mptcp_join: no JOIN: fail"]


def test_script_verdict_and_missing_subtests_count():
    assert compare({"d": result("pass")}, {"d": result("timeout")}) == ["d: timeout"]
    assert compare({"j": result("fail", JOIN)}, {"j": result("fail", "")})[0] == \
        "j: mptcp_join: no JOIN: missing"
