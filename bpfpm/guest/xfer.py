"""Checksummed bulk transfer over MPTCP (or TCP), one connection each.

  server: accept, read to EOF hashing, send the 32-byte digest back.
  client: send N deterministic pseudo-random bytes, half-close, compare the
          server's digest with its own.
Both write a JSON report; the client also keeps a progress file and a record
of every subflow it saw, sampled while sending.

The digest is BLAKE2b-256: it catches a lost, duplicated or misplaced byte
as SHA-256 would, and under TCG it hashes 8 MiB in 70 ms where SHA-256 takes
330 ms, on each end of every transfer, on the vCPUs the transfer runs on.

Run inside a netns: `ip netns exec NS python -m bpfpm.guest.xfer ...`.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import hashlib
import json
import os
import random
import socket
import sys
import time

from . import mptcpinfo

IPPROTO_MPTCP = 262
CHUNK = 64 * 1024


def digest():
    """The transfer's digest (see the module's doc)."""
    return hashlib.blake2b(digest_size=32)


def _proto(name: str) -> int:
    return IPPROTO_MPTCP if name == "mptcp" else socket.IPPROTO_TCP


def _write_json(path: str, obj: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


# recv()'s errors for a peer that is gone
GONE = (errno.ECONNRESET, errno.ENOTCONN)


def server(a) -> int:
    fam = socket.AF_INET6 if a.family == 6 else socket.AF_INET
    ls = socket.socket(fam, socket.SOCK_STREAM, _proto(a.proto))
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", a.port))
    ls.listen(128)
    _write_json(a.report + ".ready", {"port": a.port})
    reports = []
    for _ in range(a.count):
        conn, peer = ls.accept()
        h = digest()
        n = 0
        seen: dict = {}
        next_sample = 0
        t0 = time.monotonic()
        while True:
            try:
                data = conn.recv(1 << 20)
            except OSError as e:
                # a client that disconnected: reset, or (MPTCP) closed by
                # its MP_FASTCLOSE before the accept, without an error left
                if e.errno not in GONE:
                    raise
                data = b""
            if not data:
                break
            h.update(data)
            n += len(data)
            if n >= next_sample:
                mptcpinfo.merge_seen(seen, mptcpinfo.subflows(conn))
                next_sample = n + 256 * 1024
        final = mptcpinfo.subflows(conn)
        mptcpinfo.merge_seen(seen, final)
        info = mptcpinfo.connection(conn)
        try:
            conn.sendall(h.digest())
        except OSError as e:
            if e.errno not in GONE + (errno.EPIPE,):
                raise
        conn.close()
        reports.append({"peer": list(peer[:2]), "bytes": n, "digest": h.hexdigest(),
                        "seconds": round(time.monotonic() - t0, 3), "conn": info,
                        "subflows_final": final, "subflows_seen": list(seen.values())})
    ls.close()
    _write_json(a.report, {"connections": reports})
    return 0


def _progress(path: str, sent: int, total: int) -> None:
    with open(path, "w") as f:
        f.write(f"{sent} {total}\n")


# the host releases a held connection when its `with` block ends
HOLD_MAX = 900.0


def _wait_released(path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"held connection not released within {timeout}s")
        time.sleep(0.02)


def _await_subflows(s, want: int, timeout: float, seen: dict) -> None:
    """Until the connection has `want` established subflows (an event the
    PM causes), so that every expected subflow is there for the whole
    transfer; after `timeout` the transfer goes on and the report shows
    what was there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = mptcpinfo.subflows(s)
        mptcpinfo.merge_seen(seen, now)
        if len(now) >= want:
            return
        time.sleep(0.02)


def _disconnect(s: socket.socket) -> None:
    """connect(AF_UNSPEC): the socket can then connect again."""
    libc = ctypes.CDLL(None, use_errno=True)
    unspec = (ctypes.c_ubyte * 16)()
    if libc.connect(s.fileno(), unspec, len(unspec)):
        err = ctypes.get_errno()
        raise OSError(err, f"connect(AF_UNSPEC): {os.strerror(err)}")


