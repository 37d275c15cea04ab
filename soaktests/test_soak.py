"""`make soak`: churn around BPF path-manager connections for SOAK_S seconds
(default 60), on the debug kernel (KASAN, lockdep, kmemleak: the session
checks the kernel log after the test and scans kmemleak).

Each round, in turn: connections opened and closed, endpoints added and
removed on both sides (LOCAL_ADDR, ADD_ADDR, RM_ADDR), a link flapped, a
path manager attached or detached, the client switched to the in-kernel
PM and back. Every transfer that
finishes must be intact; at the end no MPTCP socket may be left.
"""

import os
import time

import pytest

from bpfpm.scenario import poll

pytestmark = [pytest.mark.vm, pytest.mark.topo(links=2, rate_mbit=50)]

SOAK_S = float(os.environ.get("SOAK_S", "60"))
PMS = ["fullmesh", "ndiffports", "kfunc_probe"]


def test_churn_leaves_a_clean_kernel(topo, load_pm, vm, measure):
    t = topo.spec
    topo.use_bpf_pm("client", "server")
    topo.sysctl("server", "net.mptcp.add_addr_timeout", 1)
    loaded = {}
    counts = dict(rounds=0, transfers=0, burst=0, endpoint=0, flap=0, attach=0, switch=0)
    deadline = time.monotonic() + SOAK_S
    while time.monotonic() < deadline:
        r = counts["rounds"]
        counts["rounds"] += 1
        name = PMS[r % len(PMS)]
        if name in loaded:
            loaded.pop(name).unload()
        else:
            loaded[name] = load_pm(name)
        counts["attach"] += 1
        with topo.transfer(1 << 20, hold=True) as xfer:
            xfer.wait_progress(0.2)
            topo.endpoint("client", t.addr("client", 2), "subflow", id=20)
            topo.endpoint("server", t.addr("server", 2), "signal", id=21)
            topo.link(2, up=False)
            topo.link(2, up=True)
            topo.endpoint_del("client", id=20)
            topo.endpoint_del("server", id=21)
            counts["endpoint"] += 4
            counts["flap"] += 1
        xfer.result.assert_intact()
        counts["transfers"] += 1
        client, server = topo.burst(20, wait=False)
        assert server["closed"] == 20, server
        counts["burst"] += 20
        if r % 3 == 2:
            for pm in ("kernel", "bpf"):
                topo.select_pm(pm, "client")
            counts["switch"] += 2
    for pm in loaded.values():
        pm.unload()
    for k, v in counts.items():
        measure(f"soak_{k}", v)

    # orphaned connections still holding data close within TCP_TIMEWAIT_LEN
    poll(lambda: not topo.mptcp_sockets(), 60, 1,
         lambda t: f"MPTCP sockets left {t:.0f}s after the soak:\n{topo.mptcp_sockets()}",
         vm.time_scale)
