"""Guest agent: the one channel between host and guest, JSON lines over
one TCP connection on the guest's loopback (`--listen PORT`: the start
script starts it at boot, the host connects through SSH's port
forwarding), one process per VM.

Starting Python under TCG costs about a second, so the host keeps one
agent alive and sends it requests: {"id": n, "op": "topo.create", "args":
{...}} -> {"id": n, "ok": true, "result": ...} or {"ok": false, "error":
"...", "type": "NetlinkError", "errno": 17}. Shell commands are one op
among others (`run`). A thread writes {"hb": n} every HEARTBEAT seconds,
also while an op runs: the host tells a frozen guest from a slow op by it.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib
import itertools
import json
import os
import select
import signal
import socket
import sys
import threading
import time


class _Deferred:
    """A module imported at its first use. The netlink modules (pyroute2)
    take about 2 s to import under TCG, the topology's dataclasses and
    libbpf's ctypes about 0.3 s, and even the standard modules the first
    reply does not need (subprocess, pathlib, ...) about 0.2 s together:
    the agent answers before they are in, and a thread imports them
    meanwhile (warm_up); an op that needs one first waits for that import
    to finish (Python's import lock)."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr):
        return getattr(importlib.import_module(self._name), attr)


base64 = _Deferred("base64")
pathlib = _Deferred("pathlib")
shutil = _Deferred("shutil")
subprocess = _Deferred("subprocess")
traceback = _Deferred("traceback")
mptcp = _Deferred("bpfpm.guest.mptcp")
netns = _Deferred("bpfpm.guest.netns")
bpf = _Deferred("bpfpm.guest.bpf")
topology = _Deferred("bpfpm.topology")


def warm_up() -> None:
    for m in (subprocess, pathlib, shutil, traceback, base64, topology, bpf, mptcp, netns):
        importlib.import_module(m._name)


WORK = os.environ.get("BPFPM_GUEST_WORK", "/tmp/bpfpm")
HEARTBEAT = 1.0
CONN: socket.socket | None = None    # the host's connection (listen)


class Procs:
    """Background processes (transfers, monitors) started for the host."""

    def __init__(self):
        self.ids = itertools.count(1)
        self.procs: dict[int, dict] = {}

    def start(self, ns: str | None, argv: list[str], kind: str, files: dict) -> int:
        """argv in netns ns, in a session of its own. [*PY, module, ...] for
        a module of FORKED is forked from this agent instead: a new Python
        under TCG takes about 1.4 s to get there, a fork a few ms."""
        h = next(self.ids)
        d = pathlib.Path(WORK, f"p{h}")
        d.mkdir(parents=True, exist_ok=True)
        files = {k: str(d / v) for k, v in files.items()}
        argv = [a.format(**files) for a in argv]
        with open(d / "stdout", "wb") as out, open(d / "stderr", "wb") as err:
            if argv[:len(PY)] == PY and argv[len(PY)] in FORKED:
                p = Forked(ns, argv[len(PY)], argv[len(PY) + 1:], out, err)
            else:
                if ns:
                    argv = ["ip", "netns", "exec", ns, *argv]
                p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                     start_new_session=True)
        self.procs[h] = {"p": p, "dir": d, "kind": kind, "files": files, "argv": argv}
        return h

    def get(self, h: int) -> dict:
        if h not in self.procs:
            raise KeyError(f"no background process {h}")
        return self.procs[h]

    def wait(self, h: int, timeout: float) -> dict:
        e = self.get(h)
        try:
            rc = e["p"].wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(h)
            raise TimeoutError(f"{e['kind']} {h} still running after {timeout}s: "
                               f"{' '.join(e['argv'])}") from None
        return self.result(h, rc)

    def result(self, h: int, rc: int | None) -> dict:
        e = self.get(h)
        rep = None
        path = e["files"].get("report")
        if path and os.path.exists(path):
            with open(path) as f:
                rep = json.load(f)
        return {"rc": rc, "report": rep,
                "stdout": (e["dir"] / "stdout").read_text(errors="replace")[-20000:],
                "stderr": (e["dir"] / "stderr").read_text(errors="replace")[-4000:]}

    def kill(self, h: int) -> dict:
        e = self.get(h)
        if e["p"].poll() is None:
            os.killpg(e["p"].pid, signal.SIGTERM)
            try:
                e["p"].wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(e["p"].pid, signal.SIGKILL)
                e["p"].wait()
        return self.result(h, e["p"].returncode)

    def kill_all(self) -> None:
        for h in list(self.procs):
            self.kill(h)
            shutil.rmtree(self.procs.pop(h)["dir"], ignore_errors=True)


