"""The guest's SSH server, on bpfpm's own terms.

vng's `--ssh` authorises the host user's ~/.ssh/id_*.pub for root in the
guest, uses one key pair shared by every vng user, and leaves host keys to
be trusted on first use; the guest, which sees the host root over 9p, can
read those private keys. So bpfpm runs sshd itself:

- one key pair for the client and one host key for the guest, per cache
  (`<cache>/ssh/`), made once with ssh-keygen; only that client key is
  authorised, and the client pins that host key;
- QEMU runs in a private mount namespace in which ~/.ssh, the client key
  directory and vng's key directory are empty tmpfs: the guest cannot read
  them through its 9p view of the host;
- the forwarded port is chosen by QEMU itself (hostfwd port 0) and read
  back over QMP: no bind-and-release race between two runs;
- the guest's network is set statically by the start script, with no
  DHCP and no udev (vng's init has its udevadm replaced, see vm.guest_stubs);
- root's login shell in the guest is /bin/sh: the host's bash would read
  root's ~/.bashrc for every SSH command, 3-4 s under TCG when it sets up
  a pyenv. The start script bind-mounts edited copies of /etc/passwd and
  /etc/shadow in the guest; the host's files are never touched;
- the guest agent is started by the start script, before sshd, and waits
  on the guest's loopback (AGENT_PORT); the host reaches it through the SSH
  connection's own port forwarding (a direct-tcpip channel), so Python's
  start under TCG overlaps sshd's and the SSH handshake instead of
  following them.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .errors import BpfpmError
from .paths import cache_dir

GUEST_DIR = "/run/bpfpm-ssh"      # where the guest sees <cache>/ssh/guest
GUEST_ADDR = "10.0.2.15"          # QEMU user networking's defaults
GUEST_GW = "10.0.2.2"
AGENT_PORT = 7531                 # the agent's port on the guest's loopback

SSHD_CONFIG = f"""\
# bpfpm: the guest's sshd (see bpfpm/guestssh.py)
ListenAddress {GUEST_ADDR}:22
HostKey {GUEST_DIR}/ssh_host_ed25519_key
AuthorizedKeysFile {GUEST_DIR}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
# no PAM: its session stack costs a second per login under TCG; the start
# script gives root a "*" (no password, not locked) for sshd's own check
UsePAM no
StrictModes no
PidFile none
"""

# what the guest's start scripts say on the console (through /dev/kmsg)
# when sshd or the agent is gone while the kernel runs on (vm.VM._diagnose)
SSHD_EXITED = "bpfpm: the guest's sshd exited"
AGENT_EXITED = "bpfpm: the guest agent exited with status"

# what sshd -e writes on the console (the guest's stderr) once it listens
SSHD_LISTENING = f"Server listening on {GUEST_ADDR} port 22.".encode()

# Run by vng's --exec as the guest's long-lived process. Marks in the
# kernel log give a boot timeline (benchfw.timeline). Each program started
# here costs 50-100 ms under TCG, on the way to sshd: what can be made on
# the host is (guest_files).
START = f"""\
set -e
echo "bpfpm: start script" > /dev/kmsg
for d in /sys/bus/virtio/drivers/virtio_net/virtio*/net/*; do dev=${{d##*/}}; done
ip -batch - <<NET
link set lo up
addr add {GUEST_ADDR}/24 dev $dev
link set $dev up
route add default via {GUEST_GW}
NET
# $1: the run's agent script (vm.VM.agent_script); it reports its own exit
if [ -n "${{1:-}}" ]; then
    setsid -w sh "$1" </dev/null >/dev/null 2>&1 &
fi
# root logs in with /bin/sh and a password field sshd does not take as
# locked (/etc is the guest's own overlay; /etc/shadow vng's tmpfs copy)
cp {GUEST_DIR}/passwd {GUEST_DIR}/shadow /etc/
mkdir -p /run/sshd
echo "bpfpm: sshd starting" > /dev/kmsg
# not exec: the guest must outlive sshd (a killed sshd is a lost channel,
# and the kernel log should say so, not a powered-off guest)
/usr/sbin/sshd -D -e -r -f {GUEST_DIR}/sshd_config || true
echo "{SSHD_EXITED}" > /dev/kmsg
exec sleep infinity
"""


def guest_files(passwd: str) -> dict[str, str]:
    """/etc/passwd and /etc/shadow for the guest, from the host's passwd:
    root's shell is /bin/sh (the host's bash would read root's ~/.bashrc for
    every SSH command, 3-4 s under TCG when it sets up a pyenv); root's
    password is "*" (no password, not locked: sshd without PAM refuses a
    locked account even its keys), every other account locked. Nothing is
    taken from the host's shadow."""
    users, shadow = [], []
    for line in passwd.splitlines():
        f = line.split(":")
        if len(f) != 7:
            continue
        if f[0] == "root":
            f[6] = "/bin/sh"
        users.append(":".join(f))
        shadow.append(f"{f[0]}:{'*' if f[0] == 'root' else '!'}:::::::")
    return {"passwd": "\n".join(users) + "\n", "shadow": "\n".join(shadow) + "\n"}


@dataclasses.dataclass(frozen=True)
class Keys:
    client: Path        # private key the host connects with (hidden from guests)
    host_pub: Path      # the guest sshd's public host key, pinned by the client
    guest_dir: Path     # shared read-only with the guest at GUEST_DIR

    @property
    def client_dir(self) -> Path:
        return self.client.parent


