"""The BPF path managers, each against the in-kernel PM doing the same job.

Every scenario moves checksummed data; subflow sets are read from the
client socket itself (MPTCP_SUBFLOW_ADDRS / MPTCP_TCPINFO) during the
transfer.
"""

import pytest

from bpfpm.pmsetup import FULLMESH, Mesh
from bpfpm.topology import TopoSpec

MiB = 1 << 20
pytestmark = [pytest.mark.vm]


def limits(topo, subflows=8):
    for side in ("client", "server"):
        topo.limits(side, subflows=subflows, add_addr_accepted=8)


@pytest.mark.topo(links=1, rate_mbit=50)
@pytest.mark.parametrize("n", [2, 4, 8])
def test_ndiffports_opens_n_subflows_over_one_address_pair(topo, load_pm, n):
    limits(topo)
    topo.select_pm("bpf", "client")
    pm = load_pm("ndiffports")
    pm.set_config(n)

    with topo.transfer(8 * MiB, subflows=n) as xfer:
        pass

    res = xfer.result
    res.assert_intact()
    assert len(res.subflows) == n, res.table()
    assert res.pairs() == {(topo.spec.addr("client", 1), topo.spec.addr("server", 1))}
    assert len({sf["lport"] for sf in res.subflows}) == n, "source ports must differ"
    for sf in res.subflows:
        assert sf["bytes_acked"] > 0, f"a subflow carried no data:\n{res.table()}"
    assert pm.results() == {0: n - 1}, "kfunc calls: all should succeed"


@pytest.mark.topo(links=1, rate_mbit=50)
def test_ndiffports_is_bounded_by_the_subflow_limit(topo, load_pm):
    limits(topo, subflows=2)
    topo.select_pm("bpf", "client")
    pm = load_pm("ndiffports")
    pm.set_config(8)

    with topo.transfer(4 * MiB, subflows=3) as xfer:
        pass

    xfer.result.assert_intact()
    assert len(xfer.result.subflows) == 3, xfer.result.table()
    assert pm.results().get(28), "-ENOSPC expected once the limit is reached"


MESHES = {
    "2x2": (2, lambda t: Mesh(t.addrs("client"), t.addrs("server"))),
    "3x1": (3, lambda t: Mesh(t.addrs("client"), t.addrs("server")[:1])),
    "1x3": (3, lambda t: Mesh(t.addrs("client")[:1], t.addrs("server"))),
    "2x2-ipv6": (2, lambda t: Mesh(t.addrs("client", 6), t.addrs("server", 6))),
    # an IPv6 connection (dual-stack socket) meshing IPv4 and IPv6 addresses
    "2x2-dual-stack": (2, lambda t: Mesh(t.addrs("client", 6) + t.addrs("client"),
                                         t.addrs("server", 6)[:1] + t.addrs("server")
                                         + t.addrs("server", 6)[1:])),
}


# bpf-both: the BPF fullmesh on the server too, announcing its addresses
# itself; no endpoint on either side
@pytest.mark.parametrize("shape,pm", [(s, pm) for pm in ("kernel", "bpf") for s in MESHES]
                         + [(s, "bpf-both") for s in ("2x2", "1x3", "2x2-ipv6")])
def test_fullmesh_opens_every_pair(network, load_pm, shape, pm):
    links, mk = MESHES[shape]
    net = network(TopoSpec.simple(links, rate_mbit=30))
    mesh = mk(net.spec)
    FULLMESH[pm](net, mesh, load_pm)
    family = 6 if ":" in mesh.remote[0] else 4

    with net.transfer(8 * MiB, family=family, subflows=len(mesh.expected_pairs())) as xfer:
        pass

    res = xfer.result
    res.assert_intact()
    assert res.pairs() == mesh.expected_pairs(), res.table()
    assert len(res.subflows) == len(mesh.expected_pairs()), res.table()


@pytest.mark.topo(links=2, rate_mbit=20)
def test_map_reads_are_formatted_as_bpftool_formats_them(topo, load_pm):
    """The tests read maps with libbpf, formatted from the map's BTF
    (`bpftool map dump` takes 0.9 s per call under TCG): what bpftool
    shows, for every map of the fullmesh (nested structs and arrays, a hash
    keyed by token, counters) and of the event recorder while they see a
    connection."""
    t = topo.spec
    pm = FULLMESH["bpf"](topo, Mesh(t.addrs("client"), t.addrs("server")), load_pm)
    rec = load_pm("event_recorder")
    with topo.transfer(2 * MiB, hold=True, subflows=4) as xfer:
        xfer.wait_progress(0.1)
        for prog, maps in ((pm, ("locals", "signals", "conns", "retries", "pm_results")),
                           (rec, ("counters", "config"))):
            for m in maps:
                assert prog.map(m) == prog.map(m, bpftool=True), f"{prog.name} {m}"
        assert len(pm.map("conns")) == 1, "one connection, keyed by its token"
        used = [e for e in pm.map("locals", bpftool=True) if e["value"]["used"]]
        assert len(used) == 2 and pm.map("locals", nonzero=True) == used
        # the 2048 event slots, most unused: the recorded ones, as the tests read them
        recorded = [e for e in rec.map("events", bpftool=True) if e["value"]["seq"]]
        assert recorded and rec.map("events", nonzero=True) == recorded
    xfer.result.assert_intact()


