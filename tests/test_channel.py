from bpfpm.channel import _command_name


def test_per_op_times_name_a_command_by_its_program():
    assert _command_name("ip netns exec cli-1 ss -HMna") == "ss"
    assert _command_name("ip -j mptcp endpoint show") == "ip -j"
    assert _command_name("bpftool prog show") == "bpftool prog"
    assert _command_name("") == ""
