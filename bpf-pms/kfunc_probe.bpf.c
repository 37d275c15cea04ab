// SPDX-License-Identifier: GPL-2.0
/* Test program: calls the path-manager kfuncs and helpers the wrong way, or
 * from unusual places, on purpose, and records what they return, so tests
 * can check every documented errno. config[0] selects the mode; rets[case]
 * holds the last return value + 1000 (0 means "never called").
 */
#include "bpfpm.h"

#define SOL_TCP		6
#define TCP_NODELAY	1

enum probe_case {
	PROBE_FROM_CREATED,		/* CREATED: queued (0), served later */
	PROBE_BAD_FAMILY,		/* family 99: -EINVAL */
	PROBE_FAMILY_MISMATCH,		/* v6 src, v4 dst: -EINVAL */
	PROBE_QUEUE_FULL,		/* requests in a row: -EBUSY or -ENOSPC */
	PROBE_PLAIN_TCP,		/* a non-MPTCP socket: -EINVAL */
	PROBE_NOT_BPF_PM,		/* MPTCP subflow, pm_type 0: -EOPNOTSUPP */
	PROBE_FALLBACK,			/* fallen back: -ENOTCONN */
	PROBE_OK,			/* a valid request: 0 */
	PROBE_CLOSE_BAD,		/* close_subflow with family 99: -EINVAL */
	PROBE_FROM_TCP_OP,		/* ACTIVE_ESTABLISHED, BPF PM: 0 */
	PROBE_MSK_SETSOCKOPT,		/* ctx->sk is the msk: -EOPNOTSUPP */
	PROBE_MSK_GETSOCKOPT,		/* same */
	PROBE_MSK_CB_FLAGS,		/* same */
	PROBE_TCP_OP_FIELDS,		/* mptcp_* fields on a TCP op: 0 */
	PROBE_REFUSE_OUTSIDE_JOIN,	/* bpf_mptcp_refuse_join(): -EINVAL */
	PROBE_CLOSE_ALL,		/* close with both families 0: -EINVAL */
	PROBE_REOPEN,			/* open from SUB_CLOSED at the limit: 0 */
	PROBE_ANNOUNCE_ANY,		/* announce with family 0: -EINVAL */
	__PROBE_MAX,
};

enum probe_mode {
	MODE_ERRNOS = 0,	/* all the error cases on one connection */
	MODE_FLOOD = 1,		/* queue 8 requests on ESTABLISHED, nothing else */
	MODE_BOGUS_SRC = 2,	/* open from an address the host does not have */
	MODE_CLOSE_INITIAL = 3,	/* open one, then close the initial subflow by port */
	MODE_SERVER_OPEN = 4,	/* the server side opens a subflow on LOCAL_ADDR */
	MODE_REOPEN = 5,	/* open one, close it, open another from SUB_CLOSED */
	MODE_ADDRS = 6,		/* announce, remove, set_backup: each failure */
};

BPFPM_CONFIG_MAP;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, __PROBE_MAX);
	__type(key, __u32);
	__type(value, __s64);
} rets SEC(".maps");

BPFPM_STATS_MAP

/* MODE_CLOSE_INITIAL: the initial subflow's local end */
struct bpfpm_addr initial_addr;
__u32 initial_port;
/* MODE_REOPEN: 1 once the extra subflow is being closed, 2 reopened */
__u32 reopen_state;

static __always_inline void put(__u32 c, int ret)
{
	__s64 *v = bpf_map_lookup_elem(&rets, &c);

	if (v)
		*v = ret + 1000;
}

static __always_inline bool taken(__u32 c)
{
	__s64 *v = bpf_map_lookup_elem(&rets, &c);

	return v && *v;
}

/* OR of every value seen: zero only if all were */
static __always_inline void put_or(__u32 c, __u32 bits)
{
	__s64 *v = bpf_map_lookup_elem(&rets, &c);

	if (v)
		*v = ((*v ? *v - 1000 : 0) | bits) + 1000;
}

static void on_closed(struct bpf_sock_ops *skops)
{
	struct bpf_mptcp_endp src, dst;
	int one = 1, v = 0;

	bpfpm_endp(&src, NULL);
	bpfpm_endp(&dst, NULL);
	if (skops->args[1] == 1) {	/* fell back: the msk is still there */
		put(PROBE_FALLBACK, bpf_mptcp_open_subflow(skops, &src, &dst));
		return;
	}
	/* closed: ctx->sk is the msk, not a tcp_sock */
	put(PROBE_MSK_SETSOCKOPT, bpf_setsockopt(skops, SOL_TCP, TCP_NODELAY, &one, sizeof(one)));
	put(PROBE_MSK_GETSOCKOPT, bpf_getsockopt(skops, SOL_TCP, TCP_NODELAY, &v, sizeof(v)));
	put(PROBE_MSK_CB_FLAGS, bpf_sock_ops_cb_flags_set(skops, 0));
}

/* MODE_ADDRS: what fails when served comes back as REQ_FAILED */
static void on_established_addrs(struct bpf_sock_ops *skops)
{
	struct bpf_mptcp_endp any, own, other;
	struct bpfpm_addr here;

	bpfpm_endp(&any, NULL);
	put(PROBE_ANNOUNCE_ANY, bpf_mptcp_announce_addr(skops, &any));
	bpfpm_sk_addr(skops, true, &here);
	bpfpm_endp(&own, &here);
	/* the initial address has id 0 already: -EINVAL */
	bpfpm_count(bpf_mptcp_announce_addr(skops, &own));
	bpfpm_endp(&other, NULL);
	other.family = AF_INET;
	other.addr[0] = bpf_htonl(0xc0000201);	/* 192.0.2.1, TEST-NET-1 */
	bpfpm_count(bpf_mptcp_announce_addr(skops, &other));
	/* announced already: -EEXIST */
	bpfpm_count(bpf_mptcp_announce_addr(skops, &other));
	/* never used nor announced: -ENOENT */
	other.addr[0] = bpf_htonl(0xc0000202);
	bpfpm_count(bpf_mptcp_remove_addr(skops, &other));
	/* the initial address to a peer address no subflow goes to: -EINVAL */
	bpfpm_count(bpf_mptcp_set_backup(skops, &own, &other, true));
}

