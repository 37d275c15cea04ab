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
