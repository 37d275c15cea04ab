"""Scenarios for vmtests/test_reports.py, which runs them in a `bpfpm test`
of its own: one fails on purpose after real MPTCP traffic with the BPF
fullmesh loaded, one passes, one loses its guest's channel once. Not
collected by the suite (no test_ file prefix): a failure here is the
point, not a verdict."""

import pytest

from bpfpm.pmsetup import KINDS

pytestmark = [pytest.mark.vm]


def _join_over_both_links(topo, load_pm):
    fullmesh = KINDS["bpf-fullmesh"]
    fullmesh.apply(topo, load_pm)
    with topo.transfer(256 << 10, subflows=fullmesh.expected(topo)) as xfer:
        pass
    xfer.result.assert_intact()


@pytest.mark.topo(links=2)
def test_fails_after_a_transfer(topo, load_pm):
    _join_over_both_links(topo, load_pm)
    assert False, "failing on purpose: the evidence of this failure is what is tested"


@pytest.mark.topo(links=2)
def test_passes_after_a_transfer(topo, load_pm):
    _join_over_both_links(topo, load_pm)


def test_passes_on_a_fresh_guest_after_losing_its_channel(vm, run_dir):
    """The first attempt loses its channel (the agent is killed under a
    command): an infrastructure failure, rerun once on a fresh guest."""
    first = run_dir / "channel-lost-once"
    if not first.exists():
        first.write_text(vm.name)
        vm.call("run", cmd=f"(sleep 0.5; kill -KILL {vm.channel.agent_pid}) >/dev/null 2>&1 &",
                timeout=10)
        vm.run("sleep 600", timeout=600)
    assert vm.name != first.read_text(), "the rerun must get a fresh guest"
    assert vm.run("echo alive").stdout == "alive\n"
