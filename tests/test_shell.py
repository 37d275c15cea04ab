"""The guest agent's shell (bpfpm.guest.agent.Shell) and the guest's
passwd/shadow (bpfpm.guestssh.guest_files), run on the host: bash is the
same program there."""

import time

from bpfpm import guestssh
from bpfpm.guest.agent import Shell


def test_a_command_goes_through_as_written():
    sh = Shell()
    try:
        r = sh.run("printf '%s|' \"it's\" \"a\\\\b\" $'x\\ty'\necho; exit 3", 10)
        assert (r["rc"], r["stdout"], r["stderr"]) == (3, "it's|a\\b|x\ty|\n", "")
        # each command is a job of its own: nothing it sets is left behind
        assert sh.run("cd /; x=1; echo $x", 10)["stdout"] == "1\n"
        assert sh.run("echo ${x:-unset}", 10)["stdout"] == "unset\n"
    finally:
        sh.stop()


def test_both_streams_are_read_while_the_job_runs():
    sh = Shell()
    try:
        r = sh.run("head -c 300000 /dev/zero | tr '\\0' e >&2; "
                   "head -c 300000 /dev/zero | tr '\\0' o", 30)
        assert (len(r["stdout"]), len(r["stderr"])) == (300000, 300000)
    finally:
        sh.stop()


def test_a_timeout_kills_the_job_and_a_background_child_holds_nothing_up():
    sh = Shell()
    try:
        t0 = time.monotonic()
        r = sh.run("sleep 30", 1)
        assert r["timed_out"] and time.monotonic() - t0 < 10
        t0 = time.monotonic()
        r = sh.run("(sleep 5; echo late) & echo now", 10)
        assert r["stdout"] == "now\n" and time.monotonic() - t0 < 4
        assert sh.run("echo still usable", 10)["stdout"] == "still usable\n"
    finally:
        sh.stop()


def test_the_guest_accounts_take_nothing_from_the_hosts_shadow():
    files = guestssh.guest_files("root:x:0:0:root:/root:/bin/bash\n"
                                 "me:x:1000:1000::/home/me:/bin/zsh\nbroken line\n")
    assert files["passwd"] == ("root:x:0:0:root:/root:/bin/sh\n"
                               "me:x:1000:1000::/home/me:/bin/zsh\n")
    assert files["shadow"] == "root:*:::::::\nme:!:::::::\n"


def test_every_way_a_job_ends_gives_its_status_with_jobs_forked_ahead():
    """The job's EXIT trap says most statuses; bash's wait says the rest
    (a job that exec'd, dropped or replaced the trap, or was killed)."""
    sh = Shell()
    try:
        cases = {"exit 4": 4, "false": 1, "exec sh -c 'exit 5'": 5, "trap - EXIT; exit 6": 6,
                 "trap 'echo bye' EXIT; exit 7": 7, "kill -9 $BASHPID": 137,
                 "(exit 3); x=$(exit 2); echo $?": 0}
        for cmd, rc in cases.items():
            assert sh.run(cmd, 10)["rc"] == rc, cmd
            sh.prepare()            # as the agent does once the reply is out
            assert len(sh.jobs) == Shell.AHEAD
        assert sh.run("trap 'echo bye' EXIT; echo hi", 10)["stdout"] == "hi\nbye\n"
        assert sh.run("sleep 30", 1)["timed_out"]
        sh.prepare()
        assert sh.run("echo after", 10)["stdout"] == "after\n"
    finally:
        sh.stop()
