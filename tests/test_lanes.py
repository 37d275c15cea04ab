"""bpfpm.lanes: which worker of `make test` runs which test."""

from pathlib import Path

from bpfpm import lanes

ROOT = Path(__file__).resolve().parent.parent


def test_every_path_the_first_lane_names_exists():
    # a renamed file would silently move to the other lane
    for prefix in lanes.FIRST:
        assert (ROOT / prefix).exists(), f"bpfpm.lanes.FIRST names {prefix}: no such file"


def test_the_self_tests_and_the_scenarios_are_on_different_lanes():
    assert lanes.lane("vmtests/test_framework.py::test_frozen_qemu") == "self-tests"
    assert lanes.lane("tests/test_shell.py::test_x") == "self-tests"
    assert lanes.lane("vmtests/test_bpf_pms.py::test_y[ipv4]") == "scenarios"
    assert lanes.lane("vmtests/test_hooks.py::test_z") == "scenarios"
