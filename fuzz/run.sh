#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer's coverage instrumentation on stable
# Rust (no cargo-fuzz or nightly needed) and runs each for SECONDS.
#
#   fuzz/run.sh [SECONDS] [TARGET...]     # default: 60 s, every target
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(kernel_loader virtio_blk_chains api_request qcow2 vmdk vhd virtio_net_chains)
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# --target keeps the instrumentation away from build scripts and proc-macros.
cargo build --release --quiet --bins --target x86_64-unknown-linux-gnu
# Seeds for the image readers: small images qemu-img writes (when installed).
seed_images() {
	local t=$1 dir="corpus/$1" tmp
	[ -z "$(ls -A "$dir" 2>/dev/null)" ] && command -v qemu-img >/dev/null || return 0
	tmp=$(mktemp -d)
	head -c 65536 /dev/urandom >"$tmp/data"
	truncate -s 300K "$tmp/src.raw"
	dd if="$tmp/data" of="$tmp/src.raw" bs=4096 seek=5 conv=notrunc status=none
	case $t in
	vmdk)
		for o in subformat=monolithicSparse subformat=streamOptimized subformat=monolithicSparse,zeroed_grain=on; do
			qemu-img convert -f raw -O vmdk -o "$o" "$tmp/src.raw" "$dir/seed-${o//[=,]/-}.vmdk"
		done
		printf '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\nRW 100 FLAT "flat.raw" 4\nRW 8 ZERO\n' >"$dir/seed-descriptor.vmdk"
		;;
	qcow2)
		for o in cluster_size=512 cluster_size=65536,refcount_bits=1 compat=0.10 extended_l2=on,cluster_size=16k lazy_refcounts=on; do
			qemu-img convert -f raw -O qcow2 -o "$o" "$tmp/src.raw" "$dir/seed-${o//[=,]/-}.qcow2"
		done
		qemu-img convert -f raw -O qcow2 -c -o compression_type=zstd "$tmp/src.raw" "$dir/seed-zstd.qcow2"
		qemu-img convert -f raw -O qcow2 -c "$tmp/src.raw" "$dir/seed-zlib.qcow2"
		;;
	vhd)
		for o in fixed dynamic; do
			qemu-img convert -f raw -O vpc -o "subformat=$o" "$tmp/src.raw" "$dir/seed-$o.vhd"
		done
		;;
	esac
	rm -rf "$tmp"
}
for t in "${targets[@]}"; do
	mkdir -p "corpus/$t" "artifacts/$t"
	seed_images "$t"
	echo "fuzz: $t for ${seconds}s"
	status=0
	"target/x86_64-unknown-linux-gnu/release/$t" -max_total_time="$seconds" -rss_limit_mb=2048 \
		-artifact_prefix="artifacts/$t/" "corpus/$t" >"artifacts/$t/last.log" 2>&1 || status=$?
	grep -E "DONE|ERROR|panicked|SUMMARY" "artifacts/$t/last.log" || true
	if [ "$status" -ne 0 ]; then
		echo "fuzz: $t failed (status $status); the input is in fuzz/artifacts/$t/, the log in artifacts/$t/last.log" >&2
		exit 1
	fi
done
