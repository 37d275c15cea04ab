"""Baseline: the upstream in-kernel path manager on multi-link topologies.

Every scenario moves 8 MiB client -> server and checks its digest on both
ends. Links are rate-limited (HTB) so that the transfer lasts long enough
for mid-transfer events and so that every subflow has to carry data.
"""

import pytest

MiB = 1 << 20
FAMILIES = [pytest.param(4, id="ipv4"), pytest.param(6, id="ipv6")]
pytestmark = [pytest.mark.vm, pytest.mark.topo(links=2, rate_mbit=20)]


def kernel_limits(topo):
    topo.limits("client", subflows=4, add_addr_accepted=4)
    topo.limits("server", subflows=4, add_addr_accepted=4)


@pytest.mark.parametrize("family", FAMILIES)
def test_subflow_endpoint_adds_exactly_one_subflow(topo, family):
    kernel_limits(topo)
    topo.endpoint("client", topo.spec.addr("client", 2, family), "subflow")

    with topo.transfer(8 * MiB, family=family, subflows=2) as xfer:
        pass

    res = xfer.result
    res.assert_intact()
    assert not res.fallback
    server1 = topo.spec.addr("server", 1, family)
    assert res.pairs() == {(topo.spec.addr("client", 1, family), server1),
                           (topo.spec.addr("client", 2, family), server1)}, res.table()
    for sf in res.subflows:
        assert sf["bytes_acked"] > 0, f"subflow carried no data:\n{res.table()}"


@pytest.mark.parametrize("family", FAMILIES)
def test_signal_endpoint_announces_and_client_joins(topo, family):
    kernel_limits(topo)
    announced = topo.spec.addr("server", 2, family)
    topo.endpoint("server", announced, "signal")
    mon = topo.monitor("client")

    with topo.transfer(8 * MiB, family=family, subflows=2) as xfer:
        ev = mon.wait_for("ANNOUNCED")

    res = xfer.result
    res.assert_intact()
    assert announced in (ev.get("daddr4"), ev.get("daddr6")), ev
    assert (topo.spec.addr("client", 2, family), announced) in res.pairs(), res.table()
    assert len(res.subflows) == 2, res.table()
    for sf in res.subflows:
        assert sf["bytes_acked"] > 0, f"subflow carried no data:\n{res.table()}"


@pytest.mark.parametrize("family", FAMILIES)
def test_endpoint_removed_mid_transfer_sends_rm_addr(topo, family):
    kernel_limits(topo)
    announced = topo.spec.addr("server", 2, family)
    topo.endpoint("server", announced, "signal", id=2)
    mon = topo.monitor("client")

    with topo.transfer(8 * MiB, family=family, hold=True) as xfer:
        mon.wait_for("SF_ESTABLISHED")
        xfer.wait_progress(0.3)
        topo.endpoint_del("server", id=2)
        mon.wait_for("REMOVED", remid=2)
        mon.wait_for_subflow("SF_CLOSED", remote=announced)

    res = xfer.result
    res.assert_intact()
    assert (topo.spec.addr("client", 2, family), announced) in res.pairs(), \
        f"the announced subflow never existed:\n{res.table()}"
    assert all(sf["remote"] != announced for sf in res.final_subflows), \
        f"subflow to the removed address survived RM_ADDR:\n{res.table()}"


@pytest.mark.parametrize("family", FAMILIES)
def test_link_down_mid_transfer_completes_on_other_link(topo, family):
    kernel_limits(topo)
    topo.endpoint("server", topo.spec.addr("server", 2, family), "signal")
    mon = topo.monitor("client")

    with topo.transfer(8 * MiB, family=family) as xfer:
        mon.wait_for("SF_ESTABLISHED")
        xfer.wait_progress(0.3)
        topo.link(1, up=False)

    res = xfer.result
    res.assert_intact()
    on_link2 = [sf for sf in res.subflows if topo.spec.link_of(sf["remote"]) == 2]
    assert on_link2 and on_link2[0]["bytes_acked"] > 0, res.table()


@pytest.mark.topo(links=1)
@pytest.mark.parametrize("family", FAMILIES)
def test_plain_tcp_server_falls_back(topo, family):
    with topo.transfer(8 * MiB, family=family, server_proto="tcp") as xfer:
        pass

    res = xfer.result
    res.assert_intact()
    assert res.fallback, f"client did not report a fallback to TCP: {res.client['conn']}"
    assert res.server["conn"]["mptcp"] is False
