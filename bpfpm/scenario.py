"""Scenario building blocks used by vmtests: a network and its transfers.

    net = Network(vm, TopoSpec.simple(2))
    net.use_bpf_pm("client", "server")
    with net.transfer(nbytes=8 << 20) as xfer:
        xfer.wait_progress(0.25)
        ...
    xfer.result.assert_intact()
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import re

import tenacity

from .topology import TopoSpec

_ports = itertools.count(10000)

_SS_SUBFLOW = re.compile(r"^\s*\d+\s+\d+\s+\[?([0-9a-fA-F.:]+?)\]?:\d+\s+"
                         r"\[?([0-9a-fA-F.:]+?)\]?:\d+\s.*?tcp-ulp-mptcp(?: flags:(\S+))?")


def parse_subflow_flags(text: str) -> list[dict]:
    """`ss -HtinO state established` -> [{'local', 'remote', 'flags'}], one
    per MPTCP subflow. flags are ss's letters: b the local end is backup, B
    the peer's (MP_JOIN or MP_PRIO with the B bit), j/J joined, e fully
    established..."""
    return [{"local": m.group(1), "remote": m.group(2), "flags": m.group(3) or ""}
            for m in map(_SS_SUBFLOW.match, text.splitlines()) if m]


def poll(fn, timeout: float, every: float, failure, scale: float):
    """fn() until it returns something truthy (returned). After `timeout`
    times `scale` (the guest's time_scale: waits are written for the normal
    kernel under TCG, a debug kernel is several times slower),
    AssertionError with failure(seconds) as message."""
    t = timeout * scale
    try:
        return tenacity.Retrying(stop=tenacity.stop_after_delay(t),
                                 wait=tenacity.wait_fixed(every),
                                 retry=tenacity.retry_if_result(lambda r: not r))(fn)
    except tenacity.RetryError:
        raise AssertionError(failure(t)) from None


@dataclasses.dataclass
class TransferResult:
    nbytes: int
    client: dict
    server: dict

    def assert_intact(self) -> None:
        c, s = self.client, self.server
        assert c["bytes"] == self.nbytes, f"client sent {c['bytes']} of {self.nbytes} bytes"
        assert s["bytes"] == self.nbytes, f"server received {s['bytes']} of {self.nbytes} bytes"
        assert s["digest"] == c["digest"], (
            f"data corrupted: client's digest {c['digest']}, server's {s['digest']}")
        assert c["ok"] and c["server_digest"] == c["digest"], \
            "client did not get the server's matching digest back"

    @property
    def subflows(self) -> list[dict]:
        """Every subflow the client saw during the transfer (sender side)."""
        return self.client["subflows_seen"]

    @property
    def final_subflows(self) -> list[dict]:
        """The client's subflows once all the data is sent (and the block of a
        hold=True transfer ended), before either side closes."""
        return self.client["subflows_final"]

    @property
    def fallback(self) -> bool:
        return bool(self.client["conn"].get("fallback"))

    def pairs(self) -> set[tuple[str, str]]:
        return {(sf["local"], sf["remote"]) for sf in self.subflows}

    def table(self) -> str:
        rows = [f"  {'local':>22} {'remote':>22} {'bytes acked':>12}"]
        for sf in sorted(self.subflows, key=lambda s: (s["local"], s["lport"])):
            rows.append(f"  {sf['local'] + ':' + str(sf['lport']):>22} "
                        f"{sf['remote'] + ':' + str(sf['rport']):>22} {sf['bytes_acked']:>12}")
        return "\n".join(rows)


class Transfer:
    """A checksummed client->server transfer running in the guest."""

    def __init__(self, net: "Network", nbytes: int, server_addr: str, port: int,
                 server_proto: str, client_proto: str, bind: str | None, seed: int,
                 hold: bool = False, subflows: int = 0, reconnect: bool = False):
        self.net, self.nbytes, self.addr, self.port = net, nbytes, server_addr, port
        self.server_proto, self.client_proto, self.bind, self.seed = \
            server_proto, client_proto, bind, seed
        self.hold = hold
        self.subflows = subflows
        self.reconnect = reconnect
        self.result: TransferResult | None = None

    def start(self) -> "Transfer":
        a, t = self.net.guest, self.net.spec
        fam = 6 if ":" in self.addr else 4
        self.srv = a.call("xfer.server", ns=t.server_ns, port=self.port, family=fam,
                          proto=self.server_proto, count=2 if self.reconnect else 1)
        self.cli = a.call("xfer.client", ns=t.client_ns, addr=self.addr, port=self.port,
                          nbytes=self.nbytes, seed=self.seed, proto=self.client_proto,
                          bind=self.bind, hold=self.hold, await_subflows=self.subflows,
                          await_timeout=60 * self.net.scale, reconnect=self.reconnect)
        return self

    def release(self) -> None:
        """hold=True: the client may now close the connection."""
        self.net.guest.call("xfer.release", handle=self.cli)

    def progress(self) -> float:
        sent, total, _rc = self.net.guest.call("xfer.progress", handle=self.cli)
        return sent / total if total else 0.0

    def wait_progress(self, fraction: float, timeout: float = 60) -> None:
        """Block until the client has sent `fraction` of the data."""
        def check():
            sent, total, rc = self.net.guest.call("xfer.progress", handle=self.cli)
            if rc is not None and not (total and sent >= fraction * total):
                raise AssertionError(f"client exited (rc {rc}) at {sent}/{total} bytes")
            return total and sent >= fraction * total
        poll(check, timeout, 0.05,
             lambda t: f"transfer did not reach {fraction:.0%} in {t:.0f}s", self.net.scale)

    def wait(self, timeout: float = 180) -> TransferResult:
        a, k = self.net.guest, self.net.scale
        if self.hold:
            self.release()
        timeout *= k
        cli = a.call("proc.wait", handle=self.cli, timeout=timeout, _timeout=timeout + 30)
        srv = a.call("proc.wait", handle=self.srv, timeout=30 * k, _timeout=60 * k)
        if cli["report"] is None or srv["report"] is None:
            raise AssertionError(
                f"transfer failed: client rc {cli['rc']} stderr:\n{cli['stderr']}\n"
                f"server rc {srv['rc']} stderr:\n{srv['stderr']}")
        self.result = TransferResult(self.nbytes, cli["report"],
                                     srv["report"]["connections"][-1])
        return self.result

    def __enter__(self) -> "Transfer":
        return self.start()

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.wait()
        else:
            for h in (self.cli, self.srv):
                try:
                    self.net.guest.call("proc.kill", handle=h)
                except Exception:
                    pass


class Network:
    """A TopoSpec built in the guest, and what scenarios do with it."""

    def __init__(self, guest, spec: TopoSpec, capture: str | None = None):
        self.guest = guest      # a VM: call(), run(), time_scale
        self.spec = spec
        self.transfers: list[Transfer] = []
        self.pcap = capture     # where the guest writes the capture of the links
        self._capture: int | None = None

    def create(self) -> "Network":
        """Build the topology in the guest; with `capture`, a tcpdump of the
        client's links runs from before the first packet until destroy()."""
        self.guest.call("topo.create", spec=self.spec.to_dict())
        if self.pcap:
            self._capture = self.guest.call("capture.start", ns=self.spec.client_ns,
                                            path=self.pcap, timeout=30 * self.scale)
        return self

    def destroy(self) -> None:
        try:
            if self._capture is not None:
                self.guest.call("capture.stop", handle=self._capture)
        finally:
            self._capture = None
            self.guest.call("topo.destroy", spec=self.spec.to_dict())

    def state(self) -> str:
        """What a failing test's reader asks for first, from both sides: the
        MPTCP sockets and subflows, endpoints and limits, the MPTcp
        counters, and the BPF programs and maps loaded (those of bpfpm's
        PMs dumped)."""
        script = []
        for side in ("client", "server"):
            ns = self.ns(side)
            x = f"ip netns exec {ns}"
            script += [f"echo '=== {side} ({ns})'",
                       f"echo '--- ss -Mani'; {x} ss -Mani",
                       f"echo '--- ss -tinO (subflows)'; {x} ss -tinO",
                       f"echo '--- ip mptcp limits'; ip -n {ns} mptcp limits show",
                       f"echo '--- ip mptcp endpoint'; ip -n {ns} mptcp endpoint show",
                       f"echo '--- nstat MPTcp (non-zero)'; {x} nstat -as | grep -i mptcp",
                       f"echo '--- sysctl net.mptcp'; {x} sysctl net.mptcp"]
        script += ["echo '=== BPF'",
                   "echo '--- bpftool prog show'; bpftool prog show",
                   "echo '--- bpftool map show'; bpftool map show",
                   "echo '--- bpftool cgroup tree'; bpftool cgroup tree",
                   "for m in /sys/fs/bpf/bpfpm/*/maps/*; do [ -e \"$m\" ] || continue; "
                   "echo \"--- bpftool map dump pinned $m\"; bpftool map dump pinned \"$m\" "
                   "| head -400; done"]
        res = self.guest.run("; ".join(f"( {c} ) 2>&1" for c in script),
                             timeout=60 * self.scale, check=False)
        return res.stdout + res.stderr

    # -- in-kernel path manager --------------------------------------------
    def limits(self, side: str, subflows: int = 8, add_addr_accepted: int = 8) -> dict:
        return self.guest.call("mptcp.limits", ns=self.ns(side), subflows=subflows,
                               add_addr_accepted=add_addr_accepted)

    def endpoint(self, side: str, addr: str, *flags: str, id: int | None = None) -> None:
        self.guest.call("mptcp.endpoint_add", ns=self.ns(side), addr=addr,
                        flags=list(flags), id=id)

    def endpoint_del(self, side: str, id: int) -> None:
        self.guest.call("mptcp.endpoint_del", ns=self.ns(side), id=id)

    def flush_endpoints(self, side: str) -> None:
        self.guest.call("mptcp.endpoint_flush", ns=self.ns(side))

    def endpoints(self, side: str) -> list[dict]:
        return self.guest.call("mptcp.endpoints", ns=self.ns(side))

    # -- which path manager --------------------------------------------------
    def select_pm(self, pm: str, *sides: str) -> list[str]:
        """Hand the path management of each of `sides` to `pm`: "bpf" (the
        series' BPF PM), "kernel" (the in-kernel PM, every netns's default)
        or "userspace". The guest writes net.mptcp.path_manager=<pm> where
        the kernel lists `pm` in net.mptcp.available_path_managers (7.2),
        else net.mptcp.pm_type (6.12; bpfpm.guest.mptcp.pm_sysctl), for all
        sides in one call; what it wrote, per side."""
        return self.guest.call("mptcp.select_pm", ns=[self.ns(s) for s in sides], pm=pm)

    def use_bpf_pm(self, *sides: str, subflows: int = 8, add_addr_accepted: int = 8) -> None:
        """The BPF PM and the subflow limits on each of `sides`."""
        self.select_pm("bpf", *sides)
        for side in sides:
            self.limits(side, subflows=subflows, add_addr_accepted=add_addr_accepted)

    def mptcp_sockets(self) -> str:
        """`ss -HMna` of both namespaces: the MPTCP sockets still there."""
        return "".join(self.guest.run(f"ip netns exec {ns} ss -HMna").stdout
                       for ns in (self.spec.client_ns, self.spec.server_ns)).strip()

    def subflow_flags(self, side: str) -> list[dict]:
        """The established MPTCP subflows of `side`, with their flags as ss
        shows them (parse_subflow_flags)."""
        return parse_subflow_flags(self.guest.run(
            f"ip netns exec {self.ns(side)} ss -HtinO state established").stdout)

    def counters(self, side: str) -> dict[str, int]:
        """The side's SNMP and MIB counters, by nstat name (MPTcpExtAddAddr, ...)."""
        return self.guest.call("counters", ns=self.ns(side))

    def wait_counter(self, side: str, name: str, at_least: int, timeout: float = 30) -> int:
        """Wait until counter `name` of `side` reaches `at_least`; its value."""
        return poll(lambda: (v := self.counters(side).get(name, 0)) >= at_least and v,
                    timeout, 0.1,
                    lambda t: f"{side} {name} stayed below {at_least} for {t:.0f}s "
                              f"(now {self.counters(side).get(name)})", self.scale)

    def sysctl(self, side: str, key: str, value=None) -> str:
        return self.guest.call("sysctl", ns=self.ns(side), key=key, value=value)

    # -- events ------------------------------------------------------------
    def monitor(self, side: str) -> "Monitor":
        return Monitor(self, side)

    # -- links and addresses -----------------------------------------------
    def link(self, i: int, up: bool) -> None:
        self.guest.call("topo.link", spec=self.spec.to_dict(), link=i, up=up)

    def addr(self, side: str, link: int, address: str, add: bool) -> None:
        """Add or remove one address on this side's interface of `link`."""
        self.guest.call("topo.addr", ns=self.ns(side), ifname=self.spec.ifname(side, link),
                        address=address, add=add)

    def strip_mptcp_option(self, side: str, family: int = 4) -> None:
        """A middlebox that strips the MPTCP option (kind 30: DSS, ...) from
        data segments arriving at `side`; the handshake passes untouched."""
        self.guest.call("topo.strip_tcp_option", ns=self.ns(side), family=family,
                        kind=30, min_len=200)

    @contextlib.contextmanager
    def inbound_tcp_lost(self, side: str, family: int = 4):
        """For the block, every TCP segment arriving at `side` is lost (its
        own segments still leave): e.g. the echoes of its ADD_ADDRs."""
        self.guest.call("topo.drop_tcp_input", ns=self.ns(side), family=family, on=True)
        try:
            yield
        finally:
            self.guest.call("topo.drop_tcp_input", ns=self.ns(side), family=family, on=False)

    # -- traffic -----------------------------------------------------------
    def transfer(self, nbytes: int = 8 << 20, family: int = 4, link: int = 1,
                 server_proto: str = "mptcp", client_proto: str = "mptcp",
                 seed: int | None = None, hold: bool = False,
                 subflows: int = 0, reconnect: bool = False) -> Transfer:
        """A checksummed client->server transfer of `nbytes` to the server's
        address on `link`. hold=True keeps the connection open after the data
        until the `with` block ends (or release()), for acting on a live
        connection however slow the kernel is. subflows=N: after the first
        chunk the client waits (up to 60 s) for N subflows, so a scenario
        that counts subflows or checks that each carried data does not
        depend on how fast the PM was compared to the transfer. reconnect=True:
        the client first connects and disconnects (connect(AF_UNSPEC)), then
        moves the data over the reused socket."""
        port = next(_ports)
        xfer = Transfer(self, nbytes, self.spec.addr("server", link, family), port,
                        server_proto, client_proto, None,
                        seed if seed is not None else port, hold, subflows, reconnect)
        self.transfers.append(xfer)
        return xfer

    def abort_before_accept(self, family: int = 4, wait_reset: bool = True) -> dict:
        """A connection the client aborts (SO_LINGER 0) while it waits in the
        server's accept queue, accepted after the reset: the client's token
        and the server's MPTCP_INFO. wait_reset=False: accepted at once,
        racing the msk worker woken by the reset."""
        return self.guest.call("mptcp.abort_before_accept", server_ns=self.spec.server_ns,
                               client_ns=self.spec.client_ns, port=next(_ports),
                               addr=self.spec.addr("server", 1, family), family=family,
                               timeout=30 * self.scale, wait_reset=wait_reset)

    def burst(self, count: int, subflows: int = 2, wait: bool = True,
              timeout: float = 600) -> tuple[dict, dict]:
        """`count` concurrent connections; each waits for `subflows` subflows
        (unless wait=False: closed as soon as established). Reports of the
        client and the server."""
        srv, cli = self.burst_start(count, subflows, wait)
        k = self.scale
        timeout *= k
        c = self.guest.call("proc.wait", handle=cli, timeout=timeout, _timeout=timeout + 30)
        s = self.guest.call("proc.wait", handle=srv, timeout=60 * k, _timeout=90 * k)
        if c["report"] is None or s["report"] is None:
            raise AssertionError(f"burst failed: client {c['stderr']}\nserver {s['stderr']}")
        return c["report"], s["report"]

    def burst_start(self, count: int, subflows: int = 2, wait: bool = True) -> tuple[int, int]:
        """burst() without waiting: the server's and the client's handles."""
        port = next(_ports)
        srv = self.guest.call("burst.server", ns=self.spec.server_ns, port=port, count=count)
        cli = self.guest.call("burst.client", ns=self.spec.client_ns,
                              addr=self.spec.addr("server", 1), port=port, count=count,
                              subflows=subflows, wait=wait)
        return srv, cli

    def reports(self) -> list[dict]:
        """What every finished transfer saw, for the run's artifacts."""
        return [{"port": x.port, "addr": x.addr, "client": x.result.client,
                 "server": x.result.server} for x in self.transfers if x.result]

    @property
    def scale(self) -> float:
        return self.guest.time_scale

    def ns(self, side: str) -> str:
        return self.spec.client_ns if side == "client" else self.spec.server_ns


