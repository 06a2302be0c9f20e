//! Malformed VMDK and VHD files: images qemu-img wrote, then damaged on
//! purpose. Every one gives a clear error naming the structure (and the
//! offset), never a panic; escaping extent paths are refused.

mod common;

use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::Path;

use block::vhd::VhdImage;
use block::vmdk::VmdkImage;
use block::DiskFile;
use common::*;
use vm_memory::VolatileSlice;

fn patch(path: &Path, at: u64, bytes: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, at).unwrap();
}

fn le32(path: &Path, at: u64) -> u32 {
    u32::from_le_bytes(file_range(path, at, 4).try_into().unwrap())
}

fn le64(path: &Path, at: u64) -> u64 {
    u64::from_le_bytes(file_range(path, at, 8).try_into().unwrap())
}

/// Asserts `result` failed with `kind` and a message containing every `parts`.
fn assert_err<T>(result: std::io::Result<T>, kind: ErrorKind, parts: &[&str]) {
    let Err(e) = result else {
        panic!("expected an error containing {parts:?}");
    };
    assert_eq!(e.kind(), kind, "{e}");
    let msg = e.to_string();
    for p in parts {
        assert!(msg.contains(p), "{msg:?} lacks {p:?}");
    }
}

/// Reads the whole disk, returning the first error.
fn read_all(disk: &dyn DiskFile) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < disk.size() {
        let n = disk.read_vectored_at(&[VolatileSlice::from(&mut buf[..])], at)?;
        at += n as u64;
    }
    Ok(())
}

/// A monolithicSparse (or other) image of 2 MiB holding the test pattern.
fn vmdk(dir: &Scratch, options: &str) -> std::path::PathBuf {
    let src = dir.path("src.raw");
    write_pattern(&src, 6 << 20, 0);
    let dst = dir.path("disk.vmdk");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        options,
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
    ]);
    dst
}

#[test]
fn vmdk_sparse_header_damage() {
    let dir = Scratch::new("bad-vmdk-header");
    let good = vmdk(&dir, "subformat=monolithicSparse");
    let copy = |name: &str| {
        let p = dir.path(name);
        std::fs::copy(&good, &p).unwrap();
        p
    };
    let p = copy("magic.vmdk");
    patch(&p, 0, b"XXXX");
    assert_err(
        VmdkImage::open(&p),
        ErrorKind::InvalidData,
        &["no KDMV magic"],
    );

    let p = dir.path("short.vmdk");
    std::fs::write(&p, file_range(&good, 0, 100)).unwrap();
    assert_err(
        VmdkImage::open(&p),
        ErrorKind::InvalidData,
        &["sparse header", "past the end of the file"],
    );

    let p = copy("version.vmdk");
    patch(&p, 4, &9u32.to_le_bytes());
    assert_err(VmdkImage::open(&p), ErrorKind::Unsupported, &["version 9"]);

    let p = copy("capacity.vmdk");
    patch(&p, 12, &(1u64 << 50).to_le_bytes());
    assert_err(
        VmdkImage::open(&p),
        ErrorKind::InvalidData,
        &["grain directory", "exceeds the limit"],
    );

    let p = copy("grain.vmdk");
    patch(&p, 20, &(1u64 << 30).to_le_bytes());
    assert_err(VmdkImage::open(&p), ErrorKind::InvalidData, &["grain size"]);

    let p = copy("gd.vmdk");
    patch(&p, 56, &(1u64 << 40).to_le_bytes());
    assert_err(
        VmdkImage::open(&p),
        ErrorKind::InvalidData,
        &["grain directory at sector", "past the end of the file"],
    );

    let p = copy("gde.vmdk");
    let gd = le64(&good, 56) * 512;
    patch(&p, gd, &0x00ff_ffffu32.to_le_bytes());
    assert_err(
        VmdkImage::open(&p),
        ErrorKind::InvalidData,
        &["entry 0 puts grain table 0", "past the end"],
    );

    let p = copy("gte.vmdk");
    let gt = u64::from(le32(&good, gd)) * 512;
    patch(&p, gt + 17 * 4, &0x00ff_ffffu32.to_le_bytes());
    let disk = VmdkImage::open(&p).unwrap();
    assert_err(
        read_all(&disk),
        ErrorKind::InvalidData,
        &[&format!(
            "grain table 0 at offset {gt:#x}: entry 17 points past the end of the file"
        )],
    );
    assert!(disk.extent_at(0, 1 << 20).is_err());

    // The redundant grain directory is never read: damage there is harmless.
    let p = copy("rgd.vmdk");
    let rgd = le64(&good, 48) * 512;
    assert!(
        rgd > 0 && rgd != gd,
        "qemu-img writes a redundant directory"
    );
    patch(&p, rgd, &[0xffu8; 64]);
    let disk = VmdkImage::open(&p).unwrap();
    let clean = VmdkImage::open(&good).unwrap();
    assert!(read_range(&disk, 0, disk.size()) == read_range(&clean, 0, clean.size()));

    let p = copy("newline.vmdk");
    patch(&p, 73, b"\n \n\n");
    assert_err(VmdkImage::open(&p), ErrorKind::InvalidData, &["newline"]);

    let p = copy("parent.vmdk");
    let desc_at = le64(&good, 28) * 512;
    let text = String::from_utf8(file_range(&good, desc_at, 512)).unwrap();
    let child = text.replacen(
        "createType",
        "parentFileNameHint=\"/etc/shadow\"\ncreateType",
        1,
    );
    patch(&p, desc_at, &child.as_bytes()[..512.min(child.len())]);
    assert_err(
        VmdkImage::open(&p),
        ErrorKind::Unsupported,
        &["parentFileNameHint"],
    );
}

