"""`make bisect-demo`: bisect proven on a regression we injected ourselves.

A git tree is made from the kernel source the cache already holds: one
commit for the tree, the series as commits (`git am`), a dozen ordinary
commits, and among them the regression of kernel/bisect-demo/with-series/
(RM_ADDR of a single address no longer reported to the BPF path manager).
Then `bpfpm bisect` runs with the scenario that catches it, and the demo
checks that the first bad commit named is the injected one.

With APPLY_SERIES=1 the tree is an "upstream" one: no series commits; the
series is applied on each step's checkout. The regression
(kernel/bisect-demo/upstream/) is in code the series does not touch, and
one ordinary commit (reverted by the next) changes a line the series needs
as context, so the series does not apply there: that step is shown to be
skipped (125) before the bisection runs.

The tree lives in <cache>/bisect-demo/linux; its base commit (1.5 GB of
source, a minute or two to commit) is made once per source version and
reused.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import bisect, log, patches, source
from .errors import BpfpmError
from .paths import KERNEL_DIR, cache_dir

SCENARIO = ["vmtests/test_hooks.py", "-k", "add_addr_and_rm_addr and ipv4"]
DEMO_DIR = KERNEL_DIR / "bisect-demo"
ORDINARY = 12
REGRESSION_AFTER = 7        # ordinary commits before the regression
# Files the ordinary commits touch: built ones, so each step really
# rebuilds (a comment: ccache's preprocessor mode still hits)
TOUCH = ["net/mptcp/protocol.c", "net/mptcp/subflow.c", "net/mptcp/options.c",
         "net/mptcp/pm.c", "net/mptcp/sockopt.c", "net/ipv4/tcp.c", "net/core/filter.c",
         "net/mptcp/pm_userspace.c", "net/mptcp/token.c", "kernel/bpf/btf.c",
         "Documentation/networking/mptcp.rst", "net/mptcp/ctrl.c"]
IDENT = ["-c", "user.name=bpfpm demo", "-c", "user.email=bpfpm@localhost",
         "-c", "commit.gpgsign=false"]


def _git(tree: Path, *args: str, env: dict | None = None) -> str:
    r = subprocess.run(["git", *IDENT, "-C", str(tree), *args], capture_output=True,
                       text=True, env=env)
    if r.returncode != 0:
        raise BpfpmError(f"git {' '.join(args[:3])} in {tree} failed: "
                         f"{(r.stderr or r.stdout).strip()[-1500:]}")
    return r.stdout.strip()


def _base(src: source.KernelSource) -> Path:
    """The demo tree at its base commit (the plain source), made once."""
    tree = cache_dir() / "bisect-demo" / "linux"
    tag = "base-" + src.ident.replace(":", "_").replace("~", "_")
    if (tree / ".git").exists():
        subprocess.run(["git", "-C", str(tree), "bisect", "reset", "-q"], capture_output=True)
        try:
            _git(tree, "rev-parse", "--verify", "-q", f"refs/tags/{tag}")
        except BpfpmError:      # another source version: start again
            shutil.rmtree(tree)
    if not (tree / ".git").exists():
        t0 = time.monotonic()
        log.step(f"making a git tree of {src.description} in {tree} (once; a minute or two)")
        if tree.exists():
            shutil.rmtree(tree)
        tree.parent.mkdir(parents=True, exist_ok=True)
        tmp = tree.with_name(f".linux.{os.getpid()}")
        subprocess.run(["cp", "-a", f"{src.path}/.", str(tmp)], check=True)
        _git(tmp, "init", "-q", "-b", "demo")
        # Debian's top-level .gitignore ignores everything (/*): add by force
        _git(tmp, "add", "-A", "-f", ".")
        _git(tmp, "commit", "-q", "-m", f"Linux {src.description}")
        _git(tmp, "tag", tag)
        os.rename(tmp, tree)
        log.step(f"base commit made in {time.monotonic() - t0:.0f}s")
    _git(tree, "checkout", "-q", "-f", "-B", "demo", tag)
    _git(tree, "clean", "-q", "-fdx")
    return tree


def _ordinary(tree: Path, n: int) -> None:
    f = TOUCH[n % len(TOUCH)]
    if not (tree / f).is_file():
        raise BpfpmError(f"bisect-demo: {f} is not in this source; update TOUCH")
    comment = "\n.. bisect-demo: ordinary change {n}\n" if f.endswith(".rst") else \
        "\n/* bisect-demo: ordinary change {n} */\n"
    with open(tree / f, "a") as fh:
        fh.write(comment.format(n=n + 1))
    _git(tree, "commit", "-q", "-a", "-m", f"demo: ordinary change {n + 1} ({f})")


# upstream mode: a line the series' pm.c hunk needs as context (fuzz 0)
BREAK_FILE = "net/mptcp/pm.c"
BREAK_LINE = '\tpr_debug("msk=%p remote_ids_nr=%d\\n", msk, rm_list->nr);\n'
BREAKER_AFTER = 3


def _series_breaker(tree: Path) -> str:
    """A commit on which the series does not apply, and its revert; the
    breaking commit's hash."""
    f = tree / BREAK_FILE
    text = f.read_text()
    if BREAK_LINE not in text:
        raise BpfpmError(f"bisect-demo: {BREAK_FILE} no longer has the line the demo edits")
    f.write_text(text.replace(BREAK_LINE, BREAK_LINE.rstrip("\n") + "  /* ids from the peer */\n", 1))
    _git(tree, "commit", "-q", "-a", "-m", "demo: pm: say where the removed ids come from")
    broke = _git(tree, "rev-parse", "HEAD")
    _git(tree, "revert", "--no-edit", "HEAD")
    return broke


