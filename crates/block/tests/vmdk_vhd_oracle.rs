//! qemu-img as the oracle: images it converts from a raw file with a known
//! pattern read back byte for byte through the block crate, with qemu-img's
//! virtual size and (where meaningful) its allocation map.

mod common;

use std::path::Path;

use block::vhd::VhdImage;
use block::vmdk::VmdkImage;
use block::DiskFile;
use common::*;

/// 6 MiB + 40 KiB + 512: not a multiple of the 64 KiB grain.
const SIZE: u64 = (6 << 20) + (40 << 10) + 512;

/// Converts a pattern file to `fmt` with `options` and returns the scratch
/// directory, the raw source and the image path.
fn convert(
    tag: &str,
    fmt: &str,
    options: &str,
    size: u64,
    base: u64,
) -> (Scratch, std::path::PathBuf, std::path::PathBuf) {
    let dir = Scratch::new(tag);
    let src = dir.path("src.raw");
    write_pattern(&src, size, base);
    let dst = dir.path(&format!("disk.{fmt}"));
    let mut args = vec!["convert", "-f", "raw", "-O", fmt];
    if !options.is_empty() {
        args.extend(["-o", options]);
    }
    args.extend([src.to_str().unwrap(), dst.to_str().unwrap()]);
    qemu_img(&args);
    (dir, src, dst)
}

/// The whole disk equals the source (and zeros past the source's end).
fn assert_same_bytes(disk: &dyn DiskFile, src: &Path) {
    let ours = read_range(disk, 0, disk.size());
    let theirs = file_range(src, 0, disk.size());
    if let Some(i) = ours.iter().zip(&theirs).position(|(a, b)| a != b) {
        panic!("first difference at byte {i:#x}");
    }
}

fn check_vmdk(tag: &str, options: &str, compare_map: bool) -> VmdkImage {
    let (_dir, src, dst) = convert(tag, "vmdk", options, SIZE, 0);
    let disk = VmdkImage::open(&dst).unwrap();
    assert_eq!(disk.size(), qemu_size(&dst, "vmdk"));
    assert!(disk.size() >= SIZE);
    assert!(disk.read_only());
    assert_same_bytes(&disk, &src);
    if compare_map {
        let ours: Vec<_> = our_map(&disk);
        assert_eq!(ours, qemu_map(&dst, "vmdk"), "allocation map of {options}");
    }
    disk
}

#[test]
fn vmdk_monolithic_sparse_matches_qemu() {
    let disk = check_vmdk("vmdk-ms", "subformat=monolithicSparse", true);
    assert_eq!(disk.create_type(), "monolithicSparse");
}

#[test]
fn vmdk_monolithic_sparse_with_zeroed_grains_matches_qemu() {
    check_vmdk(
        "vmdk-zg",
        "subformat=monolithicSparse,zeroed_grain=on",
        true,
    );
}

#[test]
fn vmdk_stream_optimized_matches_qemu() {
    let disk = check_vmdk("vmdk-so", "subformat=streamOptimized", true);
    assert_eq!(disk.create_type(), "streamOptimized");
    let e = disk.extent_at(4096 + 17 * 512, 512).unwrap();
    assert!(e.data && e.compressed && e.host_offset.is_none(), "{e:?}");
}

#[test]
fn vmdk_monolithic_flat_matches_qemu() {
    check_vmdk("vmdk-mf", "subformat=monolithicFlat", true);
}

#[test]
fn vmdk_two_gb_sparse_matches_qemu_in_one_extent() {
    check_vmdk("vmdk-2s1", "subformat=twoGbMaxExtentSparse", true);
}

#[test]
fn vmdk_two_gb_flat_matches_qemu_in_one_extent() {
    check_vmdk("vmdk-2f1", "subformat=twoGbMaxExtentFlat", true);
}

