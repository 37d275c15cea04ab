"""bpfpm command line: a thin front end over the modules.

Every subcommand returns an exit code: 0 success, 1 failure (explained on
stderr), 2 usage error, 3 the guest crashed or never came up.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys

from . import log
from .errors import BpfpmError
from .kselftest import DEFAULT as KSELFTEST_DEFAULT

EPILOG = """\
environment:
  KERNEL_SRC=/path   build your own kernel tree (left untouched; built out of tree)
  BPFPM_PATCHES=none do not apply kernel/patches/6.12/series
  DEBUG=1            debug kernel (KASAN, lockdep, kmemleak, ...)
  BPFPM_ACCEL=kvm|tcg  force the QEMU accelerator (default: detected)
  BPFPM_CACHE=dir    build cache (default ~/.cache/bpfpm)
  BPFPM_RESULTS=dir  where run directories go (default ./results)
  BPFPM_KERNEL_BUILD=dir  use a kernel built elsewhere (bzImage + vmlinux), build nothing
"""


def cmd_kernel(a) -> int:
    from . import build
    if a.action == "build":
        kb = build.build(debug=a.debug or None)
        print(kb.bzimage)
        return 0
    if a.action == "info":
        kb = build.build(debug=a.debug or None)
        for k, v in kb.info.items():
            print(f"{k}: {v}")
        print(f"bzImage: {kb.bzimage}\nvmlinux: {kb.vmlinux}\nbuild_dir: {kb.build_dir}")
        return 0
    return 2


def cmd_pms(a) -> int:
    from . import build, pms
    kb = build.build()
    failed = 0
    for name, obj in pms.build_all(kb).items():
        if isinstance(obj, Exception):
            failed += 1
            log.error(f"{name}: {obj}")
        else:
            print(f"{name}: {obj}")
    return 1 if failed else 0


def _boot(a, label: str):
    from . import build, results
    from .vm import VM
    kb = build.build(debug=getattr(a, "debug", False) or None)
    run = results.new_run(label)
    vm = VM(kb, run, name="guest")
    if getattr(a, "dry_run", False):
        print(shlex.join(vm.argv()))
        return None
    log.step(f"booting {kb.release}; console log {vm.console_log}")
    return vm.start()


def cmd_shell(a) -> int:
    from .vm import SSH_KEY
    vm = _boot(a, "shell")
    if vm is None:
        return 0
    try:
        log.step(f"guest up in {vm.boot_seconds:.1f}s; exit the shell to power it off")
        argv = ["ssh", "-i", str(SSH_KEY), "-p", str(vm.port), "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "root@127.0.0.1"]
        if a.command:
            argv.append(" ".join(a.command))
        return subprocess.call(argv)
    finally:
        vm.stop()


def cmd_run(a) -> int:
    vm = _boot(a, "run")
    if vm is None:
        return 0
    try:
        res = vm.run(" ".join(a.command), timeout=a.timeout, check=False)
        sys.stdout.write(res.stdout)
        sys.stderr.write(res.stderr)
        return res.rc
    finally:
        vm.stop()


def cmd_demo(a) -> int:
    from . import demo
    return demo.main(a)


def cmd_test(a) -> int:
    from . import results
    run = results.new_run("test")
    env = dict(os.environ, BPFPM_RUN_DIR=str(run))
    argv = [sys.executable, "-m", "pytest", f"--junitxml={run / 'junit.xml'}",
            "-o", "junit_family=xunit2", *a.pytest_args]
    log.step(f"results: {run} (results/latest)")
    with open(run / "pytest.cmdline", "w") as f:
        f.write(shlex.join(argv) + "\n")
    return subprocess.call(argv, env=env, stdin=subprocess.DEVNULL)


def cmd_bench_framework(a) -> int:
    from . import benchfw
    return benchfw.main(a)


def cmd_kselftest(a) -> int:
    from . import kselftest
    return kselftest.main(a)


def cmd_bisect(a) -> int:
    from . import bisect
    return bisect.run(a.good, a.bad, a.selector)


def cmd_bisect_step(a) -> int:
    from . import bisect
    return bisect.step(a.selector)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bpfpm", description="Build an MPTCP/BPF kernel, boot it with virtme-ng, "
        "and run path-manager scenarios in it.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    k = sub.add_parser("kernel", help="build the guest kernel or show what is cached")
    k.add_argument("action", choices=("build", "info"))
    k.add_argument("--debug", action="store_true", help="debug config (same as DEBUG=1)")
    k.set_defaults(fn=cmd_kernel)

    pm = sub.add_parser("pms", help="compile the BPF path managers (bpf-pms/) for the kernel")
    pm.add_argument("action", choices=("build",))
    pm.set_defaults(fn=cmd_pms)

    s = sub.add_parser("shell", help="boot the guest and open an interactive shell")
    s.add_argument("--dry-run", action="store_true", help="print the vng command line")
    s.add_argument("--debug", action="store_true")
    s.add_argument("command", nargs="*", help="run this instead of a login shell")
    s.set_defaults(fn=cmd_shell)

    r = sub.add_parser("run", help="boot the guest, run one command, power off")
    r.add_argument("--dry-run", action="store_true")
    r.add_argument("--timeout", type=float, default=600)
    r.add_argument("--debug", action="store_true")
    r.add_argument("command", nargs="+")
    r.set_defaults(fn=cmd_run)

    d = sub.add_parser("demo", help="two-link MPTCP transfer; per-connection subflow table")
    d.add_argument("--pm", default="auto", choices=("auto", "bpf", "kernel"),
                   help="fullmesh by the BPF PM or the in-kernel PM (auto: bpf if patched)")
    d.add_argument("--bytes", type=int, default=32 << 20)
    d.set_defaults(fn=cmd_demo)

    t = sub.add_parser("test", help="run pytest (unit tests + VM scenarios) into results/",
                       description="Any other arguments go to pytest, e.g. "
                       "`bpfpm test -k fallback vmtests/test_hooks.py`.")
    t.add_argument("pytest_args", nargs="*", help="pytest arguments (default: the whole suite)")
    t.set_defaults(fn=cmd_test)

    b = sub.add_parser("bench-framework", help="measure the framework's speed targets")
    b.add_argument("--cold", action="store_true", help="also time a cold kernel build")
    b.set_defaults(fn=cmd_bench_framework)
    ks = sub.add_parser("kselftest", help="upstream MPTCP selftests: unpatched vs patched kernel")
    ks.add_argument("--scripts", nargs="+", metavar="SCRIPT",
                    help="selftest scripts, each optionally with its arguments, e.g. "
                    "'mptcp_join.sh -f -s' (default: " + " ".join(KSELFTEST_DEFAULT) + ")")
    ks.set_defaults(fn=cmd_kselftest)

    bi = sub.add_parser("bisect", help="git bisect run over KERNEL_SRC with a scenario as oracle")
    bi.add_argument("--good", required=True)
    bi.add_argument("--bad", required=True)
    bi.add_argument("selector", nargs="+", help="pytest arguments selecting the oracle test(s)")
    bi.set_defaults(fn=cmd_bisect)
    bs = sub.add_parser("bisect-step")  # internal: one `git bisect run` step
    bs.add_argument("selector", nargs="+")
    bs.set_defaults(fn=cmd_bisect_step)
    return p


def _terminated(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # everything after `test` goes to pytest (-k, -x, ...), except a lone --help
    if argv[:1] == ["test"] and argv[1:] not in (["-h"], ["--help"]) and "--" not in argv:
        argv.insert(1, "--")
    a = parser().parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so builds and VMs are cleaned up
    signal.signal(signal.SIGTERM, _terminated)
    try:
        return a.fn(a)
    except BpfpmError as e:
        log.error(str(e))
        return e.exit_code
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
