"""bpfpm command line: a thin front end over the modules.

Every subcommand returns an exit code: 0 success, 1 failure (explained on
stderr), 2 usage error, 3 the guest was lost (crashed, frozen, channel
dropped) or never came up, 130 interrupted (Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from . import kernels, log
from .errors import BpfpmError
from .kselftest import DEFAULT as KSELFTEST_DEFAULT

_KERNELS = ", ".join(f"{k} (default)" if k == kernels.DEFAULT else k for k in kernels.KERNELS)
EPILOG = f"""\
environment:
  BPFPM_KERNEL=name  the kernel: {_KERNELS} (`bpfpm kernel list`);
                     its Debian source, kernel/patches/<name>/series, cache of its own
  KERNEL_SRC=/path   build your own kernel tree (left untouched; built out of tree)
                     with BPFPM_KERNEL's series and config
  BPFPM_PATCHES=none do not apply kernel/patches/<kernel>/series
  DEBUG=1            debug kernel (KASAN, lockdep, kmemleak, ...)
  BPFPM_CONFIG=name  also apply kernel/configs/<name>.config (e.g. no-cgroup-bpf)
  BPFPM_ACCEL=kvm|tcg  force the QEMU accelerator (default: detected)
  BPFPM_APPEND="..."  more kernel command line for every guest
  BPFPM_CACHE=dir    build cache (default ~/.cache/bpfpm)
  BPFPM_RESULTS=dir  where run directories go (default ./results)
  BPFPM_KERNEL_BUILD=dir  use a kernel built elsewhere (bzImage + vmlinux), build nothing
