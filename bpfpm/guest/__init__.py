"""Code that runs inside the guest (as root, in the init netns).

The host reaches it through bpfpm.channel: one long-lived `python -m
bpfpm.guest.agent --listen PORT` per VM, started by the guest's start
script, speaking JSON lines over a connection forwarded by SSH.

pyroute2's own __init__ imports every one of its modules (NDB, IPDB,
conntrack, nl80211, ...): 1.5 s under TCG, for names the guest code never
uses. So the package is registered here without running it; submodules
(pyroute2.iproute.linux, pyroute2.netlink.generic.mptcp, ...) import as
usual, and the first use of a name from the package itself runs the real
__init__ then. The guest code imports from submodules only.
"""

import importlib.util
import sys


def _pyroute2_without_its_init() -> None:
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None:
        return                      # the import that needs it will say so
    pkg = importlib.util.module_from_spec(spec)

    def __getattr__(name):
        # `from pyroute2 import config` (pyroute2 does it itself) asks for a
        # submodule: import just that one
        if not name.startswith("__") and \
                importlib.util.find_spec(f"pyroute2.{name}") is not None:
            return importlib.import_module(f"pyroute2.{name}")
        del pkg.__getattr__
        spec.loader.exec_module(pkg)
        return getattr(pkg, name)

    pkg.__getattr__ = __getattr__
    sys.modules["pyroute2"] = pkg


_pyroute2_without_its_init()
