/* SPDX-License-Identifier: GPL-2.0 */
/* Shared by the bpfpm path managers: kfunc declarations, address helpers.
 *
 * vmlinux.h comes from the running kernel's BTF (bpftool btf dump). pahole
 * 1.24 emits no kfunc declaration tags, so the kfuncs are declared here.
 */
#ifndef __BPFPM_H
#define __BPFPM_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>

#define AF_INET		2
#define AF_INET6	10

#define BPFPM_MAX_ADDRS	8

/* The MPTCP ops pass their arguments in args[1..3]: args[0] is where
 * reply is stored, which other programs may write on every op.
 */

/* errnos the kfuncs return (no libc headers in BPF programs) */
#define BPFPM_ENOENT	2
#define BPFPM_ENOMEM	12
#define BPFPM_EBUSY	16
#define BPFPM_EEXIST	17
#define BPFPM_EINVAL	22
#define BPFPM_ENOSPC	28
#define BPFPM_EADDRNOTAVAIL 99
#define BPFPM_EOPNOTSUPP 95
#define BPFPM_ENOTCONN	107

extern int bpf_mptcp_open_subflow(struct bpf_sock_ops *ctx,
				  const struct bpf_mptcp_endp *src,
				  const struct bpf_mptcp_endp *dst) __ksym;
extern int bpf_mptcp_close_subflow(struct bpf_sock_ops *ctx,
				   const struct bpf_mptcp_endp *src,
				   const struct bpf_mptcp_endp *dst) __ksym;
extern int bpf_mptcp_refuse_join(struct bpf_sock_ops *ctx) __ksym;
extern int bpf_mptcp_announce_addr(struct bpf_sock_ops *ctx,
				   const struct bpf_mptcp_endp *addr) __ksym;
extern int bpf_mptcp_remove_addr(struct bpf_sock_ops *ctx,
				 const struct bpf_mptcp_endp *addr) __ksym;
extern int bpf_mptcp_set_backup(struct bpf_sock_ops *ctx,
				const struct bpf_mptcp_endp *src,
				const struct bpf_mptcp_endp *dst, bool backup) __ksym;

/* Read a bpf_sock_ops field right here. Without it, clang may merge the
 * loads of two branches into one through a computed ctx pointer, which the
 * verifier rejects ("dereference of modified ctx ptr").
 */
#define BPFPM_CTX(expr) ({ __u32 __v = (expr); asm volatile("" : "+r"(__v)); __v; })

/* An address as the maps store it: family + 16 bytes, network order. */
struct bpfpm_addr {
	__u32 family;
	__u32 addr[4];
};

static __always_inline bool bpfpm_addr_eq(const struct bpfpm_addr *a,
					  const struct bpfpm_addr *b)
{
	if (a->family != b->family)
		return false;
	if (a->family == AF_INET)
		return a->addr[0] == b->addr[0];
	return a->addr[0] == b->addr[0] && a->addr[1] == b->addr[1] &&
	       a->addr[2] == b->addr[2] && a->addr[3] == b->addr[3];
}

/* The local (LOCAL_ADDR, REQ_FAILED) or remote (ADD_ADDR, REQ_FAILED)
 * address carried by an event.
 */
static __always_inline void bpfpm_event_addr(const struct bpf_sock_ops *skops,
					     __u32 family, bool local,
					     struct bpfpm_addr *out)
{
	out->family = family;
	out->addr[1] = out->addr[2] = out->addr[3] = 0;
	if (local) {
		out->addr[0] = BPFPM_CTX(skops->mptcp_local_addr[0]);
		if (family == AF_INET6) {
			out->addr[1] = BPFPM_CTX(skops->mptcp_local_addr[1]);
			out->addr[2] = BPFPM_CTX(skops->mptcp_local_addr[2]);
			out->addr[3] = BPFPM_CTX(skops->mptcp_local_addr[3]);
		}
	} else {
		out->addr[0] = BPFPM_CTX(skops->mptcp_remote_addr[0]);
		if (family == AF_INET6) {
			out->addr[1] = BPFPM_CTX(skops->mptcp_remote_addr[1]);
			out->addr[2] = BPFPM_CTX(skops->mptcp_remote_addr[2]);
			out->addr[3] = BPFPM_CTX(skops->mptcp_remote_addr[3]);
		}
	}
}