/// A disk past 2 GiB, so qemu-img splits it into two extent files; the
/// pattern straddles the split. Only the patterned window is compared byte
/// for byte; the map proves the rest reads as zeros.
fn check_two_extents(tag: &str, subformat: &str) {
    let size = (2 << 30) + (5 << 20);
    let base = (2 << 30) - (2 << 20);
    let (dir, src, dst) = convert(tag, "vmdk", &format!("subformat={subformat}"), size, base);
    let extents = std::fs::read_dir(&dir.0)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("-")
        })
        .count();
    assert_eq!(extents, 2, "qemu-img wrote two extent files");
    let disk = VmdkImage::open(&dst).unwrap();
    assert_eq!(disk.size(), qemu_size(&dst, "vmdk"));
    let window = read_range(&disk, base, size - base);
    assert!(
        window == file_range(&src, base, size - base),
        "window differs"
    );
    let head = read_range(&disk, 0, 1 << 20);
    assert!(head.iter().all(|b| *b == 0));
    let gap = disk.extent_at(1 << 20, base - (1 << 20)).unwrap();
    assert!(gap.zero && gap.length == base - (1 << 20), "{gap:?}");
    assert_eq!(our_map(&disk), qemu_map(&dst, "vmdk"));
}

#[test]
fn vmdk_two_gb_sparse_across_two_extents_matches_qemu() {
    check_two_extents("vmdk-2s2", "twoGbMaxExtentSparse");
}

#[test]
fn vmdk_two_gb_flat_across_two_extents_matches_qemu() {
    check_two_extents("vmdk-2f2", "twoGbMaxExtentFlat");
}

fn check_vhd(tag: &str, options: &str, dynamic: bool) {
    let (_dir, src, dst) = convert(tag, "vpc", options, SIZE, 0);
    let disk = VhdImage::open(&dst).unwrap();
    assert_eq!(disk.size(), qemu_size(&dst, "vpc"), "{options}");
    assert_eq!(disk.is_dynamic(), dynamic);
    assert!(disk.read_only());
    assert_same_bytes(&disk, &src);
    assert_eq!(
        our_map(&disk),
        qemu_map(&dst, "vpc"),
        "allocation map of {options}"
    );
}

#[test]
fn vhd_fixed_matches_qemu() {
    check_vhd("vhd-fixed", "subformat=fixed", false);
}

#[test]
fn vhd_dynamic_matches_qemu() {
    check_vhd("vhd-dyn", "subformat=dynamic", true);
}

#[test]
fn vhd_dynamic_with_current_size_matches_qemu() {
    // force_size=on: creator "qem2", the footer's current size rules.
    check_vhd("vhd-qem2", "subformat=dynamic,force_size=on", true);
}

#[test]
fn vhd_fixed_with_current_size_matches_qemu() {
    check_vhd("vhd-fqem2", "subformat=fixed,force_size=on", false);
}

#[test]
fn probes_recognise_what_qemu_writes() {
    let (_d1, _s1, vmdk) = convert("probe-vmdk", "vmdk", "", 1 << 20, 0);
    let head = file_range(&vmdk, 0, 512);
    assert!(block::vmdk::probe(&head));
    assert!(!block::vhd::probe(&head, &head));
    let (_d2, _s2, flat) = convert("probe-flat", "vmdk", "subformat=monolithicFlat", 1 << 20, 0);
    assert!(block::vmdk::probe(&file_range(&flat, 0, 512)));
    for sub in ["fixed", "dynamic"] {
        let (_d, _s, vhd) = convert(
            &format!("probe-{sub}"),
            "vpc",
            &format!("subformat={sub}"),
            1 << 20,
            0,
        );
        let len = std::fs::metadata(&vhd).unwrap().len();
        let (head, tail) = (file_range(&vhd, 0, 512), file_range(&vhd, len - 512, 512));
        assert!(block::vhd::probe(&head, &tail), "{sub}");
        assert!(!block::vmdk::probe(&head));
    }
    assert!(!block::vhd::probe(&[0u8; 512], &[0u8; 512]));
    assert!(!block::vmdk::probe(b"QFI\xfb"));
}

