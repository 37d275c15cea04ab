import subprocess

from bpfpm import source

DEB822 = """\
Types: deb
# comment
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://src.example/debian
Suites: bookworm
Components: main
"""


def test_trixie_sources_reuse_the_hosts_mirrors():
    out = source.trixie_sources_list(source._parse_deb822(DEB822))
    assert "URIs: http://mirror.example/debian\nSuites: trixie trixie-updates" in out
    assert "URIs: http://mirror.example/debian-security\nSuites: trixie-security" in out
    assert "src.example" not in out
    assert out.count("Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg") == 2


def test_one_line_format_is_understood():
    srcs = source._parse_one_line(
        "deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main contrib\n"
        "# deb http://old.example/debian buster main\n")
    assert srcs == [source.AptSource("http://m.example/debian", ("bookworm",),
                                     ("main", "contrib"), "/k.gpg")]


def test_version_ordering_is_numeric():
    vs = ["6.12.9-1", "6.12.117-1", "6.12.57-1"]
    assert max(vs, key=source._version_key) == "6.12.117-1"


def test_download_returns_the_deb_of_the_version_asked_for(tmp_path, monkeypatch):
    import subprocess
    from pathlib import Path

    dest = tmp_path / "debs"
    dest.mkdir()
    # an older download of a later-sorting version is already there
    (dest / "linux-source-6.12_6.12.9-1_all.deb").write_text("old")

    def fake_run(argv, cwd=None, **kw):
        assert argv[0] == "apt-get" and argv[-1] == "linux-source-6.12=1:6.12.117-1"
        (Path(cwd) / "linux-source-6.12_1%3a6.12.117-1_all.deb").write_text("asked")
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(source.subprocess, "run", fake_run)
    apt = source.PrivateApt(tmp_path / "apt")
    deb = apt.download("linux-source-6.12", "1:6.12.117-1", dest)
    assert deb == dest / "linux-source-6.12_1%3a6.12.117-1_all.deb"
    assert deb.read_text() == "asked"
    assert sorted(p.name for p in dest.iterdir()) == [
        "linux-source-6.12_1%3a6.12.117-1_all.deb", "linux-source-6.12_6.12.9-1_all.deb"]


def test_download_that_leaves_another_version_is_an_error(tmp_path, monkeypatch):
    import subprocess
    from pathlib import Path

    import pytest

    from bpfpm.errors import BpfpmError

    def fake_run(argv, cwd=None, **kw):
        (Path(cwd) / "linux-source-6.12_6.12.57-1_all.deb").write_text("other")
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(source.subprocess, "run", fake_run)
    with pytest.raises(BpfpmError, match="no linux-source-6.12 6.12.117-1 .deb"):
        source.PrivateApt(tmp_path / "apt").download("linux-source-6.12", "6.12.117-1",
                                                     tmp_path / "debs")


def test_newest_unpacked_tree_is_chosen_by_version_not_by_name(tmp_path):
    for v in ("6.12.9-1", "6.12.117-1", "6.12.57-1"):
        d = tmp_path / f"{source.PACKAGE}_{v}"
        d.mkdir()
        (d / "READY").write_text("")
    (tmp_path / f".{source.PACKAGE}_6.12.200-1.partial-x").mkdir()
    assert source._ready(tmp_path).name.endswith("_6.12.117-1")
    assert source._ready(tmp_path, "6.12.57-1").name.endswith("_6.12.57-1")
    assert source._ready(tmp_path, "6.12.1-1") is None


def _tree(root):
    (root / "net" / "mptcp").mkdir(parents=True)
    (root / "Makefile").write_text("all:\n")
    (root / "net" / "mptcp" / "pm.c").write_text("int x;\n")
    return root


def test_a_plain_trees_ident_changes_with_an_edit(tmp_path):
    tree = _tree(tmp_path / "linux")
    before = source.developer_source(tree).ident
    assert source.developer_source(tree).ident == before
    (tree / "net" / "mptcp" / "pm.c").write_text("int x; /* one more */\n")
    assert source.developer_source(tree).ident != before


def test_a_git_trees_ident_follows_uncommitted_edits_and_untracked_files(tmp_path):
    tree = _tree(tmp_path / "linux")
    git = ["git", "-C", str(tree), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "base"], check=True)
    clean = source.developer_source(tree).ident
    pm = tree / "net" / "mptcp" / "pm.c"
    pm.write_text("int x; /* edit 1 */\n")
    one = source.developer_source(tree).ident
    pm.write_text("int x; /* edit 2 */\n")
    two = source.developer_source(tree).ident
    assert len({clean, one, two}) == 3, "each edit is a different kernel"
    assert one.startswith(clean + "-dirty-")
    pm.write_text("int x;\n")
    assert source.developer_source(tree).ident == clean, "the same content, the same kernel"
    (tree / "net" / "mptcp" / "new.c").write_text("int y;\n")
    assert source.developer_source(tree).ident != clean
