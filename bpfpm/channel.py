"""The one channel to a guest: its agent (bpfpm.guest.agent), reached
through the SSH connection's port forwarding.

    ch = Channel.open(transport, AGENT_PORT, name="guest1", log=run/"guest1.agent.log")
    ch.run("ip -br addr")                 # a shell command, with its own timeout
    ch.call("topo.create", spec=...)      # an agent operation

Every request carries an id and every call has a deadline. A reader thread
drains stdout and stderr all the time, so neither can stall the other,
files replies by id (a late reply to a call that timed out is dropped, not
taken for the next call's answer) and notes the agent's heartbeats. A call
ends in one of four ways: its reply; CallTimeout (its deadline passed while
heartbeats still came: the guest is slow or the op is stuck, the channel
stays usable); GuestFrozen (no heartbeat for `frozen_after` seconds: QEMU
stopped or the guest kernel hung); ChannelLost (the SSH channel or the
agent went away).
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import json
import logging
import select
import socket
import threading
import time
from pathlib import Path

import paramiko

from .errors import BpfpmError, CallTimeout, ChannelLost, GuestFrozen

# Connection attempts while the guest boots fail by design; the caller
# reports the final outcome, so paramiko's own tracebacks are noise.
logging.getLogger("paramiko").setLevel(logging.CRITICAL)

# The agent beats every second; under TCG on a loaded 2-core host a guest
# was never seen to miss more than a few. Scaled with the session's
# time_scale (debug kernels).
FROZEN_AFTER = 20.0


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


class CommandTimeout(CallTimeout):
    """A shell command ran past its timeout; the guest killed what it started."""


class AgentError(BpfpmError):
    """A guest operation raised; carries the guest's exception type and errno."""

    def __init__(self, op: str, resp: dict):
        self.op = op
        self.type = resp.get("type")
        self.errno = resp.get("errno")
        self.guest_trace = resp.get("trace", "")
        super().__init__(f"guest agent {op} failed: {self.type}: {resp.get('error')}")


def bounded(fn, timeout: float, what: str, on_timeout):
    """fn() in a thread, given up after `timeout` s. paramiko's session
    set-up waits with no deadline of its own; on_timeout() (closing the
    transport) makes the abandoned thread return."""
    box: dict = {}

    def target():
        try:
            box["r"] = fn()
        except BaseException as e:  # handed to the caller
            box["e"] = e

    t = threading.Thread(target=target, daemon=True, name=what)
    t.start()
    t.join(timeout)
    if t.is_alive():
        on_timeout()
        raise GuestFrozen(f"{what}: no answer within {timeout:.0f}s")
    if "e" in box:
        raise box["e"]
    return box["r"]


def _tail(path: Path | None, n: int = 2000) -> str:
    """The last n bytes of a file the guest writes (the agent's stderr)."""
    if path is None:
        return "(not kept)"
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - n))
            return f.read().decode(errors="replace") or "(empty)"
    except OSError:
        return "(none)"


def _exit_status(path: Path | None, wait: float = 0.0) -> str | None:
    """The agent's exit status, if it exited (the guest writes it to `path`
    just after the agent's socket closed: given `wait` s to show)."""
    if path is None:
        return None
    end = time.monotonic() + wait
    while True:
        try:
            return path.read_text().strip()
        except OSError:
            if time.monotonic() >= end:
                return None
            time.sleep(0.1)


def _command_name(cmd: str) -> str:
    """The program a shell command runs, past `ip netns exec NS` (for the
    per-op times)."""
    words = cmd.split()
    if words[:3] == ["ip", "netns", "exec"]:
        words = words[4:]
    return " ".join(words[:2]) if words[:1] == ["ip"] or words[:1] == ["bpftool"] else \
        (words[0] if words else "")


