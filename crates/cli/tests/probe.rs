//! The probe guest (guests/probe) under ferrovisor: boot information, memory
//! map, CPUs started through INIT/SIPI, APIC timer interrupts, the RTC, and
//! the same probe under QEMU for comparison.

mod common;
use common::*;
use std::process::Command;

fn probe_run(cmdline: &str, cpus: u32, memory: &str) -> Exited {
    let mut cmd = ferrovisor(&probe());
    cmd.args([
        "--cmdline",
        cmdline,
        "--cpus",
        &format!("boot={cpus}"),
        "--memory",
        &format!("size={memory}"),
    ]);
    run(cmd)
}

fn assert_boot_report(out: &Exited, cpus: u32) {
    assert_eq!(out.code(), debug_exit(0), "{out:#?}");
    assert_eq!(out.serial.first().map(String::as_str), Some("probe: hello"));
    assert_eq!(
        out.line("probe: boot protocol="),
        Some("probe: boot protocol=pvh start_info_version=1")
    );
    assert_eq!(
        out.field("probe: cpus", "source").as_deref(),
        Some("mptable")
    );
    assert_eq!(out.field("probe: cpus", "count"), Some(cpus.to_string()));
    assert_eq!(
        out.field("probe: cpus", "bsp_apic_id").as_deref(),
        Some("0")
    );
    assert_eq!(
        out.field("probe: aps", "started"),
        Some((cpus - 1).to_string())
    );
    let ids: Vec<String> = (0..cpus).map(|i| i.to_string()).collect();
    assert_eq!(out.field("probe: apic", "ids"), Some(ids.join(",")));
    let ticks: u32 = out
        .field("probe: apic timer", "ticks")
        .unwrap()
        .parse()
        .unwrap();
    assert!(ticks >= 10, "APIC timer interrupts: {ticks}");
    assert!(out.line("probe: PASS").is_some(), "{out:#?}");
}

#[test]
fn one_vcpu() {
    if !require_kvm() {
        return;
    }
    let out = probe_run("probe=boot", 1, "512M");
    assert_boot_report(&out, 1);
    assert_eq!(
        out.line("probe: cmdline="),
        Some("probe: cmdline=probe=boot")
    );
}

#[test]
fn two_vcpus() {
    if !require_kvm() {
        return;
    }
    assert_boot_report(&probe_run("probe=boot", 2, "512M"), 2);
}

#[test]
fn eight_vcpus() {
    if !require_kvm() {
        return;
    }
    assert_boot_report(&probe_run("probe=boot", 8, "512M"), 8);
}

#[test]
fn sixty_four_vcpus() {
    if !require_kvm() {
        return;
    }
    assert_boot_report(&probe_run("probe=boot", 64, "1G"), 64);
}

fn e820_lines(out: &Exited) -> Vec<&str> {
    out.serial
        .iter()
        .filter(|l| l.starts_with("probe: e820"))
        .map(String::as_str)
        .collect()
}

#[test]
fn memory_sizes_reach_the_guest() {
    if !require_kvm() {
        return;
    }
    // 640 KiB less the EBDA, plus everything from 1 MiB up, less nothing else.
    for (size, mib, top) in [
        ("128M", 127, None),
        ("512M", 511, None),
        (
            "4G",
            4095,
            Some("probe: e820 addr=0x100000000 size=0x40000000 type=1"),
        ),
    ] {
        let out = probe_run("probe=boot", 1, size);
        assert_boot_report(&out, 1);
        assert_eq!(
            out.field("probe: ram", "total_mib"),
            Some(mib.to_string()),
            "{size}"
        );
        assert_eq!(
            e820_lines(&out)[..2],
            [
                "probe: e820 addr=0x0 size=0x9fc00 type=1",
                "probe: e820 addr=0x9fc00 size=0x60400 type=2"
            ]
        );
        if let Some(line) = top {
            assert!(
                e820_lines(&out).contains(&line),
                "{size}: {:#?}",
                e820_lines(&out)
            );
        }
    }
}

#[test]
fn rtc_shows_the_host_date() {
    if !require_kvm() {
        return;
    }
    let out = probe_run("probe=boot", 1, "128M");
    let line = out.line("probe: rtc ").expect("rtc line").to_string();
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .unwrap();
    let today = String::from_utf8_lossy(&date.stdout).trim().to_string();
    // The run may straddle midnight; the year and month are enough then.
    assert!(
        line.contains(&today) || line.contains(&today[..7]),
        "{line} vs {today}"
    );
}

/// The probe is ours only as a guest: it runs unchanged under QEMU.
#[test]
fn probe_runs_unchanged_under_qemu() {
    if !require_kvm() {
        return;
    }
    let qemu = "qemu-system-x86_64";
    if Command::new(qemu).arg("--version").output().is_err() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(!ci, "QEMU is required in CI (scripts/test.sh installs it)");
        eprintln!("QEMU cross-check not run: {qemu} is not installed");
        return;
    }
    let mut cmd = Command::new(qemu);
    cmd.args([
        "-M",
        "microvm,rtc=on",
        "-enable-kvm",
        "-cpu",
        "host,-arch-capabilities",
        "-smp",
        "2",
        "-m",
        "256",
    ]);
    cmd.args([
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-serial",
        "stdio",
    ]);
    cmd.args([
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=4",
        "-append",
        "probe=boot",
        "-kernel",
    ])
    .arg(probe());
    let out = run(cmd);
    assert_eq!(out.code(), debug_exit(0), "{out:#?}");
    assert_eq!(out.field("probe: aps", "started").as_deref(), Some("1"));
    assert!(out.line("probe: PASS").is_some());
}
