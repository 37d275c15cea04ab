// SPDX-License-Identifier: GPL-2.0
/* bench_open: on ESTABLISHED, note the time, then ask for one more
 * subflow over the same address pair (like ndiffports 2). `make bench`
 * puts that time next to the new subflow's SYN (bench_trace): the delay
 * the kfunc's deferral to the msk worker adds.
 */
#include "bpfpm.h"

/* local token -> bpf_ktime_get_ns() just before bpf_mptcp_open_subflow() */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u64);
} calls SEC(".maps");

BPFPM_STATS_MAP

SEC("sockops")
int bench_open(struct bpf_sock_ops *skops)
{
	struct bpf_mptcp_endp src, dst;
	__u32 token;
	__u64 now;

	if (skops->op != BPF_SOCK_OPS_MPTCP_ESTABLISHED_CB || skops->args[1])
		return 1;
	token = skops->mptcp_loc_token;
	bpfpm_endp(&src, NULL);
	bpfpm_endp(&dst, NULL);
	now = bpf_ktime_get_ns();
	bpf_map_update_elem(&calls, &token, &now, BPF_ANY);
	bpfpm_count(bpf_mptcp_open_subflow(skops, &src, &dst));
	return 1;
}

char _license[] SEC("license") = "GPL";
