"""The run's reports (bpfpm/reporting.py) from a real inner pytest run:
reruns counted apart in every format, evidence in JUnit's system-out,
shards, and pytest-xdist's workers merged into one run directory."""

import json
import xml.etree.ElementTree as ET

import pytest

from bpfpm import cli, kcidb, reporting

TESTS = '''
import os, pathlib, pytest
from bpfpm import reporting
from bpfpm.errors import ChannelLost, GuestCrashed

RUN = pathlib.Path(os.environ["BPFPM_RUN_DIR"])

def once(name):
    """True the first time `name` is asked for in this run."""
    mark = RUN / f"once-{name}"
    if mark.exists():
        return False
    mark.write_text("")
    return True

def test_plain_pass():
    pass

@pytest.mark.known_flaky(reason="a race we know")
def test_known_flaky_passes_on_rerun(request):
    log = RUN / "dmesg" / "flaky.log"
    log.parent.mkdir(exist_ok=True)
    log.write_text("[ 1.0] the attempt's kernel log\\n")
    reporting.attach(request.node, "dmesg", log)
    assert not once("flaky"), "lost the race"

@pytest.mark.vm
def test_channel_lost_once_is_rerun():
    if once("channel"):
        raise ChannelLost("guest1: the agent went away")

@pytest.mark.vm
def test_crash_is_a_verdict():
    raise GuestCrashed("guest1 crashed (Oops: general protection fault)")

@pytest.mark.vm
def test_assertion_is_a_verdict(request):
    log = RUN / "dmesg" / "assertion.log"
    log.parent.mkdir(exist_ok=True)
    log.write_text("[ 1.0] boot\\n[ 2.0] MPTCP: the line a developer needs\\n")
    reporting.attach(request.node, "dmesg", log)
    assert 1 == 2, "two subflows, expected four"

@pytest.mark.skip(reason="needs IPv6")
def test_skipped():
    pass
'''


def counts(res) -> dict:
    return {k: v for k, v in res.parseoutcomes().items() if k not in ("seconds",)}


KERNEL = {"key": "b7e629897fc4b672", "source": "Debian linux-source-6.12 6.12.117-1",
          "source_ident": "deb-6.12.117-1", "patches": ["0001-a.patch"], "series_key": "1a2b",
          "config_key": "a0c47900ad5a35ef", "debug": False,
          "toolchain": "gcc (Debian) 12.2.0", "seconds": 800.0,
          "log": "/nonexistent/build.log", "release": "6.12.117-bpfpm"}


@pytest.fixture
def inner(pytester, monkeypatch, tmp_path):
    """go(*pytest args, run="run") -> (result, run dir, {test name: record})."""
    monkeypatch.delenv("BPFPM_SHARD", raising=False)
    pytester.makeconftest('pytest_plugins = ["bpfpm.reporting"]\n'
                          'def pytest_configure(config):\n'
                          '    config.addinivalue_line("markers", "vm: a guest")\n')
    pytester.makepyfile(test_scenarios=TESTS)

    def go(*args, run="run"):
        run = tmp_path / run
        run.mkdir(exist_ok=True)
        # what the guest fixture writes: the booted kernel
        (run / "kernel.json").write_text(json.dumps(KERNEL))
        monkeypatch.setenv("BPFPM_RUN_DIR", str(run))
        res = pytester.runpytest_subprocess(f"--junitxml={run / 'junit.xml'}",
                                            "-o", "junit_logging=system-out",
                                            "-p", "no:cacheprovider", *args)
        path = run / "tests.jsonl"
        recs = {r["nodeid"].split("::")[-1]: r for r in
                map(json.loads, path.read_text().splitlines())} if path.exists() else {}
        return res, run, recs
    return go


def test_reruns_are_reported_apart_everywhere(inner):
    res, run, recs = inner()
    assert counts(res) == {"passed": 3, "failed": 2, "skipped": 1, "rerun": 2}
    # final outcomes, with the earlier attempts counted
    assert recs["test_known_flaky_passes_on_rerun"].items() >= {"outcome": "passed",
                                                                "reruns": 1}.items()
    assert "lost the race" in recs["test_known_flaky_passes_on_rerun"]["rerun_reasons"][0]
    assert recs["test_channel_lost_once_is_rerun"]["reruns"] == 1
    assert recs["test_crash_is_a_verdict"].items() >= {"outcome": "failed", "reruns": 0}.items()
    assert recs["test_assertion_is_a_verdict"]["reruns"] == 0
    assert recs["test_plain_pass"]["reruns"] == 0
    assert recs["test_skipped"]["outcome"] == "skipped"
    res.stdout.fnmatch_lines(["*RERUN *test_known_flaky_passes_on_rerun: passed on rerun*",
                              "*bpfpm: 6 tests, 2 rerun (2 passed only on rerun)*"])
    # JUnit: Surefire's flakyFailure + a property
    elems = list(ET.parse(run / "junit.xml").iter("testcase"))
    assert len(elems) == 6, "one testcase per test, its final attempt"
    cases = {c.get("name"): c for c in elems}
    flaky = cases["test_known_flaky_passes_on_rerun"]
    assert flaky.find("flakyFailure") is not None and flaky.find("failure") is None
    assert {p.get("name"): p.get("value") for p in flaky.iter("property")}["bpfpm.reruns"] \
        == "1"
    assert cases["test_plain_pass"].find("flakyFailure") is None
    assert cases["test_plain_pass"].find("system-out") is None, "no empty system-out"
    # KTAP: still "ok", and the rerun said on the line
    ktap = (run / "results.ktap").read_text()
    line = next(ln for ln in ktap.splitlines() if "test_known_flaky" in ln and
                ln.startswith(("ok", "not ok")))
    assert line.startswith("ok ") and "rerun" in line
    # KCIDB: PASS, with the rerun in misc; the file validates
    data = json.loads((run / "kcidb.json").read_text())
    kcidb.validate(data)
    test = next(t for t in data["tests"] if "known_flaky" in t["path"])
    assert test["status"] == "PASS" and test["misc"]["reruns"] == 1


