// SPDX-License-Identifier: GPL-2.0
/* fullmesh: one subflow per (local address, remote address) pair.
 *
 * Local addresses: the `locals` map (filled by the loader, like in-kernel
 * "subflow" endpoints) kept up to date by LOCAL_ADDR events. Remote
 * addresses: per connection, the initial one plus those learned from
 * ADD_ADDR, forgotten on RM_ADDR. Every event that can add a pair re-runs
 * mesh(), which only opens pairs not requested yet, so repeated events are
 * harmless. The kernel enforces the subflow limit (-ENOSPC).
 * Only the active (client) side opens subflows.
 */
#include "bpfpm.h"

#define MAX_CONNS 4096

struct local_addr {
	__u32 used;
	struct bpfpm_addr a;
};

struct conn {
	struct bpfpm_addr remote[BPFPM_MAX_ADDRS];
	__u8 remote_used[BPFPM_MAX_ADDRS];
	__u8 remote_id[BPFPM_MAX_ADDRS];
	__u8 opened[BPFPM_MAX_ADDRS];	/* per remote slot: bitmask of local slots */
	struct bpfpm_addr init_local;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BPFPM_MAX_ADDRS);
	__type(key, __u32);
	__type(value, struct local_addr);
} locals SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_CONNS);
	__type(key, __u32);		/* local token */
	__type(value, struct conn);
} conns SEC(".maps");

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

static void mesh(struct bpf_sock_ops *skops, struct conn *c)
{
	struct bpf_mptcp_endp src, dst;
	struct local_addr *l;
	__u32 i, j;
	int ret;

	for (i = 0; i < BPFPM_MAX_ADDRS; i++) {
		l = bpf_map_lookup_elem(&locals, &i);
		if (!l || !l->used)
			continue;
		for (j = 0; j < BPFPM_MAX_ADDRS; j++) {
			if (!c->remote_used[j] || (c->opened[j] & (1 << i)))
				continue;
			if (c->remote[j].family != l->a.family || is_initial(c, &l->a, j))
				continue;
			bpfpm_endp(&src, &l->a);
			bpfpm_endp(&dst, &c->remote[j]);
			ret = bpf_mptcp_open_subflow(skops, &src, &dst);
			bpfpm_count(ret);
			if (ret == -BPFPM_ENOSPC)
				return;
			if (!ret)
				c->opened[j] |= 1 << i;
		}
	}
}

static void on_created(struct bpf_sock_ops *skops)
{
	struct conn c = {};
	__u32 token = skops->mptcp_loc_token;

	if (skops->args[0] || !skops->is_fullsock)	/* passive side */
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

	bpfpm_event_addr(skops, skops->args[1], &a);
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
	c->remote_id[free] = skops->args[0];
	c->remote_used[free] = 1;
	c->opened[free] = 0;
	mesh(skops, c);
}

static void on_rm_addr(struct bpf_sock_ops *skops, struct conn *c)
{
	__u32 j;

	/* the kernel itself closes the subflows to a removed address */
	for (j = 1; j < BPFPM_MAX_ADDRS; j++) {
		if (c->remote_used[j] && c->remote_id[j] == skops->args[0]) {
			c->remote_used[j] = 0;
			c->opened[j] = 0;
		}
	}
}

static void on_local_addr(struct bpf_sock_ops *skops, struct conn *c)
{
	struct bpf_mptcp_endp src, dst;
	struct bpfpm_addr a;
	struct local_addr *l;
	__u32 i, j, free = BPFPM_MAX_ADDRS, slot = BPFPM_MAX_ADDRS;

	bpfpm_event_addr(skops, skops->args[1], &a);
	if (!usable(&a))
		return;
	for (i = 0; i < BPFPM_MAX_ADDRS; i++) {
		l = bpf_map_lookup_elem(&locals, &i);
		if (!l)
			continue;
		if (l->used && bpfpm_addr_eq(&l->a, &a))
			slot = i;
		else if (!l->used && free == BPFPM_MAX_ADDRS)
			free = i;
	}

	if (skops->args[0]) {		/* added: one event per connection */
		if (slot == BPFPM_MAX_ADDRS) {
			struct local_addr nl = { .used = 1, .a = a };

			if (free == BPFPM_MAX_ADDRS)
				return;
			bpf_map_update_elem(&locals, &free, &nl, BPF_ANY);
		}
		mesh(skops, c);
		return;
	}

	/* removed: close what used it, then forget it */
	bpfpm_endp(&src, &a);
	bpfpm_endp(&dst, NULL);
	bpfpm_count(bpf_mptcp_close_subflow(skops, &src, &dst));
	if (slot < BPFPM_MAX_ADDRS) {
		struct local_addr gone = {};

		for (j = 0; j < BPFPM_MAX_ADDRS; j++)
			c->opened[j] &= ~(1 << slot);
		bpf_map_update_elem(&locals, &slot, &gone, BPF_ANY);
	}
}

SEC("sockops")
int fullmesh(struct bpf_sock_ops *skops)
{
	__u32 token = skops->mptcp_loc_token;
	struct conn *c;

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
	}
	return 1;
}

char _license[] SEC("license") = "GPL";
