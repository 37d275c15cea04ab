"""The choice of kernel (BPFPM_KERNEL): the table, its errors, and where each
kernel's source, series, config, tree and build dirs are."""

import pytest

from bpfpm import build, cli, kconfig, kernels, patches, source
from bpfpm.errors import BpfpmError
from bpfpm.paths import KERNEL_DIR


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch):
    for var in ("BPFPM_KERNEL", "BPFPM_PATCHES", "BPFPM_CONFIG", "BPFPM_SOURCE_VERSION",
                "BPFPM_KERNEL_BUILD", "KERNEL_SRC", "DEBUG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("BPFPM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_6_12_is_the_default_and_7_2_is_chosen_by_name(monkeypatch):
    assert kernels.current().name == "6.12"
    monkeypatch.setenv("BPFPM_KERNEL", "7.2")
    k = kernels.current()
    assert (k.package, k.pinned, k.suites, k.security_suites) == \
        ("linux-source-7.2", "7.2.13-1", ("trixie-backports", "sid"), ())


def test_an_unknown_kernel_is_an_error_that_lists_the_supported_ones(monkeypatch):
    monkeypatch.setenv("BPFPM_KERNEL", "7.3")
    with pytest.raises(BpfpmError, match=r"BPFPM_KERNEL=7\.3: .* are 6\.12, 7\.2"):
        kernels.current()


def test_6_12_keeps_the_cache_paths_it_had_before_the_choice(env):
    k = kernels.get("6.12")
    assert k.tree_dir() == env / "trees" / "linux"
    assert k.build_dir("base") == env / "builds" / "base"
    assert k.build_dir("debug-no-cgroup-bpf") == env / "builds" / "debug-no-cgroup-bpf"
    assert k.cache_name("series-check") == "series-check"


def test_other_kernels_have_paths_of_their_own(env):
    k = kernels.get("7.2")
    assert k.tree_dir() == env / "trees" / "linux-7.2"
    assert k.build_dir("base") == env / "builds" / "base-7.2"
    assert k.cache_name("patched") == "patched-7.2"
    paths = [(x.tree_dir(), x.build_dir("base")) for x in kernels.KERNELS.values()]
    assert len(set(paths)) == len(paths)


def test_the_pin_can_be_overridden(monkeypatch):
    assert kernels.get("7.2").pinned_version() == "7.2.13-1"
    monkeypatch.setenv("BPFPM_SOURCE_VERSION", "7.2.12-1~bpo13+1")
    assert kernels.get("7.2").pinned_version() == "7.2.12-1~bpo13+1"


def test_the_series_is_the_chosen_kernels(monkeypatch):
    assert patches.series_dir() == KERNEL_DIR / "patches" / "6.12"
    assert patches.series()[0].parent == KERNEL_DIR / "patches" / "6.12"
    monkeypatch.setenv("BPFPM_KERNEL", "7.2")
    assert patches.series_dir() == KERNEL_DIR / "patches" / "7.2"


def test_a_kernel_without_a_series_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(kernels.KERNELS, "9.9", kernels.Kernel("9.9", "linux-source-9.9",
                                                               "9.9.1-1", ("sid",)))
    monkeypatch.setenv("BPFPM_KERNEL", "9.9")
    with pytest.raises(BpfpmError, match=r"kernel 9\.9 has no patch series: .*patches/9\.9/"
                                         r"series does not exist \(kernels with a series: "
                                         r"6\.12"):
        patches.series()
    monkeypatch.setenv("BPFPM_PATCHES", "none")
    assert patches.series() == []


def test_7_2_config_adds_its_fragment_and_its_name_to_the_key(monkeypatch):
    base = kconfig.fragments(debug=False)
    assert [f.name for f in base] == ["base.config"], "6.12's config key must not change"
    key = kconfig.config_key(False)
    monkeypatch.setenv("BPFPM_KERNEL", "7.2")
    assert [f.name for f in kconfig.fragments(debug=True)] == \
        ["base.config", "7.2.config", "debug.config"]
    assert kconfig.config_key(False) != key
    # 7.2.config's "is not set" line replaces base.config's request
    req = kconfig.requested(kconfig.fragments(debug=False))
    assert req["CONFIG_PREEMPT_VOLUNTARY"] == "n" and req["CONFIG_PREEMPT_LAZY"] == "y"


def test_a_kernels_fragment_is_not_a_variant(monkeypatch):
    monkeypatch.setenv("BPFPM_CONFIG", "7.2")
    with pytest.raises(BpfpmError, match="kernel 7.2's own fragment, applied on that kernel"):
        kconfig.variants()
    monkeypatch.setenv("BPFPM_CONFIG", "nope")
    with pytest.raises(BpfpmError, match="the variants are: no-cgroup-bpf$"):
        kconfig.variants()


class _Built(Exception):
    pass


@pytest.mark.parametrize("name,debug,tree,bdir", [
    ("6.12", False, "trees/linux", "builds/base"),
    ("6.12", True, "trees/linux", "builds/debug"),
    ("7.2", False, "trees/linux-7.2", "builds/base-7.2"),
    ("7.2", True, "trees/linux-7.2", "builds/debug-7.2"),
])
def test_build_uses_the_kernels_tree_and_build_dir(env, monkeypatch, name, debug, tree, bdir):
    monkeypatch.setenv("BPFPM_KERNEL", name)
    src = source.KernelSource(env / "src", f"fake-{name}", "fake source", False)
    monkeypatch.setattr(source, "resolve", lambda: src)
    monkeypatch.setattr(patches, "series", lambda: [])
    monkeypatch.setattr(build, "toolchain_id", lambda: "gcc-test")
    used = {}

    def fake_build(src, series, key, debug, tree, bdir, lock_fd):
        used.update(tree=tree, bdir=bdir)
        raise _Built

    monkeypatch.setattr(build, "_build_in_place", fake_build)
    with pytest.raises(_Built):
        build.build(debug=debug)
    assert used == {"tree": env / tree, "bdir": env / bdir}


def test_kernel_list_names_every_kernel_for_make(capsys):
    a = cli.parser().parse_args(["kernel", "list", "--names"])
    assert a.fn(a) == 0
    assert capsys.readouterr().out.split() == list(kernels.KERNELS)
