"""`make bench`: the BPF path manager against the in-kernel one and a
userspace one, on the same guest, in one run.

Contenders, all on the client of a 2 x 2 IPv4 mesh (two links, two
addresses a side); the server is the in-kernel PM announcing its second
address (a signal endpoint) for every one of them:
  kernel     in-kernel PM, subflow+fullmesh endpoints
  bpf        fullmesh.bpf.c (the BPF PM selected: Network.select_pm)
  userspace  bpfpm.guest.uspm over generic netlink (the userspace PM selected)

Figures (issue 12), each a ratio of contenders measured side by side:
  p1  connect -> the 4 subflows established, BPF / in-kernel (median, p99)
  p2  the same, userspace / BPF
  p3  a burst of concurrent connections: the share that get all 4 subflows
  p4  two rate-limited links: fullmesh goodput / one TCP connection
  p5  connections per second with a PM attached / with none
  p6  bench_open.bpf.c: kfunc call -> the new subflow's SYN (the deferral)

Trials are interleaved: each round runs every contender once, in an order
rotated per round, on a fresh network, so that the host's noise lands on
all of them alike. Times come from the kernel (bench_trace.bpf.c).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import statistics
import time
from pathlib import Path

from . import log, pms, results
from .paths import results_root
from .pmsetup import Mesh, bpf_fullmesh, common, kernel_fullmesh
from .scenario import Network
from .topology import TopoSpec

OBJECTS = ["fullmesh", "bench_trace", "bench_open"]
CONTENDERS = ["kernel", "bpf", "userspace"]
PORT0 = 20000


@dataclasses.dataclass(frozen=True)
class Size:
    rounds: int
    latency: int        # connections per contender and round
    burst: int          # concurrent connections, once per contender
    cps: int            # connections per contender and round
    goodput_bytes: int
    goodput_mbit: float
    deferral: int


SIZES = {
    "smoke": Size(rounds=1, latency=20, burst=100, cps=60, goodput_bytes=1 << 20,
                  goodput_mbit=20, deferral=20),
    "full": Size(rounds=4, latency=50, burst=2000, cps=300, goodput_bytes=6 << 20,
                 goodput_mbit=10, deferral=200),
}


def pct(xs: list[float], q: float) -> float | None:
    """The q-quantile (nearest rank) of xs; None when empty."""
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def ratio(a, b) -> float | None:
    return round(a / b, 3) if a is not None and b else None


class Bench:
    def __init__(self, guest, objs: dict[str, Path], size: Size, out: Path):
        self.guest, self.objs, self.size, self.out = guest, objs, size, out
        self.port = PORT0
        self.raw: dict = {"latency": {}, "steps": {}, "burst": {}, "cps": {}, "goodput": {},
                          "deferral": [], "uspm": []}

    # -- plumbing ------------------------------------------------------------
    def _port(self) -> int:
        self.port += 1
        return self.port

    @contextlib.contextmanager
    def network(self, rate_mbit: float = 0):
        spec = TopoSpec.simple(2, ipv6=False, rate_mbit=rate_mbit)
        net = Network(self.guest, spec).create()
        with contextlib.ExitStack() as stack:
            stack.callback(net.destroy)
            yield net, stack

    def contender(self, name: str, net: Network, stack, mesh: Mesh | None = None):
        """Set up `name` on net's client. mesh=None: the full 2 x 2 mesh;
        for p5 a mesh of the initial pair only (the PM runs, opens nothing).
        The LoadedPM for "bpf", else None."""
        full = Mesh(net.spec.addrs("client"), net.spec.addrs("server"))
        mesh = mesh or full

        def load_pm(pm):
            return stack.enter_context(pms.LoadedPM(self.guest, self.objs[pm], pm))

        if name == "none":
            common(net, mesh, signal=len(mesh.remote) > 1)
        elif name == "kernel":
            kernel_fullmesh(net, mesh, load_pm)
        elif name == "bpf":
            return bpf_fullmesh(net, mesh, load_pm)
        elif name == "userspace":
            common(net, mesh, signal=len(mesh.remote) > 1)
            net.select_pm("userspace", "client")
            h = self.guest.call("uspm.start", ns=net.spec.client_ns, local=mesh.local)

            def stop():
                r = self.guest.call("proc.kill", handle=h)
                if r["report"] is None:
                    raise RuntimeError(f"userspace PM daemon died: {r['stderr']}")
                self.raw["uspm"].append(r["report"])
            stack.callback(stop)
        else:
            raise ValueError(name)
        return None

    def workload(self, net: Network, workload: str, count: int, timeout: float,
                 **opts) -> dict:
        h = self.guest.call("bench.start", workload=workload, client_ns=net.spec.client_ns,
                            server_ns=net.spec.server_ns, addr=net.spec.addr("server", 1),
                            port=self._port(), count=count, trace=str(self.objs["bench_trace"]),
                            **opts)
        r = self.guest.call("proc.wait", handle=h, timeout=timeout, _timeout=timeout + 30)
        if r["report"] is None:
            raise RuntimeError(f"bench {workload} failed (rc {r['rc']}):\n{r['stderr']}")
        return r["report"]

    @staticmethod
    def order(names: list[str], rnd: int) -> list[str]:
        k = rnd % len(names)
        return names[k:] + names[:k]

    # -- the figures -----------------------------------------------------------
    def run(self) -> dict:
        s = self.size
        steps = [(f"p1/p2 latency, {s.rounds} rounds", self.latency),
                 (f"p5 cps, {s.rounds} rounds", self.cps),
                 (f"p4 goodput, {s.rounds} rounds", self.goodput),
                 ("p6 deferral", self.deferral), (f"p3 burst of {s.burst}", self.burst)]
        t0 = time.monotonic()
        for i, (what, fn) in enumerate(steps, 1):
            log.step(f"bench [{i}/{len(steps)}] {what}"
                     + (f", {time.monotonic() - t0:.0f}s so far" if i > 1 else ""))
            fn()
        return self.summary(time.monotonic() - t0)

    def latency(self) -> None:
        for rnd in range(self.size.rounds):
            for c in self.order(CONTENDERS, rnd):
                with self.network() as (net, stack):
                    self.contender(c, net, stack)
                    rep = self.workload(net, "latency", self.size.latency,
                                        timeout=60 + self.size.latency * 12)
                self.raw["latency"].setdefault(c, []).extend(rep["latency_us"])
                self.raw["steps"].setdefault(c, []).extend(rep["steps_us"])

    def cps(self) -> None:
        for rnd in range(self.size.rounds):
            for c in self.order(["none", "bpf", "userspace"], rnd):
                with self.network() as (net, stack):
                    one = Mesh(net.spec.addrs("client")[:1], net.spec.addrs("server")[:1])
                    self.contender(c, net, stack, one)
                    rep = self.workload(net, "cps", self.size.cps,
                                        timeout=60 + self.size.cps * 2)
                self.raw["cps"].setdefault(c, []).append(rep["cps"])

    def goodput(self) -> None:
        n = self.size.goodput_bytes
        for rnd in range(self.size.rounds):
            for c in self.order(["tcp", *CONTENDERS], rnd):
                with self.network(self.size.goodput_mbit) as (net, stack):
                    if c == "tcp":
                        xfer = net.transfer(n, server_proto="tcp", client_proto="tcp")
                    else:
                        self.contender(c, net, stack)
                        xfer = net.transfer(n)
                    with xfer:
                        pass
                    xfer.result.assert_intact()
                    srv = xfer.result.server
                self.raw["goodput"].setdefault(c, []).append(
                    srv["bytes"] * 8 / srv["seconds"] / 1e6)

    def deferral(self) -> None:
        with self.network() as (net, stack):
            net.use_bpf_pm("client")
            stack.enter_context(pms.LoadedPM(self.guest, self.objs["bench_open"],
                                             "bench_open"))
            rep = self.workload(net, "deferral", self.size.deferral,
                                timeout=60 + self.size.deferral * 12,
                                calls_map="/sys/fs/bpf/bpfpm/bench_open/maps/calls")
        self.raw["deferral"] = rep

    def burst(self) -> None:
        for c in self.order(CONTENDERS, 0):
            with self.network() as (net, stack):
                net.sysctl("server", "net.ipv4.tcp_max_syn_backlog", 8192)
                net.sysctl("server", "net.core.somaxconn", 8192)
                pm = self.contender(c, net, stack)
                rep = self.workload(net, "burst", self.size.burst,
                                    timeout=300 + self.size.burst, settle=15)
                if pm is not None:      # the kfuncs' errnos, the pairs retried
                    rep["pm_results"] = pm.results()
                    rep["pm_retries"] = [e["value"] for e in pm.map("retries")]
            self.raw["burst"][c] = rep

    # -- results ---------------------------------------------------------------
    def summary(self, seconds: float) -> dict:
        lat = {c: [x for x in v if x is not None] for c, v in self.raw["latency"].items()}
        fig: dict = {}
        for c in CONTENDERS:
            v = lat.get(c, [])
            fig[f"latency_{c}"] = {"n": len(self.raw["latency"].get(c, [])),
                                   "complete": len(v),
                                   "median_us": pct(v, 0.5), "p99_us": pct(v, 0.99)}
            # median time of the i-th SYN and ESTABLISHED after the first SYN
            st = [x for x in self.raw["steps"].get(c, []) if x]
            fig[f"latency_{c}"]["steps_median_us"] = {
                k: [pct([x[k][i] for x in st if len(x[k]) > i], 0.5) for i in range(4)]
                for k in ("syn", "est")}
        k, b, u = (fig[f"latency_{c}"] for c in CONTENDERS)
        fig["p1"] = {"median": ratio(b["median_us"], k["median_us"]),
                     "p99": ratio(b["p99_us"], k["p99_us"]), "goal": "<= 1.05"}
        fig["p2"] = {"median": ratio(u["median_us"], b["median_us"]),
                     "p99": ratio(u["p99_us"], b["p99_us"]), "goal": ">= 3"}
        fig["p3"] = {c: {"share": round(r["complete"] / r["connections"], 4),
                         "complete": r["complete"], "connections": r["connections"],
                         "answered": r["answered"]}
                     for c, r in self.raw["burst"].items()}
        fig["p3"]["goal"] = "BPF 100 %, above userspace"
        gp = {c: statistics.median(v) for c, v in self.raw["goodput"].items()}
        fig["p4"] = {c: {"mbit": round(gp[c], 2), "ratio": ratio(gp[c], gp["tcp"])}
                     for c in CONTENDERS}
        fig["p4"]["tcp_mbit"] = round(gp["tcp"], 2)
        fig["p4"]["goal"] = ">= 1.8"
        cps = {c: statistics.median(v) for c, v in self.raw["cps"].items()}
        fig["p5"] = {c: {"cps": round(cps[c], 1), "ratio": ratio(cps[c], cps["none"])}
                     for c in ("bpf", "userspace")}
        fig["p5"]["none_cps"] = round(cps["none"], 1)
        fig["p5"]["goal"] = ">= 0.95"
        d = self.raw["deferral"]
        syn = [x for x in d["call_to_syn_us"] if x is not None]
        est = [x for x in d["call_to_established_us"] if x is not None]
        fig["p6"] = {"n": len(d["call_to_syn_us"]), "syn_median_us": pct(syn, 0.5),
                     "syn_p99_us": pct(syn, 0.99), "established_median_us": pct(est, 0.5),
                     "goal": "reported"}
        fig["uspm"] = self.raw["uspm"]
        fig["seconds"] = round(seconds, 1)
        return fig


def share(r: dict) -> str:
    """A share that never rounds a miss to 100 %."""
    if r["complete"] == r["connections"]:
        return "100 %"
    return f"{min(99.99, 100 * r['complete'] / r['connections']):.2f} %"


def table(fig: dict, size: str) -> str:
    def us(x):
        return "-" if x is None else f"{x:,.0f} µs"

    k, b, u = (fig[f"latency_{c}"] for c in CONTENDERS)
    p3, p4, p5, p6 = fig["p3"], fig["p4"], fig["p5"], fig["p6"]
    rows = [
        "| key | what | value | goal |", "|---|---|---|---|",
        f"| p1 | set-up latency 2x2, BPF ÷ in-kernel | median {fig['p1']['median']}, "
        f"p99 {fig['p1']['p99']} | ≤ 1.05 |",
        f"| p2 | userspace ÷ BPF | median {fig['p2']['median']}, p99 {fig['p2']['p99']} | ≥ 3 |",
        f"| p3 | burst of {p3['bpf']['connections']}: share with all 4 subflows | "
        + ", ".join(f"{c} {p3[c]['complete']}/{p3[c]['connections']} ({share(p3[c])})"
                    for c in CONTENDERS) + " | BPF 100 %, > userspace |",
        f"| p4 | goodput, 2 HTB links of {p4.get('link_mbit', '?')} Mbit/s ÷ one TCP path "
        f"({p4['tcp_mbit']} Mbit/s) | "
        + ", ".join(f"{c} {p4[c]['ratio']} ({p4[c]['mbit']})" for c in CONTENDERS) + " | ≥ 1.8 |",
        f"| p5 | connections/s with a PM ÷ none ({p5['none_cps']}/s) | "
        + ", ".join(f"{c} {p5[c]['ratio']} ({p5[c]['cps']}/s)" for c in ("bpf", "userspace"))
        + " | ≥ 0.95 |",
        f"| p6 | kfunc call → SYN, {p6['n']} calls | median {us(p6['syn_median_us'])}, "
        f"p99 {us(p6['syn_p99_us'])} (→ established: median "
        f"{us(p6['established_median_us'])}) | reported |",
    ]
    abs_rows = ["", "| set-up latency | connections | complete | median | p99 |",
                "|---|---|---|---|---|"]
    for c, v in zip(CONTENDERS, (k, b, u)):
        abs_rows.append(f"| {c} | {v['n']} | {v['complete']} | {us(v['median_us'])} | "
                        f"{us(v['p99_us'])} |")
    def each(xs):
        return ", ".join("-" if x is None else f"{x:,.0f}" for x in xs)

    if all(v.get("steps_median_us") for v in (k, b, u)):
        abs_rows += ["", "| median µs after the first SYN | SYN 2, 3, 4 | "
                     "ESTABLISHED 1, 2, 3, 4 |", "|---|---|---|"]
        for c, v in zip(CONTENDERS, (k, b, u)):
            st = v["steps_median_us"]
            abs_rows.append(f"| {c} | {each(st['syn'][1:])} | {each(st['est'])} |")
    head = [f"# bpfpm bench ({size}, {fig['seconds']} s)", ""]
    return "\n".join(head + rows + abs_rows) + "\n"


def plots(raw: dict, fig: dict, out: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    made = []
    f, ax = plt.subplots(figsize=(7, 4.5))
    for c in CONTENDERS:
        v = sorted(x / 1000 for x in raw["latency"].get(c, []) if x is not None)
        if v:
            ax.step(v, [(i + 1) / len(v) for i in range(len(v))], where="post", label=c)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("connect → 4 subflows established (ms, log)")
    ax.set_ylabel("share of connections")
    ax.set_title("p1/p2: subflow set-up latency, fullmesh 2×2")
    ax.grid(True, alpha=0.3)
    ax.legend()
    made.append(out / "latency_cdf.png")
    f.savefig(made[-1], dpi=110, bbox_inches="tight")
    plt.close(f)

    for key, title, ylabel, vals in (
            ("p3", "p3: burst, connections with their full subflow set", "share (%)",
             {c: 100 * fig["p3"][c]["share"] for c in CONTENDERS}),
            ("p4", "p4: goodput over two rate-limited links", "Mbit/s",
             {"tcp (1 path)": fig["p4"]["tcp_mbit"],
              **{c: fig["p4"][c]["mbit"] for c in CONTENDERS}})):
        f, ax = plt.subplots(figsize=(6, 4))
        bars = ax.bar(list(vals), list(vals.values()), color="#4c72b0")
        ax.bar_label(bars, fmt="%.1f")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        made.append(out / f"{'burst' if key == 'p3' else 'goodput'}.png")
        f.savefig(made[-1], dpi=110, bbox_inches="tight")
        plt.close(f)
    return made


def run_in(guest, objs: dict[str, Path], size: str, out: Path) -> dict:
    """The bench on a running guest; bench.json, bench.md and the plots in out."""
    b = Bench(guest, objs, SIZES[size], out)
    fig = b.run()
    fig["size"] = size
    fig["p4"]["link_mbit"] = b.size.goodput_mbit
    results.write_json(out / "bench.json", {"figures": fig, "raw": b.raw,
                                            "size": dataclasses.asdict(b.size)})
    (out / "bench.md").write_text(table(fig, size))
    fig["plots"] = [p.name for p in plots(b.raw, fig, out)]
    return fig


def main(a) -> int:
    from . import build, session
    kb = build.build()
    if not kb.info.get("patches"):
        log.error("make bench needs the patched kernel (the BPF path manager); "
                  "this build has no series applied")
        return 2
    objs = pms.build(kb, OBJECTS)
    with session.run_dir("bench") as run:
        with session.boot(kb, run, name="bench") as vm:
            fig = run_in(vm, objs, a.size, run)
    latest = results_root() / "bench"      # results/bench: the last bench run
    if latest.is_symlink():
        latest.unlink()
    if not latest.exists():
        latest.symlink_to(run.name)
    print((run / "bench.md").read_text())
    print(f"plots: {', '.join(fig['plots'])}; all in {run} (results/bench)")
    return 0
