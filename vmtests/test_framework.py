"""The framework's own promises that need a real guest."""

import time

import pytest

from bpfpm.channel import CommandTimeout
from bpfpm.errors import GuestCrashed

pytestmark = pytest.mark.vm


def test_command_channel_reports_status_streams_and_timeouts(vm):
    res = vm.run("printf 'out\\n'; printf 'err\\n' >&2; exit 3", check=False)
    assert (res.rc, res.stdout, res.stderr) == (3, "out\n", "err\n")
    assert vm.run("printf 'no newline'").stdout == "no newline"
    with pytest.raises(CommandTimeout):
        vm.run("sleep 30", timeout=1)
    assert vm.run("echo still usable").stdout == "still usable\n"


def test_file_copy_both_ways(vm, tmp_path):
    src = tmp_path / "blob"
    src.write_bytes(bytes(range(256)) * 1000)
    vm.put(src, "/tmp/blob")
    assert vm.run("sha256sum /tmp/blob").stdout.split()[0] == \
        __import__("hashlib").sha256(src.read_bytes()).hexdigest()
    vm.get("/tmp/blob", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == src.read_bytes()


def test_panicking_guest_is_reported_kept_and_replaced(guest):
    vm = guest.ensure()
    with pytest.raises((GuestCrashed, CommandTimeout)):
        vm.run("echo c > /proc/sysrq-trigger", timeout=60)
    deadline = time.monotonic() + 60
    while vm.alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    console = vm.console_log.read_text(errors="replace")
    assert "sysrq: Trigger a crash" in console and "Kernel panic" in console
    guest.stop()
    assert vm.console_log.exists(), "the dead guest's console log must be kept"
    fresh = guest.ensure()
    assert fresh is not vm and fresh.run("echo alive").stdout == "alive\n"
