// SPDX-License-Identifier: GPL-2.0
/* bench_trace: when each subflow of an active-side MPTCP connection sent
 * its SYN and when it became established, keyed by the connection's local
 * token. `make bench` reads it to time subflow set-up the same way for
 * every path manager: the in-kernel one, a BPF one or a userspace daemon.
 *
 * A raw tracepoint, not fentry: with CONFIG_JUMP_LABEL off nothing patches
 * kernel text when it is attached (see configs/base.config).
 */
#include "bpfpm.h"
#include <bpf/bpf_tracing.h>

#define BENCH_SUBFLOWS	8

struct times {
	__u64 syn[BENCH_SUBFLOWS];	/* CLOSE -> SYN_SENT, in order */
	__u64 est[BENCH_SUBFLOWS];	/* SYN_SENT -> ESTABLISHED, in order */
	__u32 nsyn;
	__u32 nest;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct times);
} times SEC(".maps");

/* [0]: inode of the only netns traced (0: all) */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} netns SEC(".maps");

/* [0] connections not traced because the map was full */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} dropped SEC(".maps");

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(bench_state, struct sock *sk, int oldstate, int newstate)
{
	struct mptcp_subflow_context *sf;
	struct times *t, zero_times = {};
	__u32 zero = 0, *ino, token, i;
	struct tcp_sock *tp;
	struct sock *msk;
	__u64 now;

	if (!(oldstate == BPF_TCP_CLOSE && newstate == BPF_TCP_SYN_SENT) &&
	    !(oldstate == BPF_TCP_SYN_SENT && newstate == BPF_TCP_ESTABLISHED))
		return 0;
	ino = bpf_map_lookup_elem(&netns, &zero);
	if (ino && *ino && BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum) != *ino)
		return 0;
	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp || !BPF_CORE_READ_BITFIELD_PROBED(tp, is_mptcp))
		return 0;
	sf = BPF_CORE_READ(tp, inet_conn.icsk_ulp_data);
	msk = BPF_CORE_READ(sf, conn);
	if (!msk)
		return 0;
	token = BPF_CORE_READ((struct mptcp_sock *)msk, token);
	now = bpf_ktime_get_ns();

	t = bpf_map_lookup_elem(&times, &token);
	if (!t) {
		if (newstate != BPF_TCP_SYN_SENT)
			return 0;	/* traced from its first SYN only */
		bpf_map_update_elem(&times, &token, &zero_times, BPF_NOEXIST);
		t = bpf_map_lookup_elem(&times, &token);
		if (!t) {
			bpfpm_bump(&dropped, 0);
			return 0;
		}
	}
	if (newstate == BPF_TCP_SYN_SENT) {
		i = __sync_fetch_and_add(&t->nsyn, 1);
		if (i < BENCH_SUBFLOWS)
			t->syn[i] = now;
	} else {
		i = __sync_fetch_and_add(&t->nest, 1);
		if (i < BENCH_SUBFLOWS)
			t->est[i] = now;
	}
	return 0;
}

char _license[] SEC("license") = "GPL";