/// Moves the grain directory pointer of a streamOptimized image to a
/// footer, as VMware writes them: the header says GD_AT_END, and a footer
/// marker, a header copy with the real offset and an end-of-stream marker
/// end the file.
fn with_footer(good: &Path, out: &Path) {
    let header = file_range(good, 0, 512);
    let mut bytes = std::fs::read(good).unwrap();
    assert_eq!(bytes.len() % 512, 0);
    let mut marker = [0u8; 512];
    marker[0..8].copy_from_slice(&1u64.to_le_bytes());
    marker[12..16].copy_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&marker);
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(&[0u8; 512]);
    bytes[56..64].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(out, bytes).unwrap();
}

#[test]
fn vmdk_stream_optimized_grain_directory_at_end() {
    let dir = Scratch::new("vmdk-gd-at-end");
    let good = vmdk(&dir, "subformat=streamOptimized");
    let moved = dir.path("moved.vmdk");
    with_footer(&good, &moved);
    let a = VmdkImage::open(&good).unwrap();
    let b = VmdkImage::open(&moved).unwrap();
    assert_eq!(a.size(), b.size());
    assert_eq!(read_range(&a, 0, a.size()), read_range(&b, 0, b.size()));
    assert_eq!(
        read_range(&b, 0, b.size()),
        file_range(&dir.path("src.raw"), 0, b.size())
    );
    assert_eq!(our_map(&a), our_map(&b));
    let len = std::fs::metadata(&moved).unwrap().len();
    let copy = |name: &str| {
        let p = dir.path(name);
        std::fs::copy(&moved, &p).unwrap();
        p
    };
    let p = copy("footer-marker.vmdk");
    patch(&p, len - 1536 + 12, &7u32.to_le_bytes());
    assert_err(
        VmdkImage::open(&p),
        ErrorKind::InvalidData,
        &["footer at offset", "markers"],
    );
    let p = copy("eos.vmdk");
    patch(&p, len - 512, &[1]);
    assert_err(VmdkImage::open(&p), ErrorKind::InvalidData, &["markers"]);
    let p = copy("footer-gd.vmdk");
    patch(&p, len - 1024 + 56, &u64::MAX.to_le_bytes());
    assert_err(
        VmdkImage::open(&p),
        ErrorKind::InvalidData,
        &["does not say where the grain directory is"],
    );
    let p = copy("footer-magic.vmdk");
    patch(&p, len - 1024, b"XXXX");
    assert_err(
        VmdkImage::open(&p),
        ErrorKind::InvalidData,
        &[&format!(
            "footer at offset {:#x}: no KDMV magic",
            len - 1024
        )],
    );
    let p = dir.path("tiny.vmdk");
    std::fs::write(&p, file_range(&moved, 0, 1024)).unwrap();
    assert_err(
        VmdkImage::open(&p),
        ErrorKind::InvalidData,
        &["too short for a footer"],
    );
}

