"""Progress lines on stderr, one prefix, no logging framework ceremony."""

import sys
import time

_T0 = time.monotonic()


def _emit(tag: str, msg: str) -> None:
    print(f"[bpfpm {time.monotonic() - _T0:6.1f}s] {tag}{msg}", file=sys.stderr, flush=True)


def step(msg: str) -> None:
    _emit("", msg)


def warn(msg: str) -> None:
    _emit("warning: ", msg)


def error(msg: str) -> None:
    _emit("error: ", msg)