"""


def cmd_kernel(a) -> int:
    from . import build
    if a.action == "list":
        for k in kernels.KERNELS.values():
            if a.names:
                print(k.name)
                continue
            mark = "*" if k.name == kernels.DEFAULT else " "
            series = "series" if (k.series_dir / "series").is_file() else "NO SERIES"
            print(f"{mark} {k.name:6} {k.package} {k.pinned:12} {series:9} "
                  f"suites: {' '.join(k.suites + k.security_suites)}")
        if not a.names:
            print("(* the default; BPFPM_KERNEL=<name> or make ... KERNEL=<name> chooses)")
        return 0
    if a.action == "build":
        kb = build.build(debug=a.debug or None)
        print(kb.bzimage)
        return 0
    if a.action == "info":
        kb = build.build(debug=a.debug or None)
        if "kernel" not in kb.info:     # a 6.12 kernel built before the choice existed
            print(f"kernel: {kernels.current().name}")
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


def _guest(a, label: str):
    """run dir + kernel + booted guest, for shell and run."""
    from . import build, session
    from .vm import VM
    kb = build.build(debug=getattr(a, "debug", False) or None)
    if getattr(a, "dry_run", False):
        print(shlex.join(VM(kb, Path("/tmp/bpfpm-dry-run"), name="guest").argv()))
        return None
    stack = contextlib.ExitStack()
    run = stack.enter_context(session.run_dir(label))
    return stack, stack.enter_context(session.boot(kb, run))


def cmd_shell(a) -> int:
    booted = _guest(a, "shell")
    if booted is None:
        return 0
    stack, vm = booted
    with stack:
        log.step("exit the shell to power the guest off")
        known = vm.run_dir / "known_hosts"       # the guest's pinned host key
        known.write_text(f"[127.0.0.1]:{vm.port} {vm.keys.host_pub.read_text()}")
        argv = ["ssh", "-i", str(vm.keys.client), "-p", str(vm.port),
                "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes",
                "-o", f"UserKnownHostsFile={known}", "-o", "LogLevel=ERROR", "root@127.0.0.1"]
        # root's login shell in the guest is /bin/sh (guestssh): ask for bash
        argv += [" ".join(a.command)] if a.command else ["-t", "exec bash -i"]
        return subprocess.call(argv)


def cmd_run(a) -> int:
    booted = _guest(a, "run")
    if booted is None:
        return 0
    stack, vm = booted
    with stack:
        res = vm.run(" ".join(a.command), timeout=a.timeout, check=False)
        sys.stdout.write(res.stdout)
        sys.stderr.write(res.stderr)
        return res.rc


def cmd_demo(a) -> int:
    from . import demo
    return demo.main(a)


def cmd_test(a) -> int:
    from . import runner
    args, jobs = list(a.pytest_args), None
    for i, arg in enumerate(args):
        if arg.startswith("--jobs="):
            jobs = args.pop(i).split("=", 1)[1]
            break
        if arg == "--jobs" and i + 1 < len(args):
            jobs = args[i + 1]
            del args[i:i + 2]
            break
    if jobs is not None and jobs not in ("auto", "lanes") and not jobs.isdigit():
        log.error(f"--jobs {jobs}: expected a number, auto or lanes")
        return 2
    return runner.run_pytest(args, jobs)


def cmd_report(a) -> int:
    from . import reporting, results
    a.action = a.runs.pop(0) if a.runs[:1] in (["show"], ["merge"]) else "show"
    if a.action == "merge":
        if not a.out or not a.runs:
            log.error("report merge: give the shards' run directories and -o OUT")
            return 2
        try:
            out = reporting.merge([Path(r) for r in a.runs], Path(a.out))
        except (OSError, ValueError) as e:
            log.error(f"report merge: {e}")
            return 1
        print(f"merged {len(a.runs)} runs into {out}: kcidb.json tests.jsonl results.ktap")
        return 0
    run = Path(a.runs[0]) if a.runs else results.results_root() / "latest"
    try:
        print(reporting.summary(run.resolve()))
    except FileNotFoundError as e:
        log.error(f"{e}; run `make test` first, or name a run directory")
        return 1
    page = run / "index.html"
    if a.open and page.exists():
        import webbrowser
        if not webbrowser.open(page.resolve().as_uri()):
            log.warn("no browser to open it with here; the path is above")
    return 0


def cmd_bench_framework(a) -> int:
    from . import benchfw
    return benchfw.main(a)


def cmd_bench(a) -> int:
    from . import bench
    return bench.main(a)


def cmd_kselftest(a) -> int:
    from . import kselftest
    return kselftest.main(a)


def cmd_series_check(a) -> int:
    from . import seriescheck
    return seriescheck.main(a)


def cmd_mutations(a) -> int:
    from . import mutations
    return mutations.main(a)


def cmd_cache(a) -> int:
    from . import cache
    return cache.main(a)


def cmd_bisect(a) -> int:
    from . import bisect
    out = bisect.run(a.good, a.bad, a.selector, apply_series=a.apply_series, runs=a.runs)
    return 0 if out.first_bad else 1


def cmd_bisect_step(a) -> int:
    from . import bisect
    return bisect.step(a.selector, Path(a.run_dir), a.runs)


def cmd_bisect_demo(a) -> int:
    from . import bisectdemo
    return bisectdemo.main(a)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bpfpm", description="Build an MPTCP/BPF kernel, boot it with virtme-ng, "
        "and run path-manager scenarios in it.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    k = sub.add_parser("kernel", help="build the guest kernel, show what is cached, list "
                       "the kernels BPFPM_KERNEL can choose")
    k.add_argument("action", choices=("build", "info", "list"))
    k.add_argument("--debug", action="store_true", help="debug config (same as DEBUG=1)")
    k.add_argument("--names", action="store_true", help="list: the names only, one a line")
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
                       description="--jobs N|auto|lanes runs N guests at once (pytest-xdist, "
                       "one guest per worker; auto: one per core, 3 GiB each; lanes, "
                       "`make test`'s default: two guests, the framework's self-tests on "
                       "one, the scenarios one at a time on the other); any other "
                       "arguments go to pytest, e.g. `bpfpm test -k fallback "
                       "vmtests/test_hooks.py`, `--shard=2/3` for a slice of the suite.")
    t.add_argument("pytest_args", nargs="*", help="pytest arguments (default: the whole suite)")
    t.set_defaults(fn=cmd_test)

    rp = sub.add_parser(
        "report", help="summary of the latest run (or RUN): failures with their evidence",
        description="show: counts, each failing or rerun test with its kernel log, console, "
        "pcap, guest state and transfer report, and the HTML page's path. merge: the "
        "shards of one suite (--shard=i/n, maybe from several machines) into one "
        "kcidb.json, tests.jsonl and results.ktap in OUT.")
    rp.add_argument("runs", nargs="*", metavar="[show|merge] RUN",
                    help="run directories (default: results/latest)")
    rp.add_argument("-o", "--out", help="merge: the directory to write")
    rp.add_argument("--open", action="store_true", help="show: open index.html in a browser")
    rp.set_defaults(fn=cmd_report)

    b = sub.add_parser("bench-framework", help="measure the framework's speed targets")
    b.add_argument("--cold", action="store_true", help="also time a cold kernel build")
    b.set_defaults(fn=cmd_bench_framework)
    bn = sub.add_parser("bench", help="BPF PM vs in-kernel vs userspace PM: the seed's claims",
                        description="Boot the patched kernel and measure p1-p6 (issue 12) "
                        "side by side; writes bench.json, bench.md and PNG plots in the run "
                        "directory, which results/bench names.")
    bn.add_argument("--size", choices=("smoke", "full"), default="full",
                    help="smoke: under 2 minutes, the size `make test` runs (default: full)")
    bn.set_defaults(fn=cmd_bench)
    ks = sub.add_parser("kselftest", help="upstream MPTCP selftests: unpatched vs patched kernel")
    ks.add_argument("--scripts", nargs="+", metavar="SCRIPT",
                    help="selftest scripts, each optionally with its arguments, e.g. "
                    "'mptcp_join.sh -f -s' (default: " + " ".join(KSELFTEST_DEFAULT) + ")")
    ks.add_argument("--parallel", action="store_true",
                    help="run both kernels at once, one vCPU each (same host load on both)")
    ks.add_argument("--guests", type=int, default=1, metavar="N",
                    help="spread each kernel's scripts over N guests at once (give the "
                    "mptcp_join.sh groups as separate scripts: 'mptcp_join.sh -f' ...)")
    ks.set_defaults(fn=cmd_kselftest)

    sc = sub.add_parser("series-check",
                        help="each patch on its own: checkpatch --strict, W=1 build of the "
                        "touched objects (guest config and no BPF_SYSCALL), lines added")
    sc.set_defaults(fn=cmd_series_check)

    mu = sub.add_parser("mutations",
                        help="undo each fix of the series in turn (kernel/mutations/): the "
                        "tests each names must fail, and pass without it")
    mu.add_argument("names", nargs="*", help="only these mutations (file names without .patch)")
    mu.set_defaults(fn=cmd_mutations)

    ca = sub.add_parser("cache", help="show what the build cache holds; prune old kernels")
    ca.add_argument("action", nargs="?", choices=("show", "prune"), default="show")
    ca.add_argument("--keep", type=int, default=3,
                    help="prune: unused kernels to keep, most recently used first (default 3)")
    ca.set_defaults(fn=cmd_cache)

    bi = sub.add_parser(
        "bisect", help="git bisect run over KERNEL_SRC with a scenario as oracle",
        description="Each step builds the checked-out commit incrementally, boots once and "
        "runs the selection: good when it passes, bad when a test fails, skipped when the "
        "commit does not build or boot (or, with --apply-series, the series does not apply); "
        "a usage, collection or infrastructure error stops the bisection. The tree ends on "
        "the branch and commit it started from. Test paths are relative to the bpfpm checkout.")
    bi.add_argument("--good", required=True, help="a commit where the selection passes")
    bi.add_argument("--bad", required=True, help="a commit where it fails")
    bi.add_argument("--apply-series", action="store_true",
                    help="apply kernel/patches/<kernel>/series on each step's checkout "
                    "(an upstream tree without the series)")
    bi.add_argument("--runs", type=int, default=1, metavar="N",
                    help="run the selection N times a step; good only if all pass (racy bugs)")
    bi.add_argument("selector", nargs="+", help="pytest arguments selecting the oracle test(s)")
    bi.set_defaults(fn=cmd_bisect)
    bs = sub.add_parser("bisect-step")  # internal: one `git bisect run` step
    bs.add_argument("--run-dir", required=True)
    bs.add_argument("--runs", type=int, default=1)
    bs.add_argument("selector", nargs="+")
    bs.set_defaults(fn=cmd_bisect_step)
    bd = sub.add_parser("bisect-demo", help="prove bisect on an injected regression "
                        "(makes a git tree from the cached source; long)")
    bd.add_argument("--apply-series", action="store_true",
                    help="an upstream tree without the series: applied at each step")
    bd.set_defaults(fn=cmd_bisect_demo)
    return p


def _terminated(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # everything after `test` goes to pytest (-k, -x, ...), except a lone --help
    if argv[:1] == ["test"] and argv[1:] not in (["-h"], ["--help"]) and "--" not in argv:
        argv.insert(1, "--")
    p = parser()
    a, extra = p.parse_known_args(argv)
    # `report merge -o OUT RUN...`: argparse leaves the run directories that
    # follow an option over
    if getattr(a, "fn", None) is cmd_report and not any(x.startswith("-") for x in extra):
        a.runs += extra
    elif extra:
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    # SIGTERM unwinds like Ctrl-C, so builds and VMs are cleaned up
    signal.signal(signal.SIGTERM, _terminated)
    # A shell starts its background jobs with SIGINT ignored, and exec keeps
    # it so: Ctrl-C, and the interrupt the runner forwards to pytest, would
    # do nothing. Our children start with it at its default again.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
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
