"""Per-connection MPTCP state read from the socket itself (SOL_MPTCP).

MPTCP_TCPINFO / MPTCP_SUBFLOW_ADDRS take an input header, which Python's
socket.getsockopt cannot pass, hence the small ctypes call. Layouts are
those of include/uapi/linux/mptcp.h and tcp.h; only fields present since
5.16 are read.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct

SOL_MPTCP = 284
MPTCP_INFO = 1
MPTCP_TCPINFO = 2
MPTCP_SUBFLOW_ADDRS = 3
TCP_IS_MPTCP = 43
MPTCP_INFO_FLAG_FALLBACK = 0x1

_SFD = struct.Struct("=IIII")          # struct mptcp_subflow_data
_TCPINFO_SIZE = 232
_ADDRS_SIZE = 256                       # struct mptcp_subflow_addrs
_MAX_SUBFLOWS = 16

_libc = ctypes.CDLL(None, use_errno=True)


def _sockopt_array(sock: socket.socket, opt: int, elem: int) -> list[bytes]:
    size = _SFD.size + elem * _MAX_SUBFLOWS
    buf = ctypes.create_string_buffer(size)
    _SFD.pack_into(buf, 0, _SFD.size, 0, 0, elem)
    optlen = ctypes.c_uint32(size)
    if _libc.getsockopt(sock.fileno(), SOL_MPTCP, opt, buf, ctypes.byref(optlen)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"getsockopt(SOL_MPTCP, {opt}): {socket.errno.errorcode.get(err, err)}")
    _, num, _, size_user = _SFD.unpack_from(buf, 0)
    n = min(num, _MAX_SUBFLOWS)
    return [bytes(buf[_SFD.size + k * size_user: _SFD.size + (k + 1) * size_user])
            for k in range(n)]


def _sockaddr(raw: bytes) -> tuple[str, int]:
    family = struct.unpack_from("=H", raw, 0)[0]
    port = struct.unpack_from("!H", raw, 2)[0]
    if family == socket.AF_INET:
        return str(ipaddress.IPv4Address(raw[4:8])), port
    if family == socket.AF_INET6:
        addr = ipaddress.IPv6Address(raw[8:24])
        if addr.ipv4_mapped:
            return str(addr.ipv4_mapped), port
        return str(addr), port
    return "?", port


def is_mptcp(sock: socket.socket) -> bool:
    """False once the connection fell back to plain TCP."""
    try:
        return bool(sock.getsockopt(socket.IPPROTO_TCP, TCP_IS_MPTCP))
    except OSError:
        return False


def connection(sock: socket.socket) -> dict:
    info: dict = {"mptcp": is_mptcp(sock)}
    try:
        raw = sock.getsockopt(SOL_MPTCP, MPTCP_INFO, 48)
        subflows, = struct.unpack_from("=B", raw, 0)
        flags, token = struct.unpack_from("=II", raw, 8)
        info.update(subflows_extra=subflows, flags=flags, token=f"{token:08x}",
                    subflows_max=raw[3], local_addr_used=raw[40],
                    fallback=bool(flags & MPTCP_INFO_FLAG_FALLBACK) or not info["mptcp"],
                    csum=bool(raw[42]))
    except OSError:
        info["fallback"] = not info["mptcp"]
    return info


def token(sock: socket.socket) -> int:
    """The connection's local token (0: not MPTCP, or not known yet)."""
    try:
        return struct.unpack_from("=I", sock.getsockopt(SOL_MPTCP, MPTCP_INFO, 48), 12)[0]
    except OSError:
        return 0


def subflows(sock: socket.socket) -> list[dict]:
    """One entry per live subflow: addresses, ports, byte counters, state."""
    if not is_mptcp(sock):
        return []
    try:
        addrs = _sockopt_array(sock, MPTCP_SUBFLOW_ADDRS, _ADDRS_SIZE)
        tinfo = _sockopt_array(sock, MPTCP_TCPINFO, _TCPINFO_SIZE)
    except OSError:
        return []
    out = []
    for a, t in zip(addrs, tinfo):
        laddr, lport = _sockaddr(a[:128])
        raddr, rport = _sockaddr(a[128:256])
        acked, received = struct.unpack_from("=QQ", t, 120)
        out.append({"local": laddr, "lport": lport, "remote": raddr, "rport": rport,
                    "state": t[0], "bytes_acked": acked, "bytes_received": received,
                    "rtt_us": struct.unpack_from("=I", t, 68)[0]})
    return out


def merge_seen(seen: dict, current: list[dict]) -> None:
    """Remember every subflow ever observed, with its largest counters. A
    subflow read as it closed has its peer's address and port cleared by
    then: it is one already seen, not another (seen when the client's last
    reading races the server's close)."""
    for sf in current:
        if not sf["rport"]:
            continue
        key = f"{sf['local']}:{sf['lport']}->{sf['remote']}:{sf['rport']}"
        old = seen.get(key)
        if old is None:
            seen[key] = dict(sf)
        else:
            for k in ("bytes_acked", "bytes_received"):
                old[k] = max(old[k], sf[k])
            old["state"] = sf["state"]
