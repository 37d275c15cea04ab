"""Where a kernel, a run directory and a guest come together.

Every user of a guest goes through here: `bpfpm shell/run`, `demo`,
`bench-framework`, `kselftest` use `run_dir()` + `boot()`; the pytest
session uses `GuestSession`, one guest for many tests, restarted when it is
lost.

The whole kernel log is checked: after each test, everything the console
got since the last check (boot, the previous test's teardown, the test
itself) is scanned for splats. What came before the test's begin marker is
reported as "before this test" (a boot or an asynchronous cleanup of the
previous test), never dropped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import time
from pathlib import Path

from . import build, klog, log, results
from .build import KernelBuild
from .errors import BootFailed, BpfpmError, GuestError
from .vm import VM


def time_scale(kernel: KernelBuild) -> float:
    """Waits are written for the normal kernel under TCG; KASAN + lockdep
    make a debug kernel several times slower."""
    return 4.0 if kernel.info.get("debug") else 1.0


def _hold(kernel: KernelBuild):
    """A shared lock on the kernel for as long as a guest runs it, so that
    `bpfpm cache prune` cannot remove it under us."""
    hold = getattr(kernel, "hold", None)
    return hold() if hold else contextlib.nullcontext()


@contextlib.contextmanager
def run_dir(label: str):
    """results/<stamp>-<label>/; results/latest names it once it finished."""
    run = results.new_run(label)
    yield run
    finish = getattr(results, "finish_run", None)
    if finish:
        finish(run)


@contextlib.contextmanager
def boot(kernel: KernelBuild, run: Path, name: str = "guest", **vm_kw):
    """A booted guest on `kernel`, its console in `run`; powered off after."""
    with _hold(kernel):
        vm = VM(kernel, run, name=name, time_scale=time_scale(kernel), **vm_kw)
        log.step(f"booting {kernel.release}; console log {vm.console_log}")
        with vm:
            log.step(f"guest {name} up in {vm.boot_seconds:.1f}s")
            yield vm


@dataclasses.dataclass
class LogCheck:
    """A test's kernel log: what came before it began, and its own part."""
    before: str
    during: str
    splats_before: list[klog.Splat]
    splats_during: list[klog.Splat]

    @property
    def text(self) -> str:
        return self.before + self.during


