// SPDX-License-Identifier: GPL-2.0
/* backup: one subflow per entry of the `locals` map, from its local
 * address to its remote one (family 0: the connection's). The entries
 * flagged backup open theirs as backup (MP_JOIN with the B bit): the
 * kernel's scheduler sends over them only when no other subflow can send.
 *
 * When the last regular subflow closes, the backup ones become regular
 * (MP_PRIO, backup 0); when a regular one is established again, they go
 * back to backup (MP_PRIO, backup 1). LOCAL_ADDR of a regular address
 * closes its subflows (removed) or opens one again (added). Only the active
 * (client) side acts.
 */
#include "bpfpm.h"

struct backup_addr {
	__u32 used;
	__u32 backup;
	struct bpfpm_addr a;
	struct bpfpm_addr dst;
};

struct conn {
	__u32 regular;		/* regular subflows established, initial included */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BPFPM_MAX_ADDRS);
	__type(key, __u32);
	__type(value, struct backup_addr);
} locals SEC(".maps");

BPFPM_CONNS_MAP(struct conn);

BPFPM_STATS_MAP

struct walk {
	struct bpf_sock_ops *skops;
	struct bpfpm_addr skip;	/* opening: the initial address */
	struct bpfpm_addr find;	/* lookup: the address looked for */
	__u32 open;		/* each_local: open subflows, or mark them */
	__u32 mark;		/* marking: the backup flag to set */
	__u32 slot;		/* lookup: where `find` is, or BPFPM_MAX_ADDRS */
};

/* Opening: a subflow from locals[i], as backup if flagged. Marking:
 * MP_PRIO with backup = w->mark on the subflows of a backup address.
 */
static long each_local(__u32 i, void *data)
{
	struct walk *w = data;
	struct bpf_mptcp_endp src, dst;
	struct backup_addr *l;

	l = bpf_map_lookup_elem(&locals, &i);
	if (!l)
		return 1;
	if (!l->used)
		return 0;
	bpfpm_endp(&src, &l->a);
	if (!w->open) {
		bpfpm_endp(&dst, NULL);
		if (l->backup)
			bpfpm_count(bpf_mptcp_set_backup(w->skops, &src, &dst, w->mark));
		return 0;
	}
	if (bpfpm_addr_eq(&l->a, &w->skip) || l->a.family != w->skip.family)
		return 0;
	bpfpm_endp(&dst, l->dst.family ? &l->dst : NULL);
	if (l->backup)
		bpfpm_count(bpf_mptcp_set_backup(w->skops, &src, &dst, true));
	bpfpm_count(bpf_mptcp_open_subflow(w->skops, &src, &dst));
	return 0;
}

static long find_one(__u32 i, void *data)
{
	struct walk *w = data;
	struct backup_addr *l;

	l = bpf_map_lookup_elem(&locals, &i);
	if (!l)
		return 1;
	if (l->used && bpfpm_addr_eq(&l->a, &w->find)) {
		w->slot = i;
		return 1;
	}
	return 0;
}

/* the entry of w->find, or NULL */
static __always_inline struct backup_addr *lookup(struct walk *w)
{
	w->slot = BPFPM_MAX_ADDRS;
	bpf_loop(BPFPM_MAX_ADDRS, find_one, w, 0);
	return w->slot < BPFPM_MAX_ADDRS ? bpf_map_lookup_elem(&locals, &w->slot) : NULL;
}

static __always_inline void mark(struct walk *w, __u32 backup)
{
	w->open = 0;
	w->mark = backup;
	bpf_loop(BPFPM_MAX_ADDRS, each_local, w, 0);
}

/* a regular address removed: close its subflows; added: open it again */
static void on_local_addr(struct walk *w)
{
	struct bpf_sock_ops *skops = w->skops;
	struct bpf_mptcp_endp src, dst;
	struct backup_addr *l;
	__u32 added;

	bpfpm_event_addr(skops, skops->args[2], true, &w->find);
	l = lookup(w);
	if (!l || l->backup)
		return;
	bpfpm_endp(&src, &w->find);
	added = BPFPM_CTX(skops->args[1]);
	bpfpm_endp(&dst, added && l->dst.family ? &l->dst : NULL);
	if (added)
		bpfpm_count(bpf_mptcp_open_subflow(skops, &src, &dst));
	else
		bpfpm_count(bpf_mptcp_close_subflow(skops, &src, &dst));
}

SEC("sockops")
int backup(struct bpf_sock_ops *skops)
{
	__u32 token = skops->mptcp_loc_token;
	struct walk w = { .skops = skops };
	struct conn *c, nc = { .regular = 1 };
	struct backup_addr *l;

	if (skops->op < BPF_SOCK_OPS_MPTCP_CREATED_CB ||
	    (skops->mptcp_flags & BPF_MPTCP_F_SERVER_SIDE))
		return 1;
	if (skops->op == BPF_SOCK_OPS_MPTCP_CREATED_CB) {
		bpf_map_update_elem(&conns, &token, &nc, BPF_ANY);
		return 1;
	}
	if (skops->op == BPF_SOCK_OPS_MPTCP_CLOSED_CB) {
		bpf_map_delete_elem(&conns, &token);
		return 1;
	}
	c = bpf_map_lookup_elem(&conns, &token);
	if (!c)
		return 1;

	switch (skops->op) {
	case BPF_SOCK_OPS_MPTCP_ESTABLISHED_CB:
		if (skops->is_fullsock) {
			bpfpm_sk_addr(skops, true, &w.skip);
			w.open = 1;
			bpf_loop(BPFPM_MAX_ADDRS, each_local, &w, 0);
		}
		break;
	case BPF_SOCK_OPS_MPTCP_SUB_ESTABLISHED_CB:
		if (skops->args[3] & 1)		/* a backup one */
			break;
		if (c->regular++ == 0)
			mark(&w, 1);
		break;
	case BPF_SOCK_OPS_MPTCP_SUB_CLOSED_CB:
		/* an established regular subflow (the msk: orphaned, skipped) */
		if (!((skops->args[3] >> 8) & 1) || !skops->is_fullsock)
			break;
		bpfpm_sk_addr(skops, true, &w.find);
		l = lookup(&w);
		if ((l && l->backup) || !c->regular)
			break;
		if (--c->regular == 0)
			mark(&w, 0);
		break;
	case BPF_SOCK_OPS_MPTCP_LOCAL_ADDR_CB:
		on_local_addr(&w);
		break;
	}
	return 1;
}

char _license[] SEC("license") = "GPL";
