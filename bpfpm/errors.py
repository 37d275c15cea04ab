"""Exception types: one for failures already explained, and the ways a guest
can be lost, each named for what happened (callers react differently: a
crash keeps the console and boots again, a kernel that does not boot stops
the run, a timed-out command leaves the guest usable)."""


class BpfpmError(Exception):
    """A failure with a message that says what failed and what to do next."""

    exit_code = 1


class DiskFull(BpfpmError):
    """The cache's disk is full or over quota; the message says how to free it."""


class GuestError(BpfpmError):
    """The guest is gone or unusable; the run cannot go on with it."""

    exit_code = 3


class GuestCrashed(GuestError):
    """The guest kernel panicked, or QEMU exited under a running test."""


class BootFailed(GuestError):
    """The guest never came up (no SSH, no agent) within the boot deadline."""


class GuestFrozen(GuestError):
    """QEMU is there but the guest stopped answering (no heartbeat)."""


class QemuExited(GuestError):
    """QEMU went away with no kernel panic: killed from outside (OOM, a user)."""


class ChannelLost(GuestError):
    """The command channel dropped (sshd or agent gone) while QEMU runs."""


class CallTimeout(BpfpmError):
    """One guest call did not finish in time; the guest itself still answers."""
