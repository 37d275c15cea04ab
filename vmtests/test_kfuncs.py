"""bpf_mptcp_open_subflow()/bpf_mptcp_close_subflow(): what they refuse,
with which errno, and that they hold up under load and on closing sockets.

The kfunc_probe program (bpf-pms/kfunc_probe.bpf.c) calls them wrongly on
purpose from the softirq callbacks and stores what they return.
"""

import errno

import pytest

MiB = 1 << 20
pytestmark = [pytest.mark.vm, pytest.mark.topo(links=1)]

BEFORE_ESTABLISHED, BAD_FAMILY, FAMILY_MISMATCH, QUEUE_FULL, PLAIN_TCP, NOT_BPF_PM, \
    FALLBACK, OK, CLOSE_BAD = range(9)


def rets(probe) -> dict[int, int]:
    """case -> errno returned (0 = success); cases never reached are absent."""
    return {e["key"]: -(e["value"] - 1000) for e in probe.map("rets") if e["value"]}


@pytest.mark.parametrize("limit,full", [(8, errno.EBUSY), (1, errno.ENOSPC)],
                         ids=["queue-full", "subflow-limit"])
def test_bad_requests_get_their_errno(topo, load_pm, limit, full):
    topo.sysctl("client", "net.mptcp.pm_type", 2)
    topo.limits("client", subflows=limit)
    topo.limits("server", subflows=8)
    probe = load_pm("kfunc_probe")

    with topo.transfer(1 * MiB) as xfer:
        pass
    xfer.result.assert_intact()

    got = rets(probe)
    assert got[BEFORE_ESTABLISHED] == errno.ENOTCONN, got
    assert got[BAD_FAMILY] == errno.EINVAL, got
    assert got[CLOSE_BAD] == errno.EINVAL, got
    assert got[FAMILY_MISMATCH] == errno.EINVAL, got
    assert got[OK] == 0, got
    assert got[QUEUE_FULL] == full, got


def test_other_path_managers_and_plain_tcp_are_refused(topo, load_pm):
    probe = load_pm("kfunc_probe")       # pm_type stays 0 (in-kernel PM)

    with topo.transfer(1 * MiB) as mptcp:
        pass
    with topo.transfer(1 * MiB, client_proto="tcp", server_proto="tcp") as tcp:
        pass
    mptcp.result.assert_intact()
    tcp.result.assert_intact()

    got = rets(probe)
    assert got[NOT_BPF_PM] == errno.EOPNOTSUPP, got
    assert got[PLAIN_TCP] == errno.EINVAL, got
    assert len(mptcp.result.subflows) == 1, "nothing may be opened for another PM"


@pytest.mark.topo(links=1)
def test_burst_of_500_connections_all_get_their_subflow(topo, load_pm):
    topo.sysctl("client", "net.mptcp.pm_type", 2)
    for side in ("client", "server"):
        topo.limits(side, subflows=8)
    pm = load_pm("ndiffports")           # one kfunc call per connection, from softirq

    client, server = topo.burst(500, subflows=2)

    assert client["connections"] == 500 and server["accepted"] == 500
    assert client["subflow_histogram"] == {"2": 500}, client
    assert pm.results() == {0: 500}, "every request queued"


def test_closing_with_requests_pending_leaves_nothing_behind(topo, load_pm, recorder, vm):
    """Every connection closes while 8 requests are queued on it: each msk must
    still be destroyed (CLOSED fires in mptcp_destroy_common) and none may be
    left. The requests' own memory is checked by kmemleak in the debug kernel
    (make debug-test)."""
    topo.sysctl("client", "net.mptcp.pm_type", 2)
    topo.sysctl("server", "net.mptcp.pm_type", 2)
    for side in ("client", "server"):
        topo.limits(side, subflows=8)
    probe = load_pm("kfunc_probe")
    probe.set_config(1)                  # MODE_FLOOD: 8 requests per connection

    client, server = topo.burst(200, wait=False)     # close right after establishing
    assert server["closed"] == 200

    def counters():
        return {e["key"]: e["value"] for e in recorder.pm.map("counters")}
    created, closed = 1, 3               # counters[1 + op - CREATED]
    recorder.wait(lambda _: counters()[closed] >= counters()[created] >= 400,
                  timeout=120, what="CLOSED for every CREATED connection")
    assert counters()[closed] == counters()[created] == 400, counters()
    assert probe.results().get(0, 0) >= 200 * 8 / 2, "requests were queued"
    for ns in (topo.spec.client_ns, topo.spec.server_ns):
        left = vm.run(f"ip netns exec {ns} ss -HMna").stdout.strip()
        assert not left, f"MPTCP sockets left in {ns}:\n{left}"
