"""The path-manager kfuncs (open/close subflows, announce/remove addresses,
set backup): what they refuse, with which errno, and that they hold up
under load and on closing sockets.

The kfunc_probe program (bpf-pms/kfunc_probe.bpf.c) calls them wrongly on
purpose from the softirq callbacks and stores what they return.
"""

import errno

import pytest

from bpfpm.events import count

MiB = 1 << 20
pytestmark = [pytest.mark.vm, pytest.mark.topo(links=1)]

from vmtests.kfunc_probe import (
    ANNOUNCE_ANY, BAD_FAMILY, CLOSE_ALL, CLOSE_BAD, FAMILY_MISMATCH, FROM_CREATED, FROM_TCP_OP,
    MODE_ADDRS, MODE_BOGUS_SRC, MODE_CLOSE_INITIAL, MODE_FLOOD, MODE_REOPEN, MODE_SERVER_OPEN,
    MSK_CB_FLAGS, MSK_GETSOCKOPT, MSK_SETSOCKOPT, NOT_BPF_PM, OK, PLAIN_TCP, QUEUE_FULL,
    REFUSE_OUTSIDE_JOIN, REOPEN, REQ_ANNOUNCE, REQ_BACKUP, REQ_OPEN, REQ_REMOVE, TCP_OP_FIELDS,
    rets)


# CREATED, ACTIVE_ESTABLISHED and the valid ESTABLISHED request take 3 of
# the limit: the 4th request hits it
@pytest.mark.parametrize("limit,full", [(8, errno.EBUSY), (3, errno.ENOSPC)],
                         ids=["queue-full", "subflow-limit"])
def test_bad_requests_get_their_errno(topo, load_pm, limit, full):
    topo.select_pm("bpf", "client")
    topo.limits("client", subflows=limit)
    topo.limits("server", subflows=8)
    probe = load_pm("kfunc_probe")

    with topo.transfer(1 * MiB) as xfer:
        pass
    xfer.result.assert_intact()

    got = rets(probe)
    # queued before the connection is fully established, served after
    assert got[FROM_CREATED] == 0 and got[FROM_TCP_OP] == 0, got
    assert got[BAD_FAMILY] == errno.EINVAL, got
    assert got[CLOSE_ALL] == errno.EINVAL, got
    assert got[REFUSE_OUTSIDE_JOIN] == errno.EINVAL, got
    # CLOSED runs on the msk: the helpers that need a tcp_sock refuse it
    assert got[MSK_SETSOCKOPT] == got[MSK_GETSOCKOPT] == got[MSK_CB_FLAGS] \
        == errno.EOPNOTSUPP, got
    assert got[TCP_OP_FIELDS] == 0, "mptcp_* fields must read 0 on a plain TCP op"
    assert got[CLOSE_BAD] == errno.EINVAL, got
    assert got[FAMILY_MISMATCH] == errno.EINVAL, got
    assert got[OK] == 0, got
    assert got[QUEUE_FULL] == full, got


def test_other_path_managers_and_plain_tcp_are_refused(topo, load_pm):
    probe = load_pm("kfunc_probe")       # the in-kernel PM stays selected

    with topo.transfer(1 * MiB) as mptcp:
        pass
    with topo.transfer(1 * MiB, client_proto="tcp", server_proto="tcp") as tcp:
        pass
    mptcp.result.assert_intact()
    tcp.result.assert_intact()

    got = rets(probe)
    assert got[NOT_BPF_PM] == errno.EOPNOTSUPP, got
    assert got[PLAIN_TCP] == errno.EINVAL, got
    assert got[TCP_OP_FIELDS] == 0, "mptcp_* fields must read 0 on a plain TCP op"
    assert len(mptcp.result.subflows) == 1, "nothing may be opened for another PM"


@pytest.mark.topo(links=1)
def test_burst_of_500_connections_all_get_their_subflow(topo, load_pm):
    topo.select_pm("bpf", "client")
    for side in ("client", "server"):
        topo.limits(side, subflows=8)
    pm = load_pm("ndiffports")           # one kfunc call per connection, from softirq

    client, server = topo.burst(500, subflows=2)

    assert client["connections"] == 500 and server["accepted"] == 500
    assert client["subflow_histogram"] == {"2": 500}, client
    assert pm.results() == {0: 500}, "every request queued"


