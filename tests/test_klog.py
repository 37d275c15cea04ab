from bpfpm import klog

WARN = """\
[   10.000001] bpfpm-mark-1-begin
[   10.100000] ------------[ cut here ]------------
[   10.100001] WARNING: CPU: 1 PID: 42 at net/mptcp/protocol.c:123 mptcp_foo+0x10/0x20
[   10.100002] Modules linked in:
[   10.100003] Call Trace:
[   10.100004]  <TASK>
[   10.100005]  mptcp_bar+0x1/0x2
[   10.100006] ---[ end trace 0000000000000000 ]---
[   10.200000] IPv6: ADDRCONF(NETDEV_CHANGE): c1: link becomes ready
"""


def test_clean_log_has_no_splats():
    assert klog.scan("[ 1.0] virtio_net virtio0 eth0: renamed\n[ 2.0] hello\n") == []


def test_warning_is_found_with_its_trace():
    (s,) = klog.scan(WARN)
    assert s.kind == "warning"
    assert "net/mptcp/protocol.c:123" in s.first_line
    assert "mptcp_bar" in s.text and "end trace" in s.text
    assert "ADDRCONF" not in s.text


def test_specific_kinds_win_over_generic_ones():
    text = ("[ 5.0] BUG: sleeping function called from invalid context at mm/slab.h:1\n"
            "[ 5.1] ==================================================================\n"
            "[ 6.0] BUG: KASAN: slab-use-after-free in mptcp_worker+0x1\n"
            "[ 7.0] WARNING: possible circular locking dependency detected\n"
            "[ 8.0] unreferenced object 0xffff888003 (size 64):\n"
            "[ 9.0] INFO: task kworker/0:1:12 blocked for more than 120 seconds.\n"
            "[10.0] rcu: INFO: rcu_preempt detected stall on CPU\n"
            "[11.0] UBSAN: shift-out-of-bounds in net/mptcp/options.c:1\n"
            "[12.0] Kernel panic - not syncing: Fatal exception\n")
    kinds = [s.kind for s in klog.scan(text, max_lines=1)]
    assert kinds == ["sleep_in_atomic", "kasan", "lockdep", "kmemleak", "hung_task",
                     "rcu_stall", "ubsan", "panic"]


def test_between_cuts_one_tests_segment():
    text = "a\nMARK1 x\nb\nc\nMARK2 y\nd\n"
    assert klog.between(text, "MARK1", "MARK2") == "b\nc\n"
    assert klog.between(text, "MARK1", None) == "b\nc\nMARK2 y\nd\n"
