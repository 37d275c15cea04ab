"""One guest for a whole pytest session, restarted when it dies.

Each test gets the running guest; after the test, the kernel log lines it
produced (between two /dev/kmsg markers, read from the console log so a
dead guest's last words count too) are scanned for splats. A guest that
crashed or stopped answering is stopped, its console kept, and the next
test boots a fresh one.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from . import klog, log
from .agent import Agent
from .build import KernelBuild
from .errors import BpfpmError, GuestCrashed
from .vm import VM


class GuestSession:
    def __init__(self, kernel: KernelBuild, run_dir: Path):
        self.kernel = kernel
        self.run_dir = run_dir
        self.vm: VM | None = None
        self.agent: Agent | None = None
        self.boots = 0

    def ensure(self) -> VM:
        if self.vm is not None and self.vm.alive() and self.responsive():
            return self.vm
        if self.vm is not None:
            log.warn(f"guest {self.vm.name} is gone; console kept at {self.vm.console_log}")
            self.stop()
        self.boots += 1
        # VM.start() boots once more if the guest dies while booting
        self.vm = VM(self.kernel, self.run_dir, name=f"guest{self.boots}").start()
        self.agent = Agent(self.vm)
        log.step(f"guest{self.boots} up in {self.vm.boot_seconds:.1f}s "
                 f"(kernel {self.kernel.release})")
        if self.debug:
            # what boot left unreferenced is not the tests' doing
            self.kmemleak_scan()
        return self.vm

    @property
    def debug(self) -> bool:
        return bool(self.kernel.info.get("debug"))

    def responsive(self) -> bool:
        try:
            self.vm.run("true", timeout=20)
            self.agent.call("ping", _timeout=20)
            return True
        except Exception:
            return False

    def stop(self) -> None:
        if self.agent is not None:
            self.agent.close()
            self.agent = None
        if self.vm is not None:
            self.vm.stop()
            self.vm = None

    # -- per-test kernel log ---------------------------------------------------
    def begin_test(self, nodeid: str) -> str:
        return self.vm.kmsg_mark("begin-" + _slug(nodeid))

    def end_test(self, nodeid: str, begin: str) -> tuple[str, list[klog.Splat]]:
        """Kernel log of the test and the splats in it; works on a dead guest."""
        end = None
        if self.vm is not None and self.vm.alive():
            try:
                end = self.vm.kmsg_mark("end-" + _slug(nodeid))
                self._wait_console(end)
            except Exception:
                end = None
        text = self.vm.console_log.read_text(errors="replace") if self.vm else ""
        segment = klog.between(text, begin, end)
        return segment, klog.scan(segment)

    def _wait_console(self, mark: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if mark in self.vm.console_log.read_text(errors="replace"):
                return
            time.sleep(0.05)
        raise GuestCrashed(f"marker {mark} never reached the console")

    def kmemleak_scan(self, settle: bool = False) -> str:
        """Debug kernels: scan now, return the report of new leaks (and clear
        it). kmemleak only reports objects older than 5 s whose contents did
        not change between two scans; `settle` waits for that and scans twice."""
        if self.vm is None or not self.vm.alive():
            return ""
        ctl = "/sys/kernel/debug/kmemleak"
        pre = f"sleep 6 && echo scan > {ctl} && " if settle else ""
        res = self.vm.run(f"{pre}echo scan > {ctl} && cat {ctl} && echo clear > {ctl}",
                          timeout=600, check=False)
        if res.rc != 0:
            # a debug run that cannot scan must not pass as leak-free
            raise BpfpmError(f"kmemleak scan failed (rc {res.rc}): {res.stderr.strip()[-300:]}"
                               " - is CONFIG_DEBUG_KMEMLEAK on and debugfs mounted?")
        return res.stdout.strip()

    def decode(self, splat: klog.Splat) -> str:
        return klog.decode(splat.text, self.kernel.vmlinux, self.kernel.src_dir)


def _slug(nodeid: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid)[-80:]