class Channel:
    """Requests to the guest agent, replies matched by id."""

    def __init__(self, chan: paramiko.Channel, name: str, log: Path | None,
                 time_scale: float = 1.0, stderr: Path | None = None,
                 status: Path | None = None):
        self.chan = chan
        self.name = name
        self.time_scale = time_scale
        self.stderr_file = stderr       # the agent's stderr, written by the guest
        self.status_file = status       # its exit status, written when it exits
        # capped: a frozen guest must fail its test within 60 s, debug or not
        self.freeze_threshold(FROZEN_AFTER * min(time_scale, 2.5))
        self._ids = itertools.count(1)
        self._abandoned: dict[int, str] = {}    # calls given up on, by id
        self._cv = threading.Condition()
        self._replies: dict[int, dict] = {}
        self._waiting: set[int] = set()
        self._hello: dict | None = None
        self._closed: str | None = None     # why the reader stopped
        self.last_beat = time.monotonic()
        self._log = open(log, "ab") if log else None
        self.op_times: dict[str, list] = {}     # op -> [calls, seconds], see take_op_times
        self._reader = threading.Thread(target=self._read, daemon=True,
                                        name=f"channel-{name}")
        self._reader.start()

    def freeze_threshold(self, seconds: float) -> None:
        """The guest is frozen after `seconds` without a heartbeat. Sends
        too: a frozen guest stops granting SSH window, and sendall would
        wait for it forever (the reader never blocks: it recv()s only what
        is ready)."""
        self.frozen_after = seconds
        self.chan.settimeout(seconds)

    @classmethod
    def open(cls, transport: paramiko.Transport, port: int, name: str,
             log: Path | None = None, stderr: Path | None = None, status: Path | None = None,
             time_scale: float = 1.0, startup: float = 60) -> "Channel":
        """Connect to the agent the guest started (listening on its loopback
        `port`) through the SSH connection's port forwarding; returns once
        it said it is ready. While it is still starting, sshd answers that
        the port refused: asked again every 50 ms."""
        deadline = time.monotonic() + startup * time_scale

        def connect():
            while True:
                try:
                    return transport.open_channel("direct-tcpip", ("127.0.0.1", port),
                                                  ("127.0.0.1", 0), timeout=startup)
                except paramiko.ChannelException as e:
                    rc = _exit_status(status)
                    if rc is not None:
                        raise ChannelLost(f"guest {name}: the agent exited while starting "
                                          f"(status {rc}); stderr: {_tail(stderr)}") from None
                    if time.monotonic() > deadline:
                        raise GuestFrozen(f"guest {name}: the agent did not listen within "
                                          f"{startup * time_scale:.0f}s ({e}); stderr: "
                                          f"{_tail(stderr)}") from None
                    time.sleep(0.05)

        chan = bounded(connect, startup * time_scale + 5, f"guest {name}: reaching the agent",
                       transport.close)
        self = cls(chan, name, log, time_scale, stderr, status)
        with self._cv:
            while self._hello is None:
                if self._closed:
                    err = self.stderr_tail()
                    self.close()
                    raise ChannelLost(f"guest {name}: the agent exited while starting: "
                                      f"{self._closed}; stderr: {err}")
                left = deadline - time.monotonic()
                if left <= 0:
                    self.close()
                    raise GuestFrozen(f"guest {name}: the agent did not start within "
                                      f"{startup * time_scale:.0f}s")
                self._cv.wait(min(left, 0.5))
        self.ops = self._hello.get("ops", [])
        self.agent_pid = self._hello.get("pid")
        return self

    # -- reader thread -------------------------------------------------------
    def _read(self) -> None:
        buf = b""
        why = "channel closed"
        try:
            while True:
                got = False
                if self.chan.recv_ready():
                    data = self.chan.recv(65536)
                    if not data:
                        break
                    # any bytes are a sign of life: a long reply holds the
                    # heartbeats back until it is sent whole
                    self.last_beat = time.monotonic()
                    buf += data
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        self._dispatch(line)
                    got = True
                if not got:
                    if self.chan.closed or self.chan.eof_received:
                        break
                    select.select([self.chan], [], [], 0.5)
        except Exception as e:  # the transport died under us
            why = f"{type(e).__name__}: {e}"
        rc = _exit_status(self.status_file, wait=1.0)
        if rc is not None:
            why = f"agent exited with status {rc}"
        with self._cv:
            self._closed = why
            self._cv.notify_all()

    def _dispatch(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            msg = None
        if not isinstance(msg, dict):
            if self._log:
                self._log.write(b"stray stdout: " + line[:500] + b"\n")
            return
        with self._cv:
            self.last_beat = time.monotonic()
            if "hb" in msg:
                return
            if msg.get("ready"):
                self._hello = msg
            elif msg.get("id") in self._waiting:
                self._replies[msg["id"]] = msg
            else:               # the answer to a call that gave up waiting
                self._abandoned.pop(msg.get("id"), None)
                if self._log:
                    self._log.write(b"late reply dropped: " + line[:500] + b"\n")
            self._cv.notify_all()

    def stderr_tail(self, n: int = 2000) -> str:
        return _tail(self.stderr_file, n)

    # -- calls ---------------------------------------------------------------
    def call(self, op: str, _timeout: float = 120, **args):
        """Run one guest operation; `_timeout` bounds the wait for its answer."""
        rid = next(self._ids)
        msg = (json.dumps({"id": rid, "op": op, "args": args}) + "\n").encode()
        with self._cv:
            if self._closed:
                raise ChannelLost(f"guest {self.name}: channel lost ({self._closed}); "
                                  f"agent stderr: {self.stderr_tail(500)}")
            stuck = [o for o in self._abandoned.values() if o != "run"]
            if stuck:
                # the one-request-at-a-time agent is still in it: waiting
                # behind it would only time out again (a `run` ends by itself:
                # the guest enforces its timeout)
                raise CallTimeout(f"guest {self.name}: the agent is still busy with {stuck[0]}, "
                                  f"which timed out earlier; {op} not sent")
            self._waiting.add(rid)
        t0 = time.monotonic()
        try:
            try:
                self.chan.sendall(msg)
            except socket.timeout:
                raise GuestFrozen(f"guest {self.name}: {op} could not be sent in "
                                  f"{self.frozen_after:.0f}s (the guest takes no data)") from None
            except OSError as e:
                raise ChannelLost(f"guest {self.name}: cannot send {op}: {e}") from None
            resp = self._wait(rid, op, time.monotonic() + _timeout)
        except CallTimeout:
            with self._cv:
                self._abandoned[rid] = op
            raise
        finally:
            with self._cv:
                self._waiting.discard(rid)
                self._replies.pop(rid, None)
            label = op if op != "run" else "run " + _command_name(args.get("cmd", ""))
            t = self.op_times.setdefault(label, [0, 0.0])
            t[0] += 1
            t[1] += time.monotonic() - t0
        if not resp.get("ok"):
            raise AgentError(op, resp)
        return resp.get("result")

    def take_op_times(self) -> dict[str, list]:
        """Calls and seconds per op since the last take (where a test's
        time goes: <run>/calls.jsonl)."""
        got, self.op_times = self.op_times, {}
        return {op: [n, round(s, 3)] for op, (n, s) in sorted(got.items(), key=lambda kv: -kv[1][1])}

    def _wait(self, rid: int, op: str, deadline: float) -> dict:
        with self._cv:
            while rid not in self._replies:
                now = time.monotonic()
                if self._closed:
                    raise ChannelLost(f"guest {self.name}: channel lost during {op} "
                                      f"({self._closed}); agent stderr: "
                                      f"{self.stderr_tail(500)}")
                if now - self.last_beat > self.frozen_after:
                    raise GuestFrozen(f"guest {self.name}: no heartbeat for "
                                      f"{now - self.last_beat:.0f}s during {op}")
                if now >= deadline:
                    raise CallTimeout(f"guest {self.name}: {op} did not answer in time "
                                      "(the guest still beats: a slow or stuck operation)")
                self._cv.wait(min(deadline - now, 0.5))
            return self._replies[rid]

    def run(self, cmd: str, timeout: float = 120) -> Result:
        """A shell command in the guest (bash -c, its own session, stdin
        /dev/null); on timeout the guest kills it and CommandTimeout."""
        t0 = time.monotonic()
        r = self.call("run", cmd=cmd, timeout=timeout, _timeout=timeout + 30)
        if r["timed_out"]:
            raise CommandTimeout(f"guest command timed out after {timeout:.0f}s: {cmd}")
        return Result(cmd, r["rc"], r["stdout"], r["stderr"], time.monotonic() - t0)

    def put(self, local: Path, remote: str, mode: int = 0o644) -> None:
        data = base64.b64encode(Path(local).read_bytes()).decode()
        self.call("file.put", path=remote, data=data, mode=mode)

    def get(self, remote: str, local: Path) -> None:
        Path(local).write_bytes(base64.b64decode(self.call("file.get", path=remote)))

    def send_only(self, op: str, **args) -> None:
        """Fire and forget (power-off: no answer will come)."""
        try:
            self.chan.settimeout(1)
            self.chan.sendall((json.dumps({"id": 0, "op": op, "args": args}) + "\n").encode())
        except OSError:
            pass

    @property
    def closed(self) -> str | None:
        return self._closed

    def close(self) -> None:
        try:
            self.chan.close()
        except Exception:
            pass
        self._reader.join(2)
        if self._log:
            self._log.close()
            self._log = None


def public_key(pub: Path) -> paramiko.PKey:
    """A key from an OpenSSH .pub line ("ssh-ed25519 AAAA... comment")."""
    kind, b64 = pub.read_text().split()[:2]
    return paramiko.PKey.from_type_string(kind, base64.b64decode(b64))


def connect(port: int, key: Path, host_key: paramiko.PKey,
            timeout: float = 10) -> paramiko.SSHClient:
    """SSH to the guest's forwarded port; the guest must show `host_key`
    (anything else on that port is refused, not trusted on first use)."""
    client = paramiko.SSHClient()
    client.get_host_keys().add(f"[127.0.0.1]:{port}", host_key.get_name(), host_key)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect("127.0.0.1", port=port, username="root", key_filename=str(key),
                   timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                   look_for_keys=False, allow_agent=False)
    return client
