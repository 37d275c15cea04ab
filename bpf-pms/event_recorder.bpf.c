// SPDX-License-Identifier: GPL-2.0
/* Records every MPTCP sock_ops callback with its arguments and the mptcp_*
 * context fields, for the tests that prove each hook fires exactly once
 * with the right values. It opens no subflow.
 */
#include "bpfpm.h"

#define MAX_EVENTS 2048

struct event {
	__u32 seq;
	__u32 op;
	__u32 args[3];
	__u32 is_fullsock;
	__u32 family;
	__u32 local_ip[4];
	__u32 remote_ip[4];
	__u32 local_port;
	__u32 remote_port;
	__u32 loc_token;
	__u32 rem_token;
	__u32 flags;
	__u32 subflow_id;
	__u32 local_addr[4];
	__u32 remote_addr[4];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_EVENTS);
	__type(key, __u32);
	__type(value, struct event);
} events SEC(".maps");

/* [0] = events recorded (may exceed MAX_EVENTS: then the log is truncated),
 * [1 + op - BPF_SOCK_OPS_MPTCP_CREATED_CB] = per-op totals. Ops are stored
 * as that index too, so that user space needs no op value.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* Key 0: non-zero refuses every join (bpf_mptcp_refuse_join() on JOIN_REQ). */
BPFPM_CONFIG_MAP;

static __always_inline void count(__u32 slot, __u32 *seq)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &slot);

	if (v) {
		__u64 old = __sync_fetch_and_add(v, 1);

		if (seq)
			*seq = old;
	}
}

SEC("sockops")
int record(struct bpf_sock_ops *skops)
{
	__u32 op = skops->op, seq = MAX_EVENTS, zero = 0, *cfg;
	struct event *e;

	if (op < BPF_SOCK_OPS_MPTCP_CREATED_CB || op > BPF_SOCK_OPS_MPTCP_REQ_FAILED_CB)
		return 1;

	if (op == BPF_SOCK_OPS_MPTCP_JOIN_REQ_CB) {
		cfg = bpf_map_lookup_elem(&config, &zero);
		if (cfg && *cfg)
			bpf_mptcp_refuse_join(skops);
	}

	count(0, &seq);
	count(1 + op - BPF_SOCK_OPS_MPTCP_CREATED_CB, NULL);
	if (seq >= MAX_EVENTS)
		return 1;
	e = bpf_map_lookup_elem(&events, &seq);
	if (!e)
		return 1;

	e->seq = seq + 1;
	e->op = op - BPF_SOCK_OPS_MPTCP_CREATED_CB;
	e->args[0] = skops->args[1];	/* the MPTCP ops' args[1..3] */
	e->args[1] = skops->args[2];
	e->args[2] = skops->args[3];
	e->is_fullsock = skops->is_fullsock;
	e->family = skops->family;
	if (e->family == AF_INET) {
		e->local_ip[0] = BPFPM_CTX(skops->local_ip4);
		e->remote_ip[0] = BPFPM_CTX(skops->remote_ip4);
	} else if (e->family == AF_INET6) {
		e->local_ip[0] = BPFPM_CTX(skops->local_ip6[0]);
		e->local_ip[1] = BPFPM_CTX(skops->local_ip6[1]);
		e->local_ip[2] = BPFPM_CTX(skops->local_ip6[2]);
		e->local_ip[3] = BPFPM_CTX(skops->local_ip6[3]);
		e->remote_ip[0] = BPFPM_CTX(skops->remote_ip6[0]);
		e->remote_ip[1] = BPFPM_CTX(skops->remote_ip6[1]);
		e->remote_ip[2] = BPFPM_CTX(skops->remote_ip6[2]);
		e->remote_ip[3] = BPFPM_CTX(skops->remote_ip6[3]);
	}
	e->local_port = skops->local_port;
	e->remote_port = skops->remote_port;	/* be16 in the upper half */
	e->loc_token = skops->mptcp_loc_token;
	e->rem_token = skops->mptcp_rem_token;
	e->flags = skops->mptcp_flags;
	e->subflow_id = skops->mptcp_subflow_id;
	e->local_addr[0] = skops->mptcp_local_addr[0];
	e->local_addr[1] = skops->mptcp_local_addr[1];
	e->local_addr[2] = skops->mptcp_local_addr[2];
	e->local_addr[3] = skops->mptcp_local_addr[3];
	e->remote_addr[0] = skops->mptcp_remote_addr[0];
	e->remote_addr[1] = skops->mptcp_remote_addr[1];
	e->remote_addr[2] = skops->mptcp_remote_addr[2];
	e->remote_addr[3] = skops->mptcp_remote_addr[3];
	return 1;
}

char _license[] SEC("license") = "GPL";