def _keygen(path: Path) -> None:
    r = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bpfpm",
                        "-f", str(path)], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise BpfpmError(f"ssh-keygen failed: {r.stderr.strip()}; is openssh-client "
                         "installed (make setup)?")


def keys() -> Keys:
    """The cache's key material, made on first use (atomically: two runs
    starting at once agree on one set)."""
    root = cache_dir() / "ssh"
    k = Keys(root / "client" / "id_ed25519", root / "guest" / "ssh_host_ed25519_key.pub",
             root / "guest")
    if k.client.exists() and k.host_pub.exists():
        _refresh(k)
        return k
    root.mkdir(mode=0o700, exist_ok=True)
    with open(root / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (k.client.exists() and k.host_pub.exists()):
            tmp = Path(tempfile.mkdtemp(prefix=".new-", dir=root))
            (tmp / "client").mkdir(mode=0o700)
            (tmp / "guest").mkdir()
            _keygen(tmp / "client" / "id_ed25519")
            _keygen(tmp / "guest" / "ssh_host_ed25519_key")
            for part in ("client", "guest"):
                if (root / part).exists():
                    shutil.rmtree(root / part)
                os.rename(tmp / part, root / part)
            shutil.rmtree(tmp)
        _refresh(k)
    return k


def _refresh(k: Keys) -> None:
    """Config, start script and authorized_keys follow this file's text."""
    pub = k.client.with_suffix(".pub").read_text()
    files = {"sshd_config": SSHD_CONFIG, "start.sh": START, "authorized_keys": pub,
             **guest_files(Path("/etc/passwd").read_text())}
    for name, text in files.items():
        f = k.guest_dir / name
        if not f.exists() or f.read_text() != text:
            tmp = f.with_name(f".{name}.{os.getpid()}")
            tmp.write_text(text)
            os.replace(tmp, f)


def hidden_dirs(k: Keys) -> list[Path]:
    """What the guest must not read through 9p."""
    home = Path.home()
    return [d for d in (home / ".ssh", k.client_dir, home / ".cache" / "virtme-ng" / ".ssh")
            if d.is_dir()]


def private_namespace(hide: list[Path], stubs: dict[Path, Path] | None = None) -> list[str]:
    """argv prefix: run the rest in a mount namespace where `hide` are empty
    tmpfs and each file of `stubs` (host path -> replacement) is bind-mounted
    over (unshare and sh exec, so the pid stays the command's own). The guest
    sees that namespace through 9p; the host's own view is unchanged."""
    stubs = stubs or {}
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    args = [*map(str, hide)]
    mounts = [f'mount -t tmpfs -o mode=700,size=64k bpfpm-hidden "${i + 1}"'
              for i in range(len(hide))]
    for target, stub in stubs.items():
        args += [str(stub), str(target)]
        mounts.append(f'mount --bind -o ro "${len(args) - 1}" "${len(args)}"')
    script = " && ".join([*mounts, f"shift {len(args)}", 'exec "$@"'])
    return ["unshare", *user, "--mount", "--propagation", "private", "--",
            "sh", "-c", script, "bpfpm-ns", *args]


def forwarded_port(qmp: str, deadline: float) -> int:
    """The host port QEMU picked for the guest's sshd (hostfwd port 0),
    asked over QMP (`info usernet`). A hand-written exchange of three
    JSON lines: no QMP library is packaged for this."""
    while True:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(max(1.0, deadline - time.monotonic()))
                s.connect("\0" + qmp)      # an abstract socket: no file to leave
                f = s.makefile("rw")
                json.loads(f.readline())                      # greeting
                for cmd in ({"execute": "qmp_capabilities"},
                            {"execute": "human-monitor-command",
                             "arguments": {"command-line": "info usernet"}}):
                    f.write(json.dumps(cmd) + "\n")
                    f.flush()
                    while True:
                        r = json.loads(f.readline())
                        if "return" in r or "error" in r:
                            break
                out = r.get("return", "")
                m = re.search(r"HOST_FORWARD\]\s+\d+\s+127\.0\.0\.1\s+(\d+)", out)
                if m:
                    return int(m.group(1))
                raise BpfpmError(f"QEMU shows no host forward: {out!r}")
        except (OSError, ValueError) as e:
            if time.monotonic() > deadline:
                raise BpfpmError(f"QEMU's QMP socket {qmp} did not answer: {e}") from None
            time.sleep(0.1)


def qemu_opts(pidfile: Path, qmp: str) -> str:
    """vng --qemu-opts: pid file, QMP socket, the NIC with the forward
    (and without its PXE option ROM, which nothing boots from: the kernel
    comes by -kernel)."""
    if " " in str(pidfile):
        raise BpfpmError(f"{pidfile}: vng splits --qemu-opts on spaces; use a results "
                         "directory without spaces (BPFPM_RESULTS)")
    return (f"-pidfile {pidfile} -qmp unix:{qmp},server=on,wait=off,abstract=on "
            f"-netdev user,id=bpfpm,hostfwd=tcp:127.0.0.1:0-{GUEST_ADDR}:22 "
            "-device virtio-net-pci,netdev=bpfpm,romfile=")
