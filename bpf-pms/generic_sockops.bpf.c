// SPDX-License-Identifier: GPL-2.0
/* Not a path manager: stands for the many existing sock_ops programs that
 * write ctx->reply on every op they get (samples/bpf/tcp_*_kern.c style),
 * here -1. Attached beside a path manager, it must change nothing for
 * MPTCP: no op of the path-manager interface reads reply.
 */
#include "bpfpm.h"

/* [0] ops seen */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} seen SEC(".maps");

SEC("sockops")
int generic(struct bpf_sock_ops *skops)
{
	bpfpm_bump(&seen, 0);
	skops->reply = -1;
	return 1;
}

char _license[] SEC("license") = "GPL";
