"""The BPF path manager across the lives of what surrounds a connection:
network namespaces, the pm_type sysctl, programs attached and detached,
disconnect and reuse, fallback, all with requests and events in flight.
"""

import pytest

from bpfpm.events import by_token, count
from bpfpm.topology import TopoSpec
from vmtests.kfunc_probe import FROM_CREATED, MODE_BOGUS_SRC, MODE_FLOOD, rets

MiB = 1 << 20
pytestmark = [pytest.mark.vm]


def test_an_endpoint_flood_in_one_netns_costs_another_no_local_addr(network, recorder, vm):
    """Netns B adds and removes an endpoint 200 times while netns A adds one:
    A gets its LOCAL_ADDR, and B gets every one of its 400 (one per change
    and live connection): nothing is shared between namespaces, nothing is
    dropped (v1: one global queue of 256 events, walked on system_wq)."""
    a = network(TopoSpec.simple(1, rate_mbit=20, client_ns="bpfpm-a-cli",
                                server_ns="bpfpm-a-srv"))
    b = network(TopoSpec.simple(1, rate_mbit=20, client_ns="bpfpm-b-cli",
                                server_ns="bpfpm-b-srv"))
    a.use_bpf_pm("client")
    b.use_bpf_pm("client")
    cycles = 200
    # one `ip -batch`: each line its own netlink request, as 400 `ip`
    # processes would send them (those took 40 s under TCG, the batch 4)
    flood = (f"for i in $(seq {cycles}); do printf 'mptcp endpoint add 10.0.1.1 id 50\\n"
             "mptcp endpoint del id 50\\n'; done | ip -batch -")

    with a.transfer(4 * MiB, hold=True) as xa, b.transfer(4 * MiB, hold=True) as xb:
        xa.wait_progress(0.05)
        xb.wait_progress(0.05)
        done = vm.call("proc.start", ns=b.spec.client_ns, argv=["sh", "-c", flood])
        a.addr("client", 1, "10.0.1.21", add=True)
        a.endpoint("client", "10.0.1.21", "subflow", id=21)
        recorder.wait(lambda evs: any(e.op == "LOCAL_ADDR" and e.addr() == "10.0.1.21"
                                      for e in evs), what="A's LOCAL_ADDR")
        flooded = vm.call("proc.wait", handle=done, timeout=300, _timeout=330)
        assert flooded["rc"] == 0, flooded
    xa.result.assert_intact()
    xb.result.assert_intact()

    evs = recorder.events()
    atok, btok = xa.result.client["conn"]["token"], xb.result.client["conn"]["token"]
    assert [e.addr() for e in by_token(evs, atok)["LOCAL_ADDR"]] == ["10.0.1.21"]
    mine = by_token(evs, btok)["LOCAL_ADDR"]
    assert [e.args[0] for e in mine] == [1, 0] * cycles, \
        f"B saw {len(mine)} LOCAL_ADDR of {2 * cycles}"


@pytest.mark.topo(links=1, rate_mbit=20)
def test_pm_type_switched_2_0_2_with_live_connections(topo, load_pm, recorder):
    """pm_type is read when a connection is created: switching it leaves the
    live ones alone, and the next ones get the new path manager."""
    topo.use_bpf_pm("client", "server")
    load_pm("ndiffports")

    with topo.transfer(4 * MiB, hold=True, subflows=2) as first:
        first.wait_progress(0.1)
        topo.sysctl("client", "net.mptcp.pm_type", 0)
        with topo.transfer(1 * MiB) as kernel_pm:
            pass
        topo.sysctl("client", "net.mptcp.pm_type", 2)
        with topo.transfer(1 * MiB, subflows=2) as third:
            pass
    for x in (first, kernel_pm, third):
        x.result.assert_intact()
    assert len(first.result.final_subflows) == 2, first.result.table()
    assert len(kernel_pm.result.subflows) == 1, "pm_type 0 and no endpoint: no subflow"
    assert len(third.result.subflows) == 2, third.result.table()
    evs = recorder.events()
    assert not by_token(evs, kernel_pm.result.client["conn"]["token"]), \
        "a pm_type 0 connection reached the BPF programs"
    for x in (first, third):
        assert count(evs, "CREATED", x.result.client["conn"]["token"]) == 1


