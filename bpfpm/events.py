"""Decoding what the event_recorder BPF program saw (see bpf-pms/)."""

from __future__ import annotations

import collections
import dataclasses
import ipaddress
import socket
import struct

from .scenario import poll

# The BPF_SOCK_OPS_MPTCP_* ops in enum order: the recorder stores
# op - BPF_SOCK_OPS_MPTCP_CREATED_CB, so no op value is written here.
OPS = dict(enumerate([
    "CREATED", "ESTABLISHED", "CLOSED", "SUB_ESTABLISHED", "SUB_CLOSED",
    "ADD_ADDR", "RM_ADDR", "LOCAL_ADDR", "JOIN_REQ", "REQ_FAILED",
]))
FLAGS = {1: "server_side", 2: "fully_established", 4: "fallback", 8: "csum",
         16: "deny_join_id0"}


def ip(words: list[int], family: int) -> str | None:
    raw = struct.pack("<4I", *words)
    if family == socket.AF_INET:
        return str(ipaddress.IPv4Address(raw[:4]))
    if family == socket.AF_INET6:
        return str(ipaddress.IPv6Address(raw))
    return None


@dataclasses.dataclass
class Event:
    """One recorded op; args are the op's arguments, the kernel's args[1..3]."""
    seq: int
    op: str
    args: list[int]
    is_fullsock: bool
    family: int
    local: str | None
    remote: str | None
    lport: int
    rport: int
    loc_token: str
    rem_token: str
    flags: set[str]
    subflow_id: int
    local_words: list[int]
    remote_words: list[int]

    def addr(self, family: int | None = None) -> str | None:
        """The event's address, as text: the remote one of ADD_ADDR, the
        local one of LOCAL_ADDR (REQ_FAILED has both: see local_addr())."""
        words = self.local_words if self.op == "LOCAL_ADDR" else self.remote_words
        return ip(words, family or self.args[1])

    def local_addr(self, family: int | None = None) -> str | None:
        return ip(self.local_words, family or self.args[1])

    @classmethod
    def from_map(cls, v: dict) -> "Event":
        fam = v["family"]
        return cls(seq=v["seq"], op=OPS.get(v["op"], str(v["op"])), args=list(v["args"]),
                   is_fullsock=bool(v["is_fullsock"]), family=fam,
                   local=ip(v["local_ip"], fam), remote=ip(v["remote_ip"], fam),
                   lport=v["local_port"], rport=socket.ntohs(v["remote_port"] >> 16),
                   loc_token=f"{v['loc_token']:08x}", rem_token=f"{v['rem_token']:08x}",
                   flags={n for b, n in FLAGS.items() if v["flags"] & b},
                   subflow_id=v["subflow_id"], local_words=list(v["local_addr"]),
                   remote_words=list(v["remote_addr"]))


def decode(entries: list[dict]) -> list[Event]:
    evs = [Event.from_map(e["value"]) for e in entries if e["value"]["seq"]]
    return sorted(evs, key=lambda e: e.seq)


class Recorder:
    """The loaded event_recorder and what it has seen so far."""

    def __init__(self, pm):
        self.pm = pm

    def events(self) -> list[Event]:
        return decode(self.pm.map("events", nonzero=True))

    def counts(self) -> dict[int, int]:
        """The counters map: [0] events, [1 + op index] per op."""
        return {e["key"]: e["value"] for e in self.pm.map("counters")}

    def refuse_joins(self) -> None:
        self.pm.update("config", 0, (1).to_bytes(4, "little"))

    def wait(self, cond, timeout: float = 30, what: str = "events") -> list[Event]:
        """Poll until cond(events) is true; the events then."""
        return self._poll(self.events, cond, timeout, what,
                          lambda evs: "recorded:\n" + "\n".join(map(str, evs)))

    def wait_counts(self, cond, timeout: float = 30, what: str = "counts") -> dict[int, int]:
        """Poll the counters map alone until cond(counts) is true; the
        counts then. For waits on many connections: the events ring is
        full then, and reading and decoding its 2,048 slots takes seconds
        under TCG where the counters take milliseconds."""
        return self._poll(self.counts, cond, timeout, what,
                          lambda counts: "counters: " + ", ".join(
                              f"{OPS.get(k - 1, 'all') if k else 'all'} {v}"
                              for k, v in sorted(counts.items()) if v))

    def _poll(self, read, cond, timeout: float, what: str, show):
        """read() until cond(what it read) is true; that reading. On timeout
        the failure shows the last reading through show()."""
        last = None

        def probe():
            nonlocal last
            last = read()
            return cond(last)
        poll(probe, timeout, 0.2, lambda t: f"{what} not seen within {t:.0f}s; " + show(last),
             self.pm.guest.time_scale)
        return last

def count(evs: list[Event], op: str, token: str | None = None) -> int:
    return sum(1 for e in evs if e.op == op and (token is None or e.loc_token == token))


def by_token(evs: list[Event], token: str) -> dict[str, list[Event]]:
    out: dict[str, list[Event]] = collections.defaultdict(list)
    for e in evs:
        if e.loc_token == token:
            out[e.op].append(e)
    return out