class Monitor:
    """`ip mptcp monitor` in one netns, for the duration of a block."""

    def __init__(self, net: Network, side: str):
        self.net, self.side = net, side
        self.handle = net.guest.call("monitor.start", ns=net.ns(side))

    def events(self, kind: str | None = None) -> list[dict]:
        evs = self.net.guest.call("monitor.events", handle=self.handle)
        return [e for e in evs if kind is None or e["event"] == kind]

    def wait_for(self, kind: str, timeout: float = 30, **match) -> dict:
        def find():
            for e in self.events(kind):
                if all(str(e.get(k)) == str(v) for k, v in match.items()):
                    return e
            return None
        return poll(find, timeout, 0.1,
                    lambda t: f"no {kind} {match or ''} event in {self.side} netns within "
                              f"{t:.0f}s; seen: {self.events()}", self.net.scale)

    def wait_for_subflow(self, kind: str, local: str | None = None,
                         remote: str | None = None, timeout: float = 30, **match) -> dict:
        """wait_for() a subflow event (SF_ESTABLISHED, SF_CLOSED, SF_PRIO) of
        this side's `local` and/or `remote` address, of either family."""
        for key, addr in (("saddr", local), ("daddr", remote)):
            if addr is not None:
                match[key + ("6" if ":" in addr else "4")] = addr
        return self.wait_for(kind, timeout, **match)

    def stop(self) -> None:
        self.net.guest.call("proc.kill", handle=self.handle)
