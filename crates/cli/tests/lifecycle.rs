//! Lifecycle: power-off, reboot (restart or exit), guest faults, SIGTERM,
//! and the debug-exit port's statuses.

mod common;
use common::*;
use std::time::Duration;

fn probe_cmd(cmdline: &str, extra: &[&str]) -> std::process::Command {
    let mut cmd = ferrovisor(&probe());
    cmd.args(["--cmdline", cmdline, "--memory", "size=128M"])
        .args(extra);
    cmd
}

#[test]
fn power_off_exits_zero() {
    if !require_kvm() {
        return;
    }
    let out = run(probe_cmd("probe=poweroff", &[]));
    assert_eq!(out.code(), 0, "{out:#?}");
    assert!(out.log.contains("guest powered off"), "{}", out.log);
}

#[test]
fn boot_program_can_power_off_instead_of_debug_exit() {
    if !require_kvm() {
        return;
    }
    let out = run(probe_cmd("probe=boot exit=poweroff", &["--cpus", "boot=2"]));
    assert_eq!(out.code(), 0, "{out:#?}");
    assert!(out.line("probe: PASS").is_some());
}

#[test]
fn reboot_with_on_reboot_exit_ends_with_zero() {
    if !require_kvm() {
        return;
    }
    let out = run(probe_cmd("probe=reboot", &["--on-reboot", "exit"]));
    assert_eq!(out.code(), 0, "{out:#?}");
    assert!(out.line("probe: rebooting").is_some());
    assert!(
        out.log
            .contains("guest rebooted; exiting (--on-reboot exit)"),
        "{}",
        out.log
    );
    assert_eq!(
        out.serial.iter().filter(|l| *l == "probe: hello").count(),
        1
    );
}

#[test]
fn reboot_restarts_the_guest_and_sigterm_stops_it() {
    if !require_kvm() {
        return;
    }
    let mut vm = VmProcess::spawn(probe_cmd("probe=reboot", &["--cpus", "boot=2"]));
    for _ in 0..3 {
        vm.wait_for_line("probe: hello", RUN_TIMEOUT);
        vm.wait_for_line("probe: rebooting", RUN_TIMEOUT);
    }
    vm.signal(libc::SIGTERM);
    let out = vm.wait(Duration::from_secs(10));
    assert_eq!(out.code(), 0, "{out:#?}");
    assert!(
        out.log.contains("guest reset: booting again"),
        "{}",
        out.log
    );
}

#[test]
fn triple_fault_exits_three_with_registers() {
    if !require_kvm() {
        return;
    }
    let out = run(probe_cmd("probe=fault", &[]));
    assert_eq!(out.code(), 3, "{out:#?}");
    let fault: Vec<&str> = out
        .log
        .lines()
        .filter(|l| l.contains("guest fault"))
        .collect();
    assert_eq!(fault.len(), 1, "{}", out.log);
    assert!(
        fault[0].contains("guest fault on vCPU 0: triple fault (KVM_EXIT_SHUTDOWN)"),
        "{}",
        fault[0]
    );
    assert!(
        fault[0].contains("rip=0x") && fault[0].contains("cr3=0x"),
        "{}",
        fault[0]
    );
}

#[test]
fn sigterm_stops_a_running_guest() {
    if !require_kvm() {
        return;
    }
    let mut vm = VmProcess::spawn(probe_cmd("probe=echo", &["--cpus", "boot=4"]));
    vm.wait_for_line("probe: echo ready", RUN_TIMEOUT);
    vm.signal(libc::SIGTERM);
    let out = vm.wait(Duration::from_secs(10));
    assert_eq!(out.code(), 0, "{out:#?}");
}

#[test]
fn debug_exit_status_follows_qemu() {
    if !require_kvm() {
        return;
    }
    // The probe writes 0 on PASS and 1 on FAIL: statuses 1 and 3.
    let pass = run(probe_cmd("probe=boot", &[]));
    assert_eq!(pass.code(), 1);
    let fail = run(probe_cmd("probe=no-such-program", &[]));
    assert_eq!(fail.code(), 3, "{fail:#?}");
    assert!(
        fail.serial.iter().any(|l| l.starts_with("probe: FAIL")),
        "{fail:#?}"
    );
}

#[test]
fn without_debug_exit_the_port_is_inert() {
    if !require_kvm() {
        return;
    }
    // The PVH hello guest writes 0 to port 0xf4 after its power-off attempt; without
    // --debug-exit that write does nothing and the power-off decides.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ferrovisor"));
    cmd.arg("--kernel").arg(asm_guest(AsmGuest::PvhHello));
    let out = run(cmd);
    assert_eq!(out.code(), 0, "{out:#?}");
}

/// A reboot tears the whole VM instance down, PCI devices included (a
/// reference cycle between the PCI root and its buses once kept old VMs
/// alive and made the next instance's irqfd registration fail).
#[test]
fn reboot_with_pci_devices_rebuilds_the_vm() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("reboot-pci");
    let disk = dir.join("d.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let mut vm = VmProcess::spawn(probe_cmd(
        "probe=reboot",
        &[
            "--rng",
            "--disk",
            &format!("path={}", disk.display()),
            "--channel",
            &format!("name=a,socket={}", dir.join("a.sock").display()),
        ],
    ));
    for _ in 0..3 {
        vm.wait_for_line("probe: rebooting", RUN_TIMEOUT);
    }
    vm.signal(libc::SIGTERM);
    let out = vm.wait(Duration::from_secs(10));
    assert_eq!(out.code(), 0, "{out:#?}");
    assert!(
        out.log.matches("guest reset: booting again").count() >= 2,
        "{}",
        out.log
    );
    assert!(!out.log.contains("error"), "{}", out.log);
}
