//! virtio-blk end to end: the probe guest writes, reads, flushes, discards and
//! zeroes through `virtio-drivers`-style requests, and the host file shows it.

mod common;
use common::*;
use std::path::Path;

const HEADER: &[u8] = b"FERROVISOR-DISK!";

fn image(dir: &TempDir, size: u64) -> std::path::PathBuf {
    let path = dir.join("disk.img");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(size).unwrap();
    drop(f);
    let mut content = std::fs::read(&path).unwrap();
    content[..HEADER.len()].copy_from_slice(HEADER);
    // Data where the probe will discard and zero, to see it go.
    content[4096 * 512..(4096 + 2048) * 512].fill(0xee);
    content[8192 * 512..(8192 + 128) * 512].fill(0xdd);
    std::fs::write(&path, content).unwrap();
    path
}

fn run_blk(disk: &Path, disk_opts: &str, cmdline: &str) -> Exited {
    let mut cmd = ferrovisor(&probe());
    cmd.args(["--cmdline", cmdline, "--memory", "size=256M", "--disk"]);
    cmd.arg(format!("path={}{disk_opts}", disk.display()));
    run(cmd)
}

fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn guest_writes_reach_the_host_file() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("blk-rw");
    let disk = image(&dir, 64 << 20);
    let before = allocated_bytes(&disk);
    let out = run_blk(
        &disk,
        ",serial=fv-disk-1,physical_block_size=4096",
        "probe=blk",
    );
    assert_eq!(out.code(), debug_exit(0), "{out:#?}");
    let dev = out.line("probe: blk device=").expect("device line");
    assert!(
        dev.contains("capacity_sectors=131072 blk_size=512 physical_block_exp=3"),
        "{dev}"
    );
    assert_eq!(
        out.line("probe: blk head="),
        Some("probe: blk head=FERROVISOR-DISK!")
    );
    assert!(out.line("probe: blk write+read bytes=1048576 ok").is_some());
    assert_eq!(out.line("probe: blk flush"), Some("probe: blk flush ok"));
    assert_eq!(
        out.line("probe: blk beyond-end"),
        Some("probe: blk beyond-end status=1")
    );
    assert_eq!(out.line("probe: blk id="), Some("probe: blk id=fv-disk-1"));
    assert_eq!(
        out.line("probe: blk discard"),
        Some("probe: blk discard status=0")
    );
    assert_eq!(
        out.line("probe: blk write-zeroes"),
        Some("probe: blk write-zeroes status=0")
    );

    // The pattern, byte for byte, in the host file.
    let content = std::fs::read(&disk).unwrap();
    for sector in 64u64..64 + 2048 {
        let word = (sector ^ 0x5a5a_5a5a_5a5a_5a5a).to_le_bytes();
        let s = &content[(sector * 512) as usize..((sector + 1) * 512) as usize];
        assert!(s.chunks(8).all(|c| c == word), "sector {sector}");
    }
    assert!(
        content[4096 * 512..(4096 + 2048) * 512]
            .iter()
            .all(|b| *b == 0),
        "discarded range reads as zeros"
    );
    assert!(
        content[8192 * 512..(8192 + 128) * 512]
            .iter()
            .all(|b| *b == 0),
        "zeroed range"
    );
    // Discard punched a hole: the file holds fewer blocks than before plus what was written.
    assert!(
        allocated_bytes(&disk) < before + (1 << 20),
        "holes were punched"
    );
}

#[test]
fn readonly_disk_refuses_writes() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("blk-ro");
    let disk = image(&dir, 16 << 20);
    let before = std::fs::read(&disk).unwrap();
    let out = run_blk(&disk, ",readonly=on", "probe=blk blk_mode=ro");
    assert_eq!(out.code(), debug_exit(0), "{out:#?}");
    assert_eq!(
        out.line("probe: blk readonly write"),
        Some("probe: blk readonly write status=1")
    );
    assert_eq!(
        std::fs::read(&disk).unwrap(),
        before,
        "the image is unchanged"
    );
}

#[test]
fn direct_io_and_multiqueue_work() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("blk-direct");
    let disk = image(&dir, 64 << 20);
    let out = run_blk(
        &disk,
        ",direct=on,num_queues=2,queue_size=128,logical_block_size=4096",
        "probe=blk",
    );
    assert_eq!(out.code(), debug_exit(0), "{out:#?}");
    assert!(
        out.line("probe: blk device=")
            .unwrap()
            .contains("blk_size=4096"),
        "{out:#?}"
    );
}

