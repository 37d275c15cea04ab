"""Host-side proxy for the guest agent (bpfpm.guest.agent).

    agent = Agent(vm)
    agent.call("topo.create", spec=spec.to_dict())

A failed operation raises AgentError carrying the guest's exception type,
errno and message (netlink extack text included), so tests can assert on
them.
"""

from __future__ import annotations

import itertools
import json
import shlex
import socket
import time

from .errors import BpfpmError, GuestCrashed
from .paths import ROOT
from .vm import VM, guest_env


class AgentError(BpfpmError):
    def __init__(self, op: str, resp: dict):
        self.op = op
        self.type = resp.get("type")
        self.errno = resp.get("errno")
        self.guest_trace = resp.get("trace", "")
        super().__init__(f"guest agent {op} failed: {self.type}: {resp.get('error')}")


class Agent:
    def __init__(self, vm: VM, startup_timeout: float = 60):
        self.vm = vm
        self._ids = itertools.count(1)
        self.chan = vm.ssh.get_transport().open_session()
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in guest_env().items())
        self.chan.exec_command(f"cd {shlex.quote(str(ROOT))} && exec env {env} "
                               f"python -m bpfpm.guest.agent")
        self._buf = b""
        hello = self._readline(time.monotonic() + startup_timeout)
        if not hello.get("ready"):
            raise BpfpmError(f"guest agent did not start: {hello}")
        self.ops = hello["ops"]

    def _readline(self, deadline: float) -> dict:
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise GuestCrashed("guest agent did not answer in time; "
                                   f"console tail:\n{self.vm.console_tail(20)}")
            self.chan.settimeout(min(left, 1.0))
            try:
                data = self.chan.recv(65536)
            except socket.timeout:
                continue
            if not data:
                err = b""
                while self.chan.recv_stderr_ready():
                    err += self.chan.recv_stderr(65536)
                raise GuestCrashed(f"guest agent exited: {err.decode(errors='replace')[-2000:]}")
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def call(self, op: str, _timeout: float = 120, **args):
        """Run one guest operation; `_timeout` bounds the wait for its answer."""
        rid = next(self._ids)
        self.chan.sendall((json.dumps({"id": rid, "op": op, "args": args}) + "\n").encode())
        resp = self._readline(time.monotonic() + _timeout)
        if not resp.get("ok"):
            raise AgentError(op, resp)
        return resp.get("result")

    def close(self) -> None:
        try:
            self.chan.shutdown_write()
            self.chan.close()
        except Exception:
            pass