/* The local or remote address of the subflow behind ctx->sk. */
static __always_inline void bpfpm_sk_addr(const struct bpf_sock_ops *skops,
					  bool local, struct bpfpm_addr *out)
{
	out->family = skops->family;
	out->addr[1] = out->addr[2] = out->addr[3] = 0;
	if (skops->family == AF_INET && local) {
		out->addr[0] = BPFPM_CTX(skops->local_ip4);
	} else if (skops->family == AF_INET) {
		out->addr[0] = BPFPM_CTX(skops->remote_ip4);
	} else if (local) {
		out->addr[0] = BPFPM_CTX(skops->local_ip6[0]);
		out->addr[1] = BPFPM_CTX(skops->local_ip6[1]);
		out->addr[2] = BPFPM_CTX(skops->local_ip6[2]);
		out->addr[3] = BPFPM_CTX(skops->local_ip6[3]);
	} else {
		out->addr[0] = BPFPM_CTX(skops->remote_ip6[0]);
		out->addr[1] = BPFPM_CTX(skops->remote_ip6[1]);
		out->addr[2] = BPFPM_CTX(skops->remote_ip6[2]);
		out->addr[3] = BPFPM_CTX(skops->remote_ip6[3]);
	}
}

static __always_inline void bpfpm_endp(struct bpf_mptcp_endp *e,
				       const struct bpfpm_addr *a)
{
	__builtin_memset(e, 0, sizeof(*e));
	if (!a)
		return;
	e->family = a->family;
	e->addr[0] = a->addr[0];
	e->addr[1] = a->addr[1];
	e->addr[2] = a->addr[2];
	e->addr[3] = a->addr[3];
}

/* Add one to slot `slot` of a u64 array map (a counter). */
static __always_inline void bpfpm_bump(void *map, __u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(map, &slot);

	if (v)
		__sync_fetch_and_add(v, 1);
}

/* config[0]: one u32 knob set by the loader (bpftool map update). */
#define BPFPM_CONFIG_MAP						\
struct {								\
	__uint(type, BPF_MAP_TYPE_ARRAY);				\
	__uint(max_entries, 1);						\
	__type(key, __u32);						\
	__type(value, __u32);						\
} config SEC(".maps")

/* Per-connection state, keyed by the local token. */
#define BPFPM_MAX_CONNS	4096

#define BPFPM_CONNS_MAP(value_type)					\
struct {								\
	__uint(type, BPF_MAP_TYPE_HASH);				\
	__uint(max_entries, BPFPM_MAX_CONNS);				\
	__type(key, __u32);						\
	__type(value, value_type);					\
} conns SEC(".maps")

/* Errors seen by a PM, by errno (index 0 counts successes). */
#define BPFPM_ERRNO_SLOTS 128	/* errnos up to 126; 127: anything else */

#define BPFPM_STATS_MAP							\
struct {								\
	__uint(type, BPF_MAP_TYPE_ARRAY);				\
	__uint(max_entries, BPFPM_ERRNO_SLOTS);				\
	__type(key, __u32);						\
	__type(value, __u64);						\
} pm_results SEC(".maps");						\
									\
static __always_inline void bpfpm_count(int ret)			\
{									\
	__u32 slot = ret < 0 ? -ret : 0;				\
									\
	if (slot >= BPFPM_ERRNO_SLOTS)					\
		slot = BPFPM_ERRNO_SLOTS - 1;				\
	bpfpm_bump(&pm_results, slot);					\
}

#endif /* __BPFPM_H */
