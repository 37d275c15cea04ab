// SPDX-License-Identifier: GPL-2.0
/* ndiffports: once a connection is fully established, open N-1 more
 * subflows over the same address pair; the kernel picks new source ports.
 * N comes from config[0] (default 2) and is bounded by the subflow limit,
 * which the kernel enforces (-ENOSPC, counted in pm_results).
 */
#include "bpfpm.h"

#define NDIFFPORTS_DEFAULT 2
#define NDIFFPORTS_MAX	   9	/* initial subflow + the kernel's 8 */

BPFPM_CONFIG_MAP;

BPFPM_STATS_MAP

SEC("sockops")
int ndiffports(struct bpf_sock_ops *skops)
{
	struct bpf_mptcp_endp src, dst;
	__u32 zero = 0, n = NDIFFPORTS_DEFAULT, *cfg, i;

	if (skops->op != BPF_SOCK_OPS_MPTCP_ESTABLISHED_CB)
		return 1;
	if (skops->args[1])	/* server side: the client opens subflows */
		return 1;

	cfg = bpf_map_lookup_elem(&config, &zero);
	if (cfg && *cfg)
		n = *cfg;
	if (n > NDIFFPORTS_MAX)
		n = NDIFFPORTS_MAX;

	bpfpm_endp(&src, NULL);		/* existing local address, new port */
	bpfpm_endp(&dst, NULL);		/* the connection's remote address+port */
	for (i = 1; i < NDIFFPORTS_MAX; i++) {
		if (i >= n)
			break;
		bpfpm_count(bpf_mptcp_open_subflow(skops, &src, &dst));
	}
	return 1;
}

char _license[] SEC("license") = "GPL";
