"""`make demo`: build, boot, run a two-link transfer, show the subflows.

By default the BPF fullmesh PM runs on the client (on a kernel carrying the
patch series), with the in-kernel PM on the server announcing its second
address: 2 local x 2 remote addresses, four subflows. `--pm kernel` runs
the in-kernel PM on both ends with the equivalent endpoints instead.
"""

from __future__ import annotations

import contextlib

from . import build, log, pms, results, session
from .pmsetup import FULLMESH, Mesh
from .scenario import Network
from .topology import TopoSpec


def main(a) -> int:
    kb = build.build()
    pm = a.pm
    if pm == "auto":
        pm = "bpf" if kb.info.get("patches") else "kernel"
    if pm not in FULLMESH:
        log.error(f"--pm {pm}: expected one of {', '.join(FULLMESH)}")
        return 2
    objs = pms.build(kb, ["fullmesh"]) if pm == "bpf" else {}
    spec = TopoSpec.simple(2, ipv6=False, rate_mbit=100)
    with contextlib.ExitStack() as stack:
        run = stack.enter_context(session.run_dir("demo"))
        vm = stack.enter_context(session.boot(kb, run, name="demo"))
        net = Network(vm, spec).create()

        def load_pm(name):
            return stack.enter_context(pms.LoadedPM(vm, objs[name], name))

        mesh = Mesh(spec.addrs("client"), spec.addrs("server"))
        FULLMESH[pm](net, mesh, load_pm)
        log.step(f"path manager: {pm} fullmesh on the client; moving {a.bytes >> 20} MiB over "
                 f"{len(spec.links)} links")
        with net.transfer(nbytes=a.bytes) as xfer:
            pass
        res = xfer.result
        res.assert_intact()
    c = res.client
    print(f"\nconnection token {c['conn'].get('token')}  pm={pm}-fullmesh  "
          f"{'FALLBACK to TCP' if res.fallback else 'MPTCP'}  "
          f"{c['bytes']} bytes in {c['seconds']}s; BLAKE2b {c['digest'][:16]}... "
          "verified by both ends")
    print(res.table())
    print(f"expected pairs: {len(mesh.expected_pairs())}, seen: {len(res.pairs())}")
    results.write_json(run / "demo.json", {"pm": pm, "client": res.client,
                                           "server": res.server})
    print(f"\nartifacts: {run}")
    return 0
