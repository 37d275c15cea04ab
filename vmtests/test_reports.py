"""What a failing scenario leaves for its reader, from a real `bpfpm test`
of three scenarios on a real guest (vmtests/evidence/scenarios.py): one
fails after MPTCP traffic, one passes, one loses its channel once. The
failing one's pcap, guest state, kernel log and console are kept and linked
from every report; the passing one keeps no pcap; the lost channel is
rerun on a fresh guest and reported as a rerun, never as a plain pass."""

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from bpfpm import cache, kcidb, results
from bpfpm.paths import ROOT

pytestmark = pytest.mark.vm

FAILING = "vmtests/evidence/scenarios.py::test_fails_after_a_transfer"
PASSING = "vmtests/evidence/scenarios.py::test_passes_after_a_transfer"
RERUN = "vmtests/evidence/scenarios.py::test_passes_on_a_fresh_guest_after_losing_its_channel"


def bpfpm_test(under, *args, **env_extra):
    """A `bpfpm test` of its own, results under `under`: (process, run, records)."""
    env = {k: v for k, v in os.environ.items() if k != "BPFPM_RUN_DIR"}
    env.update(BPFPM_RESULTS=str(under), **env_extra)
    p = subprocess.run([sys.executable, "-m", "bpfpm.cli", "test", "-p", "no:cacheprovider",
                        *args], cwd=ROOT, env=env,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    return p, *_read_run(under)


def _read_run(under):
    """The run directory `bpfpm test` left under `under`, and its records."""
    run = (under / "latest").resolve()
    recs = {r["nodeid"]: r for r in map(json.loads, (run / "tests.jsonl").read_text()
                                         .splitlines())}
    return run, recs


@pytest.fixture(scope="module")
def inner_run(kernel):
    """One inner run for the whole outer run: under xdist the first worker
    to need it makes it (45 s) and the others read what it left."""
    shared = results.run_root() / "inner-run"
    with cache.flock(results.run_root() / "inner-run.lock", "waiting for the inner run"):
        proc = shared / "process.json"
        if not proc.exists():
            shared.mkdir(exist_ok=True)
            p, _, _ = bpfpm_test(shared, "vmtests/evidence/scenarios.py")
            proc.write_text(json.dumps({"args": p.args, "returncode": p.returncode,
                                        "stdout": p.stdout, "stderr": p.stderr}))
    p = subprocess.CompletedProcess(**json.loads(proc.read_text()))
    return p, *_read_run(shared)


def test_the_failure_is_a_failure_and_the_pass_a_pass(inner_run):
    p, run, recs = inner_run
    assert p.returncode == 1, p.stdout[-3000:] + p.stderr[-3000:]
    assert recs[FAILING]["outcome"] == "failed" and recs[PASSING]["outcome"] == "passed"
    assert recs[FAILING]["reruns"] == 0, "an assertion is a verdict, never rerun"


def test_the_failing_tests_pcap_holds_its_mptcp_handshakes(inner_run):
    _, run, recs = inner_run
    files = recs[FAILING]["files"]
    assert "pcap" not in recs[PASSING]["files"], "a passing test's capture is not kept"
    assert len(list((run / "pcap").glob("*.pcap"))) == 1
    text = subprocess.run(["tcpdump", "-nn", "-r", str(run / files["pcap"])],
                          capture_output=True, text=True).stdout
    # tcpdump names the MPTCP options: the connection's and the joins' SYNs
    assert re.search(r"Flags \[S\].*mptcp \d+ capable", text), text[:3000]
    assert re.search(r"Flags \[S\].*mptcp \d+ join", text), text[:3000]


def test_the_failing_tests_guest_state_is_read_before_teardown(inner_run):
    _, run, recs = inner_run
    state = (run / recs[FAILING]["files"]["state"]).read_text()
    for what in ("ss -Mani", "ip mptcp limits", "ip mptcp endpoint", "MPTcpExtMPJoinSynRx",
                 "bpftool prog show", "bpftool map dump pinned"):
        assert what in state, f"{what} missing from the state dump:\n{state[:3000]}"
    # read before the test's teardown: its PM is still loaded, its maps pinned
    assert "bpftool map dump pinned /sys/fs/bpf/bpfpm/fullmesh/maps/" in state, state[:3000]


def test_every_report_names_the_evidence(inner_run):
    _, run, recs = inner_run
    files = recs[FAILING]["files"]
    assert {"dmesg", "console", "transfers", "pcap", "state"} <= set(files), files
    case = next(c for c in ET.parse(run / "junit.xml").iter("testcase")
                if c.get("name") == "test_fails_after_a_transfer")
    out = case.find("system-out").text
    assert "kernel log of this test" in out and "console tail" in out
    assert "bpfpm-mark-" in out, "the kernel log segment is the test's own"
    ktap = (run / "results.ktap").read_text().splitlines()
    assert ktap[0] == "KTAP version 1" and ktap[1] == f"1..{len(recs)}"
    assert any(ln.startswith("not ok") and "test_fails_after_a_transfer" in ln for ln in ktap)
    data = json.loads((run / "kcidb.json").read_text())
    kcidb.validate(data)
    test = next(t for t in data["tests"] if t["path"].endswith("test_fails_after_a_transfer"))
    assert test["status"] == "FAIL" and test["log_url"].startswith("file://")
    assert any(f["url"].endswith(".pcap") for f in test["output_files"])
    page = (run / "index.html").read_text()
    for kind in ("pcap", "state", "dmesg", "console"):
        assert files[kind] in page, f"index.html has no link to the {kind}"


def test_a_lost_channel_is_rerun_on_a_fresh_guest_and_said_so(inner_run):
    p, run, recs = inner_run
    r = recs[RERUN]
    assert (r["outcome"], r["reruns"]) == ("passed", 1), r
    assert "ChannelLost" in r["rerun_reasons"][0]
    assert "1 rerun" in p.stdout and f"RERUN {RERUN}: passed on rerun" in p.stdout
    case = next(c for c in ET.parse(run / "junit.xml").iter("testcase")
                if c.get("name") == RERUN.split("::")[1])
    assert case.find("flakyFailure") is not None
    ktap = (run / "results.ktap").read_text()
    assert "passed only after 1 rerun" in ktap
    test = next(t for t in json.loads((run / "kcidb.json").read_text())["tests"]
                if t["path"].endswith("losing_its_channel"))
    assert test["status"] == "PASS" and test["misc"]["reruns"] == 1


def test_a_kernel_that_does_not_boot_is_rerun_then_reported_with_its_console(kernel,
                                                                            tmp_path):
    """The root cannot be mounted (the last rootfstype= wins): the test's
    setup fails with BootFailed, its infrastructure rerun boots again and
    fails again, and the error carries the console in every report."""
    p, run, recs = bpfpm_test(tmp_path, "-k", "passes_after", "vmtests/evidence/scenarios.py",
                              BPFPM_APPEND="rootfstype=bpfpm-no-such-fs")
    assert p.returncode == 1, p.stdout[-3000:]
    r = recs[PASSING]
    assert (r["outcome"], r["reruns"]) == ("error", 1), r
    assert "BootFailed" in r["rerun_reasons"][0] and "BootFailed" in r["message"]
    assert len(list(run.glob("guest*.console*.log"))) == 4, "two boots per attempt, all kept"
    case = next(c for c in ET.parse(run / "junit.xml").iter("testcase"))
    assert case.find("error") is not None and case.find("rerunError") is not None
    assert "console tail" in case.find("system-out").text
    assert "VFS" in case.find("system-out").text, "the console says why it did not boot"
    test = json.loads((run / "kcidb.json").read_text())["tests"][0]
    assert test["status"] == "ERROR" and test["misc"]["reruns"] == 1
