"""pytest fixtures for bpfpm scenarios.

Scope and dependencies:
  run_dir  (session)  results/<run>/ for consoles, dmesg and reports
  kernel   (session)  the built guest kernel (built on first use, cached)
  guest    (session)  one VM for the session, rebooted after a crash
  vm       (function) the running VM; its kernel log is checked after the test
  agent    (function) the guest agent of that VM
  network  (function) factory: network(TopoSpec) -> Network, torn down after
  topo     (function) client/server netns joined by veth links, torn down after;
                      shape it with @pytest.mark.topo(links=3, ipv6=False, ...)
  pm_objects (session) the BPF programs of bpf-pms/, compiled for `kernel`
  load_pm  (function) load_pm("fullmesh") loads + attaches one; detached after
  pm       (function) parametrized: each PM kind of bpfpm.pmsetup.KINDS, applied to topo
  recorder (function) the event_recorder program, loaded
"""

from __future__ import annotations

import json

import pytest

from bpfpm import build, events, pms, pmsetup, results, scenario
from bpfpm.errors import GuestCrashed
from bpfpm.scenario import Network
from bpfpm.session import GuestSession
from bpfpm.topology import TopoSpec


def pytest_configure(config):
    config.addinivalue_line("markers", "topo(**kw): TopoSpec.simple() arguments for `topo`")


@pytest.fixture(scope="session")
def run_dir():
    return results.current_run()


@pytest.fixture(scope="session")
def kernel():
    return build.build()


@pytest.fixture(scope="session")
def guest(kernel, run_dir, pm_objects):
    # pm_objects first: the guest's 9p root caches directory entries, so
    # files must exist before it boots.
    gs = GuestSession(kernel, run_dir)
    if gs.debug:
        scenario.TIME_SCALE = 4.0   # KASAN + lockdep under TCG
    results.write_json(run_dir / "kernel.json", kernel.info | {"release": kernel.release})
    yield gs
    # debug kernels: leaks that were too young for the last test's scan
    leaks = gs.kmemleak_scan(settle=True) if gs.debug else ""
    gs.stop()
    if leaks:
        (run_dir / "kmemleak-final.txt").write_text(leaks)
        pytest.fail(f"kmemleak, final scan after all tests:\n{leaks[:6000]}", pytrace=False)


@pytest.fixture
def vm(guest, request, run_dir):
    """The running guest; fails the test on any kernel splat it caused."""
    vm = guest.ensure()
    begin = guest.begin_test(request.node.nodeid)
    yield vm
    leaks = guest.kmemleak_scan() if guest.debug else ""
    segment, splats = guest.end_test(request.node.nodeid, begin)
    slug = request.node.name.replace("/", "_")
    (run_dir / "dmesg").mkdir(exist_ok=True)
    (run_dir / "dmesg" / f"{slug}.log").write_text(segment)
    dead = not vm.alive() or not guest.responsive()
    if dead:
        guest.stop()
    if splats:
        report = "\n\n".join(guest.decode(s) for s in splats)
        pytest.fail(f"kernel log of this test has {len(splats)} splat(s) "
                    f"({', '.join(s.kind for s in splats)}):\n{report}", pytrace=False)
    if leaks:
        pytest.fail(f"kmemleak found leaks after this test:\n{leaks[:6000]}", pytrace=False)
    if dead:
        raise GuestCrashed(f"guest died or hung during the test; console: {vm.console_log}")


@pytest.fixture
def agent(vm, guest):
    return guest.agent


@pytest.fixture
def network(agent, request, run_dir):
    """Factory: network(spec) -> Network created now, destroyed after the test;
    the transfers it ran are saved to <run>/transfers/<test>.json."""
    made = []

    def make(spec: TopoSpec) -> Network:
        net = Network(agent, spec).create()
        made.append(net)
        return net

    yield make
    reports = [r for net in made for r in net.reports()]
    if reports:
        (run_dir / "transfers").mkdir(exist_ok=True)
        results.write_json(run_dir / "transfers" / f"{request.node.name}.json", reports)
    for net in made:
        try:
            net.destroy()
        except GuestCrashed:
            pass


@pytest.fixture
def topo(network, request):
    """The scenario's network: created before the test, destroyed after."""
    m = request.node.get_closest_marker("topo")
    kw = dict(m.kwargs) if m else {}
    if hasattr(request, "param"):
        kw.update(request.param)
    return network(TopoSpec.simple(**kw))


@pytest.fixture(scope="session")
def pm_objects(kernel):
    """name -> compiled object, or the compile error (raised when used)."""
    return pms.build_all(kernel)


@pytest.fixture
def load_pm(agent, pm_objects):
    """Factory: load_pm(name) -> LoadedPM attached to the root cgroup."""
    loaded = []

    def load(name: str) -> pms.LoadedPM:
        obj = pm_objects[name]
        if isinstance(obj, Exception):
            raise obj
        pm = pms.LoadedPM(agent, obj, name).__enter__()
        loaded.append(pm)
        return pm

    yield load
    for pm in reversed(loaded):
        try:
            pm.__exit__(None, None, None)
        except GuestCrashed:
            pass


@pytest.fixture(params=sorted(pmsetup.KINDS))
def pm(request, topo, load_pm):
    """Each path manager in turn (in-kernel, BPF fullmesh, ndiffports, policy),
    applied to `topo`; the scenario runs once per PM."""
    kind = pmsetup.KINDS[request.param]
    kind.apply(topo, load_pm)
    return kind


@pytest.fixture
def recorder(load_pm):
    return events.Recorder(load_pm("event_recorder"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed and "run_dir" in item.fixturenames:
        run = item.funcargs.get("run_dir")
        if run:
            with open(run / "failures.jsonl", "a") as f:
                f.write(json.dumps({"test": item.nodeid,
                                    "error": str(rep.longrepr)[-4000:]}) + "\n")