def client(a) -> int:
    fam = socket.AF_INET6 if ":" in a.addr else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM, _proto(a.proto))
    if a.bind:
        s.bind((a.bind, 0))
    s.settimeout(a.timeout)
    t0 = time.monotonic()
    if a.reconnect:
        # connect, and disconnect before the connection is fully
        # established (what its PM queued is still pending), then reuse
        s.connect((a.addr, a.port))
        _disconnect(s)
    s.connect((a.addr, a.port))
    rnd = random.Random(a.seed)
    h = digest()
    sent = 0
    seen: dict = {}
    next_sample = 0
    info_early = mptcpinfo.connection(s)
    while sent < a.bytes:
        if a.await_subflows and sent == min(CHUNK, a.bytes):
            # data first: the client's side becomes fully established (and
            # its PM acts) once the server acknowledged some
            _await_subflows(s, a.await_subflows, a.await_timeout, seen)
        chunk = rnd.randbytes(min(CHUNK, a.bytes - sent))
        s.sendall(chunk)
        h.update(chunk)
        sent += len(chunk)
        if sent >= next_sample:
            mptcpinfo.merge_seen(seen, mptcpinfo.subflows(s))
            _progress(a.progress, sent, a.bytes)
            next_sample = sent + 256 * 1024
    mptcpinfo.merge_seen(seen, mptcpinfo.subflows(s))
    if a.hold:
        _progress(a.progress, sent, a.bytes)
        _wait_released(a.hold, HOLD_MAX)
    # the subflows at the end of the data, before either side closes: once
    # the server answered with its digest and closed, subflows go away
    final = mptcpinfo.subflows(s)
    mptcpinfo.merge_seen(seen, final)
    s.shutdown(socket.SHUT_WR)
    got = b""
    while len(got) < 32:
        d = s.recv(32 - len(got))
        if not d:
            break
        got += d
    mptcpinfo.merge_seen(seen, mptcpinfo.subflows(s))
    info = mptcpinfo.connection(s)
    info["token_at_connect"] = info_early.get("token")
    s.close()
    ok = got == h.digest()
    _progress(a.progress, sent, a.bytes)
    _write_json(a.report, {"bytes": sent, "digest": h.hexdigest(),
                           "server_digest": got.hex(), "ok": ok,
                           "seconds": round(time.monotonic() - t0, 3), "conn": info,
                           "subflows_final": final, "subflows_seen": list(seen.values())})
    if not ok:
        print(f"checksum mismatch: sent {h.hexdigest()}, server saw {got.hex()}",
              file=sys.stderr)
        return 1
    return 0


def burst_server(a) -> int:
    """Serve many connections at once: read 1 KiB, answer 1 byte, wait EOF."""
    import selectors
    fam = socket.AF_INET6 if a.family == 6 else socket.AF_INET
    ls = socket.socket(fam, socket.SOCK_STREAM, IPPROTO_MPTCP)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", a.port))
    ls.listen(1024)
    ls.setblocking(False)
    _write_json(a.report + ".ready", {"port": a.port})
    sel = selectors.DefaultSelector()
    sel.register(ls, selectors.EVENT_READ)
    got: dict = {}
    accepted = closed = 0
    while closed < a.count:
        for key, _ in sel.select(timeout=a.timeout):
            if key.fileobj is ls:
                conn, _peer = ls.accept()
                conn.setblocking(False)
                got[conn] = 0
                sel.register(conn, selectors.EVENT_READ)
                accepted += 1
                continue
            conn = key.fileobj
            data = conn.recv(65536)
            if not data:
                sel.unregister(conn)
                conn.close()
                closed += 1
                continue
            before = got[conn]
            got[conn] += len(data)
            if before < 1024 <= got[conn]:
                conn.send(b"k")
    _write_json(a.report, {"accepted": accepted, "closed": closed})
    return 0