class Forked:
    """`python -m module args` as a fork of this agent, in netns ns and a
    session of its own; waited for like a subprocess.Popen."""

    def __init__(self, ns: str | None, module: str, args: list[str], out, err):
        # first use: the agent starts without it
        main = importlib.import_module(module).main
        # no import half done by the warm-up thread at the fork: the child
        # would wait for it forever
        warm_up()
        self.returncode: int | None = None
        self.pid = os.fork()
        if self.pid:
            return
        rc = 1
        try:
            os.setsid()
            SHELL.forget()
            if CONN is not None:
                # the host must see the agent's end when the agent ends,
                # not when the last fork of it does
                os.close(CONN.fileno())
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            # new objects: the heartbeat thread may have held the old ones'
            # locks at the fork, and nothing would ever release them here
            sys.stdin = open(0, closefd=False)
            sys.stdout = open(1, "w", buffering=1, closefd=False)
            sys.stderr = open(2, "w", buffering=1, closefd=False)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            if ns:
                netns.enter(ns)
            rc = main(args)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) or e.code is None else 1
        except BaseException:
            traceback.print_exc()
        finally:
            for f in (sys.stdout, sys.stderr):
                try:
                    f.flush()
                except (OSError, ValueError):
                    pass
            os._exit(rc or 0)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"xfer {self.pid}", timeout)
            time.sleep(0.02)
        return self.returncode


class _Job:
    """A job bash forked ahead of its command: it sources the command from
    a pipe of this agent (`. /proc/<agent>/fd/N`, which bash reads to its
    end in blocks) and writes to three more: stdout, stderr, and its exit
    status, which an EXIT trap writes as the job ends, before the process
    is torn down. The pipes are this agent's until the job has ended: bash
    opens them by their /proc path whenever the job gets there."""

    def __init__(self):
        self.cmd_r, self.cmd_w = os.pipe()
        self.out_r, self.out_w = os.pipe()
        self.err_r, self.err_w = os.pipe()
        self.rc_r, self.rc_w = os.pipe()
        self.pid: int | None = None     # bash says it when it has forked
        self.status: int | None = None  # bash says it when it has waited

    def line(self) -> str:
        fd = f"/proc/{os.getpid()}/fd"
        return (f"{{ trap 'echo $? >{fd}/{self.rc_w}' EXIT; . {fd}/{self.cmd_r}; }} "
                f"</dev/null >{fd}/{self.out_w} 2>{fd}/{self.err_w} & echo $!\n")

    def give(self, cmd: str) -> None:
        """The command, and its end: the job reads to end of file."""
        data = cmd.encode()
        if len(data) > 65536:           # written whole before the job reads
            fcntl.fcntl(self.cmd_w, fcntl.F_SETPIPE_SZ, len(data))
        view = memoryview(data)
        while view:
            view = view[os.write(self.cmd_w, view):]
        os.close(self.cmd_w)
        self.cmd_w = -1

    def close(self) -> None:
        for fd in (self.cmd_r, self.cmd_w, self.out_r, self.out_w, self.err_r, self.err_w,
                   self.rc_r, self.rc_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)