class GuestSession:
    """One guest at a time for a test session. A guest that is lost (crash,
    freeze, channel loss) is stopped with its console kept, and the next
    test boots a fresh one. A kernel that does not boot twice (the second
    time is the infrastructure rerun of the test, bpfpm.reporting) trips the
    breaker: every later test fails at once with that error."""

    BOOT_FAILURES = 2

    def __init__(self, kernel: KernelBuild, run_dir: Path, **vm_kw):
        self.kernel = kernel
        self.run_dir = run_dir
        self.vm_kw = vm_kw
        self.time_scale = time_scale(kernel)
        self.vm: VM | None = None
        self.boots = 0
        self.boot_failure: BootFailed | None = None
        self.boot_failures = 0
        self.console: Path | None = None    # the last guest's, booted or not
        self._checked = 0           # console offset scanned so far
        self._carry: list[klog.Splat] = []  # from a lost guest, for the next test
        self._held = contextlib.ExitStack()
        self._held.enter_context(_hold(kernel))

    @property
    def debug(self) -> bool:
        return bool(self.kernel.info.get("debug"))

    def ensure(self) -> VM:
        if self.boot_failures >= self.BOOT_FAILURES:
            raise BootFailed(f"not booting again: the kernel did not boot earlier in this "
                             f"session:\n{self.boot_failure}")
        if self.vm is not None and self.vm.alive() and self.vm.ping():
            return self.vm
        if self.vm is not None:
            log.warn(f"guest {self.vm.name} is gone; console kept at {self.vm.console_log}")
            self.retire()
        self.boots += 1
        vm = VM(self.kernel, self.run_dir, name=f"guest{self.boots}",
                time_scale=self.time_scale, **self.vm_kw)
        self.console = vm.console_log
        try:
            vm.start()
        except BootFailed as e:
            self.boot_failure = e
            self.boot_failures += 1
            raise
        self.vm, self._checked = vm, 0
        self.boot_failures = 0              # the breaker counts boots failed in a row
        with open(self.run_dir / "boots.jsonl", "a") as f:
            f.write(json.dumps({"name": vm.name, "seconds": round(vm.boot_seconds, 2)}) + "\n")
        log.step(f"guest{self.boots} up in {vm.boot_seconds:.1f}s "
                 f"(kernel {self.kernel.release})")
        if self.debug:
            # what boot left unreferenced is not the tests' doing
            self.kmemleak_scan()
        return vm

    def retire(self) -> None:
        """Stop the guest, then check what its console got since the last
        check (a poweroff's splats included): they go against the next test."""
        if self.vm is not None:
            self.vm.stop()
            self._carry += self._check_upto(None, None).splats_before
            self.vm = None

    def stop(self) -> None:
        """Stop the guest at once, nothing checked (an interrupted run)."""
        if self.vm is not None:
            self.vm.kill()
            self.vm = None

    def finish(self) -> list[klog.Splat]:
        """End of the session: stop the guest; the splats no test was
        charged with (after the last test, during poweroff)."""
        try:
            self.retire()
            left, self._carry = self._carry, []
            return left
        finally:
            self._held.close()

    def close(self) -> None:
        self.stop()
        self._held.close()

    # -- the kernel log --------------------------------------------------------
    def begin_test(self, nodeid: str) -> str:
        return self.vm.kmsg_mark("begin-" + _slug(nodeid))

    def end_test(self, nodeid: str, begin: str) -> LogCheck:
        """The kernel log since the last check, split at the test's begin
        marker, and the splats in each part; works on a dead guest."""
        vm = self.vm
        end = None
        if vm is not None and vm.alive():
            try:
                end = vm.kmsg_mark("end-" + _slug(nodeid))
                self._wait_console(end)
            except (GuestError, BpfpmError):
                end = None
        return self._check_upto(end, begin)

    def check_rest(self) -> LogCheck:
        """Everything not checked yet, now."""
        return self._check_upto(None, None)

    def _check_upto(self, end: str | None, begin: str | None) -> LogCheck:
        text = self.vm.console_log.read_text(errors="replace") if self.vm else ""
        start = self._checked
        j = text.find(end, start) if end else -1
        if j >= 0:
            upto = max(start, text.rfind("\n", start, j) + 1)
            nl = text.find("\n", j)          # the end marker's line is nobody's
            self._checked = nl + 1 if nl >= 0 else len(text)
        elif self.vm is not None and self.vm.alive():
            # a running guest may be mid-line: leave the partial line for later
            upto = self._checked = max(start, text.rfind("\n") + 1)
        else:
            upto = self._checked = len(text)
        chunk = text[start:upto]
        i = chunk.find(begin) if begin else -1
        if i >= 0:
            before = chunk[:chunk.rfind("\n", 0, i) + 1]
            nl = chunk.find("\n", i)
            during = chunk[nl + 1:] if nl >= 0 else ""
        else:
            before, during = ("", chunk) if begin else (chunk, "")
        check = LogCheck(before, during, self._carry + klog.scan(before), klog.scan(during))
        self._carry = []
        return check

    def _wait_console(self, mark: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout * self.time_scale
        while time.monotonic() < deadline:
            if mark in self.vm.console_log.read_text(errors="replace"):
                return
            time.sleep(0.05)
        raise BpfpmError(f"marker {mark} never reached the console")

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

    def report(self, splats: list[klog.Splat]) -> str:
        return "\n\n".join(self.decode(s) for s in splats)


def _slug(nodeid: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid)[-80:]


def build_all() -> KernelBuild:
    """The kernel and the PM objects, before any test: a cold build takes
    many minutes and must not run inside a test's timeout."""
    from . import pms
    kb = build.build()
    failed = {n: e for n, e in pms.build_all(kb).items() if isinstance(e, Exception)}
    for n, e in failed.items():
        log.warn(f"BPF program {n} does not compile; the tests that load it will fail:\n{e}")
    return kb
