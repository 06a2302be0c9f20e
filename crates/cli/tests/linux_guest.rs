//! Tier-4 tests with a real Linux guest built from Debian packages by the
//! guest kit. They need hardware virtualization: on other hosts (such as
//! software PVM KVM) they say so plainly instead of passing silently.

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn base64_matches_rfc4648() {
    assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    assert_eq!(base64(b"fooba"), "Zm9vYmE=");
    assert_eq!(base64(b"foob"), "Zm9vYg==");
}

/// Builds the guest kit and returns (vmlinuz, initramfs).
fn guest_kit() -> (std::path::PathBuf, std::path::PathBuf) {
    let root = e2e::host::repo_root();
    let out = Command::new("bash")
        .arg(root.join("guests/linux-kit/build.sh"))
        .arg(root.join("target/guest-kit"))
        .output()
        .expect("run the guest kit");
    assert!(
        out.status.success(),
        "guest kit failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = std::path::PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("kit prints its directory")
            .trim(),
    );
    (dir.join("vmlinuz"), dir.join("initramfs.cpio.gz"))
}

#[test]
fn linux_guest_boots_smp_and_runs_a_script() {
    if !e2e::host::hardware_virtualization() {
        eprintln!("Linux guest tests not run: KVM on this host is not hardware-backed");
        return;
    }
    assert!(require_kvm());
    let (kernel, initramfs) = guest_kit();
    let script = "grep -c ^processor /proc/cpuinfo; cat /proc/cmdline";
    let mut cmd = ferrovisor(&kernel);
    cmd.arg("--initramfs").arg(&initramfs).args([
        "--cpus",
        "boot=2",
        "--memory",
        "size=512M",
        "--cmdline",
        &format!(
            "console=ttyS0 reboot=k panic=-1 kit.run={}",
            base64(script.as_bytes())
        ),
    ]);
    let mut vm = VmProcess::spawn(cmd);
    vm.wait_for_line("kit: init ok", Duration::from_secs(120));
    vm.wait_for_line("kit: exit=0", Duration::from_secs(60));
    vm.signal(libc::SIGTERM);
    let out = vm.wait(Duration::from_secs(10));
    assert_eq!(out.code(), 0);
    assert!(
        out.serial.iter().any(|l| l.trim() == "2"),
        "two CPUs online: {:#?}",
        out.serial
    );
}
