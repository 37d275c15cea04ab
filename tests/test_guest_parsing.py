from bpfpm import scenario
from bpfpm.guest import mptcp, mptcpinfo


def test_monitor_lines_become_events():
    text = ("[       CREATED] token=4c1a1f2b remid=0 locid=0 saddr4=10.0.1.1 daddr4=10.0.1.2 "
            "sport=40000 dport=10000\n"
            "[     ANNOUNCED] token=4c1a1f2b remid=2 daddr4=10.0.2.2 dport=10000\n"
            "[SF_ESTABLISHED] token=4c1a1f2b remid=2 locid=0 saddr4=10.0.2.1 daddr4=10.0.2.2\n"
            "garbage\n")
    evs = mptcp.parse_monitor(text)
    assert [e["event"] for e in evs] == ["CREATED", "ANNOUNCED", "SF_ESTABLISHED"]
    assert evs[1]["daddr4"] == "10.0.2.2" and evs[1]["remid"] == "2"


def test_merge_seen_keeps_closed_subflows_and_max_counters():
    seen = {}
    sf = {"local": "10.0.1.1", "lport": 1, "remote": "10.0.1.2", "rport": 2,
          "state": 1, "bytes_acked": 10, "bytes_received": 0}
    mptcpinfo.merge_seen(seen, [sf])
    mptcpinfo.merge_seen(seen, [dict(sf, bytes_acked=50)])
    mptcpinfo.merge_seen(seen, [])
    # the same subflow read while it closes: its addresses are cleared
    mptcpinfo.merge_seen(seen, [dict(sf, local="0.0.0.0", remote="10.0.1.2", rport=0,
                                     bytes_acked=0, state=7)])
    assert len(seen) == 1 and list(seen.values())[0]["bytes_acked"] == 50


def test_ss_lines_become_subflows_with_their_flags():
    text = ("0 0 10.0.1.1:43210 10.0.1.2:10001 users:((\"python3\",pid=7,fd=3)) cubic "
            "rto:204 tcp-ulp-mptcp flags:Mmec token:0000(id:0)/1234(id:0) seq:1\n"
            "0 0 [fd00:2::1]:5555 [fd00:2::2]:10002 cubic tcp-ulp-mptcp flags:Jjbec "
            "token:1(id:2)/2(id:1)\n"
            "0 0 10.0.9.1:1 10.0.9.2:2 cubic rto:204\n")
    assert scenario.parse_subflow_flags(text) == [
        {"local": "10.0.1.1", "remote": "10.0.1.2", "flags": "Mmec"},
        {"local": "fd00:2::1", "remote": "fd00:2::2", "flags": "Jjbec"}]
