"""Build and tear down a TopoSpec in the guest with pyroute2."""

from __future__ import annotations

import contextlib
import errno
import socket
import subprocess

import pyroute2.netns as netns
from pyroute2.iproute.linux import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..topology import TopoSpec

SYSCTLS = {
    "net/ipv4/conf/all/rp_filter": "0",
    "net/ipv4/conf/default/rp_filter": "0",
    "net/ipv6/conf/all/accept_dad": "0",
    "net/ipv6/conf/default/accept_dad": "0",
    "net/ipv4/tcp_no_metrics_save": "1",
}


@contextlib.contextmanager
def inside(ns: str):
    """Run the block with this thread in netns `ns` (sockets opened here stay there)."""
    netns.pushns(ns)
    try:
        yield
    finally:
        netns.popns()


def enter(ns: str) -> None:
    """Move this process (a fresh fork: one thread) into netns `ns` for good."""
    netns.setns(ns, flags=0)


def sysctl(ns: str, key: str, value: str | None = None) -> str:
    with inside(ns):
        path = "/proc/sys/" + key.replace(".", "/") if "/" not in key else "/proc/sys/" + key
        if value is not None:
            with open(path, "w") as f:
                f.write(str(value))
        with open(path) as f:
            return f.read().strip()


def counters(ns: str) -> dict[str, int]:
    """The netns's SNMP and extended counters (what `nstat -az` shows),
    named as nstat names them: TcpEstabResets, MPTcpExtAddAddr, ..."""
    out: dict[str, int] = {}
    with inside(ns):
        for name in ("snmp", "netstat"):
            # thread-self: this thread's netns; /proc/self/net is the leader's
            with open(f"/proc/thread-self/net/{name}") as f:
                lines = f.read().splitlines()
            for head, vals in zip(lines[::2], lines[1::2]):
                prefix, *keys = head.split()
                for k, v in zip(keys, vals.split()[1:]):
                    out[prefix.rstrip(":") + k] = int(v)
    return out


def _remove_ns(name: str) -> None:
    try:
        netns.remove(name)
    except OSError as e:
        if e.errno not in (errno.ENOENT,):
            raise


def create(spec: TopoSpec) -> dict:
    """Both netns, their veth pairs made in place, addressed and up. One
    netlink socket per netns and no link dumps: each request through
    pyroute2 costs 5-10 ms of Python under TCG, so the 36 requests this
    took (a lookup per link, each pair made in the init netns and then
    moved) were a test's half second; now 2 + 7 per link."""
    for ns in (spec.client_ns, spec.server_ns):
        if ns in netns.listnetns():
            _remove_ns(ns)
        netns.create(ns)
        with inside(ns):
            for k, v in SYSCTLS.items():
                with open("/proc/sys/" + k, "w") as f:
                    f.write(v)
    with IPRoute() as ipr:
        for i, _ in enumerate(spec.links, 1):
            ipr.link("add", ifname=spec.ifname("client", i), kind="veth",
                     net_ns_fd=spec.client_ns,
                     peer={"ifname": spec.ifname("server", i), "net_ns_fd": spec.server_ns})
    for side, ns in (("client", spec.client_ns), ("server", spec.server_ns)):
        with inside(ns), IPRoute() as ipr:
            # the socket's netns is this thread's: names resolve in ns
            ipr.link("set", index=socket.if_nametoindex("lo"), state="up")
            for i, link in enumerate(spec.links, 1):
                idx = socket.if_nametoindex(spec.ifname(side, i))
                if spec.ipv4:
                    ipr.addr("add", index=idx, address=spec.addr(side, i, 4), prefixlen=24)
                if spec.ipv6:
                    ipr.addr("add", index=idx, address=spec.addr(side, i, 6), prefixlen=64,
                             flags=0x02)  # IFA_F_NODAD
                ipr.link("set", index=idx, state="up")
                if link.shaped():
                    _shape(ipr, idx, link)
    return {"client_ns": spec.client_ns, "server_ns": spec.server_ns}


def _shape(ipr: IPRoute, idx: int, link) -> None:
    netem = {}
    if link.delay_ms:
        netem["delay"] = int(link.delay_ms * 1000)
    if link.loss_pct:
        netem["loss"] = link.loss_pct
    if link.rate_mbit:
        ipr.tc("add", "htb", idx, 0x10000, default=0x10)
        ipr.tc("add-class", "htb", idx, 0x10010, parent=0x10000,
               rate=f"{link.rate_mbit}mbit", burst=64 * 1024, prio=1)
        if netem:
            ipr.tc("add", "netem", idx, 0x100000, parent=0x10010, **netem)
    elif netem:
        ipr.tc("add", "netem", idx, 0x10000, **netem)


def link_set(spec: TopoSpec, i: int, up: bool) -> None:
    """Set link i down/up on both ends (a cable pulled, then plugged back)."""
    for side, ns in (("client", spec.client_ns), ("server", spec.server_ns)):
        with inside(ns), IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=spec.ifname(side, i))[0]
            ipr.link("set", index=idx, state="up" if up else "down")


def addr(ns: str, ifname: str, addr: str, add: bool) -> None:
    """Add/remove one address (idempotent); /24 for IPv4, /64 for IPv6."""
    family = 6 if ":" in addr else 4
    with inside(ns), IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)[0]
        plen = 24 if family == 4 else 64
        kw = {"flags": 0x02} if family == 6 else {}
        try:
            ipr.addr("add" if add else "del", index=idx, address=addr, prefixlen=plen, **kw)
        except NetlinkError as e:
            if not (add and e.code == errno.EEXIST) and not (not add and e.code == errno.EADDRNOTAVAIL):
                raise


def strip_tcp_option(ns: str, family: int, kind: int, min_len: int) -> None:
    """A middlebox in front of `ns`: TCP option `kind` is stripped (xt TCPOPTSTRIP)
    from arriving segments of at least `min_len` bytes, i.e. from data segments
    but not from the handshake. Goes away with the netns."""
    tool = "iptables-legacy" if family == 4 else "ip6tables-legacy"
    argv = ["ip", "netns", "exec", ns, tool, "-w", "-t", "mangle", "-A", "PREROUTING",
            "-p", "tcp", "-m", "length", "--length", f"{min_len}:65535",
            "-j", "TCPOPTSTRIP", "--strip-options", str(kind)]
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")


def drop_tcp_input(ns: str, family: int, on: bool) -> None:
    """Drop (on) or stop dropping (off) every TCP segment arriving in `ns`:
    a link that loses one direction only. Goes away with the netns."""
    tool = "iptables-legacy" if family == 4 else "ip6tables-legacy"
    argv = ["ip", "netns", "exec", ns, tool, "-w", "-I" if on else "-D", "INPUT",
            "-p", "tcp", "-j", "DROP"]
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")


def destroy(spec: TopoSpec) -> None:
    for ns in (spec.client_ns, spec.server_ns):
        if ns in netns.listnetns():
            _remove_ns(ns)
