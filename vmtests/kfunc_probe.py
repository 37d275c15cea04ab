"""What bpf-pms/kfunc_probe.bpf.c records, for the tests that load it: the
cases of its `rets` map, the modes of config[0], and the decoding."""

FROM_CREATED, BAD_FAMILY, FAMILY_MISMATCH, QUEUE_FULL, PLAIN_TCP, NOT_BPF_PM, FALLBACK, \
    OK, CLOSE_BAD, FROM_TCP_OP, MSK_SETSOCKOPT, MSK_GETSOCKOPT, MSK_CB_FLAGS, TCP_OP_FIELDS, \
    REFUSE_OUTSIDE_JOIN, CLOSE_ALL, REOPEN, ANNOUNCE_ANY = range(18)
MODE_ERRNOS, MODE_FLOOD, MODE_BOGUS_SRC, MODE_CLOSE_INITIAL, MODE_SERVER_OPEN, \
    MODE_REOPEN, MODE_ADDRS = range(7)
# REQ_FAILED args[3]: the request that failed (BPF_MPTCP_REQ_*)
REQ_OPEN, REQ_CLOSE, REQ_ANNOUNCE, REQ_REMOVE, REQ_BACKUP = range(5)


def rets(probe) -> dict[int, int]:
    """case -> errno returned (0 = success); cases never reached are absent."""
    return {e["key"]: -(e["value"] - 1000) for e in probe.map("rets") if e["value"]}
