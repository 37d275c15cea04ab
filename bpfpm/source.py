"""Kernel source: the chosen kernel's Debian package (linux-source-6.12,
linux-source-7.2: bpfpm.kernels), or a developer's own tree.

The Debian source comes from the kernel's suites through a private apt
state directory, so the host's apt configuration is read but never
changed. The mirror is derived from the host's own sources; no registry
host is written here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from . import cache, kernels, log
from .errors import BpfpmError
from .kernels import Kernel
from .paths import cache_dir


@dataclasses.dataclass(frozen=True)
class KernelSource:
    path: Path
    ident: str          # stable id used in cache keys and results
    description: str    # human-readable origin
    writable: bool      # False for a developer's tree: never modify it


@dataclasses.dataclass(frozen=True)
class AptSource:
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str | None


def _parse_deb822(text: str) -> list[AptSource]:
    out = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            m = re.match(r"^([A-Za-z-]+):\s*(.*)$", line)
            if m:
                fields[m.group(1).lower()] = m.group(2).strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            out.append(AptSource(uri, tuple(fields.get("suites", "").split()),
                                 tuple(fields.get("components", "main").split()),
                                 fields.get("signed-by")))
    return out


def _parse_one_line(text: str) -> list[AptSource]:
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        words = line.split()[1:]
        signed_by = None
        if words and words[0].startswith("["):
            opts = []
            while words:
                w = words.pop(0)
                opts.append(w)
                if w.endswith("]"):
                    break
            for o in " ".join(opts).strip("[]").split():
                if o.startswith("signed-by="):
                    signed_by = o.split("=", 1)[1]
        if len(words) >= 2:
            out.append(AptSource(words[0], (words[1],), tuple(words[2:]) or ("main",),
                                 signed_by))
    return out


def host_apt_sources(etc: Path = Path("/etc/apt")) -> list[AptSource]:
    sources: list[AptSource] = []
    main = etc / "sources.list"
    if main.exists():
        sources += _parse_one_line(main.read_text())
    d = etc / "sources.list.d"
    if d.is_dir():
        for f in sorted(d.iterdir()):
            if f.suffix == ".sources":
                sources += _parse_deb822(f.read_text())
            elif f.suffix == ".list":
                sources += _parse_one_line(f.read_text())
    return sources


def sources_list(sources: list[AptSource], kernel: Kernel) -> str:
    """A deb822 sources file for the kernel's suites built from the host's
    mirrors (whatever release the host runs).

    The archive mirror is the one serving the host's plain suite; the
    security mirror, for the kernel's security suites, the one serving
    `<codename>-security`.
    """
    archive = security = None
    for s in sources:
        for su in s.suites:
            if su.endswith("-security") or "/updates" in su:
                security = security or s
            elif "-" not in su and "main" in s.components:
                archive = archive or s
    if archive is None:
        raise BpfpmError(
            "no Debian archive mirror found in /etc/apt/sources.list{,.d}; "
            "add the host's Debian mirror there or use KERNEL_SRC=/path/to/linux")
    stanzas = [(archive, " ".join(kernel.suites))]
    if security is not None and kernel.security_suites:
        stanzas.append((security, " ".join(kernel.security_suites)))
    text = []
    for s, suites in stanzas:
        lines = ["Types: deb", f"URIs: {s.uri}", f"Suites: {suites}", "Components: main"]
        if s.signed_by:
            lines.append(f"Signed-By: {s.signed_by}")
        text.append("\n".join(lines))
    return "\n\n".join(text) + "\n"


class PrivateApt:
    """apt-get with its own lists/cache dirs and a generated sources file:
    one per kernel, the lists and the .deb cache shared by all."""

    def __init__(self, root: Path, kernel: Kernel | None = None):
        self.root = root
        self.kernel = kernel or kernels.current()
        (root / "lists" / "partial").mkdir(parents=True, exist_ok=True)
        (root / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        self.sources = root / f"{self.kernel.package}.sources"

    def _opts(self) -> list[str]:
        r = self.root
        return ["-o", f"Dir::Etc::SourceList={self.sources}",
                "-o", "Dir::Etc::SourceParts=-",
                "-o", f"Dir::State::Lists={r / 'lists'}",
                "-o", f"Dir::Cache={r / 'cache'}",
                "-o", "APT::Get::List-Cleanup=0",
                "-o", "Debug::NoLocking=1"]

    def update(self) -> None:
        cache.atomic_write(self.sources, sources_list(host_apt_sources(), self.kernel))
        suites = " ".join(self.kernel.suites + self.kernel.security_suites)
        log.step(f"apt: updating private package lists ({suites})")
        r = subprocess.run(["apt-get", *self._opts(), "-q", "update"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            if cache.says_no_space(r.stderr):
                raise cache.no_space()
            raise BpfpmError(f"apt-get update for {suites} failed:\n{r.stderr.strip()}\n"
                             f"sources used: {self.sources}")

    def versions(self, package: str) -> list[str]:
        r = subprocess.run(["apt-cache", *self._opts(), "madison", package],
                           capture_output=True, text=True)
        vers = []
        for line in r.stdout.splitlines():
            parts = [p.strip() for p in line.split("|")]
            if len(parts) >= 2 and parts[1] not in vers:
                vers.append(parts[1])
        return vers

    def download(self, package: str, version: str, dest: Path) -> Path:
        """The .deb of exactly `package` `version`, in `dest`. Fetched into a
        temp dir of its own, then renamed: no other run sees it half done."""
        dest.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=dest))
        try:
            r = subprocess.run(["apt-get", *self._opts(), "-q", "download",
                                f"{package}={version}"], cwd=tmp, capture_output=True, text=True)
            if r.returncode != 0:
                if cache.says_no_space(r.stderr):
                    raise cache.no_space()
                raise BpfpmError(f"apt-get download {package}={version} failed:\n"
                                 f"{r.stderr.strip()}")
            deb = deb_of(tmp, package, version)
            final = dest / deb.name
            os.replace(deb, final)
            return final
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def deb_name_version(version: str) -> str:
    """A version as apt writes it in a .deb's file name (epoch colon quoted)."""
    return version.replace(":", "%3a")