def make_tree(upstream: bool = False) -> tuple[Path, str, str, str | None]:
    """The demo tree: (tree, last good commit, the injected regression's
    commit, the commit the series does not apply to (upstream mode))."""
    src = source.debian_source()
    tree = _base(src)
    series = patches.series()
    regression = sorted((DEMO_DIR / ("upstream" if upstream else "with-series")).glob("*.patch"))
    if not series or not regression:
        raise BpfpmError("the demo needs kernel/patches/<version>/series and "
                         f"{DEMO_DIR}/{'upstream' if upstream else 'with-series'}/*.patch")
    if not upstream:
        _git(tree, "am", "-q", *map(str, series))
    good = _git(tree, "rev-parse", "HEAD")
    bad = broke = None
    for i in range(ORDINARY):
        if upstream and i == BREAKER_AFTER:
            broke = _series_breaker(tree)
        if i == REGRESSION_AFTER:
            _git(tree, "am", "-q", *map(str, regression))
            bad = _git(tree, "rev-parse", "HEAD")
        _ordinary(tree, i)
    what = "no series commits (applied at each step)" if upstream else \
        f"{len(series)} series commits"
    log.step(f"demo tree: base, {what}, {ORDINARY} ordinary commits, the regression "
             f"{bad[:12]} after the {REGRESSION_AFTER}th"
             + (f", a commit the series does not apply to: {broke[:12]}" if broke else ""))
    return tree, good, bad, broke


def _skip_proof(tree: Path, broke: str) -> None:
    """One step on the commit the series does not apply to: skipped."""
    from . import session
    _git(tree, "checkout", "-q", broke)
    try:
        with session.run_dir("bisect-skip-proof") as rdir:
            env = dict(os.environ)
            env.pop("BPFPM_PATCHES", None)
            t0 = time.monotonic()
            r = subprocess.run([sys.executable, "-m", "bpfpm.cli", "bisect-step", "--run-dir",
                                str(rdir), "--", *SCENARIO], cwd=tree, env=env,
                               stdin=subprocess.DEVNULL, capture_output=True, text=True)
            took = time.monotonic() - t0
    finally:
        _git(tree, "checkout", "-q", "demo")
    why = next((ln for ln in r.stderr.splitlines() if "does not apply" in ln), r.stderr[-300:])
    if r.returncode != bisect.SKIP:
        raise BpfpmError(f"bisect-demo: a step where the series does not apply returned "
                         f"{r.returncode}, not {bisect.SKIP}:\n{r.stderr[-2000:]}")
    log.step(f"a step on {broke[:12]}, where the series does not apply, is skipped (125) in "
             f"{took:.0f}s: {why.strip()}")


def main(a) -> int:
    t0 = time.monotonic()
    upstream = bool(getattr(a, "apply_series", False))
    tree, good, injected, broke = make_tree(upstream)
    os.environ["KERNEL_SRC"] = str(tree)
    if broke:
        _skip_proof(tree, broke)
    out = bisect.run(good, "HEAD", SCENARIO, apply_series=upstream)
    took = time.monotonic() - t0
    if out.first_bad == injected:
        log.step(f"bisect-demo: PASS: the first bad commit named is the injected regression "
                 f"{injected[:12]} ({took:.0f}s in all); run dir {out.run}")
        return 0
    log.error(f"bisect-demo: FAIL: bisect named {out.first_bad or 'no commit'}, the injected "
              f"regression is {injected}; see {out.run}")
    return 1
