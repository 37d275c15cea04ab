"""bisect-step verdicts: only a real pass or a real test failure judge a commit."""

import pytest

from bpfpm.bisect import SKIP, Abort, verdict


def junit(tmp_path, *messages):
    cases = "".join(f'<testcase name="t{i}"><failure message="{m}">x</failure></testcase>'
                    for i, m in enumerate(messages))
    p = tmp_path / "junit.xml"
    p.write_text(f'<testsuites><testsuite>{cases}</testsuite></testsuites>')
    return p


def test_pass_and_test_failure_are_verdicts(tmp_path):
    assert verdict(0) == 0
    assert verdict(1, junit(tmp_path, "AssertionError: 2 subflows, expected 4")) == 1
    assert verdict(1, junit(tmp_path, "bpfpm.errors.GuestCrashed: guest1 crashed")) == 1


@pytest.mark.parametrize("rc", [2, 3, 4, 5, 137])
def test_usage_collection_and_interrupts_stop_the_bisection(rc):
    with pytest.raises(Abort) as e:
        verdict(rc)
    assert e.value.exit_code >= 128


def test_a_kernel_that_does_not_boot_is_skipped(tmp_path):
    j = junit(tmp_path, "failed on setup with bpfpm.errors.BootFailed: guest1: not reachable",
              "bpfpm.errors.BootFailed: not booting again")
    assert verdict(1, j) == SKIP


def test_a_lost_channel_is_no_verdict(tmp_path):
    with pytest.raises(Abort):
        verdict(1, junit(tmp_path, "AssertionError: x", "bpfpm.errors.GuestFrozen: no heartbeat"))


def test_a_killed_qemu_is_no_verdict(tmp_path):
    with pytest.raises(Abort):
        verdict(1, junit(tmp_path, "bpfpm.errors.QemuExited: QEMU (pid 3) has exited"))