def burst_client(a) -> int:
    """Open `count` connections, make each fully established, then wait until
    each has `subflows` subflows (or the deadline), and close them all."""
    fam = socket.AF_INET6 if ":" in a.addr else socket.AF_INET
    socks = []
    t0 = time.monotonic()
    for _ in range(a.count):
        s = socket.socket(fam, socket.SOCK_STREAM, IPPROTO_MPTCP)
        s.settimeout(a.timeout)
        s.connect((a.addr, a.port))
        s.sendall(b"x" * 1024)
        socks.append(s)
    for s in socks:
        if s.recv(1) != b"k":
            raise RuntimeError("server did not answer")
    established = time.monotonic() - t0
    deadline = time.monotonic() + a.timeout
    counts = []
    while True:
        counts = [len(mptcpinfo.subflows(s)) for s in socks]
        if all(c >= a.subflows for c in counts) or time.monotonic() > deadline or a.no_wait:
            break
        time.sleep(0.5)
    for s in socks:
        s.close()
    hist: dict = {}
    for c in counts:
        hist[c] = hist.get(c, 0) + 1
    _write_json(a.report, {"connections": len(socks), "subflow_histogram": hist,
                           "established_s": round(established, 2),
                           "seconds": round(time.monotonic() - t0, 2)})
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bpfpm.guest.xfer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="role", required=True)
    sp = sub.add_parser("server")
    sp.add_argument("--port", type=int, required=True)
    sp.add_argument("--family", type=int, choices=(4, 6), default=4)
    sp.add_argument("--proto", choices=("mptcp", "tcp"), default="mptcp")
    sp.add_argument("--count", type=int, default=1, help="connections to serve")
    sp.add_argument("--report", required=True)
    cp = sub.add_parser("client")
    cp.add_argument("--addr", required=True)
    cp.add_argument("--port", type=int, required=True)
    cp.add_argument("--bind", help="local address to bind the first subflow to")
    cp.add_argument("--reconnect", action="store_true",
                    help="connect, disconnect (AF_UNSPEC), then transfer on the reused socket")
    cp.add_argument("--bytes", type=int, default=8 << 20)
    cp.add_argument("--seed", type=int, default=1)
    cp.add_argument("--proto", choices=("mptcp", "tcp"), default="mptcp")
    cp.add_argument("--timeout", type=float, default=120)
    cp.add_argument("--report", required=True)
    cp.add_argument("--progress", required=True)
    cp.add_argument("--await-subflows", type=int, default=0, metavar="N",
                    help="after the first chunk, wait until the connection has N subflows")
    cp.add_argument("--await-timeout", type=float, default=60)
    cp.add_argument("--hold", metavar="FILE",
                    help="after the data, keep the connection open until FILE exists")
    bs = sub.add_parser("burst-server")
    bs.add_argument("--port", type=int, required=True)
    bs.add_argument("--family", type=int, choices=(4, 6), default=4)
    bs.add_argument("--count", type=int, required=True)
    bs.add_argument("--timeout", type=float, default=300)
    bs.add_argument("--report", required=True)
    bc = sub.add_parser("burst-client")
    bc.add_argument("--addr", required=True)
    bc.add_argument("--port", type=int, required=True)
    bc.add_argument("--count", type=int, required=True)
    bc.add_argument("--subflows", type=int, default=2, help="wait until each has this many")
    bc.add_argument("--no-wait", action="store_true", help="close as soon as established")
    bc.add_argument("--timeout", type=float, default=300)
    bc.add_argument("--report", required=True)
    a = p.parse_args(argv)
    return {"server": server, "client": client, "burst-server": burst_server,
            "burst-client": burst_client}[a.role](a)


if __name__ == "__main__":
    sys.exit(main())
