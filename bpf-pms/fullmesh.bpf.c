// SPDX-License-Identifier: GPL-2.0
/* fullmesh: one subflow per (local address, remote address) pair.
 *
 * Local addresses: the `locals` map (filled by the loader) kept up to date
 * by LOCAL_ADDR events (endpoints added or removed). Remote addresses: per
 * connection, the initial one plus those learned from ADD_ADDR, forgotten
 * on RM_ADDR. Every event that can add a pair re-runs mesh(), which only
 * opens pairs not requested yet, so repeated events are harmless. A pair
 * whose subflow failed before it was established (REQ_FAILED of an open,
 * or SUB_CLOSED of a join that never completed) is tried again, at most
 * MAX_TRIES times per connection. The kernel enforces the subflow limit
 * (-ENOSPC). Only the active (client) side opens subflows.
 *
 * The passive (server) side announces the addresses of the `signals` map
 * (of the connection's family, but its own) once the connection is
 * established, then follows LOCAL_ADDR: an endpoint added is announced, an
 * endpoint removed is withdrawn (RM_ADDR, its subflows closed). Both sides
 * may run this one program: the maps are per side.
 */
#include "bpfpm.h"

#define MAX_TRIES 3	/* retries of one pair, per connection */

struct local_addr {
	__u32 used;
	struct bpfpm_addr a;
};

struct conn {
	struct bpfpm_addr remote[BPFPM_MAX_ADDRS];
	__u8 remote_used[BPFPM_MAX_ADDRS];
	__u8 remote_id[BPFPM_MAX_ADDRS];
	__u8 opened[BPFPM_MAX_ADDRS];	/* per remote slot: bitmask of local slots */
	__u8 tries[BPFPM_MAX_ADDRS][BPFPM_MAX_ADDRS];	/* [remote][local] */
	struct bpfpm_addr init_local;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BPFPM_MAX_ADDRS);
	__type(key, __u32);
	__type(value, struct local_addr);
} locals SEC(".maps");

BPFPM_CONNS_MAP(struct conn);

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BPFPM_MAX_ADDRS);
	__type(key, __u32);
	__type(value, struct local_addr);
} signals SEC(".maps");

/* [0] pairs tried again, [1] pairs given up after MAX_TRIES */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} retries SEC(".maps");

BPFPM_STATS_MAP

static __always_inline bool usable(const struct bpfpm_addr *a)
{
	if (a->family == AF_INET)
		return a->addr[0] != 0;
	if (a->family != AF_INET6)
		return false;
	/* link-local (fe80::/10) addresses never make a useful subflow */
	return (a->addr[0] & bpf_htonl(0xffc00000)) != bpf_htonl(0xfe800000);
}

static __always_inline bool is_initial(const struct conn *c, const struct bpfpm_addr *l, __u32 r)
{
	return r == 0 && bpfpm_addr_eq(l, &c->init_local);
}

struct mesh_ctx {
	struct bpf_sock_ops *skops;
	struct conn *c;
};

/* One local address against every remote one; a bpf_loop() callback, so
 * that the verifier walks 8 pairs, not the whole 8 x 8 mesh at once.
 */
static long mesh_local(__u32 i, void *data)
{
	struct mesh_ctx *m = data;
	struct bpf_mptcp_endp src, dst;
	struct conn *c = m->c;
	struct local_addr *l;
	__u32 j;
	int ret;

	l = bpf_map_lookup_elem(&locals, &i);
	if (!l || !l->used || i >= BPFPM_MAX_ADDRS)
		return 0;
	for (j = 0; j < BPFPM_MAX_ADDRS; j++) {
		if (!c->remote_used[j] || (c->opened[j] & (1 << i)))
			continue;
		if (c->remote[j].family != l->a.family || is_initial(c, &l->a, j))
			continue;
		bpfpm_endp(&src, &l->a);
		bpfpm_endp(&dst, &c->remote[j]);
		ret = bpf_mptcp_open_subflow(m->skops, &src, &dst);
		bpfpm_count(ret);
		if (ret == -BPFPM_ENOSPC)
			return 1;	/* limit reached: stop */
		if (!ret)
			c->opened[j] |= 1 << i;
	}
	return 0;
}

static void mesh(struct bpf_sock_ops *skops, struct conn *c)
{
	struct mesh_ctx m = { .skops = skops, .c = c };

	bpf_loop(BPFPM_MAX_ADDRS, mesh_local, &m, 0);
}

/* noinline: its 268-byte struct conn stays out of the other call chains' stack */
static __noinline void on_created(struct bpf_sock_ops *skops)
{
	struct conn c = {};
	__u32 token = skops->mptcp_loc_token;

	if (skops->args[1] || !skops->is_fullsock)	/* passive side */
		return;
	bpfpm_sk_addr(skops, false, &c.remote[0]);
	bpfpm_sk_addr(skops, true, &c.init_local);
	c.remote_used[0] = 1;
	bpf_map_update_elem(&conns, &token, &c, BPF_ANY);
}

