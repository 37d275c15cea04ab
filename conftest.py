"""pytest fixtures for bpfpm scenarios.

Scope and dependencies:
  run_dir  (session)  results/<run>/ (under pytest-xdist, <run>/<worker>/) for
                      consoles, dmesg and evidence; the reports are bpfpm.reporting's
  kernel   (session)  the built guest kernel, built (or found in the cache) with the
                      PMs once collection is done, before any test and its timeout
  guest    (session)  one VM at a time for the session, rebooted after it is lost
  vm       (function) the running VM (run, call, put, get); the kernel log since the
                      last check is scanned after the test; a failing test's pcaps kept
  network  (function) factory: network(TopoSpec) -> Network, its links captured,
                      torn down after; a failing test's guest state dumped first
  topo     (function) client/server netns joined by veth links, torn down after;
                      shape it with @pytest.mark.topo(links=3, ipv6=False, ...)
  pm_objects (session) the BPF programs of bpf-pms/, compiled for `kernel`
  load_pm  (function) load_pm("fullmesh") loads + attaches one; detached after
  pm       (function) parametrized: each PM kind of bpfpm.pmsetup.KINDS, applied to topo
  recorder (function) the event_recorder program, loaded
  measure  (function) measure(name, value) -> <run>/measurements.jsonl
"""

from __future__ import annotations

import json
import os
import signal

import pytest

from bpfpm import events, host, kcidb, kernels, patches, pms, pmsetup, reporting, results
from bpfpm import session as bpfpm_session
from bpfpm.errors import BpfpmError, GuestError
from bpfpm.scenario import Network
from bpfpm.session import GuestSession
from bpfpm.topology import TopoSpec


# pytester for tests/test_reporting.py's inner runs; bpfpm.reporting (tests.jsonl,
# KTAP, KCIDB, JUnit reruns, --shard, infra reruns) is loaded by pyproject's addopts
pytest_plugins = ["pytester"]


