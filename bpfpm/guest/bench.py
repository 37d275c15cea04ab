"""`make bench` workloads, run in the guest (forked from the agent).

One process plays both ends: the server's listener is opened in the
server netns, the clients' sockets in the client netns, and a thread
serves the server side. Subflow times come from the kernel, not from
this process: bench_trace.bpf.c stamps each subflow's SYN and its
ESTABLISHED by connection token (bpf_ktime_get_ns, CLOCK_MONOTONIC), so
how fast Python polls does not change what is measured.

  latency   N connections one after another; each waits (an event: the
            trace map) until its K subflows are established
  burst     N connections at once; the share that get their K subflows
  cps       N connect/1-byte echo/close cycles: connections per second
  deferral  with bench_open attached: kfunc call -> the new subflow's SYN
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import resource
import selectors
import socket
import struct
import sys
import threading
import time

from . import libbpf, mptcpinfo
from .netns import inside
from .xfer import IPPROTO_MPTCP
TIMES = struct.Struct("=8Q8QII")    # struct times in bench_trace.bpf.c
KEY = struct.Struct("=I")


class Server(threading.Thread):
    """Echo the first byte of each connection, close at EOF."""

    def __init__(self, ns: str, port: int, backlog: int = 4096):
        super().__init__(daemon=True)
        with inside(ns):
            self.ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP)
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("0.0.0.0", port))
        self.ls.listen(backlog)
        self.ls.setblocking(False)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.ls, selectors.EVENT_READ)
        self.stop_r, self.stop_w = os.pipe()
        self.sel.register(self.stop_r, selectors.EVENT_READ)
        self.accepted = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._serve()
        except BaseException as e:  # reported by stop()
            self.error = e

    def _serve(self) -> None:
        answered: set = set()
        while True:
            for key, _ in self.sel.select():
                if key.fileobj == self.stop_r:
                    return
                if key.fileobj is self.ls:
                    while True:
                        try:
                            conn, _ = self.ls.accept()
                        except BlockingIOError:
                            break
                        conn.setblocking(False)
                        self.accepted += 1
                        self.sel.register(conn, selectors.EVENT_READ)
                    continue
                conn = key.fileobj
                try:
                    data = conn.recv(4096)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    data = b""
                if not data:
                    self.sel.unregister(conn)
                    answered.discard(conn)
                    conn.close()
                elif conn not in answered:
                    answered.add(conn)
                    conn.send(b"k")

    def stop(self) -> None:
        os.write(self.stop_w, b"x")
        self.join(10)
        if self.error:
            raise RuntimeError(f"bench server failed: {self.error!r}")


class Trace:
    """bench_trace.bpf.c attached, limited to the client netns."""

    def __init__(self, obj: str, client_ns: str):
        self.obj = libbpf.Object(obj)
        with inside(client_ns):
            self.ino = os.stat("/proc/thread-self/ns/net").st_ino

    def __enter__(self) -> "Trace":
        self.obj.__enter__()
        self.obj.map("netns").update(KEY.pack(0), struct.pack("=I", self.ino))
        self.times = self.obj.map("times")
        return self

    def __exit__(self, *exc) -> None:
        self.obj.__exit__()

    def get(self, token: int) -> dict | None:
        raw = self.times.lookup(KEY.pack(token))
        if raw is None:
            return None
        v = TIMES.unpack(raw)
        nsyn, nest = v[16], v[17]
        return {"syn": list(v[0:min(nsyn, 8)]), "est": list(v[8:8 + min(nest, 8)])}

    def established(self, token: int) -> int:
        """How many of the connection's subflows are established so far."""
        return len((self.get(token) or {"est": []})["est"])

    def take(self, token: int) -> dict | None:
        t = self.get(token)
        self.times.delete(KEY.pack(token))
        return t

    def dropped(self) -> int:
        return struct.unpack("=Q", self.obj.map("dropped").lookup(KEY.pack(0)))[0]


def _connect(ns: str, addr: str, port: int, timeout: float) -> socket.socket:
    with inside(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP)
    s.settimeout(timeout)
    s.connect((addr, port))
    s.sendall(b"x")
    if s.recv(1) != b"k":
        raise RuntimeError("the bench server did not answer")
    return s


