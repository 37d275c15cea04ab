"""The bench's arithmetic and the userspace PM's netlink encoding (no VM)."""

import struct

from bpfpm import bench
from bpfpm.guest import uspm


def test_quantiles_are_nearest_rank():
    xs = list(range(1, 101))
    assert bench.pct(xs, 0.5) == 50
    assert bench.pct(xs, 0.99) == 99
    assert bench.pct([7], 0.99) == 7
    assert bench.pct([], 0.5) is None
    assert bench.ratio(3, 2) == 1.5 and bench.ratio(None, 2) is None and bench.ratio(1, 0) is None


def test_subflow_create_is_encoded_with_nested_addresses_and_ids():
    msg = uspm.pm_cmd()
    msg["cmd"] = uspm.CMD_SUBFLOW_CREATE
    msg["version"] = 1
    msg["attrs"] = [("MPTCP_PM_ATTR_TOKEN", 0x11223344),
                    ("MPTCP_PM_ATTR_ADDR", uspm._addr("10.0.2.1", id=2), uspm.NLA_F_NESTED),
                    ("MPTCP_PM_ATTR_ADDR_REMOTE", uspm._addr("10.0.1.2", 5001),
                     uspm.NLA_F_NESTED)]
    msg["header"] = {"type": 28, "flags": 5, "sequence_number": 1}
    msg.encode()
    data = msg.data
    assert data[16] == uspm.CMD_SUBFLOW_CREATE
    off, seen = 20, {}
    while off < struct.unpack_from("=I", data, 0)[0]:
        length, kind = struct.unpack_from("=HH", data, off)
        seen[kind & 0x7fff] = (kind & 0x8000, data[off + 4:off + length])
        off += (length + 3) & ~3
    assert struct.unpack("=I", seen[4][1])[0] == 0x11223344          # TOKEN
    assert seen[1][0] and seen[6][0]                                   # nested
    assert bytes([10, 0, 2, 1]) in seen[1][1] and bytes([10, 0, 1, 2]) in seen[6][1]
    assert struct.pack("=H", 5001) in seen[6][1]                       # port, host order


def test_a_single_connection_missing_its_subflows_is_not_shown_as_100_percent():
    assert bench.share({"complete": 2000, "connections": 2000}) == "100 %"
    assert bench.share({"complete": 1999, "connections": 2000}) == "99.95 %"
    assert bench.share({"complete": 19999, "connections": 20000}) == "99.99 %"