def deb_of(d: Path, package: str, version: str) -> Path:
    """The .deb of `package` `version` in `d` (apt names it package_version_arch.deb)."""
    debs = sorted(d.glob(f"{package}_{deb_name_version(version)}_*.deb"))
    if not debs:
        there = ", ".join(p.name for p in d.glob(f"{package}_*.deb")) or "nothing"
        raise BpfpmError(f"apt-get download left no {package} {version} .deb in {d} "
                         f"(found {there})")
    return debs[0]


def _version_key(v: str):
    return [int(x) if x.isdigit() else x for x in re.split(r"[.\-+~]", v)]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _ready(root: Path, package: str, version: str | None = None) -> Path | None:
    """The unpacked source tree of `package` `version` (default: the newest there)."""
    trees = [m.parent for m in root.glob(f"{package}_*/READY")]
    if version is not None:
        trees = [t for t in trees if t.name == f"{package}_{version}"]
    return max(trees, key=lambda t: _version_key(t.name.split("_", 1)[1]), default=None)


def debian_source(kernel: Kernel | None = None) -> KernelSource:
    """The kernel's Debian source (default: the chosen kernel's), unpacked
    in source/<package>_<version>/."""
    kernel = kernel or kernels.current()
    root = cache_dir() / "source"
    pinned = kernel.pinned_version()
    # Reuse an unpacked tree of the pinned version without touching the network.
    found = _ready(root, kernel.package, pinned)
    if found:
        return _unpacked(found)
    with cache.disk_errors(f"creating {root}"):
        root.mkdir(parents=True, exist_ok=True)
    with cache.flock(root / ".lock", "waiting for another run fetching the kernel source"):
        found = _ready(root, kernel.package, pinned)    # fetched meanwhile by another run?
        if found:
            return _unpacked(found)
        with cache.disk_errors(f"fetching {kernel.package} into {root}",
                               "or use KERNEL_SRC=/path/to/linux"):
            return _fetch(root, kernel)