#[test]
fn vmdk_stream_optimized_grain_damage() {
    let dir = Scratch::new("bad-vmdk-stream");
    let good = vmdk(&dir, "subformat=streamOptimized");
    let copy = |name: &str| {
        let p = dir.path(name);
        std::fs::copy(&good, &p).unwrap();
        p
    };
    // The first grain with data: grain 0 (the pattern starts at 4096 + 17 * 512).
    let gd = le64(&good, 56) * 512;
    let gt = u64::from(le32(&good, gd)) * 512;
    let grain = u64::from(le32(&good, gt)) * 512;
    assert!(grain > 0, "grain 0 is allocated");
    let p = copy("lba.vmdk");
    patch(&p, grain, &5u64.to_le_bytes());
    let disk = VmdkImage::open(&p).unwrap();
    assert_err(
        read_all(&disk),
        ErrorKind::InvalidData,
        &["compressed grain 0", "marker says sector 5"],
    );

    let p = copy("size.vmdk");
    patch(&p, grain + 8, &u32::MAX.to_le_bytes());
    let disk = VmdkImage::open(&p).unwrap();
    assert_err(
        read_all(&disk),
        ErrorKind::InvalidData,
        &["compressed size"],
    );

    let p = copy("deflate.vmdk");
    patch(&p, grain + 12, &[0xff; 64]);
    let disk = VmdkImage::open(&p).unwrap();
    assert_err(
        read_all(&disk),
        ErrorKind::InvalidData,
        &[&format!("compressed grain 0 at offset {grain:#x}")],
    );

    let p = copy("cut.vmdk");
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(grain + 100).unwrap();
    assert!(
        VmdkImage::open(&p).and_then(|d| read_all(&d)).is_err(),
        "a grain cut short"
    );
}

/// Writes a descriptor with one extent line `extent` into `dir`.
fn descriptor(dir: &Scratch, name: &str, extent: &str) -> std::path::PathBuf {
    let p = dir.path(name);
    std::fs::write(
        &p,
        format!("# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n{extent}\n"),
    )
    .unwrap();
    p
}

#[test]
fn vmdk_extent_paths_cannot_escape() {
    let outer = Scratch::new("vmdk-escape");
    let secret = outer.path("secret.raw");
    std::fs::write(&secret, vec![0x5au8; 4096]).unwrap();
    let inner = outer.path("images");
    std::fs::create_dir(&inner).unwrap();
    let dir = Scratch(inner);
    std::fs::write(dir.path("ok.raw"), vec![0x11u8; 4096]).unwrap();

    let ok = descriptor(&dir, "ok.vmdk", "RW 8 FLAT \"ok.raw\" 0");
    let disk = VmdkImage::open(&ok).unwrap();
    assert_eq!(read_range(&disk, 0, 4096), vec![0x11u8; 4096]);

    let dotted = descriptor(&dir, "dotted.vmdk", "RW 8 FLAT \"./ok.raw\" 0");
    assert!(VmdkImage::open(&dotted).is_ok(), "./name stays inside");

    let abs = descriptor(
        &dir,
        "abs.vmdk",
        &format!("RW 8 FLAT \"{}\" 0", secret.display()),
    );
    assert_err(
        VmdkImage::open(&abs),
        ErrorKind::PermissionDenied,
        &["absolute"],
    );
    let up = descriptor(&dir, "up.vmdk", "RW 8 FLAT \"../secret.raw\" 0");
    assert_err(
        VmdkImage::open(&up),
        ErrorKind::PermissionDenied,
        &["leaving"],
    );
    let sneaky = descriptor(&dir, "sneaky.vmdk", "RW 8 FLAT \"sub/../../secret.raw\" 0");
    assert_err(
        VmdkImage::open(&sneaky),
        ErrorKind::PermissionDenied,
        &["leaving"],
    );
    std::os::unix::fs::symlink(&secret, dir.path("link.raw")).unwrap();
    let link = descriptor(&dir, "link.vmdk", "RW 8 FLAT \"link.raw\" 0");
    assert_err(
        VmdkImage::open(&link),
        ErrorKind::PermissionDenied,
        &["outside the descriptor's directory"],
    );
    std::os::unix::fs::symlink("ok.raw", dir.path("inside.raw")).unwrap();
    let inside = descriptor(&dir, "inside.vmdk", "RW 8 FLAT \"inside.raw\" 0");
    assert!(
        VmdkImage::open(&inside).is_ok(),
        "a symlink staying inside is fine"
    );
    let status = std::process::Command::new("mkfifo")
        .arg(dir.path("fifo.raw"))
        .status()
        .unwrap();
    assert!(status.success());
    let fifo = descriptor(&dir, "fifo.vmdk", "RW 8 FLAT \"fifo.raw\" 0");
    assert_err(
        VmdkImage::open(&fifo),
        ErrorKind::PermissionDenied,
        &["not a regular file"],
    );
    std::fs::create_dir(dir.path("sub")).unwrap();
    let sub = descriptor(&dir, "sub.vmdk", "RW 8 FLAT \"sub\" 0");
    assert_err(
        VmdkImage::open(&sub),
        ErrorKind::PermissionDenied,
        &["not a regular file"],
    );
    let missing = descriptor(&dir, "missing.vmdk", "RW 8 FLAT \"nope.raw\" 0");
    assert_err(
        VmdkImage::open(&missing),
        ErrorKind::NotFound,
        &["nope.raw"],
    );
}

