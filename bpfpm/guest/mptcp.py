"""MPTCP path-manager configuration in a netns: which PM, endpoints,
limits, events.

Endpoints and limits go through pyroute2's MPTCP generic-netlink socket,
opened inside the netns. pyroute2 has no MPTCP event listener, so events
come from iproute2's `ip mptcp monitor`, whose output is parsed here.
"""

from __future__ import annotations

import re
import socket
import struct
import time
from pathlib import Path

from pyroute2.netlink.generic.mptcp import MPTCP

from . import mptcpinfo
from .netns import counters, inside

FLAGS = {"signal": 0x1, "subflow": 0x2, "backup": 0x4, "fullmesh": 0x8}
# net.mptcp.pm_type of each path manager: 0 and 1 upstream's, 2 the series'
PM_TYPES = {"kernel": 0, "userspace": 1, "bpf": 2}
SYSCTLS = Path("/proc/sys/net/mptcp")


def pm_sysctl(sysctls: Path, pm: str) -> tuple[str, str]:
    """The sysctl of `sysctls` (net.mptcp's dir) and the value that select
    `pm`: path_manager=<pm> where the kernel selects PMs by name (6.15 and
    later: 7.2) and lists `pm` among its available_path_managers, else
    pm_type (6.12; 7.2 keeps it for compatibility)."""
    if pm not in PM_TYPES:
        raise ValueError(f"no path manager {pm!r}; known: {', '.join(PM_TYPES)}")
    try:
        available = (sysctls / "available_path_managers").read_text().split()
    except FileNotFoundError:
        available = []
    if pm in available and (sysctls / "path_manager").exists():
        return "path_manager", pm
    return "pm_type", str(PM_TYPES[pm])


def select_pm(namespaces: list[str], pm: str) -> list[str]:
    """Hand the path management of each netns to `pm` ("kernel", "userspace",
    "bpf"); what was written in each, as `net.mptcp.<sysctl>=<value>`."""
    out = []
    for ns in namespaces:
        with inside(ns):        # /proc/sys/net is the netns of the thread opening it
            key, value = pm_sysctl(SYSCTLS, pm)
            with open(SYSCTLS / key, "w") as f:
                f.write(value)
        out.append(f"net.mptcp.{key}={value}")
    return out


def _nl(ns: str) -> MPTCP:
    with inside(ns):
        return MPTCP()


def limits(ns: str, subflows: int | None = None, add_addr_accepted: int | None = None) -> dict:
    with _nl(ns) as m:
        kw = {}
        if subflows is not None:
            kw["subflows"] = subflows
        if add_addr_accepted is not None:
            kw["add_addr_accepted"] = add_addr_accepted
        if kw:
            m.limits("set", **kw)
        msg = m.limits("show")[0]
        return {"subflows": msg.get_attr("MPTCP_PM_ATTR_SUBFLOWS"),
                "add_addr_accepted": msg.get_attr("MPTCP_PM_ATTR_RCV_ADD_ADDRS")}


def endpoint_add(ns: str, addr: str, flags: list[str], id: int | None = None,
                 ifindex: int | None = None, port: int | None = None) -> None:
    kw: dict = {"flags": sum(FLAGS[f] for f in flags)}
    kw["addr6" if ":" in addr else "addr4"] = addr
    if id is not None:
        kw["id"] = id
    if port is not None:
        kw["port"] = port
    if ifindex is not None:
        kw["if_idx"] = ifindex
    with _nl(ns) as m:
        m.endpoint("add", **kw)


def endpoint_del(ns: str, id: int) -> None:
    with _nl(ns) as m:
        m.endpoint("del", id=id)


def endpoint_flush(ns: str) -> None:
    with _nl(ns) as m:
        m.endpoint("flush")


def endpoints(ns: str) -> list[dict]:
    out = []
    with _nl(ns) as m:
        for msg in m.endpoint("show"):
            a = msg.get_attr("MPTCP_PM_ATTR_ADDR")
            if a is None:
                continue
            fam = a.get_attr("MPTCP_PM_ADDR_ATTR_FAMILY")
            addr = a.get_attr("MPTCP_PM_ADDR_ATTR_ADDR4" if fam == socket.AF_INET
                              else "MPTCP_PM_ADDR_ATTR_ADDR6")
            fl = a.get_attr("MPTCP_PM_ADDR_ATTR_FLAGS") or 0
            out.append({"id": a.get_attr("MPTCP_PM_ADDR_ATTR_ID"), "addr": addr,
                        "flags": [k for k, v in FLAGS.items() if fl & v]})
    return out


def flush(ns: str) -> None:
    with _nl(ns) as m:
        m.endpoint("flush")


_EVENT = re.compile(r"^\[\s*([A-Z_]+)\]\s*(.*)$")


def parse_monitor(text: str) -> list[dict]:
    """`ip mptcp monitor` lines -> [{'event': 'ANNOUNCED', 'token': ..., ...}]."""
    events = []
    for line in text.splitlines():
        m = _EVENT.match(line.strip())
        if not m:
            continue
        ev = {"event": m.group(1)}
        for kv in m.group(2).split():
            if "=" in kv:
                k, v = kv.split("=", 1)
                ev[k] = v
        events.append(ev)
    return events


LISTENER_CLOSED = re.compile(r"^\[\s*(LISTENER_CLOSED|UNKNOWN 16)\]", re.M)


def listener_probe(ns: str) -> int:
    """Open and close an MPTCP listener in `ns` (LISTENER_CREATED and
    LISTENER_CLOSED events); its port."""
    with inside(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_MPTCP)
    with s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        return s.getsockname()[1]


def abort_before_accept(server_ns: str, client_ns: str, addr: str, port: int,
                        family: int = 4, timeout: float = 30, wait_reset: bool = True) -> dict:
    """An MPTCP connection that the client aborts (SO_LINGER 0: MP_FASTCLOSE
    and RST) while it waits in the server's accept queue; the server accepts
    it once the reset has closed the initial subflow. The client's token, and
    the server's MPTCP_INFO after accept().

    wait_reset=False: the server accepts right after the client's close(),
    racing the msk worker that the reset woke: either closes the subflow."""
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    with inside(server_ns):
        lsn = socket.socket(af, socket.SOCK_STREAM, socket.IPPROTO_MPTCP)
    with inside(client_ns):
        cli = socket.socket(af, socket.SOCK_STREAM, socket.IPPROTO_MPTCP)
    with lsn, cli:
        lsn.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsn.bind((addr, port))
        lsn.listen(1)
        resets = counters(server_ns)["TcpEstabResets"]
        cli.connect((addr, port))
        cli.sendall(b"x" * 1000)    # the server's side gets past MP_CAPABLE
        client = mptcpinfo.connection(cli)
        if client["fallback"]:
            raise RuntimeError(f"the connection fell back to TCP: {client}")
        cli.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        cli.close()
        deadline = time.monotonic() + timeout
        while wait_reset and counters(server_ns)["TcpEstabResets"] == resets:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the client's reset did not reach {server_ns} "
                                   f"within {timeout:.0f}s (TcpEstabResets unchanged)")
            time.sleep(0.05)
        conn, _ = lsn.accept()
        with conn:
            server = mptcpinfo.connection(conn)
    return {"client_token": client["token"], "server": server}
