//! Every kernel format `--kernel` recognises boots and receives its boot
//! protocol's information: PVH, multiboot v1, ELF vmlinux and bzImage.

mod common;
use common::*;

fn initramfs(dir: &TempDir) -> std::path::PathBuf {
    let path = dir.join("initrd.img");
    std::fs::write(&path, b"INITRAMFS-HEAD-0123456789").unwrap();
    path
}

#[test]
fn pvh_guest_prints_and_powers_off() {
    if !require_kvm() {
        return;
    }
    let out = run(ferrovisor(&asm_guest(AsmGuest::PvhHello)));
    assert_eq!(out.code(), 0, "{out:#?}");
    assert_eq!(out.serial, vec!["hello"]);
    assert!(out.log.contains("booting PVH ELF kernel"), "{}", out.log);
}

#[test]
fn multiboot_kernel_gets_memory_cmdline_and_module() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("multiboot");
    let mut cmd = ferrovisor(&asm_guest(AsmGuest::Multiboot));
    cmd.arg("--initramfs").arg(initramfs(&dir)).args([
        "--cmdline",
        "hello multiboot",
        "--memory",
        "size=128M",
    ]);
    let out = run(cmd);
    assert_eq!(out.code(), debug_exit(0), "{out:#?}");
    assert!(out.line("mb: magic ok").is_some());
    assert_eq!(
        out.line("mb: mem_lower"),
        Some("mb: mem_lower=639 mem_upper=130048")
    );
    assert_eq!(
        out.line("mb: cmdline="),
        Some("mb: cmdline=hello multiboot")
    );
    assert_eq!(out.line("mb: mods="), Some("mb: mods=1"));
    assert_eq!(
        out.line("mb: mod0"),
        Some("mb: mod0 size=25 head=INITRAMFS-HEAD-0")
    );
    assert!(out.line("mb: PASS").is_some());
}

fn check_linux64(out: &Exited, mem_mib: u64) {
    assert_eq!(out.code(), debug_exit(0), "{out:#?}");
    assert!(out.line("linux64: entered").is_some());
    assert_eq!(
        out.line("linux64: cmdline="),
        Some("linux64: cmdline=console=ttyS0 root=/dev/vda")
    );
    assert_eq!(
        out.line("linux64: initrd head="),
        Some("linux64: initrd head=INITRAMFS-HEAD-0")
    );
    let ram: u64 = out
        .serial
        .iter()
        .filter(|l| l.starts_with("linux64: e820") && l.ends_with("type=1"))
        .map(|l| {
            u64::from_str_radix(field(l, "size").unwrap().trim_start_matches("0x"), 16).unwrap()
        })
        .sum();
    assert_eq!(ram, (mem_mib << 20) - 0x60400, "usable RAM in the e820 map");
    assert!(out.line("linux64: PASS").is_some());
}

#[test]
fn elf_vmlinux_boots_through_the_64bit_protocol() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("vmlinux");
    let mut cmd = ferrovisor(&asm_guest(AsmGuest::LinuxElf));
    cmd.arg("--initramfs")
        .arg(initramfs(&dir))
        .args(["--cmdline", "console=ttyS0 root=/dev/vda"]);
    let out = run(cmd);
    check_linux64(&out, 512);
    assert!(out.log.contains("Linux ELF vmlinux"), "{}", out.log);
}

#[test]
fn bzimage_boots_through_the_64bit_protocol() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("bzimage");
    let mut cmd = ferrovisor(&asm_guest(AsmGuest::BzImage));
    cmd.arg("--initramfs").arg(initramfs(&dir)).args([
        "--cmdline",
        "console=ttyS0 root=/dev/vda",
        "--memory",
        "size=128M",
    ]);
    let out = run(cmd);
    check_linux64(&out, 128);
    assert!(out.log.contains("bzImage"), "{}", out.log);
}

#[test]
fn four_gib_guest_has_ram_above_the_pci_hole() {
    if !require_kvm() {
        return;
    }
    let out = run({
        let mut c = ferrovisor(&asm_guest(AsmGuest::LinuxElf));
        c.args(["--memory", "size=4G", "--cmdline", "big"]);
        c
    });
    assert_eq!(out.code(), debug_exit(0), "{out:#?}");
    assert_eq!(
        out.line("linux64: e820 addr=0x100000000"),
        Some("linux64: e820 addr=0x100000000 size=0x40000000 type=1")
    );
    assert_eq!(
        out.line("linux64: e820 addr=0x100000 "),
        Some("linux64: e820 addr=0x100000 size=0xbff00000 type=1")
    );
}