#[test]
fn vmdk_bad_descriptors() {
    let dir = Scratch::new("vmdk-bad-desc");
    std::fs::write(dir.path("f.raw"), vec![0u8; 4096]).unwrap();
    let short = descriptor(&dir, "short.vmdk", "RW 16 FLAT \"f.raw\" 0");
    assert_err(
        VmdkImage::open(&short),
        ErrorKind::InvalidData,
        &["flat extent", "past the end of the file"],
    );
    let off = descriptor(
        &dir,
        "off.vmdk",
        &format!("RW 1 FLAT \"f.raw\" {}", u64::MAX / 4),
    );
    assert!(VmdkImage::open(&off).is_err());
    let bad = descriptor(&dir, "bad.vmdk", "RW 8 FLAT f.raw");
    assert_err(
        VmdkImage::open(&bad),
        ErrorKind::InvalidData,
        &["line 6", "double quotes"],
    );
    let none = descriptor(&dir, "none.vmdk", "");
    assert_err(
        VmdkImage::open(&none),
        ErrorKind::InvalidData,
        &["no extents"],
    );
    let p = dir.path("type.vmdk");
    std::fs::write(
        &p,
        "# Disk DescriptorFile\ncreateType=\"vmfsSparse\"\nRW 8 FLAT \"f.raw\" 0\n",
    )
    .unwrap();
    assert_err(VmdkImage::open(&p), ErrorKind::Unsupported, &["vmfsSparse"]);
    let p = dir.path("notype.vmdk");
    std::fs::write(&p, "# Disk DescriptorFile\nRW 8 FLAT \"f.raw\" 0\n").unwrap();
    assert_err(
        VmdkImage::open(&p),
        ErrorKind::InvalidData,
        &["no createType"],
    );
    let p = dir.path("big.vmdk");
    std::fs::write(&p, vec![b'#'; (1 << 20) + 1]).unwrap();
    assert_err(
        VmdkImage::open(&p),
        ErrorKind::InvalidData,
        &["too large for a descriptor"],
    );
    let p = dir.path("cowd.vmdk");
    std::fs::write(&p, b"COWD\x01\0\0\0").unwrap();
    assert_err(VmdkImage::open(&p), ErrorKind::Unsupported, &["COWD"]);
    // A sparse extent smaller than its descriptor line.
    let sparse = vmdk(&dir, "subformat=monolithicSparse");
    std::fs::rename(&sparse, dir.path("s.vmdk")).unwrap();
    let big = descriptor(&dir, "bigger.vmdk", "RW 999999 SPARSE \"s.vmdk\"");
    assert_err(
        VmdkImage::open(&big),
        ErrorKind::InvalidData,
        &["capacity", "less than the descriptor's 999999"],
    );
    let zero = descriptor(&dir, "zero.vmdk", "RW 8 ZERO");
    let disk = VmdkImage::open(&zero).unwrap();
    assert_eq!(disk.size(), 4096);
    assert_eq!(read_range(&disk, 0, 4096), vec![0u8; 4096]);
}

