"""Guest lifecycle: boot a built kernel with virtme-ng, drive it over SSH.

The guest shares the host root read-only over 9p (virtme-ng's default
snapshot of the live system); the run's results directory is shared
read-write so the guest can leave artifacts (pcaps, dumps) there. The QEMU
console (kernel log at loglevel 7) is written to <run>/<name>.console.log
for every boot and kept, whatever happens.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import tenacity

from . import host, log
from .build import KernelBuild
from .channel import Result, Shell, connect
from .errors import GuestCrashed
from .paths import ROOT

SSH_KEY = Path.home() / ".cache" / "virtme-ng" / ".ssh" / "id_virtme"
BOOT_DEADLINE = float(os.environ.get("BPFPM_BOOT_TIMEOUT", "90"))
VENV_BIN = ROOT / ".venv" / "bin"

# panic=-1: a panicked guest reboots at once, and QEMU (-no-reboot) exits.
# rootflags: vng's own 9p root options plus cache=loose. The root is
# read-only and does not change during a run, and caching its metadata makes
# Python start 2-4x faster under TCG. Files created on the host after boot
# may stay invisible, so everything the guest reads is built before it boots.
BOOT_ARGS = ["panic=-1",
             "rootflags=version=9p2000.L,trans=virtio,access=any,msize=524288,cache=loose"]


def guest_env() -> dict[str, str]:
    return {
        "PATH": f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "PYTHONPATH": str(ROOT),
        "PYTHONDONTWRITEBYTECODE": "1",
        "LC_ALL": "C",
    }


GUEST_LINK_DIR = ROOT / "images" / "guest" / "systemd-network"

# virtme-ng-init races udev: when udev renames eth0 first, DHCP configures a
# device that no longer exists and SSH never comes up. Seen under load.
RACE_MARK = 'Cannot find device "eth0"'


class NetworkRace(GuestCrashed):
    pass


def _panic_line(console: Path) -> str:
    """The first Oops/BUG/panic line of a console log, for a one-line summary."""
    for line in console.read_text(errors="replace").splitlines():
        if re.search(r"Oops|BUG:|Kernel panic", line):
            return line.strip()
    return "no panic line in the console"


class VM:
    """A booted guest. Use as a context manager: the VM never outlives it."""

    def __init__(self, kernel: KernelBuild, run_dir: Path, name: str = "vm",
                 memory: str = "2G", cpus: int = 2, append: list[str] | None = None):
        self.kernel = kernel
        self.run_dir = run_dir
        self.name = name
        self.memory = memory
        self.cpus = cpus
        self.append = append or []
        self.port = host.free_port()
        self.console_log = run_dir / f"{name}.console.log"
        self.exec_log = run_dir / f"{name}.exec.log"
        self.pidfile = run_dir / f"{name}.qemu.pid"
        self.proc: subprocess.Popen | None = None
        self.ssh = None
        self.shell: Shell | None = None
        self._marks = 0
        self.boot_seconds = 0.0

    # -- command line -------------------------------------------------------
    def argv(self) -> list[str]:
        argv = ["vng", "--run", str(self.kernel.bzimage), "--force-9p", "--verbose",
                "--memory", self.memory, "--cpus", str(self.cpus),
                "--ssh", str(self.port), "--ssh-tcp",
                "--rwdir", str(self.run_dir),
                f"--rodir=/etc/systemd/network={GUEST_LINK_DIR}",
                "--name", self.name,
                f"--qemu-opts=-pidfile {self.pidfile}"]
        if host.accel() == "tcg":
            argv.append("--disable-kvm")
        for a in [*BOOT_ARGS, *self.append]:
            argv += ["--append", a]
        argv += ["--exec", "exec sleep infinity"]
        return argv

    def _vng_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}"
        return env

    # -- lifecycle ----------------------------------------------------------
    def start(self) -> "VM":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.pidfile.unlink(missing_ok=True)
        argv = self.argv()
        with open(self.run_dir / f"{self.name}.cmdline", "a") as f:
            f.write(shlex.join(argv) + "\n")
        t0 = time.monotonic()
        for attempt in (1, 2):
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=open(self.exec_log, "ab"),
                stderr=open(self.console_log, "ab"), env=self._vng_env(),
                cwd=str(self.run_dir), start_new_session=True)
            try:
                self._wait_ssh()
                break
            except GuestCrashed as e:   # NetworkRace is one too
                # One more boot for a guest that lost its network or died
                # while booting. The latter is rare under TCG (an int3 Oops
                # in early boot, from cross-CPU text patching); a kernel that
                # cannot boot fails the second time too. Both consoles are kept.
                died = isinstance(e, GuestCrashed) and self.proc.poll() is not None
                self.stop()
                if attempt == 2 or not (isinstance(e, NetworkRace) or died):
                    raise
                kept = self.console_log.with_suffix(f".attempt{attempt}.log")
                self.console_log.rename(kept)
                why = str(e) if isinstance(e, NetworkRace) else \
                    f"guest {self.name} died while booting ({_panic_line(kept)})"
                log.warn(f"{why}; console kept at {kept}; booting again")
            except BaseException:
                self.stop()
                raise
        self.boot_seconds = time.monotonic() - t0
        return self

    def _wait_ssh(self) -> None:
        def attempt():
            if RACE_MARK in self.console_tail(15):
                raise NetworkRace(f"guest {self.name}: virtme-ng-init configured eth0 after "
                                  "udev had renamed it, so the guest has no network")
            if self.proc.poll() is not None:
                raise GuestCrashed(
                    f"guest {self.name} exited (vng status {self.proc.returncode}) before SSH "
                    f"came up; console tail:\n{self.console_tail()}\n"
                    f"full console: {self.console_log}")
            if not SSH_KEY.exists():
                raise ConnectionError("vng has not written its SSH key yet")
            return connect(self.port, SSH_KEY, timeout=5)

        retry = tenacity.Retrying(
            stop=tenacity.stop_after_delay(BOOT_DEADLINE),
            wait=tenacity.wait_fixed(0.1),
            retry=tenacity.retry_if_not_exception_type(GuestCrashed),
            reraise=True)
        try:
            self.ssh = retry(attempt)
        except GuestCrashed:
            raise
        except Exception as e:
            raise GuestCrashed(
                f"guest {self.name} not reachable over SSH after {BOOT_DEADLINE:.0f}s "
                f"({type(e).__name__}: {e}); console tail:\n{self.console_tail()}\n"
                f"full console: {self.console_log}; raise BPFPM_BOOT_TIMEOUT if the "
                f"machine is just slow") from None
        self.shell = Shell(self.ssh.get_transport(), guest_env())

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """Power the guest off; kill QEMU if it does not go within seconds."""
        if self.shell is not None and self.alive():
            try:
                self.shell.chan.sendall(b"echo o > /proc/sysrq-trigger\n")
            except Exception:
                pass
        if self.ssh is not None:
            self.ssh.close()
            self.ssh = self.shell = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                for sig in (signal.SIGTERM, signal.SIGKILL):
                    try:
                        os.killpg(self.proc.pid, sig)
                    except ProcessLookupError:
                        break
                    try:
                        self.proc.wait(timeout=5)
                        break
                    except subprocess.TimeoutExpired:
                        continue
        self._kill_qemu()

    def _kill_qemu(self) -> None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            for _ in range(50):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.1)
        self.pidfile.unlink(missing_ok=True)

    def __enter__(self) -> "VM":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- commands -----------------------------------------------------------
    def run(self, cmd: str | list[str], timeout: float = 120, check: bool = True) -> Result:
        if not isinstance(cmd, str):
            cmd = shlex.join(cmd)
        if self.shell is None:
            raise GuestCrashed(f"guest {self.name} is not running")
        res = self.shell.run(cmd, timeout=timeout)
        return res.check() if check else res

    def put(self, local: Path, remote: str) -> None:
        with self.ssh.open_sftp() as sftp:
            sftp.put(str(local), remote)

    def get(self, remote: str, local: Path) -> None:
        with self.ssh.open_sftp() as sftp:
            sftp.get(remote, str(local))

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
        self.run(f"echo {shlex.quote(mark)} > /dev/kmsg", timeout=30)
        return mark

    def dmesg(self) -> str:
        return self.run("dmesg", timeout=30).stdout
