// SPDX-License-Identifier: GPL-2.0
/* Fuzzer: on every op, MPTCP or TCP, calls the path-manager kfuncs (open,
 * close, announce, remove, set_backup) with random and edge-case
 * endpoints, and counts what they return, by errno. config[0] = calls per
 * op (default 32, at most 256).
 *
 * Families 0, AF_INET, AF_INET6 and others; addresses ANY, loopback,
 * multicast, link-local, v4-mapped, the topology's own, unroutable and
 * random; ports 0, 65535 and random; mismatched families on purpose.
 */
#include "bpfpm.h"

#define FUZZ_DEFAULT	32
#define FUZZ_MAX	256
#define FUZZ_BUDGET	200000	/* calls in all: failed opens feed more ops */

BPFPM_CONFIG_MAP;

/* errno -> count, index 0: success */
BPFPM_STATS_MAP

/* [0] calls, [1] refuse_join calls, [2] ops seen */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} totals SEC(".maps");

static __always_inline __u16 pick_family(__u32 r)
{
	switch (r % 8) {
	case 0: return 0;
	case 1: case 2: case 3: return AF_INET;
	case 4: case 5: case 6: return AF_INET6;
	default: return r >> 8;		/* anything else */
	}
}

static __always_inline void pick_addr(struct bpf_mptcp_endp *e, __u32 r)
{
	__builtin_memset(e->addr, 0, sizeof(e->addr));
	switch ((r >> 3) % 12) {
	case 0:					/* ANY */
		break;
	case 1:
		e->addr[0] = bpf_htonl(0x7f000001);	/* 127.0.0.1 */
		break;
	case 2:
		e->addr[0] = bpf_htonl(0xe0000001);	/* 224.0.0.1 */
		break;
	case 3:
		e->addr[0] = bpf_htonl(0x0a000101 + ((r >> 7) & 0x301));	/* 10.0.{1,2}.{1,2} */
		break;
	case 4:
		e->addr[0] = bpf_htonl(0xc0000201);	/* 192.0.2.1 */
		break;
	case 5:
		e->addr[3] = bpf_htonl(1);		/* ::1 */
		break;
	case 6:
		e->addr[0] = bpf_htonl(0xff020000);	/* ff02::1 */
		e->addr[3] = bpf_htonl(1);
		break;
	case 7:
		e->addr[0] = bpf_htonl(0xfe800000);	/* fe80::1 */
		e->addr[3] = bpf_htonl(1);
		break;
	case 8:
		e->addr[2] = bpf_htonl(0xffff);		/* ::ffff:10.0.1.2 */
		e->addr[3] = bpf_htonl(0x0a000102);
		break;
	case 9:
		e->addr[0] = bpf_htonl(0xfd000001 + ((r >> 7) & 1));	/* fd00:{1,2}::2 */
		e->addr[3] = bpf_htonl(2);
		break;
	default:				/* random */
		e->addr[0] = bpf_get_prandom_u32();
		e->addr[1] = bpf_get_prandom_u32();
		e->addr[2] = bpf_get_prandom_u32();
		e->addr[3] = bpf_get_prandom_u32();
	}
}

static __always_inline void pick(struct bpf_mptcp_endp *e)
{
	__u32 r = bpf_get_prandom_u32();

	e->family = pick_family(r);
	pick_addr(e, r);
	switch ((r >> 20) % 4) {
	case 0: e->port = 0; break;
	case 1: e->port = 0xffff; break;
	default: e->port = r >> 16;
	}
}

struct fuzz_ctx {
	struct bpf_sock_ops *skops;
};

static long one_call(__u32 i, void *data)
{
	struct bpf_sock_ops *skops = ((struct fuzz_ctx *)data)->skops;
	struct bpf_mptcp_endp src, dst;
	int ret;

	pick(&src);
	pick(&dst);
	switch (bpf_get_prandom_u32() % 8) {
	case 0: case 1: case 2:
		ret = bpf_mptcp_open_subflow(skops, &src, &dst);
		break;
	case 3: case 4:
		ret = bpf_mptcp_close_subflow(skops, &src, &dst);
		break;
	case 5:
		ret = bpf_mptcp_announce_addr(skops, &src);
		break;
	case 6:
		ret = bpf_mptcp_remove_addr(skops, &src);
		break;
	default:
		ret = bpf_mptcp_set_backup(skops, &src, &dst, bpf_get_prandom_u32() & 1);
	}
	bpfpm_count(ret);
	bpfpm_bump(&totals, 0);
	return 0;
}

SEC("sockops")
int fuzz(struct bpf_sock_ops *skops)
{
	struct fuzz_ctx f = { .skops = skops };
	__u32 zero = 0, n = FUZZ_DEFAULT, *cfg;

	__u64 *calls = bpf_map_lookup_elem(&totals, &zero);

	bpfpm_bump(&totals, 2);
	if (!calls || *calls >= FUZZ_BUDGET)
		return 1;
	cfg = bpf_map_lookup_elem(&config, &zero);
	if (cfg && *cfg)
		n = *cfg < FUZZ_MAX ? *cfg : FUZZ_MAX;
	bpf_loop(n, one_call, &f, 0);
	/* rarely: refuse_join from whatever op this is (-EINVAL but JOIN_REQ) */
	if ((bpf_get_prandom_u32() & 15) == 0) {
		bpfpm_count(bpf_mptcp_refuse_join(skops));
		bpfpm_bump(&totals, 1);
	}
	return 1;
}

char _license[] SEC("license") = "GPL";
