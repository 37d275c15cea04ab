"""The kernels bpfpm builds and tests: the table of them, and the one chosen.

BPFPM_KERNEL (`make ... KERNEL=7.2`) names it; 6.12 by default. A kernel
is a Debian source package (its version pinned, the suites that carry it),
a patch series kernel/patches/<name>/series, an optional config fragment
kernel/configs/<name>.config (what differs from base.config there), and
its own work tree and build dirs in the cache, so that switching kernels
never rebuilds either one. KERNEL_SRC=/path builds a developer's tree
instead of the Debian source, with the chosen kernel's series and config.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from .errors import BpfpmError
from .paths import KERNEL_DIR, cache_dir


@dataclasses.dataclass(frozen=True)
class Kernel:
    name: str                       # BPFPM_KERNEL=<name>, kernel/patches/<name>/
    package: str                    # the Debian source package
    pinned: str                     # its version, for reproducibility
    suites: tuple[str, ...]         # asked of the host's Debian archive mirror
    security_suites: tuple[str, ...] = ()   # asked of its security mirror, if any
    # 6.12's cache paths (trees/linux, builds/base, ...) predate the choice
    # of kernel; they stay as they were so that its warm cache stays warm
    unsuffixed_paths: bool = False

    def pinned_version(self) -> str:
        """The pin, or BPFPM_SOURCE_VERSION (a version of this package). The
        newest available is used, with a warning, once the suites have moved
        on past it."""
        return os.environ.get("BPFPM_SOURCE_VERSION") or self.pinned

    @property
    def series_dir(self) -> Path:
        return KERNEL_DIR / "patches" / self.name

    @property
    def config_fragment(self) -> Path:
        """Applied after base.config on this kernel only, when it exists."""
        return KERNEL_DIR / "configs" / f"{self.name}.config"

    def cache_name(self, name: str) -> str:
        """`name` of a per-kernel entry of the cache (a work tree, a build
        dir): `name-<kernel>`, or `name` as it was for 6.12."""
        return name if self.unsuffixed_paths else f"{name}-{self.name}"

    def tree_dir(self) -> Path:
        """The work tree the source is synced into and the series applied to."""
        return cache_dir() / "trees" / self.cache_name("linux")

    def build_dir(self, config: str) -> Path:
        """The incremental O= build dir of one configuration (base, debug...)."""
        return cache_dir() / "builds" / self.cache_name(config)


# The supported kernels. Suites: the package's own; a suite that no longer
# carries it (sid moves on) is harmless as long as another one does.
KERNELS = {k.name: k for k in (
    Kernel("6.12", "linux-source-6.12", "6.12.117-1",
           suites=("trixie", "trixie-updates"), security_suites=("trixie-security",),
           unsuffixed_paths=True),
    Kernel("7.2", "linux-source-7.2", "7.2.13-1",
           suites=("trixie-backports", "sid")),
)}
DEFAULT = "6.12"


def get(name: str) -> Kernel:
    try:
        return KERNELS[name]
    except KeyError:
        raise BpfpmError(f"BPFPM_KERNEL={name}: not a kernel bpfpm supports; the supported "
                         f"kernels are {', '.join(KERNELS)} (bpfpm/kernels.py)") from None


def current() -> Kernel:
    """The kernel BPFPM_KERNEL names (`make ... KERNEL=`), 6.12 by default."""
    return get(os.environ.get("BPFPM_KERNEL", "").strip() or DEFAULT)