@pytest.mark.topo(links=1, rate_mbit=20)
def test_a_pm_detached_then_replaced_mid_connection(topo, load_pm):
    """Detaching the PM leaves its subflows working; the program loaded in
    its place acts on the same live connection from its next event."""
    topo.use_bpf_pm("client", "server")
    ndiff = load_pm("ndiffports")
    ndiff.set_config(3)

    with topo.transfer(8 * MiB, hold=True, subflows=3) as xfer:
        xfer.wait_progress(0.2)
        ndiff.unload()
        probe = load_pm("kfunc_probe")
        probe.set_config(MODE_BOGUS_SRC)    # only acts on ESTABLISHED
        with topo.transfer(1 * MiB) as after:
            pass
    xfer.result.assert_intact()
    after.result.assert_intact()
    assert len(xfer.result.final_subflows) == 3, xfer.result.table()
    assert len(after.result.subflows) == 1, "the detached ndiffports still acted"
    assert probe.results() == {0: 1}, "the new program did not act on the new connection"


@pytest.mark.topo(links=1, rate_mbit=50)
def test_fallback_with_requests_queued(topo, load_pm, recorder):
    """A request queued at CREATED (before full establishment) is still
    pending when the connection falls back to TCP: it is dropped, nothing is
    opened, and CLOSED(fallback) is the program's last event."""
    topo.use_bpf_pm("client")
    topo.limits("server", subflows=8)
    probe = load_pm("kfunc_probe")      # MODE_ERRNOS: one request at CREATED
    topo.strip_mptcp_option("server")

    with topo.transfer(1 * MiB) as xfer:
        pass
    res = xfer.result
    res.assert_intact()
    assert res.fallback, res.client["conn"]
    ctok = res.client["conn"]["token_at_connect"]
    evs = recorder.wait(lambda evs: count(evs, "CLOSED", ctok), what="CLOSED(fallback)")
    ev = by_token(evs, ctok)
    assert ev["CLOSED"][-1].args[0] == 1
    assert ev["CLOSED"][-1].seq == max(e.seq for e in evs if e.loc_token == ctok)
    assert not ev.get("SUB_ESTABLISHED") and not ev.get("REQ_FAILED")
    assert rets(probe)[FROM_CREATED] == 0, "the CREATED request was not queued"


def test_a_netns_deleted_with_requests_and_events_queued(network, load_pm, recorder, vm):
    """200 connections, each with 8 requests queued, and the namespaces are
    deleted under them: every connection reports CLOSED, the requests are
    dropped (kmemleak in make debug-test), the kernel stays clean."""
    net = network(TopoSpec.simple(1, client_ns="bpfpm-gone-cli", server_ns="bpfpm-gone-srv"))
    net.use_bpf_pm("client", "server")
    probe = load_pm("kfunc_probe")
    probe.set_config(MODE_FLOOD)

    created, closed = 1, 3              # counters[1 + op - CREATED]
    before = recorder.counts()
    srv, cli = net.burst_start(200, subflows=2)
    recorder.wait_counts(lambda c: c[created] - before[created] >= 100, timeout=120,
                         what="100 connections created")
    for h in (cli, srv):                # the sockets close as the netns goes
        vm.call("proc.kill", handle=h)
    net.destroy()
    recorder.wait_counts(lambda c: c[closed] - before[closed] >= c[created] - before[created],
                         timeout=120, what="CLOSED for every connection of the deleted netns")
    assert probe.results().get(0, 0) > 0, "no request was queued"
    assert vm.run("ip netns list | grep bpfpm-gone || true").stdout.strip() == ""


