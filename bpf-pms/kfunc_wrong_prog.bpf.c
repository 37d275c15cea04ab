// SPDX-License-Identifier: GPL-2.0
/* Test program that must never load: a cgroup_skb program handing its own
 * context to a path-manager kfunc. The kfuncs are registered for sock_ops
 * programs; on 7.2 that program type shares the kfunc hook of every cgroup
 * program, and what keeps the others out is the context argument's type.
 */
#include "bpfpm.h"

SEC("cgroup_skb/egress")
int wrong_prog(struct __sk_buff *skb)
{
	struct bpf_mptcp_endp any = {};

	bpf_mptcp_open_subflow((struct bpf_sock_ops *)skb, &any, &any);
	return 1;
}

char _license[] SEC("license") = "GPL";
