from bpfpm import kconfig


def test_parse_reads_set_and_unset_options():
    cfg = kconfig.parse("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x\"\n# comment\n")
    assert cfg == {"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_C": '"x"'}


def test_mismatches_names_dropped_options():
    req = {"CONFIG_MPTCP": "y", "CONFIG_DRM": "n", "CONFIG_GONE": "y"}
    final = {"CONFIG_MPTCP": "y", "CONFIG_DRM": "y"}
    bad = kconfig.mismatches(req, final)
    assert bad == ["CONFIG_DRM: asked n, got y", "CONFIG_GONE: asked y, got n"]


def test_absent_option_counts_as_n():
    assert kconfig.mismatches({"CONFIG_X": "n"}, {}) == []


def test_base_fragment_asks_for_what_the_design_needs():
    req = kconfig.requested(kconfig.fragments(debug=False))
    for opt in ("CONFIG_MPTCP", "CONFIG_MPTCP_IPV6", "CONFIG_BPF_SYSCALL", "CONFIG_BPF_JIT",
                "CONFIG_CGROUP_BPF", "CONFIG_DEBUG_INFO_BTF", "CONFIG_NET_NS", "CONFIG_VETH",
                "CONFIG_NET_SCH_NETEM", "CONFIG_NET_SCH_HTB", "CONFIG_NET_9P_VIRTIO"):
        assert req[opt] == "y", opt


def test_debug_fragment_adds_sanitizers_and_changes_the_key():
    req = kconfig.requested(kconfig.fragments(debug=True))
    for opt in ("CONFIG_KASAN", "CONFIG_PROVE_LOCKING", "CONFIG_DEBUG_ATOMIC_SLEEP",
                "CONFIG_DEBUG_KMEMLEAK", "CONFIG_DEBUG_NET", "CONFIG_PANIC_ON_OOPS"):
        assert req[opt] == "y", opt
    assert kconfig.config_key(True) != kconfig.config_key(False)
