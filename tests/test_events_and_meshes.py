import socket
import struct

from bpfpm.events import Event, count
from bpfpm.pmsetup import Mesh


def raw_event(**kw):
    v = {"seq": 1, "op": 5, "args": [5, 2, 0], "is_fullsock": 1, "family": 2,
         "local_ip": [struct.unpack("<I", bytes([10, 0, 1, 1]))[0], 0, 0, 0],
         "remote_ip": [struct.unpack("<I", bytes([10, 0, 1, 2]))[0], 0, 0, 0],
         "local_port": 40000, "remote_port": socket.htons(10000) << 16,
         "loc_token": 0xf45996b0, "rem_token": 0x14beb429, 
         "flags": 2 | 1, "subflow_id": 1,
         "local_addr": [0, 0, 0, 0],
         "remote_addr": [struct.unpack("<I", bytes([10, 0, 2, 2]))[0], 0, 0, 0]}
    v.update(kw)
    return v


def test_event_decoding_matches_kernel_byte_orders():
    e = Event.from_map(raw_event())
    assert (e.op, e.local, e.remote, e.lport, e.rport) == \
        ("ADD_ADDR", "10.0.1.1", "10.0.1.2", 40000, 10000)
    assert e.addr() == "10.0.2.2"
    assert e.loc_token == "f45996b0"
    assert e.flags == {"server_side", "fully_established"}


def test_ipv6_event_address():
    words = list(struct.unpack("<4I", socket.inet_pton(socket.AF_INET6, "fd00:2::2")))
    e = Event.from_map(raw_event(args=[5, 10, 0], remote_addr=words))
    assert e.addr() == "fd00:2::2"
    assert count([e, e], "ADD_ADDR", "f45996b0") == 2


def test_fullmesh_expects_every_same_family_pair():
    m = Mesh(["10.0.1.1", "10.0.2.1", "fd00:1::1"], ["10.0.1.2", "fd00:1::2"])
    assert m.expected_pairs() == {("10.0.1.1", "10.0.1.2"), ("10.0.2.1", "10.0.1.2"),
                                  ("fd00:1::1", "fd00:1::2")}


def test_local_addr_and_req_failed_read_the_right_address():
    v4 = [struct.unpack("<I", bytes([10, 0, 2, 1]))[0], 0, 0, 0]
    local = Event.from_map(raw_event(op=7, args=[1, 2, 3], local_addr=v4))
    assert (local.op, local.addr()) == ("LOCAL_ADDR", "10.0.2.1")
    failed = Event.from_map(raw_event(op=9, args=[99, 2, 0], local_addr=v4))
    assert failed.op == "REQ_FAILED"
    assert (failed.local_addr(), failed.addr()) == ("10.0.2.1", "10.0.2.2")
