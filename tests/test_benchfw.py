from bpfpm import benchfw

CONSOLE = """\
[    0.000000] Linux version 6.12.117 (bpfpm@bpfpm)
[    1.189913] Run /x/virtme/guest/bin/virtme-ng-init as init process
[    1.320060] virtme-ng-init: running systemd-tmpfiles
[    2.622668] virtme-ng-init: starting script
[    2.700000] bpfpm: start script
[    3.300000] bpfpm: sshd starting
[    6.100000] bpfpm: agent listening
noise without a timestamp: bpfpm: agent ready
[    3.400000] bpfpm: sshd starting
[    9.670000] bpfpm: agent ready
[   19.000000] bpfpm: agent ready
"""


def test_timeline_takes_each_step_once_from_kernel_timestamps():
    assert benchfw.timeline(CONSOLE) == {
        "init": 1.189913, "vng_script": 2.622668, "start_script": 2.7,
        "sshd": 3.3, "agent_listening": 6.1, "agent_ready": 9.67}


def test_timeline_leaves_out_steps_a_boot_never_reached():
    assert benchfw.timeline(CONSOLE.split("[    2.7")[0]) == {
        "init": 1.189913, "vng_script": 2.622668}