static void on_add_addr(struct bpf_sock_ops *skops, struct conn *c)
{
	struct bpfpm_addr a;
	__u32 j, free = BPFPM_MAX_ADDRS;

	bpfpm_event_addr(skops, skops->args[2], false, &a);
	if (!usable(&a))
		return;
	for (j = 0; j < BPFPM_MAX_ADDRS; j++) {
		if (c->remote_used[j] && bpfpm_addr_eq(&c->remote[j], &a))
			return;		/* known: nothing new to open */
		if (!c->remote_used[j] && free == BPFPM_MAX_ADDRS)
			free = j;
	}
	if (free >= BPFPM_MAX_ADDRS)
		return;
	c->remote[free] = a;
	c->remote_id[free] = skops->args[1];
	c->remote_used[free] = 1;
	c->opened[free] = 0;
	mesh(skops, c);
}

static void on_rm_addr(struct bpf_sock_ops *skops, struct conn *c)
{
	__u32 j;

	/* the kernel itself closes the subflows to a removed address */
	for (j = 1; j < BPFPM_MAX_ADDRS; j++) {
		if (c->remote_used[j] && c->remote_id[j] == skops->args[1]) {
			c->remote_used[j] = 0;
			c->opened[j] = 0;
		}
	}
}

struct find_ctx {
	struct bpfpm_addr a;
	__u32 slot;	/* where `a` is, or BPFPM_MAX_ADDRS */
	__u32 free;	/* first unused slot, or BPFPM_MAX_ADDRS */
};

static long find_local(__u32 i, void *data)
{
	struct find_ctx *f = data;
	struct local_addr *l = bpf_map_lookup_elem(&locals, &i);

	if (!l)
		return 1;
	if (l->used && bpfpm_addr_eq(&l->a, &f->a))
		f->slot = i;
	else if (!l->used && f->free == BPFPM_MAX_ADDRS)
		f->free = i;
	return 0;
}

static void on_local_addr(struct bpf_sock_ops *skops, struct conn *c)
{
	struct find_ctx f = { .slot = BPFPM_MAX_ADDRS, .free = BPFPM_MAX_ADDRS };
	struct bpf_mptcp_endp src, dst;
	__u32 j, slot;

	bpfpm_event_addr(skops, skops->args[2], true, &f.a);
	if (!usable(&f.a))
		return;
	bpf_loop(BPFPM_MAX_ADDRS, find_local, &f, 0);

	if (skops->args[1]) {		/* added: one event per connection */
		if (f.slot == BPFPM_MAX_ADDRS) {
			struct local_addr nl = { .used = 1, .a = f.a };

			if (f.free >= BPFPM_MAX_ADDRS)
				return;
			bpf_map_update_elem(&locals, &f.free, &nl, BPF_ANY);
		}
		mesh(skops, c);
		return;
	}

	/* removed: close what used it, then forget it */
	bpfpm_endp(&src, &f.a);
	bpfpm_endp(&dst, NULL);
	bpfpm_count(bpf_mptcp_close_subflow(skops, &src, &dst));
	slot = f.slot;
	if (slot < BPFPM_MAX_ADDRS) {
		struct local_addr gone = {};

		for (j = 0; j < BPFPM_MAX_ADDRS; j++)
			c->opened[j] &= ~(1 << slot);
		bpf_map_update_elem(&locals, &slot, &gone, BPF_ANY);
	}
}

/* The subflow local -> remote failed before it was established. */
static void on_failed(struct bpf_sock_ops *skops, struct conn *c,
		      const struct bpfpm_addr *local, const struct bpfpm_addr *remote)
{
	struct find_ctx f = { .a = *local, .slot = BPFPM_MAX_ADDRS,
			      .free = BPFPM_MAX_ADDRS };
	__u32 i, j;

	bpf_loop(BPFPM_MAX_ADDRS, find_local, &f, 0);
	i = f.slot;
	for (j = 0; j < BPFPM_MAX_ADDRS; j++) {
		if (c->remote_used[j] && bpfpm_addr_eq(&c->remote[j], remote))
			break;
	}
	if (i >= BPFPM_MAX_ADDRS || j >= BPFPM_MAX_ADDRS)
		return;
	/* bounds the verifier can see at the array accesses below */
	asm volatile("" : "+r"(i), "+r"(j));
	i &= BPFPM_MAX_ADDRS - 1;
	j &= BPFPM_MAX_ADDRS - 1;
	if (!(c->opened[j] & (1 << i)))
		return;		/* not a pair this program opened */

	c->opened[j] &= ~(1 << i);
	if (c->tries[j][i] >= MAX_TRIES) {
		c->opened[j] |= 1 << i;		/* given up: leave it */
		bpfpm_bump(&retries, 1);
		return;
	}
	c->tries[j][i]++;
	bpfpm_bump(&retries, 0);
	mesh(skops, c);
}