#[test]
fn writes_are_refused() {
    let (_dir, _src, dst) = convert("ro-vmdk", "vmdk", "", 1 << 20, 0);
    let disk = VmdkImage::open(&dst).unwrap();
    let mut b = [0u8; 512];
    let e = disk
        .write_vectored_at(&[vm_memory::VolatileSlice::from(&mut b[..])], 0)
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
    assert!(e.to_string().contains("read-only"));
    assert!(disk.discard(0, 512).is_err());
    assert!(disk.write_zeroes(0, 512, false).is_err());
    let (_dir, _src, dst) = convert("ro-vhd", "vpc", "", 1 << 20, 0);
    let disk = VhdImage::open(&dst).unwrap();
    assert!(disk.discard(0, 512).is_err());
    assert!(disk.write_zeroes(0, 512, true).is_err());
    // Reads past the end give 0 bytes, not an error.
    let mut b = [0u8; 512];
    assert_eq!(
        disk.read_vectored_at(&[vm_memory::VolatileSlice::from(&mut b[..])], disk.size())
            .unwrap(),
        0
    );
}

#[test]
fn vmdk_zeroed_grains_written_by_qemu_io_read_as_zeros() {
    let (_dir, src, dst) = convert("vmdk-zgw", "vmdk", "zeroed_grain=on", SIZE, 0);
    let out = std::process::Command::new("qemu-io")
        .args([
            "-f",
            "vmdk",
            "-c",
            "write -z 64k 128k",
            dst.to_str().unwrap(),
        ])
        .output()
        .expect("qemu-io (qemu-utils) must be installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let disk = VmdkImage::open(&dst).unwrap();
    let mut want = file_range(&src, 0, disk.size());
    want[64 << 10..192 << 10].fill(0);
    assert!(read_range(&disk, 0, disk.size()) == want);
    let map = our_map(&disk);
    assert!(
        map.iter().any(|e| e.start == 64 << 10
            && e.length == 128 << 10
            && e.present
            && e.zero
            && !e.data),
        "{map:?}"
    );
    assert_eq!(map, qemu_map(&dst, "vmdk"));
}

#[test]
fn vhd_past_the_largest_chs_geometry_takes_the_current_size() {
    // Past 65535/16/255 CHS, qemu-img stores the largest geometry and the
    // size in the footer; readers must take the footer's size.
    let dir = Scratch::new("vhd-maxchs");
    let img = dir.path("big.vhd");
    qemu_img(&["create", "-q", "-f", "vpc", img.to_str().unwrap(), "200G"]);
    let disk = VhdImage::open(&img).unwrap();
    assert_eq!(disk.size(), qemu_size(&img, "vpc"));
    assert_eq!(disk.size(), 200 << 30);
    let e = disk.extent_at(0, u64::MAX).unwrap();
    assert!(!e.present && e.zero, "{e:?}");
    assert_eq!(read_range(&disk, (200 << 30) - 4096, 4096), vec![0u8; 4096]);
}

#[test]
fn large_empty_vmdks_from_qemu_img_create_open() {
    let dir = Scratch::new("vmdk-create");
    for (name, options, size) in [
        ("mono.vmdk", "subformat=monolithicSparse", "300G"),
        ("split.vmdk", "subformat=twoGbMaxExtentSparse", "9G"),
        ("stream.vmdk", "subformat=streamOptimized", "100G"),
    ] {
        let img = dir.path(name);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            options,
            img.to_str().unwrap(),
            size,
        ]);
        let disk = VmdkImage::open(&img).unwrap();
        assert_eq!(disk.size(), qemu_size(&img, "vmdk"), "{options}");
        assert_eq!(read_range(&disk, disk.size() - 8192, 8192), vec![0u8; 8192]);
        assert_eq!(our_map(&disk), qemu_map(&img, "vmdk"), "{options}");
    }
}
