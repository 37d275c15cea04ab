"""The kernel extension, hook by hook, seen by the event_recorder program.

Every callback must fire exactly once per occurrence, with the arguments
and mptcp_* context fields that describe what happened. Connections only
produce callbacks in a netns with net.mptcp.pm_type=2.
"""

import pytest

from bpfpm.events import by_token, count

MiB = 1 << 20
FAMILIES = [pytest.param(4, id="ipv4"), pytest.param(6, id="ipv6")]
pytestmark = [pytest.mark.vm, pytest.mark.topo(links=2, rate_mbit=50)]


def use_bpf_pm(topo, *sides, subflows=8):
    for side in sides:
        topo.sysctl(side, "net.mptcp.pm_type", 2)
        topo.limits(side, subflows=subflows, add_addr_accepted=8)


@pytest.mark.parametrize("family", FAMILIES)
def test_session_created_established_closed_once_each(topo, recorder, family):
    use_bpf_pm(topo, "client", "server")

    with topo.transfer(1 * MiB, family=family) as xfer:
        pass
    res = xfer.result
    res.assert_intact()
    ctok, stok = res.client["conn"]["token"], res.server["conn"]["token"]
    evs = recorder.wait(lambda evs: count(evs, "CLOSED", ctok) and count(evs, "CLOSED", stok),
                        what="CLOSED on both sides")
    cli, srv = by_token(evs, ctok), by_token(evs, stok)

    for side, ev, server_side in (("client", cli, 0), ("server", srv, 1)):
        for op in ("CREATED", "ESTABLISHED", "CLOSED"):
            assert len(ev[op]) == 1, f"{side} {op} fired {len(ev[op])} times: {ev[op]}"
        assert ev["CREATED"][0].args[0] == server_side
        assert ev["ESTABLISHED"][0].args[0] == server_side
        assert ev["CLOSED"][0].args[0] == 0, "a normal close is not a fallback"
        assert ("server_side" in ev["CREATED"][0].flags) == bool(server_side)
        assert "fully_established" in ev["ESTABLISHED"][0].flags

    created = cli["CREATED"][0]
    assert created.is_fullsock and created.family == (2 if family == 4 else 10)
    assert created.local == topo.spec.addr("client", 1, family)
    assert created.remote == topo.spec.addr("server", 1, family)
    assert created.rport == xfer.port
    # the two ends agree on each other's tokens and keys
    est_c, est_s = cli["ESTABLISHED"][0], srv["ESTABLISHED"][0]
    assert est_c.rem_token == stok and est_s.rem_token == ctok
    assert est_c.loc_key and est_c.loc_key == est_s.rem_key
    assert est_s.loc_key and est_s.loc_key == est_c.rem_key
    assert not cli.get("SUB_ESTABLISHED") and not srv.get("JOIN_REQ")


@pytest.mark.parametrize("family", FAMILIES)
def test_fallback_after_created_is_the_close_reason(topo, recorder, family):
    """A middlebox strips the MPTCP option from data segments: the connection
    is created as MPTCP, then the server gets data without a mapping and falls
    back to TCP, and so does the client when the server's replies carry no DSS.
    Each side reports CLOSED once, at the fallback, with the fallback reason,
    and not again when the (now TCP) connection really closes."""
    use_bpf_pm(topo, "client", "server")
    topo.strip_mptcp_option("server", family)

    with topo.transfer(1 * MiB, family=family) as xfer:
        pass
    res = xfer.result
    res.assert_intact()
    assert res.fallback and res.server["conn"]["fallback"], "the connection did not fall back"
    # a fallen-back socket no longer answers MPTCP_INFO: the client's token
    # was read right after connect(), the server's is in the client's CREATED
    ctok = res.client["conn"]["token_at_connect"]
    evs = recorder.wait(lambda evs: count(evs, "CLOSED", ctok), what="CLOSED on the client")
    stok = by_token(evs, ctok)["CREATED"][0].rem_token
    evs = recorder.wait(lambda evs: count(evs, "CLOSED", stok), what="CLOSED on the server")
    cli, srv = by_token(evs, ctok), by_token(evs, stok)

    for side, ev in (("client", cli), ("server", srv)):
        assert len(ev["CREATED"]) == 1, f"{side}: {ev['CREATED']}"
        (closed,) = ev["CLOSED"]
        assert closed.args[0] == 1, f"{side}: fallback after CREATED must say so: {closed}"
        assert "fallback" in closed.flags
        assert closed.seq > ev["CREATED"][0].seq
    assert len(srv["ESTABLISHED"]) == 1, "the server was fully established before the strip"