class Shell:
    """Shell commands as jobs of one long-lived bash.

    Starting a bash under TCG takes 40-60 ms, even /bin/true 35-50 ms, and
    the fork of a running bash about 5 ms, more than the rest of a
    command's round trip. So bash forks jobs ahead of their commands
    (_Job), two at a time, once the previous reply is out (prepare()): a
    command is written to the oldest waiting job and runs at once. The
    job's EXIT trap says its status as it ends, ahead of its teardown and
    of bash's wait; bash's own word (`wait PID; echo $?`) counts where the
    trap could not speak (a job killed, or one that exec'd or set its own
    EXIT trap). Each job is a job of its own (`set -m`: its own process
    group), stdin /dev/null. bash writes the jobs' pids and waited
    statuses on its stdout, which nothing else writes to, in the order it
    was asked for them. Once the status is in, what the job wrote is in
    the pipes: a background process it left holding them does not hold up
    the reply. On timeout the job's process group is killed. A shell that
    died is started again at the next command."""

    AHEAD = 2       # jobs forked ahead: back-to-back commands find one ready

    def __init__(self):
        self.p: subprocess.Popen | None = None
        self.buf = b""
        self.jobs: list[_Job] = []      # forked (or being forked), waiting for a command
        self.ended: list[_Job] = []     # run, their pipes still open
        self.asked: list[tuple[str, _Job]] = []     # bash's next lines: ("pid"|"status", job)

    def _start(self) -> None:
        self.p = subprocess.Popen(["bash", "--norc", "--noprofile"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        self.buf = b""
        self.asked = []
        self._send("set -m\n")

    def _send(self, text: str) -> None:
        self.p.stdin.write(text.encode())
        self.p.stdin.flush()

    def _ask(self, what: str, job: _Job) -> None:
        if what == "pid":
            self._send(job.line())
        else:
            self._send(f"wait {job.pid}; echo $?\n")
        self.asked.append((what, job))

    def _read(self, until, deadline: float, pipes: dict[int, list] | None = None) -> bool:
        """Read bash's lines (and the job's `pipes`, fd -> chunks) until
        until() holds; False at the deadline. Raises if bash died."""
        fd = self.p.stdout.fileno()
        pipes = pipes if pipes is not None else {}
        while not until():
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                what, job = self.asked.pop(0)
                setattr(job, what, int(line))
                if until():
                    return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready = select.select([fd, *pipes], [], [], left)[0]
            for r in ready:
                if r != fd:
                    chunk = os.read(r, 65536)
                    if chunk:
                        pipes[r].append(chunk)
                    else:
                        del pipes[r]
                    continue
                data = os.read(fd, 4096)
                if not data:
                    self.p.wait()
                    self.p = None
                    raise RuntimeError("the agent's shell exited under a command")
                self.buf += data
        return True

    def prepare(self) -> None:
        """Have bash fork the jobs for the next commands (called once a
        reply is out: the forks overlap its way to the host), and close
        the pipes of the jobs that ran."""
        for job in self.ended:
            job.close()
        self.ended = []
        try:
            while self.p is not None and len(self.jobs) < self.AHEAD:
                self._fork_one()
        except OSError:
            self.stop()

    def _fork_one(self) -> None:
        """Ask bash to fork one more job (it waits for its command)."""
        self.jobs.append(_Job())
        self._ask("pid", self.jobs[-1])

    def _ready_job(self, deadline: float) -> _Job:
        """The oldest job forked ahead, its pid known; a shell found dead
        is started again."""
        for attempt in (1, 2):
            try:
                if self.p is None or self.p.poll() is not None:
                    self.stop()
                    self._start()
                if not self.jobs:
                    self._fork_one()
                job = self.jobs[0]
                if job.pid is None and not self._read(lambda: job.pid is not None, deadline):
                    raise RuntimeError("the agent's shell did not start the command")
                return self.jobs.pop(0)
            except (OSError, RuntimeError, ValueError):
                self.stop()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def run(self, cmd: str, timeout: float) -> dict:
        t0 = time.monotonic()
        job = self._ready_job(t0 + 30)
        rc: list[bytes] = []
        chunks: dict[int, list] = {job.out_r: [], job.err_r: [], job.rc_r: rc}
        pipes = dict(chunks)
        try:
            job.give(cmd)
            self._ask("status", job)

            def ended():
                return job.status is not None or b"\n" in b"".join(rc)

            timed_out = not self._read(ended, t0 + timeout, pipes)
            if timed_out:
                try:
                    os.killpg(job.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                if not self._read(lambda: job.status is not None, time.monotonic() + 10,
                                  pipes):
                    self.stop()
            while pipes:            # the rest of what the job wrote
                ready = select.select(list(pipes), [], [], 0)[0]
                if not ready:
                    break
                for fd in ready:
                    chunk = os.read(fd, 65536)
                    if chunk:
                        pipes[fd].append(chunk)
                    else:
                        del pipes[fd]
            said = b"".join(rc).split(b"\n")[0]
            status = -signal.SIGKILL if timed_out else \
                int(said) if said.isdigit() else job.status
            return {"rc": status,
                    "stdout": b"".join(chunks[job.out_r]).decode(errors="replace"),
                    "stderr": b"".join(chunks[job.err_r]).decode(errors="replace"),
                    "timed_out": timed_out, "seconds": time.monotonic() - t0}
        except OSError:
            self.stop()
            raise
        finally:
            self.ended.append(job)      # its pipes are closed by prepare()

    def _drop(self) -> None:
        for job in self.jobs + self.ended:
            job.close()
        self.jobs, self.ended = [], []

    def forget(self) -> None:
        """In a fork of the agent: let go of the waiting jobs' pipes, or
        they would never see their command's end."""
        self._drop()

    def stop(self) -> None:
        self._drop()
        if self.p is not None and self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait()
        self.p = None
        self.asked = []


PROCS = Procs()
SHELL = Shell()
PY = [sys.executable, "-m"]
# modules run as a fork of the agent (Forked)
FORKED = ("bpfpm.guest.xfer", "bpfpm.guest.bench", "bpfpm.guest.uspm")
XFER = [*PY, "bpfpm.guest.xfer"]


def _wait_file(path: str, timeout: float, proc: dict) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc["p"].poll() is not None:
            raise RuntimeError(f"{proc['kind']} exited early: "
                               f"{(proc['dir'] / 'stderr').read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{proc['kind']} not ready after {timeout}s")
        time.sleep(0.02)


CAPTURES: dict[int, float] = {}     # capture handle -> deadline to be listening


def after_captures(op):
    """An op that makes traffic runs once every capture started is listening.
    A capture that fails is dropped and said on stderr (the host keeps it
    in <vm>.agent.stderr): the evidence is not what the test tests."""
    @functools.wraps(op)
    def wrapped(*args, **kw):
        for h, deadline in list(CAPTURES.items()):
            e = PROCS.procs.get(h)
            while e is not None and b"listening on" not in (e["dir"] / "stderr").read_bytes():
                if e["p"].poll() is not None or time.monotonic() > deadline:
                    print(f"bpfpm agent: capture dropped, tcpdump "
                          f"{'exited' if e['p'].poll() is not None else 'not listening'}: "
                          f"{(e['dir'] / 'stderr').read_text()[-500:]}", file=sys.stderr)
                    break
                time.sleep(0.005)
            CAPTURES.pop(h, None)
        return op(*args, **kw)
    return wrapped


# --- operations -------------------------------------------------------------

def op_ping() -> str:
    return "pong"


@after_captures
def op_run(cmd: str, timeout: float) -> dict:
    """A shell command (bash), in a process group of its own; on timeout
    the group is killed, so nothing it started there outlives the call."""
    return SHELL.run(cmd, timeout)


def op_file_put(path: str, data: str, mode: int = 0o644) -> int:
    raw = base64.b64decode(data)
    with open(path, "wb") as f:
        f.write(raw)
    os.chmod(path, mode)
    return len(raw)


def op_file_get(path: str) -> str:
    with open(path, "rb") as f:
        return base64.b64encode(f.read()).decode()


def op_file_remove(paths: list) -> None:
    """Remove files that may be gone already (a fork of rm costs 70 ms under TCG)."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def op_kmsg(text: str) -> None:
    with open("/dev/kmsg", "w") as f:
        f.write(text + "\n")


def op_warm_up() -> None:
    """Returns once the deferred modules are in (for measurements that
    must not overlap the warm-up)."""
    warm_up()


def op_poweroff() -> None:
    with open("/proc/sysrq-trigger", "w") as f:
        f.write("o")


def op_topo_create(spec: dict) -> dict:
    return netns.create(topology.TopoSpec.from_dict(spec))


def op_topo_destroy(spec: dict) -> None:
    CAPTURES.clear()
    PROCS.kill_all()
    netns.destroy(topology.TopoSpec.from_dict(spec))


def op_topo_link(spec: dict, link: int, up: bool) -> None:
    netns.link_set(topology.TopoSpec.from_dict(spec), link, up)


def op_topo_addr(ns: str, ifname: str, address: str, add: bool) -> None:
    netns.addr(ns, ifname, address, add)


def op_topo_strip_tcp_option(ns: str, family: int, kind: int, min_len: int) -> None:
    netns.strip_tcp_option(ns, family, kind, min_len)


def op_topo_drop_tcp_input(ns: str, family: int, on: bool) -> None:
    netns.drop_tcp_input(ns, family, on)


def op_sysctl(ns: str, key: str, value=None) -> str:
    return netns.sysctl(ns, key, None if value is None else str(value))


def op_mptcp_select_pm(ns: list, pm: str) -> list:
    return mptcp.select_pm(ns, pm)


def op_mptcp_limits(ns: str, **kw) -> dict:
    return mptcp.limits(ns, **kw)


def op_mptcp_endpoint_add(ns: str, **kw) -> None:
    mptcp.endpoint_add(ns, **kw)


def op_mptcp_endpoint_del(ns: str, id: int) -> None:
    mptcp.endpoint_del(ns, id)


def op_mptcp_endpoint_flush(ns: str) -> None:
    mptcp.endpoint_flush(ns)


def op_mptcp_endpoints(ns: str) -> list:
    return mptcp.endpoints(ns)


@after_captures
def op_mptcp_abort_before_accept(**kw) -> dict:
    return mptcp.abort_before_accept(**kw)


def op_counters(ns: str) -> dict:
    return netns.counters(ns)


def op_monitor_start(ns: str) -> int:
    """`ip mptcp monitor` in ns, returned once it is subscribed: the closing
    of a probe listener (LISTENER_CLOSED; iproute2 6.1 prints "UNKNOWN 16")
    has reached it. Events up to that point are not the caller's."""
    h = PROCS.start(ns, ["ip", "mptcp", "monitor"], "monitor", {})
    e = PROCS.get(h)
    out = e["dir"] / "stdout"
    deadline = time.monotonic() + 10
    while True:
        mptcp.listener_probe(ns)
        for _ in range(20):
            time.sleep(0.01)
            text = out.read_bytes()
            if mptcp.LISTENER_CLOSED.search(text.decode(errors="replace")):
                e["skip"] = len(text)
                return h
        if e["p"].poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"ip mptcp monitor in {ns} saw no LISTENER_CLOSED within 10 s; "
                               f"stderr: {(e['dir'] / 'stderr').read_text()[-500:]}")


def op_monitor_events(handle: int) -> list:
    e = PROCS.get(handle)
    with open(e["dir"] / "stdout", "rb") as f:
        f.seek(e["skip"])
        return mptcp.parse_monitor(f.read().decode(errors="replace"))


@after_captures
def op_xfer_server(ns: str, port: int, family: int = 4, proto: str = "mptcp",
                   count: int = 1) -> int:
    h = PROCS.start(ns, [*XFER, "server", "--port", str(port),
                         "--family", str(family), "--proto", proto, "--count", str(count),
                         "--report", "{report}"], "xfer-server", {"report": "report.json"})
    _wait_file(PROCS.get(h)["files"]["report"] + ".ready", 60, PROCS.get(h))
    return h


@after_captures
def op_xfer_client(ns: str, addr: str, port: int, nbytes: int = 8 << 20, seed: int = 1,
                   proto: str = "mptcp", bind: str | None = None, hold: bool = False,
                   await_subflows: int = 0, await_timeout: float = 60,
                   reconnect: bool = False) -> int:
    argv = [*XFER, "client", "--addr", addr, "--port", str(port),
            "--bytes", str(nbytes), "--seed", str(seed), "--proto", proto,
            "--report", "{report}", "--progress", "{progress}"]
    if reconnect:
        argv.append("--reconnect")
    if bind:
        argv += ["--bind", bind]
    if hold:
        argv += ["--hold", "{release}"]
    if await_subflows:
        argv += ["--await-subflows", str(await_subflows), "--await-timeout", str(await_timeout)]
    return PROCS.start(ns, argv, "xfer-client",
                       {"report": "report.json", "progress": "progress", "release": "release"})


def op_xfer_release(handle: int) -> None:
    """Let a held client connection (hold=True) close."""
    pathlib.Path(PROCS.get(handle)["files"]["release"]).touch()


@after_captures
def op_burst_server(ns: str, port: int, count: int, family: int = 4) -> int:
    h = PROCS.start(ns, [*XFER, "burst-server", "--port", str(port),
                         "--family", str(family), "--count", str(count),
                         "--report", "{report}"], "burst-server", {"report": "report.json"})
    _wait_file(PROCS.get(h)["files"]["report"] + ".ready", 60, PROCS.get(h))
    return h


@after_captures
def op_burst_client(ns: str, addr: str, port: int, count: int, subflows: int = 2,
                    wait: bool = True) -> int:
    argv = [*XFER, "burst-client", "--addr", addr, "--port", str(port),
            "--count", str(count), "--subflows", str(subflows), "--report", "{report}"]
    if not wait:
        argv.append("--no-wait")
    return PROCS.start(ns, argv, "burst-client", {"report": "report.json"})


@after_captures
def op_bench_start(workload: str, client_ns: str, server_ns: str, addr: str, port: int,
                   count: int, **opts) -> int:
    """A bpfpm.guest.bench workload (both ends, one process); proc.wait
    returns its report."""
    argv = [*PY, "bpfpm.guest.bench", workload, "--client-ns", client_ns,
            "--server-ns", server_ns, "--addr", addr, "--port", str(port),
            "--count", str(count), "--report", "{report}"]
    for k, v in opts.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return PROCS.start(None, argv, f"bench-{workload}", {"report": "report.json"})


def op_uspm_start(ns: str, local: list) -> int:
    """The userspace fullmesh daemon in ns, returned once it listens to
    events; proc.kill ends it and returns what it did."""
    argv = [*PY, "bpfpm.guest.uspm", "--report", "{report}"]
    for a in local:
        argv += ["--local", a]
    h = PROCS.start(ns, argv, "uspm", {"report": "report.json"})
    _wait_file(PROCS.get(h)["files"]["report"] + ".ready", 60, PROCS.get(h))
    return h


def op_slab(name: str) -> int:
    """Active objects of one slab cache (-1 when there is no such cache)."""
    with open("/proc/slabinfo") as f:
        for line in f:
            parts = line.split()
            if parts and parts[0] == name:
                return int(parts[1])
    return -1


def op_xfer_progress(handle: int) -> list:
    e = PROCS.get(handle)
    try:
        sent, total = open(e["files"]["progress"]).read().split()
        return [int(sent), int(total), e["p"].poll()]
    except (OSError, ValueError):
        return [0, 0, e["p"].poll()]


@after_captures
def op_proc_start(argv: list, ns: str | None = None) -> int:
    """Any command in the background (in netns `ns`); proc.wait for its end."""
    return PROCS.start(ns, [str(a) for a in argv], "cmd", {})


def op_proc_wait(handle: int, timeout: float = 120) -> dict:
    return PROCS.wait(handle, timeout)


def op_proc_kill(handle: int) -> dict:
    return PROCS.kill(handle)


def op_capture_start(ns: str, path: str, timeout: float = 30) -> int:
    """tcpdump of every link of netns `ns` into `path`. Headers only: the
    MPTCP options are what a failure's reader looks for, and the payload
    would cost the guest's disk and time. tcpdump takes 0.2-0.3 s to start
    under TCG: this returns at once, and the ops that make traffic wait for
    it to listen first (after_captures), so the first SYN is in the file
    and the test's set-up (limits, endpoints, PMs) overlaps the start."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    h = PROCS.start(ns, ["tcpdump", "-i", "any", "-n", "-s", "200", "-U", "-Z", "root",
                         "-w", path], "capture", {})
    CAPTURES[h] = time.monotonic() + timeout
    return h


def op_capture_stop(handle: int) -> int:
    """End a capture (tcpdump writes what it holds on SIGTERM); the pcap's
    size. A capture already ended (another network's topo.destroy ends every
    process) is no error."""
    CAPTURES.pop(handle, None)
    e = PROCS.procs.get(handle)
    if e is None:
        return 0
    PROCS.kill(handle)
    out = e["argv"][-1]
    return os.path.getsize(out) if os.path.exists(out) else 0


def op_bpf_load(obj: str, name: str) -> None:
    bpf.load(obj, name)


def op_bpf_attach(name: str) -> None:
    bpf.attach(name)


def op_bpf_unload(name: str) -> None:
    bpf.unload(name)


def op_bpf_map_dump(name: str, map: str, nonzero: bool = False, bpftool: bool = False) -> list:
    return bpf.map_dump(name, map, nonzero, bpftool)


def op_bpf_map_update(name: str, map: str, key: int, value: list) -> None:
    bpf.map_update(name, map, key, value)


OPS = {name[3:].replace("_", ".", 1): fn for name, fn in globals().items()
       if name.startswith("op_")}


class Writer:
    """Replies and heartbeats share stdout: one line at a time."""

    def __init__(self, out):
        self.out = out
        self.lock = threading.Lock()

    def send(self, obj: dict) -> None:
        line = json.dumps(obj) + "\n"
        with self.lock:
            self.out.write(line)
            self.out.flush()

    def heartbeat(self) -> None:
        for n in itertools.count():
            time.sleep(HEARTBEAT)
            try:
                self.send({"hb": n})
            except (OSError, ValueError):   # the host went away
                return


def listen(port: int) -> None:
    """Wait for the host's one connection on 127.0.0.1:port and serve it;
    the agent ends with it."""
    global CONN
    with socket.create_server(("127.0.0.1", port)) as srv:
        op_kmsg("bpfpm: agent listening")    # for the boot timeline (benchfw)
        threading.Thread(target=warm_up, daemon=True, name="warm-up").start()
        conn, _ = srv.accept()
    CONN = conn
    with conn, conn.makefile("r", encoding="utf-8") as inp, \
            conn.makefile("w", encoding="utf-8") as out:
        serve(inp, out)


def serve(inp=sys.stdin, out=sys.stdout) -> None:
    os.makedirs(WORK, exist_ok=True)
    w = Writer(out)
    op_kmsg("bpfpm: agent ready")       # for the boot timeline (benchfw)
    w.send({"ready": True, "ops": sorted(OPS), "pid": os.getpid()})
    threading.Thread(target=w.heartbeat, daemon=True).start()
    for line in inp:
        if not line.strip():
            continue
        req = json.loads(line)
        resp = {"id": req.get("id")}
        try:
            fn = OPS[req["op"]]
            resp.update(ok=True, result=fn(**req.get("args", {})))
        except Exception as e:  # every failure goes back to the host, named
            resp.update(ok=False, type=type(e).__name__, error=str(e),
                        errno=getattr(e, "code", None) or getattr(e, "errno", None),
                        trace=traceback.format_exc()[-3000:])
        w.send(resp)
        SHELL.prepare()
    PROCS.kill_all()
    SHELL.stop()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--listen"]:
        listen(int(sys.argv[2]))
    else:
        serve()
