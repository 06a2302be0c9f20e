//! Bad configuration ends ferrovisor at once with one line naming the flag
//! and exit status 2.

mod common;
use common::*;
use std::process::Command;

fn refused(args: &[&str], flag: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferrovisor"))
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "{args:?}: one line expected: {stderr}"
    );
    assert!(
        stderr.contains(flag),
        "{args:?}: the error must name {flag}: {stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn each_bad_configuration_is_refused_with_status_2() {
    let dir = TempDir::new("badcfg");
    let kernel = asm_guest(AsmGuest::PvhHello);
    let k = kernel.to_str().unwrap();
    let not_a_kernel = dir.join("notakernel");
    std::fs::write(&not_a_kernel, vec![0x55u8; 4096]).unwrap();
    let nk = not_a_kernel.to_str().unwrap();
    let big = dir.join("big");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let bg = big.to_str().unwrap();

    refused(&[], "--kernel");
    refused(&["--kernel", "/nonexistent/kernel"], "--kernel");
    refused(&["--kernel", dir.path().to_str().unwrap()], "--kernel");
    refused(&["--kernel", nk], "--kernel");
    refused(&["--kernel", bg, "--memory", "size=32M"], "--kernel");
    refused(
        &["--kernel", k, "--initramfs", "/nonexistent/initrd"],
        "--initramfs",
    );
    refused(&["--kernel", k, "--cpus", "boot=0"], "--cpus");
    refused(&["--kernel", k, "--cpus", "boot=100000"], "--cpus");
    refused(&["--kernel", k, "--cpus", "boot=two"], "--cpus");
    refused(&["--kernel", k, "--cpus", "sockets=1"], "--cpus");
    refused(&["--kernel", k, "--memory", "size=1M"], "--memory");
    refused(&["--kernel", k, "--memory", "size=1000T"], "--memory");
    refused(&["--kernel", k, "--memory", "size=lots"], "--memory");
    refused(&["--kernel", k, "--serial", "carrier-pigeon"], "--serial");
    refused(&["--kernel", k, "--on-reboot", "explode"], "--on-reboot");
    refused(&["--kernel", k, "--frobnicate"], "--frobnicate");
    for net in [
        "num_queues=2",
        "tap=fvx,num_queues=3",
        "tap=fvx,queue_size=1000",
        "tap=fvx,fd=4",
        "tap=fvx,mac=01:00:5e:00:00:01",
        "tap=fvx,ip=10.0.0.1,mask=255.0.255.0",
        "fd=1",
    ] {
        refused(&["--kernel", k, "--net", net], "--net");
    }
    refused(
        &["--kernel", k, "--cmdline", &"x".repeat(70_000)],
        "--cmdline",
    );
}