def test_a_failing_tests_kernel_log_is_in_junit_system_out(inner):
    _, run, recs = inner("-k", "assertion")
    case = next(c for c in ET.parse(run / "junit.xml").iter("testcase")
                if c.get("name") == "test_assertion_is_a_verdict")
    out = case.find("system-out").text
    assert "kernel log of this test" in out and "the line a developer needs" in out
    assert recs["test_assertion_is_a_verdict"]["files"]["dmesg"] == "dmesg/assertion.log"


def test_shards_are_disjoint_cover_the_suite_and_merge(inner, tmp_path):
    runs, seen = [], []
    for i in (1, 2, 3):
        res, run, recs = inner(f"--shard={i}/3", run=f"shard{i}")
        runs.append(run)
        seen.append(set(recs))
    assert all(seen) and sum(map(len, seen)) == 6 and set.union(*seen) == {
        "test_plain_pass", "test_known_flaky_passes_on_rerun",
        "test_channel_lost_once_is_rerun", "test_crash_is_a_verdict",
        "test_assertion_is_a_verdict", "test_skipped"}
    # one report, as a CI matrix over three machines would publish it
    out = tmp_path / "merged"
    assert cli.main(["report", "merge", "-o", str(out), *map(str, runs)]) == 0
    data = json.loads((out / "kcidb.json").read_text())
    kcidb.validate(data)
    assert (len(data["checkouts"]), len(data["builds"]), len(data["tests"])) == (1, 1, 6)
    assert (out / "results.ktap").read_text().splitlines()[1] == "1..6"
    merged = [json.loads(ln) for ln in (out / "tests.jsonl").read_text().splitlines()]
    dmesg = next(r for r in merged if r["nodeid"].endswith("verdict") and r["files"])
    assert (out / dmesg["files"]["dmesg"]).exists(), "evidence paths follow the merge"
    flaky = next(r for r in merged if r["nodeid"].endswith("passes_on_rerun"))
    assert (out / flaky["rerun_files"][0]["dmesg"]).exists(), \
        "an earlier attempt's evidence paths follow the merge too"
    with pytest.raises(ValueError, match="more than one"):
        reporting.merge([runs[0], runs[0]], tmp_path / "twice")
    res, *_ = inner("--shard=4/3", run="bad")
    assert res.ret == pytest.ExitCode.USAGE_ERROR


def test_xdist_workers_report_into_one_run_directory(inner):
    res, run, recs = inner("-n", "2")
    assert counts(res) == {"passed": 3, "failed": 2, "skipped": 1, "rerun": 2}
    assert len(recs) == 6 and {r["worker"] for r in recs.values()} <= {"gw0", "gw1"}
    assert recs["test_known_flaky_passes_on_rerun"]["reruns"] == 1
    kcidb.validate(json.loads((run / "kcidb.json").read_text()))


VERDICTS = '''
import pytest
from bpfpm.errors import GuestCrashed

@pytest.fixture
def crashing_pm():
    raise GuestCrashed("guest1 crashed (Oops: general protection fault) while loading the PM")

@pytest.mark.vm
def test_crash_in_setup_is_the_kernels(crashing_pm):
    pass

@pytest.mark.known_flaky(reason="a race we know")
def test_known_flaky_splat_is_not_rerun():
    pytest.fail("kernel log of this test has 1 splat(s) (warning)", pytrace=False)

def test_first():
    pass

def test_interrupted():
    raise KeyboardInterrupt

def test_never_started():
    pass
'''


def test_kernel_faults_are_verdicts_and_an_interrupted_test_is_kept(pytester, monkeypatch,
                                                                     tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "kernel.json").write_text(json.dumps(KERNEL | {"vcpus": 2}))
    monkeypatch.setenv("BPFPM_RUN_DIR", str(run))
    pytester.makeconftest('pytest_plugins = ["bpfpm.reporting"]\n'
                          'def pytest_configure(config):\n'
                          '    config.addinivalue_line("markers", "vm: a guest")\n')
    pytester.makepyfile(test_verdicts=VERDICTS)
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert res.ret == pytest.ExitCode.INTERRUPTED
    recs = {r["nodeid"].split("::")[-1]: r for r in
            map(json.loads, (run / "tests.jsonl").read_text().splitlines())}
    # a crash under a fixture is a verdict on the kernel, not an error of the rig
    assert recs["test_crash_in_setup_is_the_kernels"].items() >= {
        "outcome": "failed", "reruns": 0}.items()
    assert recs["test_known_flaky_splat_is_not_rerun"].items() >= {
        "outcome": "failed", "reruns": 0}.items()
    assert recs["test_interrupted"]["outcome"] == "error"
    assert "interrupted" in recs["test_interrupted"]["message"]
    assert "test_never_started" not in recs
    ktap = (run / "results.ktap").read_text()
    assert ktap.splitlines()[1] == "1..4", "the interrupted test counts, the unstarted not"
    data = json.loads((run / "kcidb.json").read_text())
    status = {t["path"].rsplit(".", 1)[1]: t["status"] for t in data["tests"]}
    assert status["test_crash_in_setup_is_the_kernels"] == "FAIL"
    assert status["test_interrupted"] == "ERROR"
    assert data["tests"][0]["environment"]["misc"] == {"vcpus": 2}
