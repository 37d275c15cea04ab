"""KCIDB reports: valid for kcidb_io, stable ids, shards that merge."""

import copy
import subprocess
from pathlib import Path

import pytest
from kcidb_io.schema import LATEST

from bpfpm import kcidb


def rec(nodeid, outcome="passed", **kw):
    r = {"nodeid": nodeid, "outcome": outcome, "duration": 1.5, "start": 1765000000.5,
         "reruns": 0, "rerun_reasons": [], "message": "", "longrepr": "",
         "worker": None, "flaky": False, "files": {}}
    return r | kw


KERNEL = {"key": "b7e629897fc4b672",
          "source": "Debian linux-source-6.12 6.12.117-1 (sha256 3b8e)",
          "source_ident": "debian-linux-source-6.12-6.12.117-1-3b8e0123abcd",
          "patches": ["0001-mptcp-bpf-pm.patch"], "patched_files": [],
          "series_key": "0123456789abcdef", "config_key": "fedcba9876543210",
          "debug": True, "toolchain": "gcc (Debian 12.2.0-14) 12.2.0", "steps": 3,
          "seconds": 812.3, "log": "/cache/logs/build-b7e6.log"}

RUN = [
    rec("vmtests/test_hooks.py::test_created[ipv4]",
        files={"dmesg": "dmesg/test_created_ipv4_.log", "console": "guest1.console.log",
               "pcap": "pcap/created[ipv4].pcap"}),
    rec("vmtests/test_hooks.py::test_closed", "failed", message="assert 1 == 2",
        longrepr="E       assert 1 == 2", files={"console": "guest1.console.log"}),
    rec("vmtests/test_hooks.py::test_flaky", reruns=1, rerun_reasons=["timeout"], flaky=True),
    rec("vmtests/test_hooks.py::test_stuck", "failed", reruns=2,
        rerun_reasons=["timed out", "guest lost"]),
    rec("vmtests/test_hooks.py::test_v6", "skipped", message="no IPv6"),
    rec("vmtests/test_hooks.py::test_splat", "error", message="kernel warning"),
]


def report(records=RUN, kernel=KERNEL, run="20251206-120000-ci", **kw):
    return kcidb.report(records, kernel, run, Path("/runs") / run, **kw)


def by_nodeid(data):
    return {t["misc"]["nodeid"]: t for t in data["tests"]}


def test_report_is_valid_latest_kcidb():
    data = report()
    assert data["version"] == {"major": LATEST.major, "minor": LATEST.minor}
    assert LATEST.is_valid_exactly(data)
    kcidb.validate(data)
    assert len(data["checkouts"]) == len(data["builds"]) == 1
    assert len(data["tests"]) == len(RUN)


def test_outcomes_map_to_kcidb_statuses():
    status = {n: t["status"] for n, t in by_nodeid(report()).items()}
    assert status == {"vmtests/test_hooks.py::test_created[ipv4]": "PASS",
                      "vmtests/test_hooks.py::test_closed": "FAIL",
                      "vmtests/test_hooks.py::test_flaky": "PASS",
                      "vmtests/test_hooks.py::test_stuck": "FAIL",
                      "vmtests/test_hooks.py::test_v6": "SKIP",
                      "vmtests/test_hooks.py::test_splat": "ERROR"}
    (odd,) = report([rec("t.py::test_odd", "xpassed")])["tests"]
    assert odd["status"] == "ERROR"


def test_reruns_are_in_misc_whatever_the_outcome():
    tests = by_nodeid(report())
    flaky = tests["vmtests/test_hooks.py::test_flaky"]["misc"]
    assert flaky["reruns"] == 1 and flaky["rerun_reasons"] == ["timeout"]
    assert flaky["passed_on_rerun"] is True and flaky["flaky"] is True
    stuck = tests["vmtests/test_hooks.py::test_stuck"]["misc"]
    assert stuck["reruns"] == 2 and stuck["rerun_reasons"] == ["timed out", "guest lost"]
    assert stuck["passed_on_rerun"] is False
    assert tests["vmtests/test_hooks.py::test_created[ipv4]"]["misc"]["passed_on_rerun"] is False


def test_ids_are_stable_and_unique():
    a, b = report(), report()
    assert a == b
    ids = [t["id"] for t in a["tests"]]
    assert len(set(ids)) == len(ids)
    assert ids[0] == "bpfpm:20251206-120000-ci:vmtests/test_hooks.py::test_created[ipv4]"
    assert a["builds"][0]["id"] == "bpfpm:b7e629897fc4b672"
    assert {t["build_id"] for t in a["tests"]} == {a["builds"][0]["id"]}
    assert a["builds"][0]["checkout_id"] == a["checkouts"][0]["id"]


def test_same_source_and_series_is_one_checkout_whatever_the_build():
    other = report(kernel=KERNEL | {"key": "0000aaaa0000aaaa", "config_key": "1", "debug": False},
                   run="another-run")
    assert other["checkouts"][0]["id"] == report()["checkouts"][0]["id"]
    assert other["builds"][0]["id"] != report()["builds"][0]["id"]
    moved = report(kernel=KERNEL | {"series_key": "ffffffffffffffff"})
    assert moved["checkouts"][0]["id"] != report()["checkouts"][0]["id"]


def test_checkout_and_build_say_what_was_built():
    data = report()
    (co,), (b,) = data["checkouts"], data["builds"]
    assert co["valid"] is True and co["comment"] == KERNEL["source"]
    assert co["misc"]["series_key"] == KERNEL["series_key"]
    assert co["misc"]["patches"] == KERNEL["patches"]
    assert "patchset_hash" not in co        # series_key is not KCIDB's hash
    assert b["status"] == "PASS" and b["architecture"] == "x86_64"
    assert b["compiler"] == KERNEL["toolchain"] and b["duration"] == 812.3
    assert b["config_name"] == "fedcba9876543210 (debug)" and b["misc"]["debug"] is True
    assert b["log_url"] == "file:///cache/logs/build-b7e6.log"
    unpatched = report(kernel=KERNEL | {"patches": []})
    assert unpatched["checkouts"][0]["patchset_hash"] == ""


