"""Guest lifecycle: boot a built kernel with virtme-ng, drive it through
its one channel (the guest agent, reached through SSH, bpfpm.channel).

The guest shares the host root read-only over 9p (virtme-ng's default
snapshot of the live system); the run's results directory is shared
read-write so the guest can leave artifacts (pcaps, dumps) there. The QEMU
console (kernel log at loglevel 7) is written to <run>/<name>.console.log
for every boot and kept, whatever happens.
"""

from __future__ import annotations

import compileall
import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import tenacity

from . import guestssh, host, log
from .build import KernelBuild
from .channel import Channel, Result, connect, public_key
from .errors import (BootFailed, BpfpmError, ChannelLost, GuestCrashed, GuestError, GuestFrozen,
                     QemuExited)
from .paths import ROOT, cache_dir

BOOT_DEADLINE = float(os.environ.get("BPFPM_BOOT_TIMEOUT", "90"))
VENV_BIN = ROOT / ".venv" / "bin"

# panic=-1: a panicked guest reboots at once, and QEMU (-no-reboot) exits.
# rootflags: vng's own 9p root options plus cache=loose. The root is
# read-only and does not change during a run, and caching its metadata makes
# Python start 2-4x faster under TCG. Files created on the host after boot
# may stay invisible, so everything the guest reads is built before it boots.
BOOT_ARGS = ["panic=-1",
             "rootflags=version=9p2000.L,trans=virtio,access=any,msize=524288,cache=loose"]


def venv_site() -> Path:
    """The venv's site-packages: the guest's Python runs with -S (no site
    module: 0.6 s under TCG), so it is put on PYTHONPATH instead."""
    venv = VENV_BIN.parent
    found = sorted((venv / "lib").glob("python3*/site-packages"))
    if not found:
        raise BootFailed(f"no site-packages under {venv}; run `make setup`")
    return found[-1]


def guest_env() -> dict[str, str]:
    return {
        "PATH": f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "PYTHONPATH": f"{ROOT}:{venv_site()}",
        "PYTHONDONTWRITEBYTECODE": "1",
        "LC_ALL": "C",
    }


class _NotYet(Exception):
    """The guest is not ready for the next boot step; asked again shortly."""


def guest_stubs() -> dict[Path, Path]:
    """Host files the guest sees replaced (bind mounts in QEMU's private
    mount namespace, guestssh.private_namespace): vng's init would spend
    2-3 s on udev's coldplug and settle (images/guest/src/udevadm.c makes
    the only links it needs) and about 1 s on systemd-tmpfiles, for a guest
    whose /tmp, /run and /var are fresh tmpfs anyway."""
    stubs = {"udevadm": udevadm_stub(), "systemd-tmpfiles": Path("/bin/true")}
    out = {}
    for prog, stub in stubs.items():
        found = shutil.which(prog, path="/usr/bin:/bin:/usr/sbin:/sbin")
        if found:
            out[Path(found).resolve()] = stub
    return out