@pytest.mark.topo(links=1, rate_mbit=50)
def test_disconnect_with_requests_pending_then_reconnect(topo, load_pm, recorder):
    """The client queues requests at CREATED and ACTIVE_ESTABLISHED, and
    disconnects (connect(AF_UNSPEC)) before they are served: they are
    dropped with the first connection. The reused socket is a new
    connection: CREATED again, and its own requests open its subflows."""
    topo.use_bpf_pm("client", "server")
    probe = load_pm("kfunc_probe")      # MODE_ERRNOS: requests from CREATED on

    with topo.transfer(2 * MiB, reconnect=True, subflows=2) as xfer:
        pass
    res = xfer.result
    res.assert_intact()
    ctok = res.client["conn"]["token"]
    evs = recorder.wait(lambda evs: count(evs, "CLOSED", ctok), what="the second CLOSED")
    clients = [e for e in evs if e.op == "CREATED" and not e.args[0]]
    assert len(clients) == 2, clients
    first = clients[0].loc_token
    assert first != ctok, "the reused socket kept its old token"
    assert [e.op for e in evs if e.loc_token == first] == ["CREATED", "CLOSED"], \
        "the first connection did more than be created and closed"
    assert len(res.subflows) >= 2, f"the reused socket opened no subflow:\n{res.table()}"
    assert rets(probe)[FROM_CREATED] == 0, "no request was queued at CREATED"


@pytest.mark.topo(links=1)
def test_pm_type_2_only_where_sock_ops_programs_can_run(topo, vm):
    """The BPF PM acts through sock_ops programs, which need CONFIG_CGROUP_BPF.
    Without it, net.mptcp.pm_type=2 is refused (EINVAL) and the old value
    stays: connections would otherwise get a path manager that never acts.
    With it, 2 is taken. `make config-test` runs this on a kernel built
    without CONFIG_CGROUP_BPF; make test on the usual one."""
    cgroup_bpf = vm.run("grep -qw __cgroup_bpf_run_filter_sock_ops /proc/kallsyms",
                        check=False).rc == 0
    r = vm.run(f"ip netns exec {topo.spec.server_ns} sysctl -w net.mptcp.pm_type=2",
               check=False)
    now = topo.sysctl("server", "net.mptcp.pm_type")
    if cgroup_bpf:
        assert r.rc == 0 and now == "2", f"pm_type=2 refused with cgroup BPF: {r}"
    else:
        assert r.rc != 0 and "Invalid argument" in r.stdout + r.stderr, r
        assert now == "0", f"pm_type changed to {now} without cgroup BPF"


@pytest.mark.topo(links=1)
def test_the_bpf_pm_is_chosen_as_the_kernel_chooses_path_managers(topo, vm):
    """Where the kernel chooses path managers by name (net.mptcp.path_manager,
    6.15 and later: 7.2), the series registers its PM with mptcp_pm_register()
    as "bpf": it is listed in available_path_managers, select_pm() writes its
    name, and pm_type, kept for compatibility, reads 2 and selects it too.
    On 6.12, which has only pm_type, 2 is the BPF PM."""
    by_name = vm.run("test -e /proc/sys/net/mptcp/path_manager", check=False).rc == 0
    wrote = topo.select_pm("bpf", "client")
    assert topo.sysctl("client", "net.mptcp.pm_type") == "2", wrote
    if not by_name:
        assert wrote == ["net.mptcp.pm_type=2"], wrote
        return
    available = topo.sysctl("client", "net.mptcp.available_path_managers").split()
    assert "bpf" in available, f"the BPF PM is not registered: {available}"
    assert wrote == ["net.mptcp.path_manager=bpf"], wrote
    topo.sysctl("client", "net.mptcp.pm_type", 0)
    assert topo.sysctl("client", "net.mptcp.path_manager") == "kernel"
    topo.sysctl("client", "net.mptcp.pm_type", 2)
    assert topo.sysctl("client", "net.mptcp.path_manager") == "bpf"
