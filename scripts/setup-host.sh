#!/bin/bash
# Install the Debian packages bpfpm needs on the host (and, through the
# shared read-only root, in the guest). Idempotent: packages already present
# cost one dpkg query.
set -euo pipefail

PKGS=(
	# kernel build
	build-essential bc bison flex ccache cpio dwarves kmod libelf-dev
	libssl-dev rsync xz-utils lz4 python3
	# BPF path managers
	clang llvm lld bpftool libbpf-dev
	# booting the guest with virtme-ng
	qemu-system-x86 qemu-utils udev openssh-server busybox-static
	# inside the guest: networking tools for scenarios and kselftests
	iproute2 iputils-ping ethtool iptables nftables tcpdump socat procps psmisc
	# kselftests helpers
	libmnl-dev libcap-dev
)

missing=()
for p in "${PKGS[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' ||
		missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
	echo "setup-host: all ${#PKGS[@]} Debian packages present"
	exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
	SUDO=sudo
else
	SUDO=
fi
echo "setup-host: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