def test_closing_with_requests_pending_leaves_nothing_behind(topo, load_pm, recorder):
    """Every connection closes while 8 requests are queued on it: each msk must
    still be destroyed (CLOSED fires in mptcp_destroy_common) and none may be
    left. The requests' own memory is checked by kmemleak in the debug kernel
    (make debug-test)."""
    topo.use_bpf_pm("client", "server")
    probe = load_pm("kfunc_probe")
    probe.set_config(MODE_FLOOD)         # 8 requests per connection

    client, server = topo.burst(200, wait=False)     # close right after establishing
    assert server["closed"] == 200

    created, closed = 1, 3               # counters[1 + op - CREATED]
    recorder.wait_counts(lambda c: c[closed] >= c[created] >= 400,
                         timeout=120, what="CLOSED for every CREATED connection")
    counts = recorder.counts()
    assert counts[closed] == counts[created] == 400, counts
    assert probe.results().get(0, 0) >= 200 * 8 / 2, "requests were queued"
    left = topo.mptcp_sockets()
    assert not left, f"MPTCP sockets left:\n{left}"


def test_a_failure_in_the_worker_reaches_the_program(topo, load_pm, recorder):
    """A request that fails when served, before any socket exists (here a
    source address the host does not have: bind() fails), is reported as
    REQ_FAILED with its errno and addresses; its address id is released."""
    topo.use_bpf_pm("client", "server")
    probe = load_pm("kfunc_probe")
    probe.set_config(MODE_BOGUS_SRC)

    with topo.transfer(1 * MiB, hold=True) as xfer:
        evs = recorder.wait(lambda evs: count(evs, "REQ_FAILED"), what="REQ_FAILED")
    res = xfer.result
    res.assert_intact()
    (failed,) = [e for e in evs if e.op == "REQ_FAILED"]
    assert (failed.args[0], failed.args[2]) == (errno.EADDRNOTAVAIL, REQ_OPEN), failed
    assert failed.loc_token == res.client["conn"]["token"]
    assert (failed.local_addr(), failed.addr()) == ("192.0.2.1", topo.spec.addr("server", 1))
    assert not failed.is_fullsock, "REQ_FAILED runs on the msk"
    assert probe.results() == {0: 1}, "the request was queued"
    assert res.client["conn"]["local_addr_used"] == 0, "the address id was not released"


def test_reopen_from_sub_closed_at_the_subflow_limit(topo, load_pm, recorder):
    """Limit 1: the program closes its extra subflow and opens another one
    from SUB_CLOSED. SUB_CLOSED comes after the subflow accounting, so the
    new request fits (v1: -ENOSPC)."""
    topo.use_bpf_pm("client", "server", subflows=1)
    probe = load_pm("kfunc_probe")
    probe.set_config(MODE_REOPEN)

    with topo.transfer(2 * MiB, hold=True) as xfer:
        recorder.wait(lambda evs: count(evs, "SUB_ESTABLISHED", xfer_token(evs)) >= 2,
                      what="the second extra subflow")
    xfer.result.assert_intact()
    got = rets(probe)
    assert got.get(REOPEN) == 0, got


def xfer_token(evs):
    """The client's token: the one whose CREATED says client side."""
    toks = [e.loc_token for e in evs if e.op == "CREATED" and not e.args[0]]
    return toks[0] if toks else None


@pytest.mark.topo(links=1, rate_mbit=20)
def test_close_the_initial_subflow_by_its_port(topo, load_pm, recorder):
    """Close matches addresses and ports: the initial subflow, named by its
    local address and port, is closed as soon as the second one is
    established (the client waits for it after its first 64 KiB), and the
    second one carries the rest of the data."""
    topo.use_bpf_pm("client", "server")
    probe = load_pm("kfunc_probe")
    probe.set_config(MODE_CLOSE_INITIAL)

    with topo.transfer(8 * MiB, subflows=2) as xfer:
        pass
    res = xfer.result
    res.assert_intact()
    ctok = res.client["conn"]["token"]
    (created,) = [e for e in recorder.events() if e.op == "CREATED" and e.loc_token == ctok]
    seen = {sf["lport"]: sf for sf in res.subflows}
    initial = seen[created.lport]
    (join,) = [sf for port, sf in seen.items() if port != created.lport]
    assert initial["bytes_acked"] < 1 * MiB, f"the initial subflow kept carrying:\n{res.table()}"
    assert join["bytes_acked"] > 7 * MiB, res.table()
    assert probe.results() == {0: 2}, "one open, one close"


