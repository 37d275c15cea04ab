"""Path-manager set-ups a scenario can be run against.

Each one configures a Network for "open subflows like X": the in-kernel
netlink PM through endpoints and limits, or a BPF PM selected on the
client (Network.select_pm) plus its program and maps. The server
announces its other addresses through in-kernel signal endpoints, or, for
"bpf-both", through the BPF fullmesh too: then no endpoint exists at all.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import struct

from .scenario import Network

LIMIT = 8


def _addr_bytes(addr: str) -> bytes:
    ip = ipaddress.ip_address(addr)
    fam = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    raw = ip.packed + bytes(16 - len(ip.packed))
    return struct.pack("<I", fam) + raw


@dataclasses.dataclass
class Mesh:
    """Which addresses take part: client locals and server addresses."""
    local: list[str]
    remote: list[str]          # remote[0] is the address the client connects to

    def expected_pairs(self) -> set[tuple[str, str]]:
        return {(l, r) for l in self.local for r in self.remote
                if (":" in l) == (":" in r)}


def common(net: Network, mesh: Mesh, signal: bool = True) -> None:
    for side in ("client", "server"):
        net.limits(side, subflows=LIMIT, add_addr_accepted=LIMIT)
    # A lost announcement waits add_addr_timeout (120 s by default) to be
    # sent again. Seen once on a loaded host (dual stack: the second IPv6
    # address never announced within the scenario): 1 s.
    net.sysctl("server", "net.mptcp.add_addr_timeout", 1)
    for i, addr in enumerate(mesh.remote[1:] if signal else [], 2):
        net.endpoint("server", addr, "signal", id=10 + i)


def kernel_fullmesh(net: Network, mesh: Mesh, load_pm) -> None:
    common(net, mesh)
    for i, addr in enumerate(mesh.local, 1):
        net.endpoint("client", addr, "subflow", "fullmesh", id=i)


def bpf_fullmesh(net: Network, mesh: Mesh, load_pm, both_ends: bool = False):
    """The BPF fullmesh on the client; both_ends: on the server too, which
    announces mesh.remote[1:] itself (the `signals` map), no endpoint."""
    common(net, mesh, signal=not both_ends)
    pm = load_pm("fullmesh")
    net.select_pm("bpf", *(("client", "server") if both_ends else ("client",)))
    for i, addr in enumerate(mesh.local):
        pm.update("locals", i, struct.pack("<I", 1) + _addr_bytes(addr))
    for i, addr in enumerate(mesh.remote[1:] if both_ends else []):
        pm.update("signals", i, struct.pack("<I", 1) + _addr_bytes(addr))
    return pm


def bpf_fullmesh_both_ends(net: Network, mesh: Mesh, load_pm):
    return bpf_fullmesh(net, mesh, load_pm, both_ends=True)


FULLMESH = {"kernel": kernel_fullmesh, "bpf": bpf_fullmesh, "bpf-both": bpf_fullmesh_both_ends}


def bpf_backup(net: Network, regular: list[tuple[str, str]], backup: list[tuple[str, str]],
               load_pm):
    """The BPF backup PM on both ends (the server only accepts): a subflow
    for each (local, remote) pair of `regular` (the initial one aside) and
    of `backup`, the latter as backup."""
    net.use_bpf_pm("client", "server", subflows=LIMIT, add_addr_accepted=LIMIT)
    pm = load_pm("backup")
    pairs = [(p, 0) for p in regular] + [(p, 1) for p in backup]
    for i, ((local, remote), bk) in enumerate(pairs):
        pm.update("locals", i, struct.pack("<II", 1, bk) + _addr_bytes(local)
                  + _addr_bytes(remote))
    return pm


def _ndiffports(net: Network, load_pm):
    for side in ("client", "server"):
        net.limits(side, subflows=LIMIT, add_addr_accepted=LIMIT)
    net.select_pm("bpf", "client")
    pm = load_pm("ndiffports")
    pm.set_config(2)
    return pm


def _policy(net: Network, load_pm):
    """Server: BPF policy PM denying nothing; client: in-kernel subflow endpoints."""
    for side in ("client", "server"):
        net.limits(side, subflows=LIMIT, add_addr_accepted=LIMIT)
    net.select_pm("bpf", "server")
    pm = load_pm("policy")
    for i in range(2, len(net.spec.links) + 1):
        net.endpoint("client", net.spec.addr("client", i), "subflow", id=i)
    return pm


@dataclasses.dataclass(frozen=True)
class PMKind:
    """One way to run "open the extra subflows" on a Network: apply() it
    before the transfer; expected() is the subflow count it should reach."""
    name: str
    apply: object
    expected: object

    def __str__(self) -> str:
        return self.name


def _mesh(net: Network) -> Mesh:
    return Mesh(net.spec.addrs("client"), net.spec.addrs("server"))


KINDS = {
    "kernel": PMKind("kernel", lambda net, lp: kernel_fullmesh(net, _mesh(net), lp),
                     lambda net: len(_mesh(net).expected_pairs())),
    "bpf-fullmesh": PMKind("bpf-fullmesh", lambda net, lp: bpf_fullmesh(net, _mesh(net), lp),
                           lambda net: len(_mesh(net).expected_pairs())),
    "bpf-ndiffports": PMKind("bpf-ndiffports", _ndiffports, lambda net: 2),
    "bpf-policy": PMKind("bpf-policy", _policy, lambda net: len(net.spec.links)),
}