def udevadm_stub() -> Path:
    """images/guest/src/udevadm.c, built static once per version of its
    source into the cache (0.2 s); two runs building it at once each
    rename a whole file into place."""
    src = ROOT / "images" / "guest" / "src" / "udevadm.c"
    text = src.read_bytes()
    out = cache_dir() / "guest" / f"udevadm-{hashlib.sha256(text).hexdigest()[:16]}"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}")
    r = subprocess.run(["gcc", "-O2", "-static", "-Wall", "-o", str(tmp), str(src)],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BpfpmError(f"building the guest's udevadm stand-in ({src}) failed:\n"
                         f"{r.stderr.strip()}\nis gcc with a static libc installed "
                         "(make setup)?")
    os.rename(tmp, out)
    return out


def precompile() -> None:
    """Byte-compile bpfpm on the host: the guest reads it read-only and
    would otherwise compile every module at each start (1.5 s under TCG)."""
    compileall.compile_dir(ROOT / "bpfpm", quiet=1)


def _console_line(console: Path, since: int, pattern: str) -> str | None:
    """The first line of a console log after byte offset `since` that
    matches `pattern`, stripped; None if none does. OSError if there is no
    console."""
    text = console.read_bytes()[since:].decode(errors="replace")
    return next((line.strip() for line in text.splitlines() if re.search(pattern, line)), None)


def _panic_line(console: Path, since: int = 0) -> str:
    """The first Oops/BUG/panic line of a console log after offset `since`,
    for a one-line summary."""
    try:
        line = _console_line(console, since, r"Oops|BUG:|Kernel panic")
    except OSError:
        return "no panic line in the console (no console)"
    return line or "no panic line in the console"


def qemu_state(pid: int | None) -> str:
    """What QEMU is doing, for a frozen guest's report."""
    if pid is None:
        return "QEMU pid unknown"
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return f"QEMU (pid {pid}) has exited"
    return {"T": f"QEMU (pid {pid}) is stopped (SIGSTOP?)",
            "t": f"QEMU (pid {pid}) is being traced",
            "Z": f"QEMU (pid {pid}) has exited"}.get(
        state, f"QEMU (pid {pid}) runs (state {state}): the guest kernel itself is hung")


class VM:
    """A booted guest. Use as a context manager: the VM never outlives it.

    run/put/get/call go through the guest's one channel. When the guest is
    lost under a call, the call raises the GuestError that says how
    (GuestCrashed, GuestFrozen, ChannelLost), QEMU is killed at once and the
    console is kept; the VM is then dead for good (`alive()` is False).
    """

    def __init__(self, kernel: KernelBuild, run_dir: Path, name: str = "vm",
                 memory: str = "2G", cpus: int | None = None, append: list[str] | None = None,
                 time_scale: float = 1.0, boot_deadline: float | None = None):
        self.kernel = kernel
        self.run_dir = run_dir
        self.name = name
        self.memory = memory
        self.cpus = cpus or host.guest_cpus()
        # BPFPM_APPEND: more kernel command line for every guest (a developer's
        # debug options; the tests' unbootable kernel)
        self.append = [*(append or []), *os.environ.get("BPFPM_APPEND", "").split()]
        self.time_scale = time_scale
        self.boot_deadline = (boot_deadline or BOOT_DEADLINE) * time_scale
        self.keys = guestssh.keys()
        self.port: int | None = None    # chosen by QEMU, read over QMP
        self.qmp = f"bpfpm-qmp-{os.getpid()}-{name}-{os.urandom(4).hex()}"
        self.console_log = run_dir / f"{name}.console.log"
        self.exec_log = run_dir / f"{name}.exec.log"
        self.pidfile = run_dir / f"{name}.qemu.pid"
        self.vng_pidfile = run_dir / f"{name}.vng.pid"    # for runner.reap()
        self.agent_script = run_dir / f"{name}.agent.sh"
        self.agent_stderr = run_dir / f"{name}.agent.stderr"
        self.agent_status = run_dir / f"{name}.agent.status"
        self.proc: subprocess.Popen | None = None
        self.ssh = None
        self.channel: Channel | None = None
        self.lost: GuestError | None = None
        self._marks = 0
        self._console_at_boot = 0
        self._qemu: int | None = None
        self.boot_seconds = 0.0

    # -- command line -------------------------------------------------------
    def argv(self) -> list[str]:
        """vng in a private mount namespace (see guestssh); the guest's one
        long-lived process is our sshd."""
        argv = ["vng", "--run", str(self.kernel.bzimage), "--force-9p", "--verbose",
                "--memory", self.memory, "--cpus", str(self.cpus),
                "--rwdir", str(self.run_dir),
                f"--rodir={guestssh.GUEST_DIR}={self.keys.guest_dir}",
                "--name", self.name,
                f"--qemu-opts={guestssh.qemu_opts(self.pidfile, self.qmp)}"]
        if host.accel() == "tcg":
            argv.append("--disable-kvm")
        for a in [*BOOT_ARGS, *self.append]:
            argv += ["--append", a]
        argv += ["--exec", f"exec sh {guestssh.GUEST_DIR}/start.sh {self.agent_script}"]
        return guestssh.private_namespace(guestssh.hidden_dirs(self.keys), guest_stubs()) + argv

    def write_agent_script(self) -> None:
        """The guest agent's command, run by the start script at boot (in
        the run directory, which the guest shares read-write): a clean
        environment, stderr and the exit status kept where the host reads
        them (Channel)."""
        env = {"HOME": "/root", "USER": "root", "LOGNAME": "root", "SHELL": "/bin/sh",
               **guest_env()}
        q = shlex.quote
        self.agent_stderr.unlink(missing_ok=True)
        self.agent_script.write_text(
            f"# bpfpm: guest {self.name}'s agent (written by bpfpm.vm at each boot)\n"
            f"cd {q(str(ROOT))} || exit 1\n"
            f"env -i {' '.join(f'{k}={q(v)}' for k, v in env.items())} "
            f"python -S -m bpfpm.guest.agent --listen {guestssh.AGENT_PORT} "
            f"2>>{q(str(self.agent_stderr))}\n"
            "rc=$?\n"
            f'echo "{guestssh.AGENT_EXITED} $rc" > /dev/kmsg\n'
            f"echo $rc > {q(str(self.agent_status))}\n")

    def _vng_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}"
        return env

    # -- lifecycle ----------------------------------------------------------
    def start(self) -> "VM":
        """Boot, connect, start the agent. At most two boots: one more only
        for a guest that died while booting (an int3 Oops in early boot,
        from cross-CPU text patching under TCG, about 1 boot in 20); a
        kernel that cannot boot fails the second time too.
        Both consoles are kept."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        precompile()
        self.write_agent_script()
        argv = self.argv()
        with open(self.run_dir / f"{self.name}.cmdline", "a") as f:
            f.write(shlex.join(argv) + "\n")
        t0 = time.monotonic()
        for attempt in (1, 2):
            self.pidfile.unlink(missing_ok=True)
            self.agent_status.unlink(missing_ok=True)     # a status is this boot's
            console_at = self.console_log.stat().st_size if self.console_log.exists() else 0
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=open(self.exec_log, "ab"),
                stderr=open(self.console_log, "ab"), env=self._vng_env(),
                cwd=str(self.run_dir), start_new_session=True)
            self.vng_pidfile.write_text(f"{self.proc.pid}\n")
            try:
                self._connect(console_at)
                break
            except BootFailed:
                died = self.proc.poll() is not None
                self.stop()
                if attempt == 2 or not died:
                    raise
                kept = self.console_log.with_suffix(f".attempt{attempt}.log")
                self.console_log.rename(kept)
                self.port = None
                log.warn(f"guest {self.name} died while booting ({_panic_line(kept)}); "
                         f"console kept at {kept}; booting again")
            except BaseException:
                self.stop()
                raise
        self.boot_seconds = time.monotonic() - t0
        return self

    def _boot_failed(self, what: str) -> BootFailed:
        return BootFailed(f"guest {self.name}: {what}; console tail:\n{self.console_tail()}\n"
                          f"full console: {self.console_log}")

    def _sshd_listening(self, since: int) -> bool:
        """Whether the guest's sshd said on the console (after byte `since`)
        that it listens. Before that, QEMU's user network accepts the
        connection on the host side and holds it while the guest has no
        address yet: an SSH attempt then waits out its whole banner timeout
        (5 s) instead of failing at once."""
        try:
            with open(self.console_log, "rb") as f:
                f.seek(since)
                return guestssh.SSHD_LISTENING in f.read()
        except OSError:
            return False

    def _connect(self, console_at: int = 0) -> None:
        host_key = public_key(self.keys.host_pub)
        # without sshd's word (a sshd that words it otherwise), try anyway
        blind_after = time.monotonic() + 10 * self.time_scale

        def attempt():
            if self.proc.poll() is not None:
                raise self._boot_failed(f"exited (vng status {self.proc.returncode}) "
                                        "before SSH came up")
            if self.port is None:
                self.port = guestssh.forwarded_port(self.qmp, time.monotonic() + 1)
            if not self._sshd_listening(console_at) and time.monotonic() < blind_after:
                raise _NotYet("sshd is not listening yet")
            return connect(self.port, self.keys.client, host_key, timeout=5)

        deadline = time.monotonic() + self.boot_deadline
        retry = tenacity.Retrying(
            stop=tenacity.stop_after_delay(self.boot_deadline),
            wait=tenacity.wait_fixed(0.05),
            # only errors: tenacity would retry a KeyboardInterrupt too
            retry=tenacity.retry_if_exception_type(Exception)
            & tenacity.retry_if_not_exception_type(BootFailed),
            reraise=True)
        try:
            self.ssh = retry(attempt)
        except BootFailed:
            raise
        except Exception as e:
            raise self._boot_failed(
                f"not reachable over SSH after {self.boot_deadline:.0f}s "
                f"({type(e).__name__}: {e}); raise BPFPM_BOOT_TIMEOUT if the machine "
                "is just slow") from None
        left = max(10.0, deadline - time.monotonic() + 60)
        try:
            self.channel = Channel.open(
                self.ssh.get_transport(), guestssh.AGENT_PORT, self.name,
                log=self.run_dir / f"{self.name}.agent.log", stderr=self.agent_stderr,
                status=self.agent_status, time_scale=self.time_scale, startup=left)
        except GuestError as e:
            raise self._boot_failed(f"the guest agent did not start ({e})") from None
        # a later loss is judged by what the console says from here on
        self._console_at_boot = self.console_log.stat().st_size
        self._qemu = self.qemu_pid()    # QEMU removes its pid file when it exits

    def alive(self) -> bool:
        return self.lost is None and self.proc is not None and self.proc.poll() is None

    def qemu_pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        """Power the guest off; kill QEMU if it does not go within seconds."""
        if self.channel is not None:
            if self.alive():
                self.channel.send_only("poweroff")
            self.channel.close()
            self.channel = None
        if self.ssh is not None:
            self.ssh.close()
            self.ssh = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.kill()
        self._kill_qemu()
        self.vng_pidfile.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL vng's whole process group (QEMU is in it) and QEMU itself."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self._kill_qemu(signal.SIGKILL)

    def _kill_qemu(self, first: int = signal.SIGTERM) -> None:
        pid = self.qemu_pid()
        if pid is None:
            return
        for sig in (first, signal.SIGKILL):
            try:
                os.kill(pid, sig)
                os.kill(pid, signal.SIGCONT)    # a stopped QEMU cannot act on SIGTERM
            except ProcessLookupError:
                break
            for _ in range(30):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.1)
        self.pidfile.unlink(missing_ok=True)

    def __enter__(self) -> "VM":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the channel --------------------------------------------------------
    def _guarded(self, fn, *args, **kw):
        if self.lost is not None:
            raise self.lost
        if self.channel is None:
            raise ChannelLost(f"guest {self.name} is not running")
        try:
            return fn(*args, **kw)
        except GuestError as e:
            self.lost = self._diagnose(e)
        # out of the except block: the report is ours, not a chain
        raise self.lost

    def _diagnose(self, e: GuestError) -> GuestError:
        """Name how the guest was lost, kill QEMU, keep the console."""
        qemu = self._qemu or self.qemu_pid()
        if isinstance(e, GuestFrozen):
            state = qemu_state(qemu)
            self.kill()
            return GuestFrozen(f"{e}; {state}; QEMU killed. Console tail:\n"
                               f"{self.console_tail()}\nfull console: {self.console_log}")
        # A panicked guest reboots and QEMU exits (panic=-1, -no-reboot): once
        # vng is gone, the console holds the guest's last words. A guest that
        # lost only its channel runs on, and says on the console which part
        # went away (the start script's marks): whichever comes first, or 5 s.
        deadline = time.monotonic() + 5
        part = ""
        while self.proc.poll() is None and time.monotonic() < deadline:
            part = self._part_exited()
            if part:
                break
            time.sleep(0.05)
        exited = self.proc.poll() is not None or \
            (qemu is not None and not host.pid_running(qemu))
        state = qemu_state(qemu)
        # once vng, which writes the console, is gone too, the console is
        # whole: a panic is in it or there was none
        deadline = time.monotonic() + 3
        while exited and self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        panic = _panic_line(self.console_log, self._console_at_boot)
        self.kill()
        tail = f"console tail:\n{self.console_tail()}\nfull console: {self.console_log}"
        if "no panic line" not in panic:
            return GuestCrashed(f"guest {self.name} crashed ({panic}; {state}); {tail}")
        if exited:
            return QemuExited(f"guest {self.name}: {state} with no kernel panic (killed "
                              f"from outside? the host's OOM killer?); {tail}")
        return ChannelLost(f"{e}; {state}; the guest kernel did not crash "
                           f"({part or 'sshd or the agent went away'}); QEMU killed. "
                           f"Console: {self.console_log}")

    def _part_exited(self) -> str:
        """The console's line saying that sshd or the agent exited in this
        boot (without its timestamp), or ''."""
        try:
            line = _console_line(self.console_log, self._console_at_boot,
                                 f"{re.escape(guestssh.SSHD_EXITED)}|"
                                 f"{re.escape(guestssh.AGENT_EXITED)}")
        except OSError:
            return ""
        return line.split("] ", 1)[-1] if line else ""

    def call(self, op: str, _timeout: float = 120, **args):
        return self._guarded(self.channel.call, op, _timeout=_timeout, **args)

    def run(self, cmd: str | list[str], timeout: float = 120, check: bool = True) -> Result:
        if not isinstance(cmd, str):
            cmd = shlex.join(cmd)
        res = self._guarded(self.channel.run, cmd, timeout=timeout)
        return res.check() if check else res

    def put(self, local: Path, remote: str) -> None:
        self._guarded(self.channel.put, local, remote)

    def get(self, remote: str, local: Path) -> None:
        self._guarded(self.channel.get, remote, local)

    def ping(self, timeout: float = 20) -> bool:
        """The agent answers a request of its own (not a late reply)."""
        try:
            return self.call("ping", _timeout=timeout) == "pong"
        except Exception:
            return False

    # -- kernel log ---------------------------------------------------------
    def console_tail(self, lines: int = 40) -> str:
        try:
            text = self.console_log.read_text(errors="replace")
        except OSError:
            return "(no console log)"
        return "\n".join(text.splitlines()[-lines:])

    def kmsg_mark(self, label: str) -> str:
        """Write a unique marker into the kernel log and return it."""
        self._marks += 1
        mark = f"bpfpm-mark-{os.getpid()}-{self._marks}-{label}"
        self.call("kmsg", text=mark, _timeout=30)
        return mark