/// A VHD of 4 MiB holding the pattern.
fn vhd(dir: &Scratch, subformat: &str) -> std::path::PathBuf {
    let src = dir.path("src.raw");
    write_pattern(&src, 6 << 20, 0);
    let dst = dir.path(&format!("{subformat}.vhd"));
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vpc",
        "-o",
        &format!("subformat={subformat}"),
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
    ]);
    dst
}

/// Rewrites the footer (at `at`) checksum after a patch.
fn fix_footer(path: &Path, at: u64) {
    let b = file_range(path, at, 512);
    patch(
        path,
        at + 64,
        &block::vhd::footer::checksum(&b, 64).to_be_bytes(),
    );
}

#[test]
fn vhd_damage() {
    let dir = Scratch::new("bad-vhd");
    let dynamic = vhd(&dir, "dynamic");
    let fixed = vhd(&dir, "fixed");
    let copy = |from: &Path, name: &str| {
        let p = dir.path(name);
        std::fs::copy(from, &p).unwrap();
        p
    };
    let p = copy(&dynamic, "sum.vhd");
    patch(&p, 100, b"x");
    assert_err(
        VhdImage::open(&p),
        ErrorKind::InvalidData,
        &["footer at offset 0x0", "checksum"],
    );

    let flen = std::fs::metadata(&fixed).unwrap().len();
    let p = copy(&fixed, "fsum.vhd");
    patch(&p, flen - 512 + 100, b"x");
    assert_err(
        VhdImage::open(&p),
        ErrorKind::InvalidData,
        &[&format!("footer at offset {:#x}", flen - 512), "checksum"],
    );

    let p = copy(&fixed, "fbig.vhd");
    patch(&p, flen - 512 + 56, &60000u16.to_be_bytes());
    fix_footer(&p, flen - 512);
    assert_err(
        VhdImage::open(&p),
        ErrorKind::InvalidData,
        &["fixed disk", "does not fit"],
    );

    let p = copy(&dynamic, "diff.vhd");
    patch(&p, 60, &4u32.to_be_bytes());
    fix_footer(&p, 0);
    assert_err(
        VhdImage::open(&p),
        ErrorKind::Unsupported,
        &["differencing"],
    );

    let p = dir.path("tiny.vhd");
    std::fs::write(&p, b"conectix").unwrap();
    assert_err(VhdImage::open(&p), ErrorKind::InvalidData, &["too short"]);

    // The dynamic header lies where the footer says (qemu-img: 512).
    let dyn_at = u64::from_be_bytes(file_range(&dynamic, 16, 8).try_into().unwrap());
    let fix_dyn = |p: &Path| {
        let b = file_range(p, dyn_at, 1024);
        patch(
            p,
            dyn_at + 36,
            &block::vhd::footer::checksum(&b, 36).to_be_bytes(),
        );
    };
    let p = copy(&dynamic, "dsum.vhd");
    patch(&p, dyn_at + 40, b"x");
    assert_err(
        VhdImage::open(&p),
        ErrorKind::InvalidData,
        &["dynamic header", "checksum"],
    );

    let p = copy(&dynamic, "cookie.vhd");
    patch(&p, dyn_at, b"cxspars_");
    fix_dyn(&p);
    assert_err(VhdImage::open(&p), ErrorKind::InvalidData, &["cxsparse"]);

    let p = copy(&dynamic, "bs.vhd");
    patch(&p, dyn_at + 32, &3000u32.to_be_bytes());
    fix_dyn(&p);
    assert_err(
        VhdImage::open(&p),
        ErrorKind::InvalidData,
        &["block size 3000"],
    );

    let p = copy(&dynamic, "entries.vhd");
    patch(&p, dyn_at + 28, &1u32.to_be_bytes());
    fix_dyn(&p);
    assert_err(
        VhdImage::open(&p),
        ErrorKind::InvalidData,
        &["do not cover"],
    );

    let p = copy(&dynamic, "many.vhd");
    patch(&p, dyn_at + 28, &u32::MAX.to_be_bytes());
    fix_dyn(&p);
    assert_err(
        VhdImage::open(&p),
        ErrorKind::InvalidData,
        &["exceed the limit"],
    );

    let p = copy(&dynamic, "batat.vhd");
    patch(&p, dyn_at + 16, &(1u64 << 50).to_be_bytes());
    fix_dyn(&p);
    assert_err(
        VhdImage::open(&p),
        ErrorKind::InvalidData,
        &["BAT at offset", "past the end"],
    );

    let bat_at = u64::from_be_bytes(file_range(&dynamic, dyn_at + 16, 8).try_into().unwrap());
    let p = copy(&dynamic, "bat.vhd");
    patch(&p, bat_at + 4, &0x00ff_0000u32.to_be_bytes());
    assert_err(
        VhdImage::open(&p),
        ErrorKind::InvalidData,
        &[
            &format!("BAT at offset {bat_at:#x}: entry 1"),
            "past the end",
        ],
    );
}

