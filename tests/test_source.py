import subprocess

import pytest

from bpfpm import kernels, source
from bpfpm.errors import BpfpmError

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


def test_6_12_sources_reuse_the_hosts_mirrors():
    out = source.sources_list(source._parse_deb822(DEB822), kernels.get("6.12"))
    assert "URIs: http://mirror.example/debian\nSuites: trixie trixie-updates" in out
    assert "URIs: http://mirror.example/debian-security\nSuites: trixie-security" in out
    assert "src.example" not in out
    assert out.count("Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg") == 2


def _host_etc(tmp_path):
    """A host apt configuration: /etc/apt/sources.list.d/debian.sources."""
    etc = tmp_path / "etc" / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "sources.list.d" / "debian.sources").write_text(DEB822)
    (etc / "sources.list.d" / "other.list.disabled").write_text("deb http://no.example/ x main\n")
    return etc


def test_7_2_sources_are_its_suites_on_the_hosts_archive_mirror(tmp_path):
    out = source.sources_list(source.host_apt_sources(_host_etc(tmp_path)), kernels.get("7.2"))
    assert out == ("Types: deb\nURIs: http://mirror.example/debian\n"
                   "Suites: trixie-backports sid\nComponents: main\n"
                   "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")


def test_no_mirror_host_is_written_in_the_project():
    from bpfpm.paths import ROOT
    for f in [*(ROOT / "bpfpm").rglob("*.py"), ROOT / "Makefile", *(ROOT / "scripts").iterdir()]:
        assert "debian.org" not in f.read_text(errors="replace"), f


def test_each_kernel_updates_its_own_sources_file(tmp_path, monkeypatch):
    host = source.host_apt_sources(_host_etc(tmp_path))
    monkeypatch.setattr(source, "host_apt_sources", lambda: host)
    seen = []

    def fake_run(argv, **kw):
        sources = next(a.split("=", 1)[1] for a in argv if a.startswith("Dir::Etc::SourceList="))
        seen.append(open(sources).read())
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(source.subprocess, "run", fake_run)
    for name in ("6.12", "7.2"):
        apt = source.PrivateApt(tmp_path / "apt", kernels.get(name))
        apt.update()
        assert apt.sources.name == f"linux-source-{name}.sources"
    assert "Suites: trixie trixie-updates" in seen[0] and "sid" not in seen[0]
    assert "Suites: trixie-backports sid" in seen[1] and "trixie-security" not in seen[1]


class _Fetched(Exception):
    pass


@pytest.mark.parametrize("name,offered,want", [
    ("7.2", ["7.2.13-1", "7.2.12-1~bpo13+1", "7.2.6-1~bpo13+1"], "7.2.13-1"),
    ("7.2", ["7.2.12-1~bpo13+1", "7.2.9-1~bpo13+1"], "7.2.12-1~bpo13+1"),
    ("6.12", ["6.12.117-1", "6.12.120-1"], "6.12.117-1"),
], ids=["pinned", "pin-gone-newest", "6.12-pinned"])
def test_the_pinned_version_or_else_the_newest_is_fetched(tmp_path, monkeypatch, name,
                                                          offered, want):
    asked = {}

    class FakeApt:
        def __init__(self, root, kernel):
            asked["kernel"] = kernel.name

        def update(self):
            pass

        def versions(self, package):
            asked["package"] = package
            return offered

        def download(self, package, version, dest):
            asked["download"] = (package, version)
            raise _Fetched

    monkeypatch.setattr(source, "PrivateApt", FakeApt)
    monkeypatch.delenv("BPFPM_SOURCE_VERSION", raising=False)
    with pytest.raises(_Fetched):
        source._fetch(tmp_path, kernels.get(name))
    assert asked == {"kernel": name, "package": f"linux-source-{name}",
                     "download": (f"linux-source-{name}", want)}


def test_a_package_no_suite_offers_says_which_suites_were_asked(tmp_path, monkeypatch):
    class FakeApt:
        def __init__(self, root, kernel):
            pass

        def update(self):
            pass

        def versions(self, package):
            return []

    monkeypatch.setattr(source, "PrivateApt", FakeApt)
    with pytest.raises(BpfpmError, match="linux-source-7.2 not offered by the suites "
                                         "trixie-backports sid"):
        source._fetch(tmp_path, kernels.get("7.2"))


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
    pkg = "linux-source-6.12"
    for v in ("6.12.9-1", "6.12.117-1", "6.12.57-1"):
        d = tmp_path / f"{pkg}_{v}"
        d.mkdir()
        (d / "READY").write_text("")
    (tmp_path / f".{pkg}_6.12.200-1.partial-x").mkdir()
    (tmp_path / "linux-source-7.2_7.2.13-1").mkdir()      # another kernel's
    (tmp_path / "linux-source-7.2_7.2.13-1" / "READY").write_text("")
    assert source._ready(tmp_path, pkg).name.endswith("_6.12.117-1")
    assert source._ready(tmp_path, pkg, "6.12.57-1").name.endswith("_6.12.57-1")
    assert source._ready(tmp_path, pkg, "6.12.1-1") is None
    assert source._ready(tmp_path, "linux-source-7.2").name == "linux-source-7.2_7.2.13-1"


def test_an_unpacked_tree_of_the_pin_is_used_without_apt(tmp_path, monkeypatch):
    monkeypatch.setenv("BPFPM_CACHE", str(tmp_path))
    monkeypatch.setenv("BPFPM_KERNEL", "7.2")
    monkeypatch.delenv("BPFPM_SOURCE_VERSION", raising=False)
    monkeypatch.setattr(source, "PrivateApt", None)       # any use of apt fails
    d = tmp_path / "source" / "linux-source-7.2_7.2.13-1"
    (d / "linux").mkdir(parents=True)
    (d / "VERSION").write_text("linux-source-7.2 7.2.13-1\nsha256 0123456789abcdef\n")
    (d / "READY").write_text("")
    src = source.resolve()
    assert src.path == d / "linux"
    assert src.ident == "debian-linux-source-7.2-7.2.13-1-0123456789ab"
    assert src.description.startswith("Debian linux-source-7.2 7.2.13-1")


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