def _wait(cond, timeout: float, every: float = 0.002):
    """cond() until truthy or timeout; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(every)


def _span(t: dict | None, want: int) -> float | None:
    """First SYN -> the want-th subflow established, in microseconds."""
    if not t or len(t["est"]) < want or not t["syn"]:
        return None
    return (t["est"][want - 1] - t["syn"][0]) / 1000


def latency(a) -> dict:
    out, steps = [], []
    with Trace(a.trace, a.client_ns) as tr:
        for _ in range(a.count):
            s = _connect(a.client_ns, a.addr, a.port, a.timeout)
            tok = mptcpinfo.token(s)
            _wait(lambda: tr.established(tok) >= a.subflows, a.timeout)
            s.close()
            t = tr.take(tok)
            out.append(_span(t, a.subflows))
            # each subflow's SYN and ESTABLISHED after the first SYN: which one is late
            steps.append(None if not t or not t["syn"] else
                         {k: [round((x - t["syn"][0]) / 1000, 1) for x in t[k]]
                          for k in ("syn", "est")})
        dropped = tr.dropped()
    return {"latency_us": out, "steps_us": steps, "dropped": dropped}


def deferral(a) -> dict:
    """bench_open's ESTABLISHED stamp -> the SYN (and the establishment) of
    the subflow it asked for."""
    calls = libbpf.pinned_map(a.calls_map, key_size=4, value_size=8)
    syn, est = [], []
    try:
        with Trace(a.trace, a.client_ns) as tr:
            for _ in range(a.count):
                s = _connect(a.client_ns, a.addr, a.port, a.timeout)
                tok = mptcpinfo.token(s)
                _wait(lambda: tr.established(tok) >= 2, a.timeout)
                s.close()
                t = tr.take(tok)
                raw = calls.lookup(KEY.pack(tok))
                calls.delete(KEY.pack(tok))
                if raw is None or not t or len(t["syn"]) < 2:
                    syn.append(None)
                    est.append(None)
                    continue
                call = struct.unpack("=Q", raw)[0]
                syn.append((t["syn"][1] - call) / 1000)
                est.append((t["est"][1] - call) / 1000 if len(t["est"]) > 1 else None)
    finally:
        calls.close()
    return {"call_to_syn_us": syn, "call_to_established_us": est}


def cps(a) -> dict:
    t0 = time.monotonic()
    for _ in range(a.count):
        _connect(a.client_ns, a.addr, a.port, a.timeout).close()
    secs = time.monotonic() - t0
    return {"connections": a.count, "seconds": secs, "cps": a.count / secs}


def burst(a) -> dict:
    """Open a.count connections without waiting for any, echo a byte on each,
    then wait until every one has its subflows, or until none got one more
    for a.settle seconds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 3 * a.count + 256
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(need, hard), max(need, hard)))
    with Trace(a.trace, a.client_ns) as tr:
        sel = selectors.DefaultSelector()
        socks = []
        t0 = time.monotonic()
        for _ in range(a.count):
            with inside(a.client_ns):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP)
            s.setblocking(False)
            err = s.connect_ex((a.addr, a.port))
            if err not in (0, errno.EINPROGRESS):
                raise OSError(err, f"connect: {os.strerror(err)}")
            socks.append(s)
            sel.register(s, selectors.EVENT_WRITE)
        answered = 0
        deadline = time.monotonic() + a.timeout
        while answered < a.count and time.monotonic() < deadline:
            for key, ev in sel.select(timeout=1):
                s = key.fileobj
                if ev & selectors.EVENT_WRITE:
                    s.send(b"x")
                    sel.modify(s, selectors.EVENT_READ)
                elif s.recv(1) == b"k":
                    sel.unregister(s)
                    answered += 1
        connected = time.monotonic() - t0
        tokens = [mptcpinfo.token(s) for s in socks]
        done: dict[int, float] = {}
        last = time.monotonic()
        while len(done) < len(tokens) and time.monotonic() - last < a.settle:
            for tok in tokens:
                if tok in done:
                    continue
                span = _span(tr.get(tok), a.subflows)
                if span is not None:
                    done[tok] = span
                    last = time.monotonic()
            time.sleep(0.05)
        # the connections left short: how many subflows each got to
        short: dict[int, int] = {}
        for tok in tokens:
            if tok not in done:
                n = tr.established(tok)
                short[n] = short.get(n, 0) + 1
        for s in socks:
            s.close()
        for tok in tokens:
            tr.times.delete(KEY.pack(tok))
        dropped = tr.dropped()
    return {"connections": a.count, "answered": answered, "complete": len(done),
            "connected_s": connected, "latency_us": sorted(done.values()),
            "short_by_subflows": short, "dropped": dropped}


WORKLOADS = {"latency": latency, "deferral": deferral, "cps": cps, "burst": burst}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bpfpm.guest.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workload", choices=sorted(WORKLOADS))
    p.add_argument("--client-ns", required=True)
    p.add_argument("--server-ns", required=True)
    p.add_argument("--addr", required=True, help="the server address to connect to")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, required=True, help="connections")
    p.add_argument("--subflows", type=int, default=4, help="a connection's full subflow set")
    p.add_argument("--trace", help="bench_trace.bpf.o")
    p.add_argument("--calls-map", help="deferral: bench_open's pinned `calls` map")
    p.add_argument("--timeout", type=float, default=10,
                   help="per connection (burst: for all of them to connect)")
    p.add_argument("--settle", type=float, default=10,
                   help="burst: stop waiting once no connection completed for this long")
    p.add_argument("--report", required=True)
    a = p.parse_args(argv)
    srv = Server(a.server_ns, a.port, backlog=max(4096, a.count))
    srv.start()
    try:
        res = WORKLOADS[a.workload](a)
    finally:
        srv.stop()
    res["accepted"] = srv.accepted
    tmp = a.report + ".tmp"
    with open(tmp, "w") as f:
        json.dump(res, f)
    os.replace(tmp, a.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