static void on_sub_closed(struct bpf_sock_ops *skops, struct conn *c)
{
	struct bpfpm_addr local, remote;

	/* was established: closed on purpose, or by the peer, not a failure */
	if ((skops->args[3] >> 8) || !skops->is_fullsock)
		return;
	bpfpm_sk_addr(skops, true, &local);
	bpfpm_sk_addr(skops, false, &remote);
	on_failed(skops, c, &local, &remote);
}

static void on_req_failed(struct bpf_sock_ops *skops, struct conn *c)
{
	struct bpfpm_addr local, remote;

	if (skops->args[3] != BPF_MPTCP_REQ_OPEN)
		return;

	bpfpm_event_addr(skops, skops->args[2], true, &local);
	bpfpm_event_addr(skops, skops->args[2], false, &remote);
	on_failed(skops, c, &local, &remote);
}

struct announce_ctx {
	struct bpf_sock_ops *skops;
	struct bpfpm_addr own;	/* the connection's local address */
};

/* passive side: announce signals[i] if it is not the connection's own */
static long announce_one(__u32 i, void *data)
{
	struct announce_ctx *an = data;
	struct bpf_mptcp_endp e;
	struct local_addr *l;

	l = bpf_map_lookup_elem(&signals, &i);
	if (!l)
		return 1;
	if (!l->used || !usable(&l->a) || l->a.family != an->own.family ||
	    bpfpm_addr_eq(&l->a, &an->own))
		return 0;
	bpfpm_endp(&e, &l->a);
	bpfpm_count(bpf_mptcp_announce_addr(an->skops, &e));
	return 0;
}

/* passive side: an endpoint added is announced, one removed withdrawn */
static void on_server_local_addr(struct bpf_sock_ops *skops)
{
	struct bpf_mptcp_endp e;
	struct bpfpm_addr a;

	bpfpm_event_addr(skops, skops->args[2], true, &a);
	if (!usable(&a) || a.family != skops->family)
		return;
	bpfpm_endp(&e, &a);
	if (BPFPM_CTX(skops->args[1]))
		bpfpm_count(bpf_mptcp_announce_addr(skops, &e));
	else
		bpfpm_count(bpf_mptcp_remove_addr(skops, &e));
}

static int on_server(struct bpf_sock_ops *skops)
{
	struct announce_ctx an = { .skops = skops };

	if (skops->op == BPF_SOCK_OPS_MPTCP_ESTABLISHED_CB && skops->is_fullsock) {
		bpfpm_sk_addr(skops, true, &an.own);
		bpf_loop(BPFPM_MAX_ADDRS, announce_one, &an, 0);
	} else if (skops->op == BPF_SOCK_OPS_MPTCP_LOCAL_ADDR_CB)
		on_server_local_addr(skops);
	return 1;
}

SEC("sockops")
int fullmesh(struct bpf_sock_ops *skops)
{
	__u32 token = skops->mptcp_loc_token;
	struct conn *c;

	if (skops->op >= BPF_SOCK_OPS_MPTCP_CREATED_CB &&
	    (skops->mptcp_flags & BPF_MPTCP_F_SERVER_SIDE))
		return on_server(skops);

	switch (skops->op) {
	case BPF_SOCK_OPS_MPTCP_CREATED_CB:
		on_created(skops);
		return 1;
	case BPF_SOCK_OPS_MPTCP_CLOSED_CB:
		bpf_map_delete_elem(&conns, &token);
		return 1;
	case BPF_SOCK_OPS_MPTCP_ESTABLISHED_CB:
	case BPF_SOCK_OPS_MPTCP_ADD_ADDR_CB:
	case BPF_SOCK_OPS_MPTCP_RM_ADDR_CB:
	case BPF_SOCK_OPS_MPTCP_LOCAL_ADDR_CB:
	case BPF_SOCK_OPS_MPTCP_SUB_CLOSED_CB:
	case BPF_SOCK_OPS_MPTCP_REQ_FAILED_CB:
		break;
	default:
		return 1;
	}

	c = bpf_map_lookup_elem(&conns, &token);
	if (!c)
		return 1;	/* passive side, or not ours */

	switch (skops->op) {
	case BPF_SOCK_OPS_MPTCP_ESTABLISHED_CB:
		mesh(skops, c);
		break;
	case BPF_SOCK_OPS_MPTCP_ADD_ADDR_CB:
		on_add_addr(skops, c);
		break;
	case BPF_SOCK_OPS_MPTCP_RM_ADDR_CB:
		on_rm_addr(skops, c);
		break;
	case BPF_SOCK_OPS_MPTCP_LOCAL_ADDR_CB:
		on_local_addr(skops, c);
		break;
	case BPF_SOCK_OPS_MPTCP_SUB_CLOSED_CB:
		on_sub_closed(skops, c);
		break;
	case BPF_SOCK_OPS_MPTCP_REQ_FAILED_CB:
		on_req_failed(skops, c);
		break;
	}
	return 1;
}

char _license[] SEC("license") = "GPL";