#[test]
fn missing_disk_is_a_configuration_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferrovisor"))
        .args(["--kernel"])
        .arg(asm_guest(AsmGuest::PvhHello))
        .args(["--disk", "path=/nonexistent/disk.img"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--disk"));
}

#[test]
fn qcow2_disk_with_a_backing_file() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("blk-qcow2");
    let base = image(&dir, 64 << 20);
    let base_before = std::fs::read(&base).unwrap();
    let top = dir.join("top.qcow2");
    let status = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&base)
        .arg(&top)
        .status()
        .expect("qemu-img");
    assert!(status.success());
    // A backing file is opened only when the config allows it.
    let refused = run_blk(&top, ",image_type=qcow2", "probe=blk");
    assert_eq!(refused.code(), 2, "{refused:#?}");
    assert!(refused.log.contains("backing_files=on"), "{}", refused.log);
    let out = run_blk(&top, ",image_type=qcow2,backing_files=on", "probe=blk");
    assert_eq!(out.code(), debug_exit(0), "{out:#?}");
    assert_eq!(
        out.line("probe: blk head="),
        Some("probe: blk head=FERROVISOR-DISK!"),
        "reads fall through to the backing file"
    );
    assert!(out.line("probe: blk write+read bytes=1048576 ok").is_some());
    assert_eq!(
        out.line("probe: blk discard"),
        Some("probe: blk discard status=0")
    );
    assert_eq!(
        out.line("probe: blk write-zeroes"),
        Some("probe: blk write-zeroes status=0")
    );
    // qemu-img finds the image consistent and reads what the guest wrote.
    let check = std::process::Command::new("qemu-img")
        .arg("check")
        .arg(&top)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    let flat = dir.join("flat.raw");
    let status = std::process::Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&top)
        .arg(&flat)
        .status()
        .unwrap();
    assert!(status.success());
    let content = std::fs::read(&flat).unwrap();
    for sector in 64u64..64 + 2048 {
        let word = (sector ^ 0x5a5a_5a5a_5a5a_5a5a).to_le_bytes();
        let s = &content[(sector * 512) as usize..((sector + 1) * 512) as usize];
        assert!(s.chunks(8).all(|c| c == word), "sector {sector}");
    }
    assert!(content[4096 * 512..(4096 + 2048) * 512]
        .iter()
        .all(|b| *b == 0));
    assert!(content[8192 * 512..(8192 + 128) * 512]
        .iter()
        .all(|b| *b == 0));
    assert_eq!(
        std::fs::read(&base).unwrap(),
        base_before,
        "the backing file is untouched"
    );
    // Without image_type the same file is a raw disk: the guest sees the
    // qcow2 header, and the backing file is never opened.
    let out = run_blk(&top, ",readonly=on", "probe=blk blk_mode=ro");
    assert_eq!(out.code(), debug_exit(0), "{out:#?}");
    let head = out.line("probe: blk head=").unwrap_or_default().to_string();
    assert!(!head.contains("FERROVISOR"), "{head}");
}

#[test]
fn vhd_and_vmdk_disks_are_served_read_only() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("blk-vhd-vmdk");
    let raw = image(&dir, 64 << 20);
    for (fmt, subformat, image_type) in [
        ("vpc", "subformat=dynamic", "vhd"),
        ("vpc", "subformat=fixed", "vpc"),
        ("vmdk", "subformat=monolithicSparse", "vmdk"),
        ("vmdk", "subformat=streamOptimized", "vmdk"),
    ] {
        let path = dir.join(&format!("disk-{fmt}-{}", &subformat[10..]));
        let status = std::process::Command::new("qemu-img")
            .args(["convert", "-O", fmt, "-o", subformat])
            .arg(&raw)
            .arg(&path)
            .status()
            .expect("qemu-img");
        assert!(status.success());
        let before = std::fs::read(&path).unwrap();
        let what = format!("{fmt} {subformat}");
        // Writable use is refused with a reason.
        let refused = run_blk(&path, &format!(",image_type={image_type}"), "probe=blk");
        assert_eq!(refused.code(), 2, "{what}: {refused:#?}");
        assert!(
            refused.log.contains("readonly=on"),
            "{what}: {}",
            refused.log
        );
        let out = run_blk(
            &path,
            &format!(",image_type={image_type},readonly=on"),
            "probe=blk blk_mode=ro",
        );
        assert_eq!(out.code(), debug_exit(0), "{what}: {out:#?}");
        assert_eq!(
            out.line("probe: blk head="),
            Some("probe: blk head=FERROVISOR-DISK!"),
            "{what}: the guest reads the image's contents"
        );
        assert_eq!(
            out.line("probe: blk readonly write"),
            Some("probe: blk readonly write status=1"),
            "{what}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), before, "{what}: unchanged");
    }
    // A file that is not what image_type says is refused at start-up.
    let junk = dir.join("junk.img");
    std::fs::write(&junk, vec![0x5au8; 1 << 20]).unwrap();
    for image_type in ["vhd", "vmdk"] {
        let out = run_blk(
            &junk,
            &format!(",image_type={image_type},readonly=on"),
            "probe=blk blk_mode=ro",
        );
        assert_eq!(out.code(), 2, "{image_type}: {out:#?}");
        assert!(out.log.contains("junk.img"), "{image_type}: {}", out.log);
    }
}
