// SPDX-License-Identifier: GPL-2.0
/* policy: subflows never touch the denied prefixes.
 *
 * Passive side: an incoming MP_JOIN whose source or destination address is
 * in a denied prefix is refused (bpf_mptcp_refuse_join(): the kernel resets
 * it with MPTCP_RST_EPROHIBIT). Active side: an announced address is joined unless
 * it is denied. A netlink PM can only choose which subflows to create; it
 * cannot refuse the peer's.
 */
#include "bpfpm.h"

struct prefix {
	__u32 used;
	struct bpfpm_addr a;
	__u32 plen;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BPFPM_MAX_ADDRS);
	__type(key, __u32);
	__type(value, struct prefix);
} deny SEC(".maps");

/* [0] joins refused, [1] joins accepted, [2] announced addresses skipped */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} decisions SEC(".maps");

BPFPM_STATS_MAP

static __always_inline __u32 mask(__u32 plen, __u32 word)
{
	__u32 bits = plen > word * 32 ? plen - word * 32 : 0;

	if (bits >= 32)
		return 0xffffffff;
	if (!bits)
		return 0;
	return bpf_htonl(~((1U << (32 - bits)) - 1));
}

static __always_inline bool in_prefix(const struct bpfpm_addr *a, const struct prefix *p)
{
	__u32 w;

	if (a->family != p->a.family)
		return false;
	for (w = 0; w < 4; w++) {
		__u32 m = mask(p->plen, w);

		if ((a->addr[w] & m) != (p->a.addr[w] & m))
			return false;
	}
	return true;
}

struct deny_ctx {
	struct bpfpm_addr a;
	bool hit;
};

static long match_prefix(__u32 i, void *data)
{
	struct deny_ctx *d = data;
	struct prefix *p = bpf_map_lookup_elem(&deny, &i);

	if (!p)
		return 1;
	if (p->used && in_prefix(&d->a, p)) {
		d->hit = true;
		return 1;
	}
	return 0;
}

static bool denied(const struct bpfpm_addr *a)
{
	struct deny_ctx d = { .a = *a };

	bpf_loop(BPFPM_MAX_ADDRS, match_prefix, &d, 0);
	return d.hit;
}

SEC("sockops")
int policy(struct bpf_sock_ops *skops)
{
	struct bpf_mptcp_endp src, dst;
	struct bpfpm_addr local, remote;

	switch (skops->op) {
	case BPF_SOCK_OPS_MPTCP_JOIN_REQ_CB:
		bpfpm_sk_addr(skops, true, &local);
		bpfpm_sk_addr(skops, false, &remote);
		if (denied(&local) || denied(&remote)) {
			bpfpm_count(bpf_mptcp_refuse_join(skops));
			bpfpm_bump(&decisions, 0);
		} else {
			bpfpm_bump(&decisions, 1);
		}
		break;
	case BPF_SOCK_OPS_MPTCP_ADD_ADDR_CB:
		bpfpm_event_addr(skops, skops->args[2], false, &remote);
		if (denied(&remote)) {
			bpfpm_bump(&decisions, 2);
			break;
		}
		bpfpm_endp(&src, NULL);
		bpfpm_endp(&dst, &remote);
		bpfpm_count(bpf_mptcp_open_subflow(skops, &src, &dst));
		break;
	}
	return 1;
}

char _license[] SEC("license") = "GPL";
