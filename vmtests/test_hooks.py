"""The kernel extension, hook by hook, seen by the event_recorder program.

Every callback must fire exactly once per occurrence, with the arguments
and mptcp_* context fields that describe what happened. Connections only
produce callbacks in a netns where the BPF PM is selected.
"""

import pytest

from bpfpm.events import by_token, count

MiB = 1 << 20
FAMILIES = [pytest.param(4, id="ipv4"), pytest.param(6, id="ipv6")]
pytestmark = [pytest.mark.vm, pytest.mark.topo(links=2, rate_mbit=50)]
# a connection reset in the accept queue, as the server's program sees it
RESET_BEFORE_ACCEPT = ["CREATED", "ESTABLISHED", "SUB_CLOSED", "CLOSED"]


@pytest.mark.parametrize("family", FAMILIES)
def test_session_created_established_closed_once_each(topo, recorder, family):
    topo.use_bpf_pm("client", "server")

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
    # the two ends agree on each other's tokens (the keys are not exposed)
    est_c, est_s = cli["ESTABLISHED"][0], srv["ESTABLISHED"][0]
    assert est_c.rem_token == stok and est_s.rem_token == ctok
    assert not cli.get("SUB_ESTABLISHED") and not srv.get("JOIN_REQ")
    # MPTCP_INFO shows the subflows limit the BPF PM works with
    assert res.client["conn"]["subflows_max"] == 8, res.client["conn"]


@pytest.mark.parametrize("family", FAMILIES)
def test_fallback_after_created_is_the_close_reason(topo, recorder, family):
    """A middlebox strips the MPTCP option from data segments: the connection
    is created as MPTCP, then the server gets data without a mapping and falls
    back to TCP, and so does the client when the server's replies carry no DSS.
    Each side reports CLOSED once, at the fallback, with the fallback reason,
    and not again when the (now TCP) connection really closes."""
    topo.use_bpf_pm("client", "server")
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
    topo.use_bpf_pm("client", "server")
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
    topo.use_bpf_pm("client")
    topo.limits("server", subflows=8, add_addr_accepted=8)
    announced = topo.spec.addr("server", 2, family)
    topo.endpoint("server", announced, "signal", id=5)

    with topo.transfer(2 * MiB, family=family, hold=True) as xfer:
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


MPTCP_PM_ADDR_FLAG_SUBFLOW = 2


@pytest.mark.topo(links=2, rate_mbit=8)
@pytest.mark.parametrize("family", FAMILIES)
def test_endpoint_added_and_removed_while_connected(topo, recorder, family):
    """LOCAL_ADDR comes from the endpoint commands (ip mptcp endpoint), in
    the caller's netns and context, not from interface address changes."""
    topo.use_bpf_pm("client")
    new = "10.0.2.11" if family == 4 else "fd00:2::11"

    with topo.transfer(2 * MiB, family=family, hold=True) as xfer:
        xfer.wait_progress(0.1)
        topo.addr("client", 2, new, add=True)
        topo.endpoint("client", new, "subflow", id=20)
        evs = recorder.wait(lambda evs: any(e.op == "LOCAL_ADDR" and e.args[0] == 1
                                            and e.addr() == new for e in evs),
                            what=f"LOCAL_ADDR up {new}")
        topo.endpoint_del("client", id=20)
        evs = recorder.wait(lambda evs: any(e.op == "LOCAL_ADDR" and e.args[0] == 0
                                            and e.addr() == new for e in evs),
                            what=f"LOCAL_ADDR down {new}")
        topo.addr("client", 2, new, add=False)
    xfer.result.assert_intact()

    mine = [e for e in evs if e.op == "LOCAL_ADDR" and e.addr() == new]
    assert [e.args[0] for e in mine] == [1, 0], "once per live connection, up then down"
    for e in mine:
        assert not e.is_fullsock, "LOCAL_ADDR runs on the msk: never a full socket"
        assert e.loc_token == xfer.result.client["conn"]["token"]
        assert e.args[1] == (2 if family == 4 else 10)
        assert e.args[2] & 0xff == 20, "the endpoint id"
        assert (e.args[2] >> 8) & MPTCP_PM_ADDR_FLAG_SUBFLOW, "the endpoint flags"


def test_join_refused_by_program(topo, recorder, load_pm):
    topo.use_bpf_pm("client", "server")
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


def test_a_program_writing_reply_on_every_op_changes_nothing(topo, recorder, load_pm):
    """Many sock_ops programs end with ctx->reply = rv on every op. Beside a
    path manager, such a program must not refuse joins (v1 read reply on
    JOIN_REQ): refusing is bpf_mptcp_refuse_join(), which only a PM calls."""
    topo.use_bpf_pm("client", "server")
    generic = load_pm("generic_sockops")
    load_pm("ndiffports")

    with topo.transfer(2 * MiB, subflows=2) as xfer:
        pass
    res = xfer.result
    res.assert_intact()
    assert len(res.final_subflows) == 2, f"the join was refused:\n{res.table()}"
    stok = res.server["conn"]["token"]
    evs = recorder.wait(lambda evs: count(evs, "SUB_ESTABLISHED", stok), what="the server's join")
    assert count(evs, "JOIN_REQ", stok) == 1
    assert generic.map("seen")[0]["value"] > 0, "the generic program never ran"


