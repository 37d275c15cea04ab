import os
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


def test_apply_sets_a_stable_mtime(tree):
    pristine, work, p = tree
    os.utime(p, (1000, 1000))
    os.utime(pristine / "a.c", (500, 500))
    assert patches.apply(work, [p], pristine) == ["a.c"]
    assert (work / "a.c").read_text() == "one\nTWO\nthree\n"
    assert (work / "a.c").stat().st_mtime == 1000


def test_a_patch_that_does_not_apply_names_patch_and_hunk(tree):
    pristine, work, p = tree
    (work / "a.c").write_text("something else\n")
    with pytest.raises(BpfpmError) as e:
        patches.apply(work, [p], pristine)
    assert "0001-change.patch does not apply" in str(e.value)
    assert "a.c" in str(e.value) and "Hunk #1 FAILED" in str(e.value)


def test_already_applied_series_is_detected(tree):
    pristine, work, p = tree
    patches.apply(work, [p], pristine)
    assert patches.already_applied(work, [p])
    assert not patches.already_applied(pristine, [p])


def test_series_key_changes_with_content(tree):
    _, _, p = tree
    k1 = patches.series_key([p])
    p.write_text(PATCH.replace("TWO", "2"))
    assert patches.series_key([p]) != k1
    assert patches.series_key([]) != k1
