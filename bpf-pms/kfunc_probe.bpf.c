// SPDX-License-Identifier: GPL-2.0
/* Test program: calls the subflow kfuncs the wrong way on purpose and
 * records what they return, so tests can check every documented errno.
 * config[0] selects the mode; rets[case] holds the last return value + 1000
 * (0 means "never called").
 */
#include "bpfpm.h"

enum probe_case {
	PROBE_BEFORE_ESTABLISHED,	/* CREATED: -ENOTCONN */
	PROBE_BAD_FAMILY,		/* family 99: -EINVAL */
	PROBE_FAMILY_MISMATCH,		/* v6 src, v4 dst: -EINVAL */
	PROBE_QUEUE_FULL,		/* 9th request in a row: -EBUSY or -ENOSPC */
	PROBE_PLAIN_TCP,		/* a non-MPTCP socket: -EINVAL */
	PROBE_NOT_BPF_PM,		/* MPTCP subflow, pm_type 0: -EOPNOTSUPP */
	PROBE_FALLBACK,			/* fallen back: -ENOTCONN */
	PROBE_OK,			/* a valid request: 0 */
	PROBE_CLOSE_BAD,		/* close_subflow with family 99: -EINVAL */
	__PROBE_MAX,
};

enum probe_mode {
	MODE_ERRNOS = 0,	/* all the error cases on one connection */
	MODE_FLOOD = 1,		/* queue 8 requests on ESTABLISHED, nothing else */
};

BPFPM_CONFIG_MAP;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, __PROBE_MAX);
	__type(key, __u32);
	__type(value, __s64);
} rets SEC(".maps");

BPFPM_STATS_MAP

static __always_inline void put(__u32 c, int ret)
{
	__s64 *v = bpf_map_lookup_elem(&rets, &c);

	if (v)
		*v = ret + 1000;
}

SEC("sockops")
int probe(struct bpf_sock_ops *skops)
{
	struct bpf_mptcp_endp src, dst;
	__u32 zero = 0, mode = MODE_ERRNOS, *cfg, i;
	int ret;

	cfg = bpf_map_lookup_elem(&config, &zero);
	if (cfg)
		mode = *cfg;
	bpfpm_endp(&src, NULL);
	bpfpm_endp(&dst, NULL);

	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		/* plain TCP op: an MPTCP subflow (pm_type 0) or a TCP socket */
		ret = bpf_mptcp_open_subflow(skops, &src, &dst);
		put(ret == -BPFPM_EINVAL ? PROBE_PLAIN_TCP : PROBE_NOT_BPF_PM, ret);
		break;
	case BPF_SOCK_OPS_MPTCP_CREATED_CB:
		if (!skops->args[0] && mode == MODE_ERRNOS)
			put(PROBE_BEFORE_ESTABLISHED, bpf_mptcp_open_subflow(skops, &src, &dst));
		break;
	case BPF_SOCK_OPS_MPTCP_CLOSED_CB:
		if (skops->args[0] == 1)	/* fell back: the msk is still there */
			put(PROBE_FALLBACK, bpf_mptcp_open_subflow(skops, &src, &dst));
		break;
	case BPF_SOCK_OPS_MPTCP_ESTABLISHED_CB:
		if (skops->args[0])
			break;
		if (mode == MODE_FLOOD) {
			for (i = 0; i < 8; i++)
				bpfpm_count(bpf_mptcp_open_subflow(skops, &src, &dst));
			break;
		}
		src.family = 99;
		put(PROBE_BAD_FAMILY, bpf_mptcp_open_subflow(skops, &src, &dst));
		put(PROBE_CLOSE_BAD, bpf_mptcp_close_subflow(skops, &src, &dst));
		src.family = AF_INET6;
		dst.family = AF_INET;
		put(PROBE_FAMILY_MISMATCH, bpf_mptcp_open_subflow(skops, &src, &dst));
		bpfpm_endp(&src, NULL);
		bpfpm_endp(&dst, NULL);
		put(PROBE_OK, bpf_mptcp_open_subflow(skops, &src, &dst));
		for (i = 0; i < 9; i++) {
			ret = bpf_mptcp_open_subflow(skops, &src, &dst);
			if (ret) {
				put(PROBE_QUEUE_FULL, ret);
				break;
			}
		}
		break;
	}
	return 1;
}

char _license[] SEC("license") = "GPL";
