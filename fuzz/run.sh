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
[ ${#targets[@]} -gt 0 ] || targets=(kernel_loader virtio_blk_chains api_request virtio_net_chains)
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# --target keeps the instrumentation away from build scripts and proc-macros.
cargo build --release --quiet --bins --target x86_64-unknown-linux-gnu
for t in "${targets[@]}"; do
	mkdir -p "corpus/$t" "artifacts/$t"
	echo "fuzz: $t for ${seconds}s"
	"target/x86_64-unknown-linux-gnu/release/$t" -max_total_time="$seconds" -rss_limit_mb=2048 \
		-artifact_prefix="artifacts/$t/" "corpus/$t" 2>&1 | grep -E "DONE|ERROR|panicked|SUMMARY" || true
done