def test_patchset_hash_is_the_one_kcidb_defines(tmp_path):
    for name, body in [("0001-a.patch", "a\n"), ("0002-b.patch", "b\n")]:
        (tmp_path / name).write_text(body)
    shell = subprocess.run("sha256sum *.patch | cut -c-64 | sha256sum | cut -c-64",
                           shell=True, cwd=tmp_path, capture_output=True, text=True,
                           check=True).stdout.strip()
    h = kcidb.patchset_hash(sorted(tmp_path.glob("*.patch")))
    assert h == shell
    data = report(kernel=KERNEL | {"patchset_hash": h})
    assert data["checkouts"][0]["patchset_hash"] == h
    assert kcidb.patchset_hash([]) == ""


def test_paths_are_dotted_and_within_the_schema():
    assert kcidb.test_path("vmtests/test_hooks.py::test_session_created[ipv4]") == \
        "bpfpm.vmtests.test_hooks.test_session_created.ipv4"
    assert kcidb.test_path("vmtests/test_x.py::TestPm::test_y[1.5-a b/c]") == \
        "bpfpm.vmtests.test_x.TestPm.test_y.1_5-a_b_c"
    for t in report()["tests"]:
        assert LATEST.path_re.fullmatch(t["path"])


def test_files_become_urls_with_dmesg_as_the_log():
    t = by_nodeid(report())["vmtests/test_hooks.py::test_created[ipv4]"]
    assert t["log_url"] == "file:///runs/20251206-120000-ci/dmesg/test_created_ipv4_.log"
    assert t["output_files"] == [
        {"name": "guest1.console.log", "url": "file:///runs/20251206-120000-ci/guest1.console.log"},
        {"name": "created[ipv4].pcap",
         "url": "file:///runs/20251206-120000-ci/pcap/created%5Bipv4%5D.pcap"}]
    closed = by_nodeid(report())["vmtests/test_hooks.py::test_closed"]
    assert closed["log_url"].endswith("/guest1.console.log") and "output_files" not in closed
    assert closed["log_excerpt"] == "E       assert 1 == 2"
    assert t["start_time"] == "2025-12-06T05:46:40.500000+00:00" and t["duration"] == 1.5


def test_base_url_publishes_run_files_only():
    data = report(base_url="https://ci.example.org/runs/42/")
    t = by_nodeid(data)["vmtests/test_hooks.py::test_created[ipv4]"]
    assert t["log_url"] == "https://ci.example.org/runs/42/dmesg/test_created_ipv4_.log"
    assert "log_url" not in data["builds"][0]         # the build log lives in the cache
    assert data["builds"][0]["misc"]["log"] == KERNEL["log"]


def test_no_kernel_json_means_no_objects():
    for kernel in (None, {}):
        data = report(kernel=kernel)
        assert data == {"version": {"major": LATEST.major, "minor": LATEST.minor}}
        kcidb.validate(data)


def test_bad_origin_and_duplicate_records_are_refused():
    with pytest.raises(ValueError, match="origin"):
        report(origin="Bpf-PM")
    with pytest.raises(ValueError, match="two records"):
        report([rec("t.py::test_a"), rec("t.py::test_a", "failed")])


def test_shards_merge_into_one_checkout_one_build_all_tests():
    one = report(RUN[:3], run="ci-77")
    two = report(RUN[3:], run="ci-77", base_url="https://ci.example.org/ci-77")
    merged = kcidb.merge([one, two])
    kcidb.validate(merged)
    assert len(merged["checkouts"]) == 1 and len(merged["builds"]) == 1
    assert sorted(t["misc"]["nodeid"] for t in merged["tests"]) == \
        sorted(r["nodeid"] for r in RUN)
    assert merged["builds"][0] == one["builds"][0]          # the first shard's copy
    again = kcidb.merge([merged, one])
    assert len(again["tests"]) == len(RUN)


def test_merge_refuses_two_results_for_one_test():
    one = report(RUN[:1], run="ci-77")
    two = report([RUN[0] | {"outcome": "failed"}], run="ci-77")
    with pytest.raises(ValueError, match="two different results"):
        kcidb.merge([one, two])


def test_merge_takes_older_minor_versions():
    old = copy.deepcopy(report(RUN[:1], run="ci-1"))
    old["version"]["minor"] = 0
    merged = kcidb.merge([old, report(RUN[1:2], run="ci-2")])
    assert merged["version"] == {"major": LATEST.major, "minor": LATEST.minor}
    assert len(merged["tests"]) == 2


def test_validate_refuses_broken_data():
    data = report()
    data["tests"][0]["status"] = "BROKEN"
    with pytest.raises(ValueError, match=r"tests/0/status: 'BROKEN' is not one of"):
        kcidb.validate(data)
    with pytest.raises(ValueError):
        kcidb.merge([report(), data])
    no_build = report()
    del no_build["tests"][0]["build_id"]
    with pytest.raises(ValueError, match="build_id"):
        kcidb.validate(no_build)


def test_the_checkout_names_the_kernel():
    data = report(kernel=KERNEL | {"kernel": "7.2"})
    assert data["checkouts"][0]["misc"]["kernel"] == "7.2"
    kcidb.validate(data)
    assert "kernel" not in report()["checkouts"][0]["misc"]     # a kernel.json without it
