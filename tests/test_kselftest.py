"""Reading the MPTCP selftests' TAP output and comparing two kernels."""

from bpfpm.kselftest import compare, subtests

JOIN = """\
# 001 no JOIN
ok 1 - mptcp_join: no JOIN # time=21808ms
ok 2 - mptcp_join: single subflow # time=31759ms
not ok 3 - mptcp_join: multiple subflows # time=30324ms
ok 4 - mptcp_join: userspace pm # SKIP ip mptcp not supported
ok 5 - mptcp_join: single subflow # time=1ms
"""


def result(verdict, tap=""):
    return {"verdict": verdict, "subtests": subtests(tap)}


def test_subtests_read_verdicts_and_number_repeats():
    assert subtests(JOIN) == {
        "mptcp_join: no JOIN": "pass",
        "mptcp_join: single subflow": "pass",
        "mptcp_join: multiple subflows": "fail",
        "mptcp_join: userspace pm": "skip",
        "mptcp_join: single subflow #2": "pass",
    }


def test_same_results_are_no_regression():
    assert compare({"j": result("fail", JOIN)}, {"j": result("fail", JOIN)}) == []


def test_subtest_passing_only_unpatched_is_a_regression():
    worse = JOIN.replace("ok 1 - mptcp_join: no JOIN", "not ok 1 - mptcp_join: no JOIN")
    assert compare({"j": result("fail", JOIN)}, {"j": result("fail", worse)}) == \
        ["j: mptcp_join: no JOIN: fail"]


def test_script_verdict_and_missing_subtests_count():
    assert compare({"d": result("pass")}, {"d": result("timeout")}) == ["d: timeout"]
    assert compare({"j": result("fail", JOIN)}, {"j": result("fail", "")})[0] == \
        "j: mptcp_join: no JOIN: missing"


TEST_PROGS = """\
test_setget_sockopt:FAIL:load skel unexpected error: -3 (errno 3)
#5       setget_sockopt:FAIL
#10/1    verifier_ctx/context stores via BPF_ATOMIC:OK
#10/2    verifier_ctx/context stores via BPF_ATOMIC @unpriv:SKIP
#10      verifier_ctx:OK (SKIP: 1/24)
#1/14    btf_dump/btf_dump: struct_data:FAIL
Summary: 9/67 PASSED, 25 SKIPPED, 2 FAILED
"""


def test_test_progs_lines_are_read_per_test_and_subtest():
    from bpfpm.kselftest import test_progs_results
    assert test_progs_results(TEST_PROGS) == {
        "setget_sockopt": "fail",
        "verifier_ctx/context stores via BPF_ATOMIC": "pass",
        "verifier_ctx/context stores via BPF_ATOMIC @unpriv": "skip",
        "verifier_ctx": "pass",
        "btf_dump/btf_dump: struct_data": "fail",
    }


def test_verifier_runner_pruned_to_the_chosen_tests(tmp_path):
    from bpfpm.kselftest import _prune_verifier
    src = tmp_path / "verifier.c"
    src.write_text('#include <test_progs.h>\n#include "verifier_and.skel.h"\n'
                   '#include "verifier_ctx.skel.h"\n\nstatic void run_tests_aux(void) {}\n'
                   '#define RUN(skel) run_tests_aux(#skel, skel##__elf_bytes, NULL)\n\n'
                   'void test_verifier_and(void)                  { RUN(verifier_and); }\n'
                   'void test_verifier_ctx(void)                  { RUN(verifier_ctx); }\n'
                   'void test_verifier_mtu(void)\n{\n\tRUN(verifier_mtu);\n}\n')
    _prune_verifier(src, ["verifier_ctx"])
    out = src.read_text()
    assert "verifier_and" not in out and "verifier_mtu" not in out
    assert '#include "verifier_ctx.skel.h"' in out and "{ RUN(verifier_ctx); }" in out


def test_verifier_runner_of_7_2_pruned_too(tmp_path):
    """7.2's verifier.c includes skeletons not named verifier_* (irq) and
    runs some tests with RUN_TESTS(): both are pruned or kept by name."""
    from bpfpm.kselftest import _prune_verifier
    src = tmp_path / "verifier.c"
    src.write_text('#include <test_progs.h>\n#include "verifier_ctx.skel.h"\n'
                   '#include "irq.skel.h"\n\nstatic void run_tests_aux(void) {}\n'
                   '#define RUN(skel) run_tests_aux(#skel, skel##__elf_bytes, NULL)\n\n'
                   'void test_verifier_ctx(void)                  { RUN_TESTS(verifier_ctx); }\n'
                   'void test_irq(void)                           { RUN(irq); }\n')
    _prune_verifier(src, ["verifier_ctx"])
    out = src.read_text()
    assert "irq" not in out
    assert "{ RUN_TESTS(verifier_ctx); }" in out


def test_only_the_tools_part_of_a_patch_is_kept(tmp_path):
    from bpfpm.kselftest import _tools_hunks
    p = tmp_path / "0001.patch"
    p.write_text("Subject: x\n---\ndiff --git a/net/core/filter.c b/net/core/filter.c\n+a\n"
                 "diff --git a/tools/include/uapi/linux/bpf.h b/tools/include/uapi/linux/bpf.h\n"
                 "+b\n-- \n2.39.5\n")
    assert _tools_hunks(p).startswith("diff --git a/tools/include/uapi/linux/bpf.h")
    assert "filter.c" not in _tools_hunks(p)


def test_each_kernel_installs_its_selftests_in_a_dir_of_its_own(tmp_path, monkeypatch):
    import subprocess
    from types import SimpleNamespace

    from bpfpm import kselftest

    monkeypatch.setenv("BPFPM_CACHE", str(tmp_path))
    argvs = []
    monkeypatch.setattr(kselftest.subprocess, "run",
                        lambda argv, **kw: argvs.append(argv) or
                        subprocess.CompletedProcess(argv, 0))
    kb = SimpleNamespace(src_dir=tmp_path / "tree")
    for name, dirname in (("6.12", "patched"), ("7.2", "patched-7.2")):
        monkeypatch.setenv("BPFPM_KERNEL", name)
        argvs.clear()
        assert kselftest.install(kb, "patched") == tmp_path / "kselftest" / dirname
        headers, install = argvs
        assert f"O={tmp_path / 'kselftest' / dirname}-headers" in headers
        assert f"INSTALL_PATH={tmp_path / 'kselftest' / dirname}" in install
        assert (tmp_path / "kselftest" / f"{dirname}.log").exists()
