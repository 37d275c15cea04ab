"""pytest-xdist in two lanes: `bpfpm test --jobs lanes` (`make test`'s default).

The framework's own tests (the fault injections: a frozen, killed or
unbootable guest, Ctrl-C; the nested report run; the bench smoke; the unit
tests) spend most of their time waiting: on a stopped QEMU, on a boot that
must fail, on a child pytest. They run on one worker with a guest of its
own, and with them three scenario files that even the lanes out; the other
scenarios run one at a time on the second worker. Measured (TCG, 2 cores,
warm): the self-tests took 213 s of that lane and the scenarios 322 s of
the other, so the scenarios of test_pm_both_ends, test_lifecycle and
test_fuzz (61 s) moved over. Two workers that each take scenarios as they
come (`--jobs 2`) lost a timing race in 1 run of 6, see README `JOBS`:
here most of what runs beside a scenario is a wait.

A lane is chosen by path, since xdist's controller sees only node ids.
xdist's own `--dist loadgroup` would do it by mark, but the `xdist_group`
mark did not reach the node ids with pytest 9.2 and xdist 3.8.
"""

from __future__ import annotations

import pytest
from xdist.scheduler import LoadScopeScheduling

# the first lane; everything else is in the second
FIRST = (
    "tests/",
    "vmtests/test_framework.py",
    "vmtests/test_interrupts.py",
    "vmtests/test_reports.py",
    "vmtests/test_bench.py",
    # scenarios, for balance
    "vmtests/test_pm_both_ends.py",
    "vmtests/test_lifecycle.py",
    "vmtests/test_fuzz.py",
)


def lane(nodeid: str) -> str:
    return "self-tests" if nodeid.startswith(FIRST) else "scenarios"


class LaneScheduling(LoadScopeScheduling):
    """LoadScope with one scope per lane: with two workers, each gets one
    lane whole, in collection order; a run that selects one lane leaves
    the other worker idle (xdist shuts it down)."""

    def _split_scope(self, nodeid: str) -> str:
        return lane(nodeid)


def pytest_addoption(parser):
    parser.getgroup("bpfpm").addoption(
        "--lanes", action="store_true",
        help="with -n 2: the framework's self-tests (and a few scenarios) on one "
        "worker, the other scenarios on the other (bpfpm.lanes)")


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getoption("lanes"):
        return LaneScheduling(config, log)
    return None
