"""Topology specs: what a scenario's network looks like (host and guest side).

A client netns and a server netns joined by N veth links. Link i (1-based)
carries 10.0.i.1/24 <-> 10.0.i.2/24 and fd00:i::1/64 <-> fd00:i::2/64, so
each link is its own subnet and routing picks the link by destination.
"""

from __future__ import annotations

import dataclasses
import ipaddress


@dataclasses.dataclass(frozen=True)
class Link:
    delay_ms: float = 0.0
    loss_pct: float = 0.0
    rate_mbit: float = 0.0       # HTB rate limit; 0 = unlimited

    def shaped(self) -> bool:
        return bool(self.delay_ms or self.loss_pct or self.rate_mbit)


@dataclasses.dataclass(frozen=True)
class TopoSpec:
    links: tuple[Link, ...] = (Link(), Link())
    ipv4: bool = True
    ipv6: bool = True
    client_ns: str = "bpfpm-cli"
    server_ns: str = "bpfpm-srv"

    def __post_init__(self):
        if not 1 <= len(self.links) <= 4:
            raise ValueError(f"1 to 4 links supported, got {len(self.links)}")
        if not (self.ipv4 or self.ipv6):
            raise ValueError("a topology needs IPv4, IPv6 or both")

    @classmethod
    def simple(cls, links: int = 2, **kw) -> "TopoSpec":
        link = Link(**{k: kw.pop(k) for k in ("delay_ms", "loss_pct", "rate_mbit") if k in kw})
        return cls(links=tuple(link for _ in range(links)), **kw)

    def ifname(self, side: str, i: int) -> str:
        return f"{side[0]}{i}"   # c1.., s1..

    def addr(self, side: str, i: int, family: int = 4) -> str:
        host = 1 if side == "client" else 2
        if family == 4:
            return f"10.0.{i}.{host}"
        return f"fd00:{i}::{host}"

    def addrs(self, side: str, family: int = 4) -> list[str]:
        return [self.addr(side, i, family) for i in range(1, len(self.links) + 1)]

    def link_of(self, addr: str) -> int:
        ip = ipaddress.ip_address(addr)
        if ip.version == 4:
            return int(str(ip).split(".")[2])
        return int(ip.exploded.split(":")[1], 16)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TopoSpec":
        d = dict(d)
        d["links"] = tuple(Link(**x) for x in d["links"])
        return cls(**d)
