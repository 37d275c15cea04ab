"""The whole path-manager job from BPF, on both ends: the in-kernel PM is
off on both sides (the BPF PM selected). Addresses are announced and
withdrawn by the server's program (bpf_mptcp_announce_addr/remove_addr),
backup subflows are opened and re-marked by the client's
(bpf_mptcp_set_backup). Endpoints, where a scenario adds any, only tell
the programs that an address came or went (LOCAL_ADDR).
"""

import pytest

from bpfpm.pmsetup import FULLMESH, Mesh, bpf_backup

MiB = 1 << 20
pytestmark = [pytest.mark.vm]
FAMILIES = pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])


@pytest.mark.topo(links=2, rate_mbit=20)
@FAMILIES
def test_server_announces_an_address_added_and_withdraws_it_mid_transfer(topo, load_pm,
                                                                          family):
    """The server's endpoint for its second address appears mid-transfer:
    its fullmesh announces it and the client's joins it. Then it goes: the
    server withdraws it (RM_ADDR) and closes its subflows, on both ends,
    and the transfer completes intact."""
    t = topo.spec
    second = t.addr("server", 2, family)
    FULLMESH["bpf-both"](topo, Mesh([t.addr("client", 1, family)],
                                    [t.addr("server", 1, family)]), load_pm)
    cmon, smon = topo.monitor("client"), topo.monitor("server")

    with topo.transfer(8 * MiB, family=family, hold=True) as xfer:
        xfer.wait_progress(0.1)
        topo.endpoint("server", second, id=12)
        cmon.wait_for_subflow("SF_ESTABLISHED", remote=second)
        xfer.wait_progress(0.4)
        topo.endpoint_del("server", id=12)
        cmon.wait_for("REMOVED")
        cmon.wait_for_subflow("SF_CLOSED", remote=second)
        smon.wait_for_subflow("SF_CLOSED", local=second)

    res = xfer.result
    res.assert_intact()
    used = [sf for sf in res.subflows if sf["remote"] == second]
    assert used and used[0]["bytes_acked"] > 0, res.table()
    assert all(sf["remote"] != second for sf in res.final_subflows), res.table()
    assert topo.endpoints("client") == [], "the client has no endpoint"


def _backup(topo, load_pm, family):
    t = topo.spec
    primary = (t.addr("client", 1, family), t.addr("server", 1, family))
    backup = (t.addr("client", 2, family), t.addr("server", 2, family))
    bpf_backup(topo, [primary], [backup], load_pm)
    return primary, backup


@pytest.mark.topo(links=2, rate_mbit=20)
@FAMILIES
def test_backup_subflow_is_opened_as_backup_and_idles_while_the_primary_is_up(
        topo, load_pm, family, measure):
    """The backup subflow joins with the B bit: the server sees it as the
    peer's backup, the client as its own; the scheduler leaves it idle."""
    primary, backup = _backup(topo, load_pm, family)
    smon = topo.monitor("server")

    with topo.transfer(4 * MiB, family=family, hold=True, subflows=2) as xfer:
        smon.wait_for_subflow("SF_ESTABLISHED", remote=backup[0], backup=1)
        client = {(sf["local"], sf["remote"]): sf["flags"] for sf in topo.subflow_flags("client")}
        server = {(sf["remote"], sf["local"]): sf["flags"] for sf in topo.subflow_flags("server")}

    res = xfer.result
    res.assert_intact()
    assert res.pairs() == {primary, backup}, res.table()
    assert "b" in client[backup] and "b" not in client[primary], client
    assert "B" in server[backup] and "B" not in server[primary], server
    (bk,) = [sf for sf in res.subflows if sf["local"] == backup[0]]
    measure(f"backup_bytes_acked_primary_up_ipv{family}", bk["bytes_acked"])
    assert bk["bytes_acked"] <= 64 << 10, f"the backup subflow carried data:\n{res.table()}"


@pytest.mark.topo(links=2, rate_mbit=20)
@FAMILIES
def test_backup_subflow_carries_the_transfer_when_the_primary_link_goes_down(
        topo, load_pm, family, measure):
    primary, backup = _backup(topo, load_pm, family)
    nbytes = 8 * MiB

    with topo.transfer(nbytes, family=family, subflows=2) as xfer:
        xfer.wait_progress(0.3)
        topo.link(1, up=False)

    res = xfer.result
    res.assert_intact()
    (bk,) = [sf for sf in res.subflows if sf["local"] == backup[0]]
    measure(f"backup_bytes_acked_primary_down_ipv{family}", bk["bytes_acked"])
    assert bk["bytes_acked"] >= nbytes // 2, f"the backup did not take over:\n{res.table()}"


@pytest.mark.topo(links=2, rate_mbit=20)
@FAMILIES
def test_backup_is_made_regular_while_no_primary_is_left_and_backup_again_after(
        topo, load_pm, family):
    """The primary's address goes (LOCAL_ADDR): the PM closes the primary
    subflow and turns the backup one into a regular one (MP_PRIO backup 0,
    seen by the server). The address comes back: the PM opens a primary
    again and the other one goes back to backup (MP_PRIO backup 1)."""
    primary, backup = _backup(topo, load_pm, family)
    topo.endpoint("client", primary[0], id=1)
    smon = topo.monitor("server")

    with topo.transfer(8 * MiB, family=family, hold=True, subflows=2) as xfer:
        xfer.wait_progress(0.2)
        topo.endpoint_del("client", id=1)
        smon.wait_for_subflow("SF_CLOSED", remote=primary[0])
        smon.wait_for_subflow("SF_PRIO", remote=backup[0], backup=0)
        topo.endpoint("client", primary[0], id=1)
        smon.wait_for_subflow("SF_PRIO", remote=backup[0], backup=1)
        # the PM sends that MP_PRIO as it opens the new primary, whose join
        # may complete later: the transfer must not end before it (the
        # first primary was the initial subflow: no SF_ESTABLISHED event)
        smon.wait_for_subflow("SF_ESTABLISHED", remote=primary[0])

    res = xfer.result
    res.assert_intact()
    prim = [sf for sf in res.subflows if sf["local"] == primary[0]]
    assert len(prim) == 2, f"no new primary subflow:\n{res.table()}"
