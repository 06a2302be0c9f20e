#!/usr/bin/env bash
# Runs Ferrovisor's whole test suite on a fresh Debian machine: installs the
# host packages it needs, checks formatting and lints, builds the guests and
# runs every test (unit, KVM-level, device, end-to-end).
#
#   scripts/test.sh            # everything
#   scripts/test.sh -- FILTER  # pass a filter to cargo test
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Debian packages. QEMU 7.2 (the peer, and the probe cross-check) must be
# installed together with qemu-utils of the same version: the machine image
# carries a newer qemu-utils that conflicts with Debian's qemu-system-x86.
# binutils builds the assembly guests; cpio and busybox-static serve the Linux guest kit;
# iproute2 and iputils-ping run the network lab (namespaces, bridges, TAPs, ping).
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
as_root() { if [ "$(id -u)" -eq 0 ]; then env DEBIAN_FRONTEND=noninteractive "$@"; else sudo env DEBIAN_FRONTEND=noninteractive "$@"; fi; }
missing=()
for p in binutils gcc cpio python3 ca-certificates acpica-tools strace util-linux iproute2 iputils-ping; do installed "$p" || missing+=("$p"); done
if ! installed qemu-system-x86; then
	as_root apt-get update -qq
	qemu_version=$(apt-cache madison qemu-system-x86 | awk 'NR == 1 { print $3 }')
	missing+=("qemu-system-x86=$qemu_version" "qemu-utils=$qemu_version" "qemu-block-extra=$qemu_version")
fi
if [ ${#missing[@]} -gt 0 ]; then
	echo "test.sh: installing ${missing[*]}"
	as_root apt-get update -qq
	as_root apt-get install -y -qq --allow-downgrades "${missing[@]}" >/dev/null
fi

if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
	if [ "${CI:-}" = "true" ]; then
		echo "test.sh: /dev/kvm is missing or not accessible; CI must run the KVM tests" >&2
		exit 1
	fi
	echo "test.sh: warning: /dev/kvm is not usable; KVM and guest tests will say they did not run" >&2
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
(cd guests/probe && cargo fmt -- --check && cargo build --release --quiet)
cargo build --release --quiet
# -j1 on the test binaries keeps the guests' timing-sensitive checks off a busy 2-core host.
cargo test --workspace --quiet "$@" -- --test-threads=2
# The parsers of hostile input, fuzzed for a bounded time (fuzz/run.sh SECONDS for longer runs).
fuzz/run.sh "${FUZZ_SECONDS:-15}" qcow2 vmdk vhd virtio_net_chains api_request