#[test]
fn vhd_sector_bitmap_clear_bits_read_as_zeros() {
    let dir = Scratch::new("vhd-bitmap");
    let p = vhd(&dir, "dynamic");
    let src = dir.path("src.raw");
    let dyn_at = u64::from_be_bytes(file_range(&p, 16, 8).try_into().unwrap());
    let bat_at = u64::from_be_bytes(file_range(&p, dyn_at + 16, 8).try_into().unwrap());
    let block0 = u64::from(u32::from_be_bytes(
        file_range(&p, bat_at, 4).try_into().unwrap(),
    )) * 512;
    // Clear the bits of sectors 8..16 and 24 of block 0 (the pattern's noise starts at sector 25).
    patch(&p, block0 + 1, &[0x00]);
    patch(&p, block0 + 3, &[0x7f]);
    let disk = VhdImage::open(&p).unwrap();
    let ours = read_range(&disk, 0, 64 * 512);
    let mut want = file_range(&src, 0, 64 * 512);
    want[8 * 512..16 * 512].fill(0);
    want[24 * 512..25 * 512].fill(0);
    assert_eq!(ours, want);
    let e = disk.extent_at(8 * 512, 1 << 20).unwrap();
    assert!(
        e.present && e.zero && !e.data && e.length == 8 * 512,
        "{e:?}"
    );
    let e = disk.extent_at(16 * 512, 1 << 20).unwrap();
    assert!(e.data && e.length == 8 * 512, "{e:?}");
}

#[test]
fn vmdk_descriptor_with_sparse_and_zero_extents_reads_through() {
    let dir = Scratch::new("vmdk-desc-sparse");
    let sparse = vmdk(&dir, "subformat=monolithicSparse");
    std::fs::rename(&sparse, dir.path("s.vmdk")).unwrap();
    let sectors = (6 << 20) / 512;
    let p = descriptor(
        &dir,
        "d.vmdk",
        &format!("RW {sectors} SPARSE \"s.vmdk\"\nRDONLY 16 ZERO\nRW 8 VMFS \"src.raw\" 8"),
    );
    let disk = VmdkImage::open(&p).unwrap();
    assert_eq!(disk.size(), (6 << 20) + 24 * 512);
    let src = dir.path("src.raw");
    assert!(read_range(&disk, 0, 6 << 20) == file_range(&src, 0, 6 << 20));
    assert_eq!(read_range(&disk, 6 << 20, 16 * 512), vec![0u8; 16 * 512]);
    assert_eq!(
        read_range(&disk, (6 << 20) + 16 * 512, 8 * 512),
        file_range(&src, 8 * 512, 8 * 512)
    );
    let flat = disk.extent_at((6 << 20) + 16 * 512, 1 << 20).unwrap();
    assert_eq!(flat.host_offset, Some(8 * 512));
    assert_eq!(flat.length, 8 * 512);
}
