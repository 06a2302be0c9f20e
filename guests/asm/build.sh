#!/usr/bin/env bash
# Build the assembly test guests with GNU as/ld/objcopy.
#
#   guests/asm/build.sh OUTDIR
#
# Produces in OUTDIR:
#   multiboot.elf    32-bit multiboot v1 ELF at 1 MiB          (multiboot.S)
#   linux64.elf      ELF64 at 16 MiB, Linux 64-bit boot entry   (linux64.S)
#   linux64.bin      objcopy -O binary of linux64.elf; 64-bit entry at +0x200
#   linux64.bzImage  bzsetup.bin + linux64.bin: a bzImage that QEMU (real-mode
#                    setup in bzsetup.S) and 64-bit-entry VMMs can both boot
#   pvh-hello.elf    ELF64 with a PVH note; prints "hello" and powers off
#
# Idempotent; prints nothing on success.
set -euo pipefail

if [ $# -ne 1 ]; then
	echo "usage: $0 OUTDIR" >&2
	exit 2
fi

src=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=$1
mkdir -p "$out"
out=$(cd "$out" && pwd)

# Object files go to a private temp dir; only the final images land in OUTDIR.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Write $2 atomically from the temp file $1 (a rerun never leaves a half file).
install_file() {
	cp "$1" "$out/.$2.tmp"
	mv -f "$out/.$2.tmp" "$out/$2"
}

# multiboot.elf: 32-bit.
as --32 -o "$tmp/multiboot.o" "$src/multiboot.S"
ld -m elf_i386 -T "$src/multiboot.ld" -o "$tmp/multiboot.elf" "$tmp/multiboot.o"
install_file "$tmp/multiboot.elf" multiboot.elf

# linux64.elf / linux64.bin: 64-bit, position independent.
as --64 -o "$tmp/linux64.o" "$src/linux64.S"
ld -m elf_x86_64 -T "$src/linux64.ld" -o "$tmp/linux64.elf" "$tmp/linux64.o"
objcopy -O binary "$tmp/linux64.elf" "$tmp/linux64.bin"
install_file "$tmp/linux64.elf" linux64.elf
install_file "$tmp/linux64.bin" linux64.bin

# linux64.bzImage: the setup header needs the payload size in 16-byte
# paragraphs (syssize) and the memory it needs including .bss (init_size).
bin_size=$(stat -c %s "$tmp/linux64.bin")
mem_size=$(nm "$tmp/linux64.elf" | awk '$3 == "linux64_mem_size" { print $1 }')
if [ -z "$mem_size" ]; then
	echo "$0: linux64_mem_size not found in linux64.elf" >&2
	exit 1
fi
as --64 -o "$tmp/bzsetup.o" "$src/bzsetup.S"
ld -m elf_x86_64 -T "$src/bzsetup.ld" \
	--defsym "SYSSIZE=$(( (bin_size + 15) / 16 ))" \
	--defsym "INIT_SIZE=0x$mem_size" \
	-o "$tmp/bzsetup.elf" "$tmp/bzsetup.o"
objcopy -O binary "$tmp/bzsetup.elf" "$tmp/bzsetup.bin"
cat "$tmp/bzsetup.bin" "$tmp/linux64.bin" > "$tmp/linux64.bzImage"
install_file "$tmp/linux64.bzImage" linux64.bzImage

# pvh-hello.elf: ELF64 container, 32-bit PVH entry code.
as --64 -o "$tmp/pvh-hello.o" "$src/pvh-hello.S"
ld -m elf_x86_64 -T "$src/pvh-hello.ld" -o "$tmp/pvh-hello.elf" "$tmp/pvh-hello.o"
install_file "$tmp/pvh-hello.elf" pvh-hello.elf
