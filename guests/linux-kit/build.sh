#!/usr/bin/env bash
# Build the Linux test guest of Ferrovisor from Debian packages.
#
#   guests/linux-kit/build.sh [OUTDIR]      (default: <repo>/target/guest-kit)
#
# Makes OUTDIR/<kernel release>/{vmlinuz,initramfs.cpio.gz} from the kernel
# that linux-image-cloud-amd64 currently depends on and from busybox-static
# (see README.md). Progress goes to stderr; the last line on stdout is the
# output directory. Cached: a rerun with the same package versions and kit
# sources does nothing but print the directory.
#
# Environment:
#   KIT_KERNEL_META  kernel meta package (default linux-image-cloud-amd64)
#   KIT_MODULES      space-separated module names (default: the virtio set)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${1:-$repo/target/guest-kit}
meta=${KIT_KERNEL_META:-linux-image-cloud-amd64}
# Requested modules; ones that do not exist or are built in are skipped,
# dependencies (e.g. net_failover, failover) are added automatically.
modules=${KIT_MODULES:-"virtio virtio_ring virtio_pci virtio_pci_modern_dev
	virtio_pci_legacy_dev virtio_mmio virtio_blk virtio_net net_failover
	failover virtio_console virtio_rng virtio_balloon
	vmw_vsock_virtio_transport"}

log() { echo "linux-kit: $*" >&2; }

# apt-get update only when the package lists do not know the meta package.
candidate() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { print $2 }'; }
if [ -z "$(candidate "$meta")" ] || [ "$(candidate "$meta")" = "(none)" ]; then
	log "no candidate for $meta: running apt-get update"
	apt-get update >&2
fi
meta_ver=$(candidate "$meta")
if [ -z "$meta_ver" ] || [ "$meta_ver" = "(none)" ]; then
	log "package $meta is not available"
	exit 1
fi

# The meta package depends on the real, versioned image package.
kpkg=$(apt-cache depends "$meta=$meta_ver" 2>/dev/null |
	awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
if [ -z "$kpkg" ]; then
	log "cannot resolve the kernel package behind $meta $meta_ver"
	exit 1
fi
kver=${kpkg#linux-image-}
kpkg_ver=$(candidate "$kpkg")
bb_ver=$(candidate busybox-static)
if [ -z "$kpkg_ver" ] || [ "$kpkg_ver" = "(none)" ] || [ -z "$bb_ver" ] || [ "$bb_ver" = "(none)" ]; then
	log "no candidate for $kpkg or busybox-static"
	exit 1
fi

# The cache key: package versions, module list and the kit's own sources.
src_hash=$(cat "$here/build.sh" "$here/init" "$here/mkinitramfs.py" | sha256sum | cut -c1-16)
stamp="kernel=$kpkg $kpkg_ver busybox-static=$bb_ver modules=$(echo $modules) kit=$src_hash"

dest=$out/$kver
if [ -f "$dest/vmlinuz" ] && [ -f "$dest/initramfs.cpio.gz" ] &&
	[ "$(cat "$dest/kit.stamp" 2>/dev/null)" = "$stamp" ]; then
	echo "$dest"
	exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# apt-get download drops privileges to _apt, which must be able to write here.
chmod 755 "$tmp"
mkdir "$tmp/debs" "$tmp/root"
if id _apt >/dev/null 2>&1; then chown _apt "$tmp/debs"; fi

log "downloading $kpkg $kpkg_ver and busybox-static $bb_ver"
(cd "$tmp/debs" && apt-get download -q "$kpkg=$kpkg_ver" "busybox-static=$bb_ver" >&2)
for deb in "$tmp"/debs/*.deb; do
	dpkg-deb -x "$deb" "$tmp/root"
done
if [ ! -f "$tmp/root/boot/vmlinuz-$kver" ] || [ ! -d "$tmp/root/lib/modules/$kver" ]; then
	log "$kpkg does not contain boot/vmlinuz-$kver and lib/modules/$kver"
	exit 1
fi

# Build into a fresh directory next to the destination, then swap it in.
mkdir -p "$out"
new=$(mktemp -d "$out/.$kver.XXXXXX")
trap 'rm -rf "$tmp" "$new"' EXIT
cp "$tmp/root/boot/vmlinuz-$kver" "$new/vmlinuz"
cp "$tmp/root/boot/config-$kver" "$new/config"
# shellcheck disable=SC2086 # word splitting of the module list is intended
python3 "$here/mkinitramfs.py" --root "$tmp/root" --kver "$kver" \
	--init "$here/init" --out "$new/initramfs.cpio.gz" $modules
echo "$stamp" > "$new/kit.stamp"
chmod 755 "$new"

rm -rf "$dest"
mv "$new" "$dest"
log "built $dest"
echo "$dest"