@pytest.mark.parametrize("family", FAMILIES)
def test_subflow_established_and_closed(topo, recorder, load_pm, family):
    use_bpf_pm(topo, "client", "server")
    load_pm("ndiffports")     # N = 2: one extra subflow from the kfunc

    with topo.transfer(4 * MiB, family=family) as xfer:
        pass
    res = xfer.result
    res.assert_intact()
    ctok, stok = res.client["conn"]["token"], res.server["conn"]["token"]
    evs = recorder.wait(lambda evs: count(evs, "CLOSED", ctok) and count(evs, "CLOSED", stok)
                        and count(evs, "SUB_CLOSED", stok) >= 1,
                        what="both sides closed")
    cli, srv = by_token(evs, ctok), by_token(evs, stok)

    assert len(cli["SUB_ESTABLISHED"]) == 1, cli["SUB_ESTABLISHED"]
    assert len(srv["SUB_ESTABLISHED"]) == 1, srv["SUB_ESTABLISHED"]
    assert len(srv["JOIN_REQ"]) == 1, srv["JOIN_REQ"]
    sub_c, sub_s = cli["SUB_ESTABLISHED"][0], srv["SUB_ESTABLISHED"][0]
    assert sub_c.args[2] & 2 == 0 and sub_s.args[2] & 2 == 2, "passive bit"
    assert sub_c.lport == sub_s.rport and sub_c.rport == sub_s.lport
    assert sub_c.lport != cli["CREATED"][0].lport, "ndiffports reuses the source port"
    assert sub_c.subflow_id > 1
    # every subflow that was established is reported closed exactly once
    closed_c = [e for e in cli["SUB_CLOSED"] if e.args[2] >> 8]
    assert len(closed_c) <= 2 and len(srv["SUB_CLOSED"]) <= 2


@pytest.mark.topo(links=2, rate_mbit=8)     # slow enough to act mid-transfer
@pytest.mark.parametrize("family", FAMILIES)
def test_add_addr_and_rm_addr_carry_the_address(topo, recorder, family):
    use_bpf_pm(topo, "client")
    topo.limits("server", subflows=8, add_addr_accepted=8)
    announced = topo.spec.addr("server", 2, family)
    topo.endpoint("server", announced, "signal", id=5)

    with topo.transfer(8 * MiB, family=family, hold=True) as xfer:
        evs = recorder.wait(lambda evs: count(evs, "ADD_ADDR"), what="ADD_ADDR")
        topo.endpoint_del("server", id=5)
        evs = recorder.wait(lambda evs: count(evs, "RM_ADDR"), what="RM_ADDR")
    xfer.result.assert_intact()

    (add,) = [e for e in evs if e.op == "ADD_ADDR"]
    assert add.args[0] == 5 and add.args[1] == (2 if family == 4 else 10)
    assert add.addr() == announced
    assert add.args[2] in (0, xfer.port)
    (rm,) = [e for e in evs if e.op == "RM_ADDR"]
    assert rm.args[0] == 5
    assert add.loc_token == rm.loc_token == xfer.result.client["conn"]["token"]


@pytest.mark.topo(links=2, rate_mbit=8)
@pytest.mark.parametrize("family", FAMILIES)
def test_local_address_added_and_removed_while_connected(topo, recorder, family):
    use_bpf_pm(topo, "client")
    new = "10.0.2.11" if family == 4 else "fd00:2::11"

    with topo.transfer(8 * MiB, family=family, hold=True) as xfer:
        xfer.wait_progress(0.1)
        topo.addr("client", 2, new, add=True)
        evs = recorder.wait(lambda evs: any(e.op == "LOCAL_ADDR" and e.args[0] == 1
                                            and e.addr() == new for e in evs),
                            what=f"LOCAL_ADDR up {new}")
        topo.addr("client", 2, new, add=False)
        evs = recorder.wait(lambda evs: any(e.op == "LOCAL_ADDR" and e.args[0] == 0
                                            and e.addr() == new for e in evs),
                            what=f"LOCAL_ADDR down {new}")
    xfer.result.assert_intact()

    mine = [e for e in evs if e.op == "LOCAL_ADDR" and e.addr() == new]
    assert [e.args[0] for e in mine] == [1, 0], "once per live connection, up then down"
    for e in mine:
        assert not e.is_fullsock, "LOCAL_ADDR runs on the msk: never a full socket"
        assert e.loc_token == xfer.result.client["conn"]["token"]
        assert e.args[1] == (2 if family == 4 else 10) and e.args[2] > 0


def test_join_refused_by_program(topo, recorder, load_pm):
    use_bpf_pm(topo, "client", "server")
    recorder.refuse_joins()
    load_pm("ndiffports")

    with topo.transfer(2 * MiB) as xfer:
        pass
    res = xfer.result
    res.assert_intact()
    stok = res.server["conn"]["token"]
    evs = recorder.wait(lambda evs: count(evs, "JOIN_REQ", stok), what="JOIN_REQ")
    # Judged by what is stable: the server never made the join a subflow,
    # and the client ends with one. The client may list the refused join
    # for a moment (SYN/ACK seen, then reset): that is not asserted on.
    assert not by_token(evs, stok).get("SUB_ESTABLISHED"), "the server accepted the join"
    assert len(res.server["subflows_final"]) == 1, res.server["subflows_final"]
    assert len(res.final_subflows) == 1, f"the refused join became a subflow:\n{res.table()}"
    assert all(sf["bytes_acked"] <= 1 for sf in res.subflows[1:]), \
        f"the refused join carried data:\n{res.table()}"
