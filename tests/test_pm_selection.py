"""Which sysctl selects a path manager: net.mptcp.path_manager by name where
the kernel has it and lists the PM (7.2), else net.mptcp.pm_type (6.12)."""

import pytest

from bpfpm.guest.mptcp import pm_sysctl
from bpfpm.scenario import Network
from bpfpm.topology import TopoSpec


def mptcp_sysctls(tmp_path, available=None):
    """A net.mptcp sysctl dir: 6.12's (pm_type only) or, with `available`,
    one that selects PMs by name too."""
    d = tmp_path / "mptcp"
    d.mkdir()
    (d / "pm_type").write_text("0\n")
    if available is not None:
        (d / "path_manager").write_text("kernel\n")
        (d / "available_path_managers").write_text(available + "\n")
    return d


def test_6_12_selects_by_pm_type(tmp_path):
    d = mptcp_sysctls(tmp_path)
    assert pm_sysctl(d, "bpf") == ("pm_type", "2")
    assert pm_sysctl(d, "kernel") == ("pm_type", "0")
    assert pm_sysctl(d, "userspace") == ("pm_type", "1")


def test_7_2_selects_by_name_what_it_lists(tmp_path):
    d = mptcp_sysctls(tmp_path, "kernel userspace bpf")
    assert pm_sysctl(d, "bpf") == ("path_manager", "bpf")
    assert pm_sysctl(d, "kernel") == ("path_manager", "kernel")


def test_a_bpf_pm_the_kernel_does_not_list_falls_back_to_pm_type(tmp_path):
    d = mptcp_sysctls(tmp_path, "kernel userspace")
    assert pm_sysctl(d, "bpf") == ("pm_type", "2")
    assert pm_sysctl(d, "userspace") == ("path_manager", "userspace")


def test_an_unknown_pm_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no path manager 'fullmesh'"):
        pm_sysctl(mptcp_sysctls(tmp_path), "fullmesh")


class Guest:
    time_scale = 1.0

    def __init__(self):
        self.calls = []

    def call(self, op, **kw):
        self.calls.append((op, kw))
        return []


def test_both_sides_are_selected_in_one_guest_call_then_limited():
    guest = Guest()
    net = Network(guest, TopoSpec.simple(2))
    net.use_bpf_pm("client", "server", subflows=4)
    assert guest.calls[0] == ("mptcp.select_pm", {"ns": ["bpfpm-cli", "bpfpm-srv"],
                                                  "pm": "bpf"})
    assert [op for op, _ in guest.calls[1:]] == ["mptcp.limits", "mptcp.limits"]
