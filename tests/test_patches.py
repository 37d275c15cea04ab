import re
import subprocess

import pytest

from bpfpm import patches
from bpfpm.errors import BpfpmError

PATCH = """\
From: Dev <dev@example.org>
Subject: [PATCH] change

---
 a.c | 2 +-
 1 file changed, 1 insertion(+), 1 deletion(-)

--- a/a.c
+++ b/a.c
@@ -1,3 +1,3 @@
 one
-two
+TWO
 three
"""


@pytest.fixture
def tree(tmp_path):
    pristine = tmp_path / "pristine"
    pristine.mkdir()
    (pristine / "a.c").write_text("one\ntwo\nthree\n")
    work = tmp_path / "work"
    subprocess.run(["cp", "-a", str(pristine), str(work)], check=True)
    p = tmp_path / "0001-change.patch"
    p.write_text(PATCH)
    return pristine, work, p


def test_touched_files(tree):
    _, _, p = tree
    assert patches.touched_files(p) == ["a.c"]


def test_apply_returns_the_touched_files(tree):
    _, work, p = tree
    assert patches.apply(work, [p]) == ["a.c"]
    assert (work / "a.c").read_text() == "one\nTWO\nthree\n"


def test_a_patch_that_does_not_apply_names_patch_and_hunk(tree):
    pristine, work, p = tree
    (work / "a.c").write_text("something else\n")
    with pytest.raises(BpfpmError) as e:
        patches.apply(work, [p])
    assert "0001-change.patch does not apply" in str(e.value)
    assert "a.c" in str(e.value) and "Hunk #1 FAILED" in str(e.value)


def test_already_applied_series_is_detected(tree):
    pristine, work, p = tree
    patches.apply(work, [p])
    assert patches.already_applied(work, [p])
    assert not patches.already_applied(pristine, [p])


def test_series_key_changes_with_content(tree):
    _, _, p = tree
    k1 = patches.series_key([p])
    p.write_text(PATCH.replace("TWO", "2"))
    assert patches.series_key([p]) != k1
    assert patches.series_key([]) != k1


def test_switching_back_to_older_content_looks_new_to_make(tmp_path):
    from bpfpm import build
    tree = tmp_path / "tree"
    tree.mkdir()
    f = tree / "x.c"
    f.write_text("v2")
    build.stamp_changes(tree, ["x.c"])
    t_v2 = f.stat().st_mtime
    f.write_text("v1")
    import os
    os.utime(f, (1, 1))                 # rsync restored an old file with its old mtime
    build.stamp_changes(tree, ["x.c"])
    assert f.stat().st_mtime >= t_v2, "an older version must still trigger a rebuild"
    t_v1 = f.stat().st_mtime
    f.write_text("v1")
    os.utime(f, (5, 5))                 # same content synced again
    build.stamp_changes(tree, ["x.c"])
    assert f.stat().st_mtime == t_v1, "unchanged content must keep its build-time mtime"


FUZZY = """\
--- a/b.c
+++ b/b.c
@@ -1,7 +1,7 @@
 one
 two
 three
-four
+FOUR
 five
 six
 seven
"""


def test_a_patch_with_one_wrong_context_line_is_refused(tmp_path):
    """Fuzz 0, as quilt: plain patch(1) would apply this hunk, ignoring its
    first context line (fuzz 1)."""
    (tmp_path / "b.c").write_text("one-changed\ntwo\nthree\nfour\nfive\nsix\nseven\n")
    p = tmp_path / "0002-fuzzy.patch"
    p.write_text(FUZZY)
    plain = subprocess.run(["patch", "-p1", "--dry-run", "-i", str(p)], cwd=tmp_path,
                           capture_output=True, text=True)
    assert plain.returncode == 0 and "fuzz" in plain.stdout     # the test means something
    with pytest.raises(BpfpmError) as e:
        patches.apply(tmp_path, [p])
    assert "patch 0002-fuzzy.patch does not apply" in str(e.value)
    assert "b.c: Hunk #1 FAILED" in str(e.value)
    assert (tmp_path / "b.c").read_text().count("four") == 1, "the tree is left as it was"
    assert not patches.already_applied(tmp_path, [p])


def test_series_check_counts_kernel_lines_only(tmp_path):
    from bpfpm import seriescheck
    p = tmp_path / "0001-x.patch"
    p.write_text("\n".join([
        "Subject: x", "---", "diff --git a/net/mptcp/bpf.c b/net/mptcp/bpf.c",
        "--- a/net/mptcp/bpf.c", "+++ b/net/mptcp/bpf.c", "@@ -1,1 +1,3 @@", " a", "+b", "+c",
        "diff --git a/tools/include/uapi/linux/bpf.h b/tools/include/uapi/linux/bpf.h",
        "--- a/tools/include/uapi/linux/bpf.h", "+++ b/tools/include/uapi/linux/bpf.h",
        "@@ -1 +1,2 @@", "+d",
        "--- a/Documentation/x.rst", "+++ b/Documentation/x.rst", "+e",
        "--- /dev/null", "+++ b/include/linux/new.h", "+f", ""]))
    assert seriescheck.kernel_lines(p) == {"net/mptcp/bpf.c": 2, "include/linux/new.h": 1}


def test_every_mutation_names_tests_that_exist():
    """kernel/mutations: each undoes one fix and names the tests that catch
    it; a renamed test must not leave a mutation pointing at nothing."""
    from bpfpm import mutations
    from bpfpm.paths import ROOT
    muts = mutations.mutations()
    assert muts
    for patch, tests in muts.items():
        for t in tests:
            path, _, name = t.partition("::")
            assert re.search(rf"^def {re.escape(name)}\(", (ROOT / path).read_text(), re.M), \
                f"{patch.name}: {t} does not exist"


def test_a_series_ending_in_a_deletion_is_not_taken_for_applied(tmp_path):
    """A last patch that deletes what an earlier one added (a mutation)
    reverts cleanly on the pristine tree, which never had the line: that is
    no proof the tree carries the series, and the series must be applied."""
    (tmp_path / "a.c").write_text("one\nthree\n")
    add = tmp_path / "0001-add.patch"
    add.write_text("--- a/a.c\n+++ b/a.c\n@@ -1,2 +1,3 @@\n one\n+two\n three\n")
    delete = tmp_path / "0002-del.patch"
    delete.write_text("--- a/a.c\n+++ b/a.c\n@@ -1,3 +1,2 @@\n one\n-two\n three\n")
    assert patches._patch(tmp_path, delete, "-R", "--dry-run", "--force").returncode == 0
    assert not patches.already_applied(tmp_path, [add, delete])
    patches.apply(tmp_path, [add, delete])
    assert (tmp_path / "a.c").read_text() == "one\nthree\n"
