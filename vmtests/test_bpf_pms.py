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
    topo.sysctl("client", "net.mptcp.pm_type", 2)
    pm = load_pm("ndiffports")
    pm.set_config(n)

    with topo.transfer(8 * MiB) as xfer:
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
    topo.sysctl("client", "net.mptcp.pm_type", 2)
    pm = load_pm("ndiffports")
    pm.set_config(8)

    with topo.transfer(4 * MiB) as xfer:
        pass

    xfer.result.assert_intact()
    assert len(xfer.result.subflows) == 3, xfer.result.table()
    assert pm.results().get(28), "-ENOSPC expected once the limit is reached"


MESHES = {
    "2x2": (2, lambda t: Mesh(t.addrs("client"), t.addrs("server"))),
    "3x1": (3, lambda t: Mesh(t.addrs("client"), t.addrs("server")[:1])),
    "1x3": (3, lambda t: Mesh(t.addrs("client")[:1], t.addrs("server"))),
    "2x2-ipv6": (2, lambda t: Mesh(t.addrs("client", 6), t.addrs("server", 6))),
}


@pytest.mark.parametrize("pm", ["kernel", "bpf"])
@pytest.mark.parametrize("shape", list(MESHES))
def test_fullmesh_opens_every_pair(network, load_pm, shape, pm):
    links, mk = MESHES[shape]
    net = network(TopoSpec.simple(links, rate_mbit=30))
    mesh = mk(net.spec)
    FULLMESH[pm](net, mesh, load_pm)
    family = 6 if ":" in mesh.remote[0] else 4

    with net.transfer(8 * MiB, family=family) as xfer:
        pass

    res = xfer.result
    res.assert_intact()
    assert res.pairs() == mesh.expected_pairs(), res.table()
    assert len(res.subflows) == len(mesh.expected_pairs()), res.table()
