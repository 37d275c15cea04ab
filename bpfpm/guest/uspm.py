"""A userspace fullmesh path manager over generic netlink, for `make bench`.

The userspace PM (net.mptcp.pm_type=1, or path_manager=userspace) hands
the client's path management to userspace: the
kernel reports each connection on the `mptcp_pm_events` multicast group
and opens a subflow only when asked (MPTCP_PM_CMD_SUBFLOW_CREATE). This
daemon does what the in-kernel fullmesh and the BPF one do: once a
connection is established, a subflow from every local address to every
remote one, the announced ones (ANNOUNCED) included.

Why not Debian 12's mptcpd (0.12): its plugins are `sspi` (a subflow per
interface) and `addr_adv` (announce); neither builds a full mesh from
announced addresses, and a fullmesh plugin would be C code of ours inside
it anyway. pyroute2 has the `mptcp_pm` family's endpoint and limit
commands; the event attributes and the userspace-PM commands are added
here as its message classes.

Run in the client netns: `python -m bpfpm.guest.uspm --local A --local B
--report F`; SIGTERM ends it and writes what it did to F.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import os
import select
import signal
import socket
import struct
import sys
import time

from pyroute2.netlink import (NETLINK_GENERIC, NLA_F_NESTED, NLM_F_ACK, NLM_F_REQUEST,
                               NLMSG_ERROR, genlmsg, nlmsgerr)
from pyroute2.netlink.generic import GenericNetlinkSocket
from pyroute2.netlink.generic.mptcp import MPTCP_GENL_NAME, mptcp_msg

EVENT_CREATED, EVENT_ESTABLISHED, EVENT_CLOSED, EVENT_ANNOUNCED = 1, 2, 3, 6
CMD_SUBFLOW_CREATE = 10
SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NETLINK_EXT_ACK = 270, 1, 11
RCVBUF = 212992     # net.core.rmem_max's default: what a daemon gets without tuning


class mptcp_event(genlmsg):
    """An MPTCP_EVENT_* message: cmd is the event, attributes MPTCP_ATTR_*
    (include/uapi/linux/mptcp.h)."""
    prefix = "MPTCP_ATTR_"
    nla_map = (
        ("MPTCP_ATTR_UNSPEC", "none"),
        ("MPTCP_ATTR_TOKEN", "uint32"),
        ("MPTCP_ATTR_FAMILY", "uint16"),
        ("MPTCP_ATTR_LOC_ID", "uint8"),
        ("MPTCP_ATTR_REM_ID", "uint8"),
        ("MPTCP_ATTR_SADDR4", "ip4addr"),
        ("MPTCP_ATTR_SADDR6", "ip6addr"),
        ("MPTCP_ATTR_DADDR4", "ip4addr"),
        ("MPTCP_ATTR_DADDR6", "ip6addr"),
        ("MPTCP_ATTR_SPORT", "be16"),
        ("MPTCP_ATTR_DPORT", "be16"),
        ("MPTCP_ATTR_BACKUP", "uint8"),
        ("MPTCP_ATTR_ERROR", "uint8"),
        ("MPTCP_ATTR_FLAGS", "uint16"),
        ("MPTCP_ATTR_TIMEOUT", "uint32"),
        ("MPTCP_ATTR_IF_IDX", "int32"),
        ("MPTCP_ATTR_RESET_REASON", "uint32"),
        ("MPTCP_ATTR_RESET_FLAGS", "uint32"),
        ("MPTCP_ATTR_SERVER_SIDE", "uint8"),
    )


class pm_cmd(genlmsg):
    """The userspace-PM commands' attributes (MPTCP_PM_ATTR_*): pyroute2's
    mptcp_msg stops at SUBFLOWS."""
    prefix = "MPTCP_PM_ATTR_"
    nla_map = mptcp_msg.nla_map + (
        ("MPTCP_PM_ATTR_TOKEN", "uint32"),
        ("MPTCP_PM_ATTR_LOC_ID", "uint8"),
        ("MPTCP_PM_ATTR_ADDR_REMOTE", "pm_addr"),
    )
    pm_addr = mptcp_msg.pm_addr


def _addr(ip: str, port: int = 0, id: int | None = None) -> dict:
    attrs = [("MPTCP_PM_ADDR_ATTR_FAMILY", socket.AF_INET), ("MPTCP_PM_ADDR_ATTR_ADDR4", ip)]
    if id is not None:
        attrs.append(("MPTCP_PM_ADDR_ATTR_ID", id))
    if port:
        attrs.append(("MPTCP_PM_ADDR_ATTR_PORT", port))
    return {"attrs": attrs}


class Daemon:
    """Events come from a plain netlink socket, decoded by mptcp_event: a
    pyroute2 socket reads ahead into its own queue, so select() on it can
    sleep on events already received. Commands are encoded by pm_cmd and
    sent on a second socket, with extended acks for the kernel's reason."""

    def __init__(self, local: list[str]):
        self.local = local
        with GenericNetlinkSocket() as g:      # family and group ids
            g.bind(MPTCP_GENL_NAME, pm_cmd)
            self.family, group = g.prid, g.mcast_groups["mptcp_pm_events"]
        self.events = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        self.events.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        self.events.bind((0, 0))
        self.events.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
        self.cmds = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        self.cmds.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        self.cmds.bind((0, 0))
        self.seq = 0
        self.conns: dict[int, dict] = {}
        self.stats = {"events": 0, "created": 0, "create_failed": {}, "overruns": 0,
                      "connections": 0}

    def subflow_create(self, token: int, local: str, local_id: int, remote: str,
                       port: int) -> None:
        msg = pm_cmd()
        msg["cmd"] = CMD_SUBFLOW_CREATE
        msg["version"] = 1
        msg["attrs"] = [("MPTCP_PM_ATTR_TOKEN", token),
                        ("MPTCP_PM_ATTR_ADDR", _addr(local, id=local_id), NLA_F_NESTED),
                        ("MPTCP_PM_ATTR_ADDR_REMOTE", _addr(remote, port), NLA_F_NESTED)]
        self.seq += 1
        msg["header"] = {"type": self.family, "flags": NLM_F_REQUEST | NLM_F_ACK,
                         "sequence_number": self.seq}
        msg.encode()
        self.cmds.send(msg.data)
        code, why = self._ack()
        if code == 0:
            self.stats["created"] += 1
            return
        k = errno.errorcode.get(code, str(code))
        n = self.stats["create_failed"][k] = self.stats["create_failed"].get(k, 0) + 1
        if n <= 3:
            print(f"subflow create {local} -> {remote}:{port} (token {token:08x}): "
                  f"{os.strerror(code)} {why}", file=sys.stderr, flush=True)

    def _ack(self) -> tuple[int, str]:
        """The errno of our request's NLMSG_ERROR and the extack message."""
        while True:
            data = self.cmds.recv(65536)
            length, kind, _flags, seq = struct.unpack_from("=IHHI", data, 0)
            if kind != NLMSG_ERROR or seq != self.seq:
                continue
            err = nlmsgerr(data[:length])
            err.decode()
            return -err["error"], err.get_attr("NLMSGERR_ATTR_MSG") or ""

    def mesh(self, token: int) -> None:
        c = self.conns[token]
        if not c["established"]:
            return
        for remote in c["remotes"]:
            for local in self.local:
                pair = (local, remote)
                if pair in c["opened"] or pair == (c["local"], c["remote"]):
                    continue
                c["opened"].add(pair)
                # the kernel takes an address without an id as id 0, the
                # initial subflow's: every other one needs its own
                local_id = 0 if local == c["local"] else 1 + self.local.index(local)
                self.subflow_create(token, local, local_id, remote, c["port"])

    def handle(self, m) -> None:
        ev, token = m["cmd"], m.get_attr("MPTCP_ATTR_TOKEN")
        self.stats["events"] += 1
        if ev == EVENT_CREATED and not m.get_attr("MPTCP_ATTR_SERVER_SIDE"):
            remote = m.get_attr("MPTCP_ATTR_DADDR4")
            if remote is None:      # IPv6: not part of this bench
                return
            self.stats["connections"] += 1
            self.conns[token] = {"local": m.get_attr("MPTCP_ATTR_SADDR4"), "remote": remote,
                                 "port": m.get_attr("MPTCP_ATTR_DPORT"), "remotes": [remote],
                                 "opened": set(), "established": False}
        elif token not in self.conns:
            return
        elif ev == EVENT_ESTABLISHED:
            self.conns[token]["established"] = True
            self.mesh(token)
        elif ev == EVENT_ANNOUNCED:
            remote = m.get_attr("MPTCP_ATTR_DADDR4")
            if remote and remote not in self.conns[token]["remotes"]:
                self.conns[token]["remotes"].append(remote)
                self.mesh(token)
        elif ev == EVENT_CLOSED:
            del self.conns[token]

    def serve(self, stop) -> None:
        while not stop():
            if not select.select([self.events], [], [], 0.5)[0]:
                continue
            try:
                data = self.events.recv(1 << 20)
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                # the socket's buffer overflowed: those events are gone
                self.stats["overruns"] += 1
                continue
            off = 0
            while off + 16 <= len(data):
                length = struct.unpack_from("=I", data, off)[0]
                if length < 16:
                    break
                m = mptcp_event(data[off:off + length])
                m.decode()
                self.handle(m)
                off += (length + 3) & ~3


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bpfpm.guest.uspm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--local", action="append", required=True,
                   help="a local IPv4 address of the mesh (repeat)")
    p.add_argument("--report", required=True, help="JSON written at SIGTERM")
    a = p.parse_args(argv)
    for ip in a.local:
        ipaddress.IPv4Address(ip)
    d = Daemon(a.local)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(time.monotonic()))
    with open(a.report + ".ready", "w") as f:
        f.write(str(os.getpid()))
    try:
        d.serve(lambda: bool(stopping))
    finally:
        tmp = a.report + ".tmp"
        with open(tmp, "w") as f:
            json.dump(d.stats, f)
        os.replace(tmp, a.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
