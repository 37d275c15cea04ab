"""The path-manager kfuncs fed random and edge-case endpoint pairs from
every op, MPTCP and TCP (bpf-pms/kfunc_fuzz.bpf.c), on live, closing,
closed, fallen-back and plain TCP connections: they return documented
errnos only, the kernel logs no splat (checked after every test), and no
MPTCP socket is left behind.

`make test` runs BPFPM_FUZZ_CALLS=20000 (the default); `make fuzz` runs
100000 on the debug kernel (KASAN, lockdep, kmemleak).
"""

import errno
import os

import pytest

pytestmark = [pytest.mark.vm, pytest.mark.topo(links=2, rate_mbit=50)]

DOCUMENTED = {0, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTCONN, errno.EBUSY,
              errno.ENOSPC, errno.ENOMEM}
CALLS = int(os.environ.get("BPFPM_FUZZ_CALLS", "20000"))


def test_kfuncs_take_random_endpoints_from_every_op(topo, load_pm, vm, measure):
    """Random closes can take a connection's last subflow away: the
    connections here are driven, then killed, never awaited."""
    topo.use_bpf_pm("client", "server")
    fuzz = load_pm("kfunc_fuzz")
    fuzz.set_config(64)                  # calls per op

    def calls():
        return fuzz.map("totals")[0]["value"]

    rounds = 0
    while calls() < CALLS and rounds < 20:
        rounds += 1
        before = calls()
        srv, cli = topo.burst_start(10 if CALLS <= 20000 else 30, subflows=2)
        fuzz.wait(lambda: calls() >= min(CALLS, before + 10000), timeout=60,
                  what="the burst's ops calling the kfuncs")
        for h in (cli, srv):            # closing: CLOSED, SUB_CLOSED... with requests queued
            vm.call("proc.kill", handle=h)
        with topo.transfer(64 << 10, server_proto="tcp") as tcp:   # a plain TCP peer
            pass
        tcp.result.assert_intact()
    assert calls() >= CALLS, f"only {calls()} calls in {rounds} rounds"

    got = fuzz.results()
    measure("fuzz_calls", calls())
    measure("fuzz_ops", fuzz.map("totals")[2]["value"])
    for e, n in sorted(got.items()):
        measure(f"fuzz_errno_{errno.errorcode.get(e, e) if e else 'ok'}", n)
    undocumented = {e: n for e, n in got.items() if e not in DOCUMENTED}
    assert not undocumented, f"undocumented errnos: {undocumented} (all: {got})"
    assert got.get(0) and got.get(errno.EINVAL), got
    fuzz.unload()

    # orphaned connections still holding data close within TCP_TIMEWAIT_LEN
    fuzz.wait(lambda: not topo.mptcp_sockets(), timeout=120, what="no MPTCP socket left")