def _fetch(root: Path, kernel: Kernel) -> KernelSource:
    """Download and unpack the source (caller holds source/.lock)."""
    package = kernel.package
    apt = PrivateApt(root / "apt", kernel)
    try:
        apt.update()
        versions = apt.versions(package)
    except BpfpmError:
        newest = _ready(root, package)
        if newest:
            log.warn(f"apt unreachable; using the newest unpacked {package} in the cache")
            return _unpacked(newest)
        raise
    if not versions:
        raise BpfpmError(f"{package} not offered by the suites "
                         f"{' '.join(kernel.suites + kernel.security_suites)}; "
                         "use KERNEL_SRC=/path/to/linux")
    version = kernel.pinned_version()
    if version not in versions:
        newest = max(versions, key=_version_key)
        log.warn(f"pinned {package} {version} is gone from the mirror; using {newest}")
        version = newest
    tree_root = root / f"{package}_{version}"
    if (tree_root / "READY").exists():
        return _unpacked(tree_root)
    log.step(f"fetching {package} {version}")
    deb = apt.download(package, version, root / "debs")
    for old in root.glob(f".{package}_*.partial-*"):   # left by a killed run
        shutil.rmtree(old, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{tree_root.name}.partial-", dir=root))
    try:
        digest = _unpack(deb, staging)
        (staging / "VERSION").write_text(f"{package} {version}\nsha256 {digest}\n")
        (staging / "READY").write_text("")
        os.chmod(staging, 0o755)
        if tree_root.exists():      # an unfinished tree (no READY) from older code
            cache.trash(tree_root)
        os.rename(staging, tree_root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _unpacked(tree_root)


def _unpack(deb: Path, staging: Path) -> str:
    """deb -> staging/linux (the source tree); the tarball's sha256."""
    subprocess.run(["dpkg-deb", "-x", str(deb), str(staging / "deb")], check=True,
                   capture_output=True, text=True)
    tarballs = list((staging / "deb" / "usr" / "src").glob("linux-source-*.tar.xz"))
    if not tarballs:
        raise BpfpmError(f"{deb} holds no /usr/src/linux-source-*.tar.xz")
    digest = _sha256(tarballs[0])
    log.step(f"unpacking {tarballs[0].name} (sha256 {digest[:16]})")
    with tarfile.open(tarballs[0]) as tf:
        tf.extractall(staging / "tree", filter="fully_trusted")
    inner = next((staging / "tree").iterdir())
    inner.rename(staging / "linux")
    shutil.rmtree(staging / "deb")
    shutil.rmtree(staging / "tree")
    return digest


def _unpacked(tree_root: Path) -> KernelSource:
    info = (tree_root / "VERSION").read_text().split("\n")
    package, version = info[0].split()[:2]
    digest = info[1].split()[1]
    return KernelSource(path=tree_root / "linux",
                        ident=f"debian-{package}-{version}-{digest[:12]}",
                        description=f"Debian {package} {version} (tarball sha256 {digest})",
                        writable=False)


def _files_digest(root: Path, rels) -> str:
    """Path, size and mtime of each file: what changes when one is edited,
    without reading 80000 files."""
    h = hashlib.sha256()
    for rel in sorted(rels):
        try:
            st = (root / rel).lstat()
        except OSError:
            continue
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:12]


def _tree_files(root: Path):
    for d, dirs, files in os.walk(root):
        if d == str(root):
            dirs[:] = [x for x in dirs if x != ".git"]
        for f in files:
            yield os.path.relpath(os.path.join(d, f), root)


def _git(path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(path), *args], capture_output=True)


def developer_source(path: Path) -> KernelSource:
    """A developer's tree. Its ident (part of the kernel's cache key) changes
    with every edit: for a git tree, HEAD plus a digest of the uncommitted
    diff and of the untracked files; for any other tree, a digest of every
    file's size and mtime."""
    path = path.resolve()
    if not (path / "Makefile").exists() or not (path / "net" / "mptcp").is_dir():
        raise BpfpmError(f"KERNEL_SRC={path} does not look like a Linux tree with net/mptcp")
    if not (path / ".git").exists():
        ident = f"tree-{path.name}-{_files_digest(path, _tree_files(path))}"
        return KernelSource(path=path, ident=ident, description=f"developer tree {path}",
                            writable=False)
    head = _git(path, "rev-parse", "HEAD").stdout.decode().strip()
    if not head:
        raise BpfpmError(f"KERNEL_SRC={path}: `git rev-parse HEAD` failed; is it a git "
                         "tree with a commit?")
    ident = f"git-{head[:20]}"
    diff = _git(path, "diff", "HEAD", "--binary").stdout
    untracked = [f for f in _git(path, "ls-files", "--others", "--exclude-standard",
                                 "-z").stdout.decode().split("\0") if f]
    if diff or untracked:
        h = hashlib.sha256(diff)
        h.update(_files_digest(path, untracked).encode())
        ident += f"-dirty-{h.hexdigest()[:12]}"
    return KernelSource(path=path, ident=ident, description=f"git tree {path} at {ident[4:]}",
                        writable=False)


def resolve() -> KernelSource:
    env = os.environ.get("KERNEL_SRC")
    if env:
        return developer_source(Path(env))
    return debian_source()
