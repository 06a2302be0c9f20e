#!/usr/bin/env bash
# Cross-check the assembly guests against QEMU (the reference loader).
#
#   guests/asm/test-qemu.sh [OUTDIR]     (default: a temporary directory)
#
# Builds the guests, boots each under qemu-system-x86_64 with KVM and checks
# the serial output and exit status. Ends with "N passed, N failed".
# q35 runs take a few seconds each here (SeaBIOS is emulated).
set -euo pipefail

src=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
out=${1:-$tmp/out}
"$src/build.sh" "$out"

qemu=${QEMU:-qemu-system-x86_64}
passed=0
failed=0

printf 'INITRD-CONTENT\001abcdefgh' > "$tmp/initrd.bin"

# run NAME MACHINE EXPECTED_STATUSES "EXPECTED LINES (| separated)" QEMU ARGS...
run() {
	local name=$1 machine=$2 statuses=$3 expect=$4
	shift 4
	local log="$tmp/$name.log" status=0
	timeout 60 "$qemu" -M "$machine" -enable-kvm -cpu host,-arch-capabilities \
		-smp 1 -m 512 -nodefaults -no-user-config -display none \
		-serial stdio -device isa-debug-exit,iobase=0xf4,iosize=4 \
		"$@" < /dev/null > "$log" 2>&1 || status=$?
	local ok=1 line
	case " $statuses " in *" $status "*) ;; *) ok=0 ;; esac
	IFS='|' read -r -a lines <<< "$expect"
	for line in "${lines[@]}"; do
		grep -qF -- "$line" "$log" || { ok=0; echo "  missing: $line"; }
	done
	if [ $ok = 1 ]; then
		echo "ok   $name (status $status)"
		passed=$((passed + 1))
	else
		echo "FAIL $name (status $status, want $statuses)"
		sed 's/^/  | /' "$log" | tr -d '\033' | tail -20
		failed=$((failed + 1))
	fi
}

run multiboot-q35 q35 1 \
	"mb: magic ok|mb: mem_lower=|multiboot.elf hello world|mb: mods=1|mb: mod0 size=23 head=INITRD-CONTENT.a|mb: PASS" \
	-kernel "$out/multiboot.elf" -initrd "$tmp/initrd.bin" -append "hello world"

run linux64-bzimage-q35 q35 1 \
	"linux64: entered|linux64: e820 addr=0x100000 size=|type=1|linux64: cmdline=console=ttyS0 x=1|linux64: initrd addr=0x|size=23|linux64: initrd head=INITRD-CONTENT.a|linux64: PASS" \
	-kernel "$out/linux64.bzImage" -initrd "$tmp/initrd.bin" -append "console=ttyS0 x=1"

run pvh-hello-microvm microvm "0 1" "hello" -kernel "$out/pvh-hello.elf"
run pvh-hello-q35 q35 "0 1" "hello" -kernel "$out/pvh-hello.elf"

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
