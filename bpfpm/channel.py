"""Command channel to the guest: paramiko over vng's forwarded SSH port.

A fresh exec_command costs seconds under TCG, so commands go through one
long-lived `bash --norc --noprofile` per VM; each command runs in a subshell
of it. Its output ends with a NUL-prefixed marker carrying its exit status,
on stdout and on stderr.
"""

from __future__ import annotations

import dataclasses
import itertools
import shlex
import socket
import time
from pathlib import Path

import logging

import paramiko

# Connection attempts while the guest boots fail by design; the caller
# reports the final outcome, so paramiko's own tracebacks are noise.
logging.getLogger("paramiko").setLevel(logging.CRITICAL)

from .errors import BpfpmError, GuestCrashed


@dataclasses.dataclass
class Result:
    cmd: str
    rc: int
    stdout: str
    stderr: str
    seconds: float

    def check(self) -> "Result":
        if self.rc != 0:
            raise CommandFailed(self)
        return self


class CommandFailed(BpfpmError):
    def __init__(self, res: Result):
        self.result = res
        tail = (res.stderr.strip() or res.stdout.strip())[-1500:]
        super().__init__(f"guest command failed (exit {res.rc}): {res.cmd}\n{tail}")


class CommandTimeout(BpfpmError):
    pass


class Shell:
    """One persistent guest shell on an SSH transport."""

    _ids = itertools.count(1)

    def __init__(self, transport: paramiko.Transport, env: dict[str, str]):
        self.transport = transport
        self.chan = transport.open_session()
        self.chan.exec_command("exec bash --norc --noprofile")
        self._out = bytearray()
        self._err = bytearray()
        # The environment is set in the shell itself: commands run in subshells.
        for k, v in env.items():
            self.chan.sendall(f"export {k}={shlex.quote(v)}\n".encode())
        self.pid = int(self.run("echo $$", timeout=60).check().stdout.strip())

    def _read_until(self, buf: bytearray, marker: bytes, recv, ready, deadline: float) -> bytes:
        while True:
            i = buf.find(marker)
            if i >= 0:
                j = buf.find(b"\n", i)
                if j >= 0:
                    data = bytes(buf[:j + 1])
                    del buf[:j + 1]
                    return data
            if self.chan.closed or (self.chan.exit_status_ready() and not ready()):
                raise GuestCrashed("guest shell closed while a command was running")
            left = deadline - time.monotonic()
            if left <= 0:
                raise CommandTimeout("timeout")
            if ready():
                buf += recv(65536)
            else:
                self.chan.settimeout(min(left, 0.5))
                try:
                    buf += recv(65536)
                except socket.timeout:
                    pass

    def run(self, cmd: str, timeout: float = 120) -> Result:
        n = next(self._ids)
        marker = f"\0BPFPM{n} ".encode()
        # A subshell, so that `exit`, `cd` or `set -e` in one command cannot
        # end or change the shell the next command runs in.
        wrapped = (f"( {cmd}\n) </dev/null; __rc=$?; "
                   f"printf '\\0BPFPM{n} %d\\n' $__rc; printf '\\0BPFPM{n} %d\\n' $__rc >&2\n")
        t0 = time.monotonic()
        deadline = t0 + timeout
        self.chan.sendall(wrapped.encode())
        try:
            out = self._read_until(self._out, marker, self.chan.recv,
                                   self.chan.recv_ready, deadline)
            err = self._read_until(self._err, marker, self.chan.recv_stderr,
                                   self.chan.recv_stderr_ready, deadline)
        except CommandTimeout:
            self._kill_children()
            raise CommandTimeout(f"guest command timed out after {timeout:.0f}s: {cmd}") from None
        i = out.find(marker)
        rc = int(out[i + len(marker):].strip())
        stdout = out[:i].decode(errors="replace")
        stderr = err[:err.find(marker)].decode(errors="replace")
        return Result(cmd, rc, stdout, stderr, time.monotonic() - t0)

    def _kill_children(self) -> None:
        """Kill what the timed-out command started; the shell then reports."""
        try:
            ch = self.transport.open_session()
            ch.exec_command(f"for p in $(pgrep -P {self.pid}); do pkill -KILL -P $p; "
                            f"kill -KILL $p; done")
            ch.recv_exit_status()
            deadline = time.monotonic() + 10
            for buf, recv, ready in ((self._out, self.chan.recv, self.chan.recv_ready),
                                     (self._err, self.chan.recv_stderr,
                                      self.chan.recv_stderr_ready)):
                self._read_until(buf, b"\0BPFPM", recv, ready, deadline)
        except Exception:  # the shell is unusable; the caller restarts the VM
            self.chan.close()

    def close(self) -> None:
        self.chan.close()


def connect(port: int, key: Path, timeout: float = 10) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect("127.0.0.1", port=port, username="root", key_filename=str(key),
                   timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                   look_for_keys=False, allow_agent=False)
    client.get_transport().set_keepalive(5)
    return client