static void on_established(struct bpf_sock_ops *skops, __u32 mode)
{
	struct bpf_mptcp_endp src, dst;
	__u32 i;
	int ret;

	bpfpm_endp(&src, NULL);
	bpfpm_endp(&dst, NULL);
	if (skops->args[1] || mode == MODE_SERVER_OPEN)
		return;
	switch (mode) {
	case MODE_FLOOD:
		for (i = 0; i < 8; i++)
			bpfpm_count(bpf_mptcp_open_subflow(skops, &src, &dst));
		return;
	case MODE_BOGUS_SRC:
		src.family = AF_INET;
		src.addr[0] = bpf_htonl(0xc0000201);	/* 192.0.2.1, TEST-NET-1 */
		bpfpm_count(bpf_mptcp_open_subflow(skops, &src, &dst));
		return;
	case MODE_REOPEN:
		bpfpm_count(bpf_mptcp_open_subflow(skops, &src, &dst));
		return;
	case MODE_CLOSE_INITIAL:
		bpfpm_sk_addr(skops, true, &initial_addr);
		initial_port = skops->local_port;
		bpfpm_count(bpf_mptcp_open_subflow(skops, &src, &dst));
		return;
	case MODE_ADDRS:
		on_established_addrs(skops);
		return;
	}

	put(PROBE_REFUSE_OUTSIDE_JOIN, bpf_mptcp_refuse_join(skops));
	put(PROBE_CLOSE_ALL, bpf_mptcp_close_subflow(skops, &src, &dst));
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
}

SEC("sockops")
int probe(struct bpf_sock_ops *skops)
{
	struct bpf_mptcp_endp src, dst;
	__u32 zero = 0, mode = MODE_ERRNOS, *cfg;
	int ret;

	cfg = bpf_map_lookup_elem(&config, &zero);
	if (cfg)
		mode = *cfg;
	bpfpm_endp(&src, NULL);
	bpfpm_endp(&dst, NULL);

	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		/* a plain TCP op (initial subflow, joins, TCP): mptcp_* read 0 */
		put_or(PROBE_TCP_OP_FIELDS, skops->mptcp_loc_token | skops->mptcp_flags |
		       BPFPM_CTX(skops->mptcp_local_addr[0]) |
		       BPFPM_CTX(skops->mptcp_remote_addr[3]));
		/* once: the joins it opens are TCP connections, with this op too */
		if (mode != MODE_ERRNOS || taken(PROBE_FROM_TCP_OP))
			break;
		ret = bpf_mptcp_open_subflow(skops, &src, &dst);
		put(ret == -BPFPM_EINVAL ? PROBE_PLAIN_TCP :
		    ret == -BPFPM_EOPNOTSUPP ? PROBE_NOT_BPF_PM : PROBE_FROM_TCP_OP, ret);
		break;
	case BPF_SOCK_OPS_MPTCP_CREATED_CB:
		if (!skops->args[1] && mode == MODE_ERRNOS)
			put(PROBE_FROM_CREATED, bpf_mptcp_open_subflow(skops, &src, &dst));
		break;
	case BPF_SOCK_OPS_MPTCP_CLOSED_CB:
		on_closed(skops);
		break;
	case BPF_SOCK_OPS_MPTCP_ESTABLISHED_CB:
		on_established(skops, mode);
		break;
	case BPF_SOCK_OPS_MPTCP_LOCAL_ADDR_CB:
		/* after accept(): an msk in the accept queue has no socket to
		 * create subflows with (-EINVAL, seen as REQ_FAILED)
		 */
		if (mode == MODE_SERVER_OPEN && (skops->mptcp_flags & BPF_MPTCP_F_SERVER_SIDE))
			bpfpm_count(bpf_mptcp_open_subflow(skops, &src, &dst));
		break;
	case BPF_SOCK_OPS_MPTCP_SUB_ESTABLISHED_CB:
		if (skops->mptcp_flags & BPF_MPTCP_F_SERVER_SIDE)
			break;
		if (mode == MODE_CLOSE_INITIAL && initial_port) {
			bpfpm_endp(&src, &initial_addr);
			src.port = bpf_htons(initial_port);
			bpfpm_count(bpf_mptcp_close_subflow(skops, &src, &dst));
			initial_port = 0;
		} else if (mode == MODE_REOPEN && !reopen_state) {
			struct bpfpm_addr here;

			bpfpm_sk_addr(skops, true, &here);
			bpfpm_endp(&src, &here);
			src.port = bpf_htons(skops->local_port);
			reopen_state = 1;
			bpfpm_count(bpf_mptcp_close_subflow(skops, &src, &dst));
		}
		break;
	case BPF_SOCK_OPS_MPTCP_SUB_CLOSED_CB:
		if (mode == MODE_REOPEN && reopen_state == 1 && (skops->args[3] >> 8) &&
		    !(skops->mptcp_flags & BPF_MPTCP_F_SERVER_SIDE)) {
			reopen_state = 2;
			put(PROBE_REOPEN, bpf_mptcp_open_subflow(skops, &src, &dst));
		}
		break;
	}
	return 1;
}

char _license[] SEC("license") = "GPL";