@pytest.mark.topo(links=2, rate_mbit=20)
def test_several_ids_in_one_rm_addr_with_8_subflows_open(topo, recorder, load_pm):
    """The server announces three addresses, then flushes its endpoints: one
    RM_ADDR carries the three ids. Each id is reported once, by ADD_ADDR and
    by RM_ADDR, while the client has 8 subflows open."""
    topo.use_bpf_pm("client")
    topo.limits("server", subflows=8, add_addr_accepted=8)
    ndiff = load_pm("ndiffports")
    ndiff.set_config(8)
    extra = ["10.0.2.12", "10.0.2.13"]
    for a in extra:
        topo.addr("server", 2, a, add=True)
    announced = {5: topo.spec.addr("server", 2), 6: extra[0], 7: extra[1]}
    for i, a in announced.items():
        topo.endpoint("server", a, "signal", id=i)

    with topo.transfer(8 * MiB, hold=True, subflows=8) as xfer:
        recorder.wait(lambda evs: count(evs, "ADD_ADDR") >= 3, what="3 ADD_ADDR")
        topo.flush_endpoints("server")      # one RM_ADDR with ids 5, 6, 7
        recorder.wait(lambda evs: count(evs, "RM_ADDR") >= 3, what="3 RM_ADDR")
    res = xfer.result
    res.assert_intact()
    ctok = res.client["conn"]["token"]
    assert len(res.subflows) >= 8, res.table()
    ev = by_token(recorder.events(), ctok)
    assert sorted(e.args[0] for e in ev["ADD_ADDR"]) == [5, 6, 7], ev["ADD_ADDR"]
    assert {e.args[0]: e.addr() for e in ev["ADD_ADDR"]} == announced
    assert sorted(e.args[0] for e in ev["RM_ADDR"]) == [5, 6, 7], ev["RM_ADDR"]


@pytest.mark.topo(links=2, rate_mbit=20)
def test_an_add_addr_sent_again_is_reported_once(topo, recorder):
    """The server sends its ADD_ADDR again while no echo comes back (every
    add_addr_timeout, up to three times). The client receives it at least
    twice; its PM hears of the address once (v1 ran the program per copy)."""
    topo.use_bpf_pm("client")
    topo.limits("server", subflows=8, add_addr_accepted=8)
    topo.sysctl("server", "net.mptcp.add_addr_timeout", 1)

    with topo.transfer(1 * MiB, hold=True) as xfer:
        xfer.wait_progress(1.0)
        before = topo.counters("client")["MPTcpExtAddAddr"]
        with topo.inbound_tcp_lost("server"):       # the client's echoes are lost
            topo.endpoint("server", topo.spec.addr("server", 2), "signal", id=5)
            got = topo.wait_counter("client", "MPTcpExtAddAddr", before + 2)
    xfer.result.assert_intact()
    ctok = xfer.result.client["conn"]["token"]
    ev = by_token(recorder.events(), ctok)
    assert [e.args[0] for e in ev["ADD_ADDR"]] == [5], \
        f"{got - before} copies received, ADD_ADDR events: {ev['ADD_ADDR']}"


@pytest.mark.parametrize("family", FAMILIES)
def test_initial_subflow_reset_before_accept_is_reported_at_accept(topo, recorder, family):
    """The client aborts (SO_LINGER 0: MP_FASTCLOSE) while the connection
    waits in the server's accept queue. The server's initial subflow is
    closed there (by the msk worker, its context reset), and accept() finds
    it closed. The server's PM hears SUB_CLOSED for it once, then CLOSED,
    under the connection's token although the fastclose destroyed
    msk->token (MPTCP_INFO reads 0). The first v2 cut reported it twice,
    the second time with a blank subflow, and under token 0."""
    topo.use_bpf_pm("client", "server")

    r = topo.abort_before_accept(family=family)
    ctok = r["client_token"]
    evs = recorder.wait(lambda evs: any(e.op == "CLOSED" and e.rem_token == ctok for e in evs),
                        what="CLOSED on the server")
    (created,) = [e for e in evs if e.op == "CREATED" and e.rem_token == ctok]
    srv = by_token(evs, created.loc_token)
    assert created.loc_token != "00000000"
    assert all(e.loc_token == created.loc_token for e in evs if e.rem_token == ctok), srv
    assert [e.op for e in evs if e.rem_token == ctok] == RESET_BEFORE_ACCEPT, srv
    sub = srv["SUB_CLOSED"][0]
    assert sub.subflow_id == 1 and sub.is_fullsock, sub


ACCEPT_RACES = 60


def test_initial_subflow_reset_while_accept_races_the_worker_is_reported_once(topo, recorder):
    """As above, but the server accepts right after the client's abort:
    accept() and the msk worker woken by the reset race to close the
    initial subflow. When accept() wins, the worker never runs for that
    connection (accept() closed the msk), so accept() reports SUB_CLOSED
    itself; v1 reported nothing then. Whoever closes it, SUB_CLOSED comes
    once."""
    topo.use_bpf_pm("client", "server")

    toks = [topo.abort_before_accept(wait_reset=False)["client_token"]
            for _ in range(ACCEPT_RACES)]
    evs = recorder.wait(lambda evs: all(any(e.op == "CLOSED" and e.rem_token == t for e in evs)
                                        for t in toks), what="CLOSED on the server, each")
    ops = {t: [e.op for e in evs if e.rem_token == t] for t in toks}
    bad = {t: o for t, o in ops.items() if o != RESET_BEFORE_ACCEPT}
    assert not bad, f"{len(bad)} of {ACCEPT_RACES} connections: {bad}"
