"""One exception type for failures that have already been explained."""


class BpfpmError(Exception):
    """A failure with a message that says what failed and what to do next."""

    exit_code = 1


class GuestCrashed(BpfpmError):
    """The guest panicked or stopped answering."""

    exit_code = 3
