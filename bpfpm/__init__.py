"""bpfpm: MPTCP path managers in eBPF, and the framework that proves them."""

__version__ = "0.1.0"
