"""`make demo`: build, boot, move data over two links, show the subflows."""

from __future__ import annotations

from . import build, log, results
from .agent import Agent
from .scenario import Network
from .topology import TopoSpec
from .vm import VM


def setup_kernel_pm(net: Network) -> None:
    """In-kernel fullmesh-like set-up: a subflow endpoint per extra client
    address, a signal endpoint per extra server address."""
    for side in ("client", "server"):
        net.limits(side, subflows=8, add_addr_accepted=8)
    for i in range(2, len(net.spec.links) + 1):
        net.endpoint("client", net.spec.addr("client", i), "subflow")


def main(a) -> int:
    kb = build.build()
    run = results.new_run("demo")
    spec = TopoSpec.simple(2, ipv6=False, rate_mbit=100)
    with VM(kb, run, name="demo") as vm:
        log.step(f"guest up in {vm.boot_seconds:.1f}s ({kb.release}, "
                 f"{kb.info.get('source')})")
        agent = Agent(vm)
        net = Network(agent, spec).create()
        pm = "kernel" if a.pm in ("auto", "kernel") else a.pm
        setup_kernel_pm(net)
        log.step(f"path manager: {pm}; moving {a.bytes >> 20} MiB over "
                 f"{len(spec.links)} links")
        with net.transfer(nbytes=a.bytes) as xfer:
            pass
        res = xfer.result
        res.assert_intact()
        net.destroy()
        agent.close()
    c = res.client
    print(f"\nconnection token {c['conn'].get('token')}  pm={pm}  "
          f"{'FALLBACK to TCP' if res.fallback else 'MPTCP'}  "
          f"{c['bytes']} bytes in {c['seconds']}s, sha256 {c['sha256'][:16]} verified "
          "by both ends")
    print(res.table())
    results.write_json(run / "demo.json", {"client": res.client, "server": res.server})
    print(f"\nartifacts: {run}")
    return 0
