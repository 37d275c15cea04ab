# bpfpm front door: every target is a thin call into the `bpfpm` CLI.
# `make help` lists them. Variables: KERNEL=6.12|7.2 (the kernel; default
# 6.12), KERNEL_SRC=/path (your own tree), DEBUG=1 (debug kernel),
# T=<pytest selector> (tests to run), ARGS=..., JOBS=N (N guests at once,
# pytest-xdist), SHARD=i/n (the i-th of n slices)

VENV    ?= .venv
PY      := $(VENV)/bin/python
BPFPM   := $(VENV)/bin/bpfpm
STAMP   := $(VENV)/.bpfpm-setup
export PATH := $(abspath $(VENV))/bin:$(PATH)
# KERNEL=name: BPFPM_KERNEL for every target (`bpfpm kernel list`)
ifdef KERNEL
export BPFPM_KERNEL := $(KERNEL)
endif
RESULTS := $(or $(BPFPM_RESULTS),results)
# JOBS=N guests at once (make test: lanes, the framework's self-tests and the
# scenarios on two guests of 2 vCPUs; elsewhere 1; auto: one per core, 3 GiB
# each, the cores shared among them unless BPFPM_VCPUS); SHARD=i/n a CI matrix slice
SHARDING := $(if $(SHARD),--shard=$(SHARD))

.PHONY: help setup kernel pms shell demo test test-kernels test-fast vmtest bench bench-framework \
        report debug-test config-test series-check mutation-test fuzz soak kselftest bisect bisect-demo cache test-faults clean-results

help:
	@echo "any target KERNEL=7.2 the kernel to build and test: 6.12 (default) or 7.2"
	@echo "                      (bpfpm kernel list); its own Debian source, series, cache"
	@echo "make setup            install Debian packages + Python venv (idempotent)"
	@echo "make kernel           build the patched guest kernel (cached)"
	@echo "make pms              build the BPF path managers against that kernel"
	@echo "make shell            boot the guest and open an interactive shell"
	@echo "make demo             build, boot, run a two-link MPTCP transfer, print subflows"
	@echo "make test             unit tests + VM scenarios (JUnit in results/latest/)"
	@echo "  JOBS=N|auto|lanes SHARD=i/n N guests at once (default lanes: self-tests"
	@echo "                      and scenarios side by side); the i-th of n slices"
	@echo "make test-kernels     make test on every supported kernel in turn (results/<kernel>/)"
	@echo "make report [ARGS=--open]  the latest run: failures with their evidence, index.html"
	@echo "make test-fast        unit tests only (no VM)"
	@echo "make test-faults      the long fault injections: Ctrl-C during a build, two runs at once"
	@echo "make vmtest T=expr    VM scenarios matching a pytest -k expression"
	@echo "make bench [BENCH=smoke]  BPF PM vs in-kernel vs userspace: latency, burst, goodput, cps"
	@echo "make bench-framework [ARGS=--cold]  build/boot/command speed targets (--cold: + an empty-cache build)"
	@echo "make debug-test       BPF PM scenarios on the debug kernel (KASAN, lockdep, kmemleak; long)"
	@echo "make fuzz             100000 random kfunc calls from every op, debug kernel (FUZZ_CALLS=N)"
	@echo "make soak             churn for SOAK_S seconds (default 60) on the debug kernel"
	@echo "make kselftest        upstream MPTCP + BPF selftests, unpatched vs patched (long)"
	@echo "make config-test      the series on a kernel without CONFIG_CGROUP_BPF (own build)"
	@echo "make series-check     each patch on its own: checkpatch --strict, W=1 objects, lines"
	@echo "make mutation-test    undo each fix in turn (kernel/mutations/): its tests must fail"
	@echo "make bisect GOOD=.. BAD=.. T='pytest args' [APPLY_SERIES=1] [RUNS=N]   git bisect run over KERNEL_SRC"
	@echo "make bisect-demo      bisect an injected regression in a demo tree, check the verdict (long)"
	@echo "make cache [ARGS=prune]  what the kernel cache holds; prune old kernels"

$(STAMP): pyproject.toml scripts/setup-host.sh
	bash scripts/setup-host.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

setup: $(STAMP)
	@bash scripts/setup-host.sh
	@echo "setup: ok ($(VENV))"

kernel: setup
	$(BPFPM) kernel build

pms: setup
	$(BPFPM) pms build

shell: setup
	$(BPFPM) shell

demo: setup
	$(BPFPM) demo

test: setup
	$(BPFPM) test --jobs=$(or $(JOBS),lanes) $(SHARDING) $(ARGS)

# every kernel in turn, each in its own results/<kernel>/ (results/<kernel>/latest);
# fails if any kernel's run failed, after running them all
test-kernels: setup
	@failed=""; for k in $$($(BPFPM) kernel list --names); do \
		echo "== kernel $$k: results in $(RESULTS)/$$k/"; \
		BPFPM_KERNEL=$$k BPFPM_RESULTS=$(RESULTS)/$$k \
			$(BPFPM) test --jobs=$(or $(JOBS),lanes) $(SHARDING) $(ARGS) || failed="$$failed $$k"; \
	done; \
	if [ -n "$$failed" ]; then echo "test-kernels: failed on:$$failed"; exit 1; fi; \
	echo "test-kernels: passed on every kernel"

test-faults: setup
	$(BPFPM) test faulttests $(ARGS)

test-fast: setup
	$(PY) -m pytest tests $(ARGS)

vmtest: setup
	$(BPFPM) test --jobs=$(or $(JOBS),1) $(SHARDING) -k "$(T)" vmtests $(ARGS)

report: setup
	$(BPFPM) report $(ARGS)

debug-test: setup
	DEBUG=1 $(BPFPM) test --timeout=1800 vmtests/test_hooks.py vmtests/test_kfuncs.py \
		vmtests/test_lifecycle.py vmtests/test_bpf_pms.py $(ARGS)

config-test: setup
	BPFPM_CONFIG=no-cgroup-bpf $(BPFPM) test \
		vmtests/test_lifecycle.py::test_pm_type_2_only_where_sock_ops_programs_can_run $(ARGS)

series-check: setup
	$(BPFPM) series-check

mutation-test: setup
	$(BPFPM) mutations $(ARGS)

fuzz: setup
	DEBUG=1 BPFPM_FUZZ_CALLS=$(or $(FUZZ_CALLS),100000) $(BPFPM) test --timeout=3600 \
		vmtests/test_fuzz.py $(ARGS)

soak: setup
	DEBUG=1 SOAK_S=$(or $(SOAK_S),60) $(BPFPM) test --timeout=3600 soaktests $(ARGS)

kselftest: setup
	$(BPFPM) kselftest $(ARGS)

bench: setup
	$(BPFPM) bench --size $(or $(BENCH),full)

bench-framework: setup
	$(BPFPM) bench-framework $(ARGS)

bisect: setup
	$(BPFPM) bisect --good "$(GOOD)" --bad "$(BAD)" $(if $(APPLY_SERIES),--apply-series) \
		--runs "$(or $(RUNS),1)" -- $(T)

bisect-demo: setup
	$(BPFPM) bisect-demo $(if $(APPLY_SERIES),--apply-series)

cache: setup
	$(BPFPM) cache $(ARGS)

clean-results:
	rm -rf results