@pytest.mark.topo(links=2, rate_mbit=20)
@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_fullmesh_follows_an_endpoint_added_then_removed(topo, load_pm, family):
    t = topo.spec
    FULLMESH["bpf"](topo, Mesh([t.addr("client", 1, family)], [t.addr("server", 1, family)]),
                    load_pm)
    new = "10.0.2.11" if family == 4 else "fd00:2::11"
    # nodad: the subflow binds to it right away
    topo.addr("client", 2, new, add=True)

    mon = topo.monitor("client")

    with topo.transfer(8 * MiB, family=family, hold=True) as xfer:
        xfer.wait_progress(0.1)
        topo.endpoint("client", new, "subflow", id=20)
        xfer.wait_progress(0.5)
        topo.endpoint_del("client", id=20)
        mon.wait_for_subflow("SF_CLOSED", local=new)

    res = xfer.result
    res.assert_intact()
    added = [sf for sf in res.subflows if sf["local"] == new]
    assert added, f"no subflow from the added address {new}:\n{res.table()}"
    assert added[0]["bytes_acked"] > 0, res.table()
    assert all(sf["local"] != new for sf in res.final_subflows), \
        f"the subflow of the removed address survived:\n{res.table()}"


@pytest.mark.topo(links=2, rate_mbit=20)
@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_fullmesh_joins_announced_address_and_leaves_it_on_rm_addr(topo, load_pm, family):
    t = topo.spec
    announced = t.addr("server", 2, family)
    FULLMESH["bpf"](topo, Mesh([t.addr("client", 1, family)], [t.addr("server", 1, family),
                                                               announced]), load_pm)
    mon = topo.monitor("client")

    with topo.transfer(8 * MiB, family=family, hold=True) as xfer:
        mon.wait_for("SF_ESTABLISHED")
        xfer.wait_progress(0.4)
        topo.endpoint_del("server", id=12)
        mon.wait_for("REMOVED")
        mon.wait_for_subflow("SF_CLOSED", remote=announced)

    res = xfer.result
    res.assert_intact()
    assert (t.addr("client", 1, family), announced) in res.pairs(), res.table()
    assert all(sf["remote"] != announced for sf in res.final_subflows), res.table()


@pytest.mark.topo(links=2, rate_mbit=30)
def test_every_pm_moves_data_over_all_its_subflows(topo, pm):
    with topo.transfer(8 * MiB, subflows=pm.expected(topo)) as xfer:
        pass

    res = xfer.result
    res.assert_intact()
    assert len(res.subflows) == pm.expected(topo), f"{pm}:\n{res.table()}"
    for sf in res.subflows:
        assert sf["bytes_acked"] > 0, f"{pm}: a subflow carried no data:\n{res.table()}"


@pytest.mark.topo(links=2)
def test_every_pm_is_harmless_when_the_peer_is_plain_tcp(topo, pm):
    with topo.transfer(4 * MiB, server_proto="tcp") as xfer:
        pass

    res = xfer.result
    res.assert_intact()
    assert res.fallback and len(res.subflows) == 0, f"{pm}: {res.client['conn']}"


@pytest.mark.topo(links=3, rate_mbit=30)
def test_policy_pm_refuses_joins_from_a_denied_prefix(topo, load_pm):
    import struct
    t = topo.spec
    limits(topo)
    topo.select_pm("bpf", "server")
    pm = load_pm("policy")
    # deny 10.0.2.0/24: used, family AF_INET, address, prefix length
    pm.update("deny", 0, struct.pack("<II", 1, 2) + bytes([10, 0, 2, 0]) + bytes(12)
              + struct.pack("<I", 24))
    topo.endpoint("client", t.addr("client", 2), "subflow", id=2)
    topo.endpoint("client", t.addr("client", 3), "subflow", id=3)

    with topo.transfer(8 * MiB) as xfer:
        pass

    res = xfer.result
    res.assert_intact()
    denied = t.addr("client", 2)
    # the server never had it; the client only saw its join handshake, reset
    assert all(sf["remote"] != denied for sf in res.server["subflows_seen"]), res.server
    assert all(sf["bytes_acked"] <= 1 for sf in res.subflows if sf["local"] == denied), \
        f"a subflow from the denied prefix carried data:\n{res.table()}"
    assert all(sf["local"] != denied for sf in res.final_subflows), res.table()
    assert (t.addr("client", 3), t.addr("server", 1)) in res.pairs(), res.table()
    decisions = {e["key"]: e["value"] for e in pm.map("decisions")}
    assert decisions[0] >= 1 and decisions[1] >= 1, decisions


@pytest.mark.topo(links=1, rate_mbit=50)
def test_fullmesh_retries_a_failed_pair_a_bounded_number_of_times(topo, load_pm):
    """A local address the host does not have: every open of its pair fails
    in the worker (REQ_FAILED, EADDRNOTAVAIL). fullmesh tries it again 3
    times, then gives up; the connection is not disturbed."""
    t = topo.spec
    pm = FULLMESH["bpf"](topo, Mesh([t.addr("client", 1), "192.0.2.1"], [t.addr("server", 1)]),
                         load_pm)

    with topo.transfer(2 * MiB, hold=True) as xfer:
        pm.wait(lambda: pm.map("retries")[1]["value"] >= 1, what="fullmesh giving up")
    res = xfer.result
    res.assert_intact()
    retries = [e["value"] for e in pm.map("retries")]
    assert retries == [3, 1], f"tried again {retries[0]} times, gave up {retries[1]}"
    assert pm.results() == {0: 4}, "4 requests queued: the first and 3 retries"
    assert len(res.subflows) == 1, res.table()
    assert res.client["conn"]["local_addr_used"] == 0, "address ids leaked on failure"