@pytest.mark.topo(links=2, rate_mbit=20)
def test_the_server_side_opens_a_subflow(topo, load_pm, recorder, vm):
    """Opens work from the passive side too, once the connection is
    accepted (here on LOCAL_ADDR: an endpoint added on the server): the
    join leaves the server. The client has no listener on its port, so it
    is reset: SUB_CLOSED, never established, on the server."""
    topo.use_bpf_pm("client", "server")
    probe = load_pm("kfunc_probe")
    probe.set_config(MODE_SERVER_OPEN)

    with topo.transfer(4 * MiB, hold=True) as xfer:
        xfer.wait_progress(0.1)         # the server has accepted it
        topo.endpoint("server", topo.spec.addr("server", 2), "subflow", id=30)
        evs = recorder.wait(lambda evs: any(e.op == "SUB_CLOSED" and "server_side" in e.flags
                                            for e in evs), what="the server's join closed")
    xfer.result.assert_intact()
    assert probe.results() == {0: 1}
    (closed,) = [e for e in evs if e.op == "SUB_CLOSED" and "server_side" in e.flags]
    assert closed.args[2] >> 8 == 0, "a join the client never accepted"
    syn = vm.run(f"ip netns exec {topo.spec.server_ns} nstat -az MPTcpExtMPJoinSynTx").stdout
    assert int(syn.split()[-2]) >= 1, syn


def test_address_and_backup_requests_that_fail_are_reported(topo, load_pm, recorder):
    """announce/remove/set_backup validate what they can at once (no
    address: -EINVAL) and report what fails when served as REQ_FAILED, with
    the errno and the request: the initial address announced (-EINVAL, it
    is id 0), an address announced twice (-EEXIST), one removed that was
    never used (-ENOENT), MP_PRIO for a subflow that does not exist
    (-EINVAL). The address announced once reaches the server."""
    topo.use_bpf_pm("client", "server")
    probe = load_pm("kfunc_probe")
    probe.set_config(MODE_ADDRS)

    with topo.transfer(1 * MiB, hold=True) as xfer:
        evs = recorder.wait(lambda evs: count(evs, "REQ_FAILED") >= 4, what="4 REQ_FAILED")
        srv = recorder.wait(lambda evs: count(evs, "ADD_ADDR"), what="ADD_ADDR on the server")
    res = xfer.result
    res.assert_intact()
    assert rets(probe)[ANNOUNCE_ANY] == errno.EINVAL
    assert probe.results() == {0: 5}, "5 requests queued"
    tok = res.client["conn"]["token"]
    failed = sorted((e.args[2], e.args[0]) for e in evs
                    if e.op == "REQ_FAILED" and e.loc_token == tok)
    assert failed == sorted([(REQ_ANNOUNCE, errno.EINVAL), (REQ_ANNOUNCE, errno.EEXIST),
                             (REQ_REMOVE, errno.ENOENT), (REQ_BACKUP, errno.EINVAL)]), failed
    (add,) = [e for e in srv if e.op == "ADD_ADDR"]
    assert add.addr() == "192.0.2.1" and add.args[0] > 0, add


def test_a_program_of_another_type_cannot_call_them(vm, pm_objects):
    """The kfuncs are registered for sock_ops programs only. 7.2 gives
    sock_ops the kfunc hook of every cgroup program type, so there it is the
    type of the context argument that turns away a cgroup_skb program
    handing its own context (6.12: the sock_ops hook itself)."""
    obj = pm_objects["kfunc_wrong_prog"]
    if isinstance(obj, Exception):
        raise obj
    pin = "/sys/fs/bpf/bpfpm-kfunc-wrong-prog"
    r = vm.run("grep -q ' /sys/fs/bpf bpf ' /proc/mounts || mount -t bpf bpf /sys/fs/bpf; "
               f"bpftool prog load {obj} {pin}", check=False)
    vm.run(f"rm -f {pin}", check=False)
    log = r.stdout + r.stderr
    assert r.rc != 0, f"a cgroup_skb program loaded with a call to bpf_mptcp_open_subflow():\n{log}"
    assert "bpf_mptcp_open_subflow" in log or "arg#0" in log, \
        f"refused, but not by the verifier's kfunc checks:\n{log[-2000:]}"