def _terminated(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


_config: pytest.Config


def pytest_configure(config):
    global _config
    _config = config
    config.addinivalue_line("markers", "topo(**kw): TopoSpec.simple() arguments for `topo`")
    # SIGTERM unwinds like Ctrl-C: fixtures tear down, guests power off
    signal.signal(signal.SIGTERM, _terminated)


def pytest_report_header(config):
    """The kernel the VM scenarios are for, in the run's header."""
    try:
        k = kernels.current()
    except BpfpmError as e:
        return f"bpfpm: {e}"
    src = os.environ.get("KERNEL_SRC")
    origin = f"KERNEL_SRC={src}" if src else f"Debian {k.package}, pinned {k.pinned_version()}"
    series = "no series" if os.environ.get("BPFPM_PATCHES") == "none" else \
        f"series kernel/patches/{k.name}"
    return f"bpfpm: kernel {k.name} ({origin}; {series}); make KERNEL=<name> chooses"


def pytest_collection_finish(session):
    """Build the kernel and the PMs before the first test, outside every
    test's timeout (a cold build takes many minutes). `bpfpm test` has
    done it already; then this costs a cache look-up."""
    if any(item.get_closest_marker("vm") for item in session.items) \
            and not session.config.option.collectonly:
        session.config.stash[KERNEL] = bpfpm_session.build_all()


KERNEL = pytest.StashKey()


@pytest.fixture(scope="session")
def run_dir():
    ours = "BPFPM_RUN_DIR" not in os.environ    # else `bpfpm test` made it
    yield results.worker_dir()                  # under xdist, <run>/<worker>/
    if ours:
        results.finish_run(results.run_root())


@pytest.fixture(scope="session")
def kernel(request):
    kb = request.config.stash.get(KERNEL, None)
    return kb if kb is not None else bpfpm_session.build_all()


INTERRUPTED = pytest.StashKey[bool]()


def pytest_keyboard_interrupt(excinfo):
    """Ctrl-C/SIGTERM: the teardowns that follow make no guest calls (each
    could wait its deadline on a busy guest); guests are just stopped."""
    _config.stash[INTERRUPTED] = True


@pytest.fixture(scope="session")
def guest(kernel, run_dir, pm_objects, request):
    # pm_objects first: the guest's 9p root caches directory entries, so
    # files must exist before it boots.
    gs = GuestSession(kernel, run_dir)
    built = kernel.info.get("patches", [])      # what the build applied, by name
    results.write_json(run_dir / "kernel.json", kernel.info | {
        "kernel": kernel.info.get("kernel") or kernels.current().name,
        "release": kernel.release, "vcpus": host.guest_cpus(),
        "patchset_hash": kcidb.patchset_hash([p for p in patches.series() if p.name in built])})
    yield gs
    if INTERRUPTED in request.config.stash:
        gs.close()                  # no more guest calls: just end QEMU
        return
    leaks = ""
    try:
        # debug kernels: leaks that were too young for the last test's scan
        leaks = gs.kmemleak_scan(settle=True) if gs.debug else ""
    finally:
        rest = gs.finish()
    if rest:
        pytest.fail(f"kernel log after the last test has {len(rest)} splat(s):\n"
                    f"{gs.report(rest)}", pytrace=False)
    if leaks:
        (run_dir / "kmemleak-final.txt").write_text(leaks)
        pytest.fail(f"kmemleak, final scan after all tests:\n{leaks[:6000]}", pytrace=False)


@pytest.fixture
def vm(guest, request, run_dir):
    """The running guest; fails the test on any kernel splat since the last
    check (what came before the test began is named so)."""
    try:
        vm = guest.ensure()
    except GuestError:
        if guest.console is not None:      # its tail goes to JUnit's system-out
            reporting.attach(request.node, "console", guest.console)
        raise
    begin = guest.begin_test(request.node.nodeid)
    yield vm
    if INTERRUPTED in request.config.stash:
        guest.stop()
        return
    leaks = guest.kmemleak_scan() if guest.debug and vm.alive() else ""
    check = guest.end_test(request.node.nodeid, begin)
    if vm.channel is not None:
        with open(run_dir / "calls.jsonl", "a") as f:
            f.write(json.dumps({"test": request.node.nodeid,
                                "ops": vm.channel.take_op_times()}) + "\n")
    slug = _slug(request.node)
    (run_dir / "dmesg").mkdir(exist_ok=True)
    (run_dir / "dmesg" / f"{slug}.log").write_text(check.text)
    reporting.attach(request.node, "dmesg", run_dir / "dmesg" / f"{slug}.log")
    reporting.attach(request.node, "console", vm.console_log)
    lost = vm.lost or (None if vm.alive() and vm.ping() else
                       GuestError(f"guest {vm.name} stopped answering after the test; "
                                  f"console: {vm.console_log}"))
    if lost:
        guest.retire()
    problems = []
    if check.splats_during:
        problems.append(f"kernel log of this test has {len(check.splats_during)} splat(s) "
                        f"({', '.join(s.kind for s in check.splats_during)}):\n"
                        f"{guest.report(check.splats_during)}")
    if check.splats_before:
        problems.append(f"kernel log BEFORE this test began (boot, or the previous test's "
                        f"asynchronous cleanup) has {len(check.splats_before)} splat(s):\n"
                        f"{guest.report(check.splats_before)}")
    if leaks:
        problems.append(f"kmemleak found leaks after this test:\n{leaks[:6000]}")
    _keep_pcaps(vm, request.node, run_dir, bool(problems))
    if problems:
        reporting.kernel_fault(request.node)    # a verdict on the kernel, not the rig
        pytest.fail("\n\n".join(problems), pytrace=False)
    # a test that already failed on the lost guest has said so
    rep = getattr(request.node, "rep_call", None)
    if lost and not (rep and rep.failed):
        raise lost


def _slug(item) -> str:
    """The test's name for its evidence files (dmesg, state, pcap, transfers)."""
    return item.name.replace("/", "_")


PCAPS = pytest.StashKey[list]()     # the guest paths of a test's captures
NETS = pytest.StashKey[list]()      # the test's networks, while they exist


def _dump_state(item) -> None:
    """A failing test's guest state, read at the failure, before any
    teardown (PMs detached, netns gone): <run>/state/<test>.txt."""
    nets, vm = item.stash.get(NETS, []), item.funcargs.get("vm")
    if not nets or vm is None or not vm.alive() or INTERRUPTED in item.config.stash:
        return
    try:
        dump = "\n".join(net.state() for net in nets)
    except BpfpmError as e:
        dump = f"(the guest state could not be read: {e})"
    path = item.funcargs["run_dir"] / "state" / f"{_slug(item)}.txt"
    path.parent.mkdir(exist_ok=True)
    path.write_text(dump)
    reporting.attach(item, "state", path)


def _keep_pcaps(vm, item, run_dir, failing: bool) -> None:
    """The test's captures (network fixture) are fetched into
    <run>/pcap/ when it failed, in any phase; removed in the guest either way."""
    pcaps = item.stash.get(PCAPS, [])
    if not pcaps or not vm.alive():
        return
    if failing or reporting.attempt_failed(item):
        (run_dir / "pcap").mkdir(exist_ok=True)
        for i, path in enumerate(pcaps):
            local = run_dir / "pcap" / os.path.basename(path)
            try:
                vm.get(path, local)
                reporting.attach(item, "pcap" if i == 0 else f"pcap{i + 1}", local)
            except BpfpmError:
                pass                # a lost guest: the vm fixture says so
    try:
        vm.call("file.remove", paths=pcaps, _timeout=30)
    except BpfpmError:
        pass


@pytest.fixture
def measure(request, run_dir):
    """measure(name, value): a figure a test measured (detection time,
    clean-up time...), kept in <run>/measurements.jsonl for the record;
    timings are reported, never asserted on here."""
    def record(name: str, value) -> None:
        with open(run_dir / "measurements.jsonl", "a") as f:
            f.write(json.dumps({"test": request.node.nodeid, name: value}) + "\n")
    return record


@pytest.fixture
def network(vm, request, run_dir):
    """Factory: network(spec) -> Network created now, destroyed after the test;
    the transfers it ran are saved to <run>/transfers/<test>.json. Its links
    are captured (kept by the vm fixture if the test fails); a failing
    test's guest state goes to <run>/state/<test>.txt."""
    made = []
    slug = _slug(request.node)
    pcaps = request.node.stash[PCAPS] = []
    request.node.stash[NETS] = made

    def make(spec: TopoSpec) -> Network:
        pcap = f"/tmp/bpfpm/pcap/{slug}{'-' + str(len(made) + 1) if made else ''}.pcap"
        pcaps.append(pcap)
        net = Network(vm, spec, capture=pcap).create()
        made.append(net)
        return net

    yield make
    reports = [r for net in made for r in net.reports()]
    if reports:
        (run_dir / "transfers").mkdir(exist_ok=True)
        results.write_json(run_dir / "transfers" / f"{slug}.json", reports)
        reporting.attach(request.node, "transfers", run_dir / "transfers" / f"{slug}.json")
    if INTERRUPTED in request.config.stash:
        return
    for net in made:
        try:
            net.destroy()
        except BpfpmError:          # a lost or stuck guest: the vm fixture says so
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
def load_pm(vm, pm_objects, request):
    """Factory: load_pm(name) -> LoadedPM attached to the root cgroup."""
    loaded = []

    def load(name: str) -> pms.LoadedPM:
        obj = pm_objects[name]
        if isinstance(obj, Exception):
            raise obj
        pm = pms.LoadedPM(vm, obj, name).__enter__()
        loaded.append(pm)
        return pm

    yield load
    if INTERRUPTED in request.config.stash:
        return
    for pm in reversed(loaded):
        try:
            pm.__exit__(None, None, None)
        except BpfpmError:
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
    if rep.failed and rep.when in ("setup", "call"):
        _dump_state(item)
    if rep.when == "call" and rep.failed and "run_dir" in item.fixturenames:
        run = item.funcargs.get("run_dir")
        if run:
            with open(run / "failures.jsonl", "a") as f:
                f.write(json.dumps({"test": item.nodeid,
                                    "error": str(rep.longrepr)[-4000:]}) + "\n")
