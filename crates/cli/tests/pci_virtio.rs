//! The PCI platform as the probe guest sees it: ACPI tables read with the
//! `acpi` crate, bus 0 enumerated through both configuration mechanisms, and
//! virtio-rng driven by the `virtio-drivers` crate with MSI-X interrupts.

mod common;
use common::*;

fn probe_run(cmdline: &str, extra: &[&str]) -> Exited {
    let mut cmd = ferrovisor(&probe());
    cmd.args(["--cmdline", cmdline, "--memory", "size=256M"])
        .args(extra);
    run(cmd)
}

#[test]
fn acpi_tables_describe_the_platform() {
    if !require_kvm() {
        return;
    }
    let out = probe_run("probe=acpi", &["--cpus", "boot=3"]);
    assert_eq!(out.code(), debug_exit(0), "{out:#?}");
    assert_eq!(
        out.line("probe: acpi oem="),
        Some("probe: acpi oem=FERROV revision=2 root=XSDT tables=FACP,APIC,MCFG,DSDT")
    );
    assert_eq!(
        out.line("probe: acpi madt"),
        Some("probe: acpi madt lapics=3 x2apics=0 ioapics=1 isos=9->9")
    );
    assert_eq!(
        out.line("probe: acpi fadt"),
        Some("probe: acpi fadt sci=9 pm1a_evt=0x600 pm1a_cnt=0x604 pm_tmr=0x608 reset=io:0xcf9=0x06 flags=0x425")
    );
    assert_eq!(
        out.line("probe: acpi mcfg"),
        Some("probe: acpi mcfg base=0xe0000000 buses=0-0")
    );
    assert_eq!(out.field("probe: acpi dsdt", "s5").as_deref(), Some("5"));
    assert_eq!(
        out.field("probe: acpi dsdt", "pci0").as_deref(),
        Some("yes")
    );
    assert_eq!(
        out.line("probe: acpi checksums"),
        Some("probe: acpi checksums rsdp=ok root=ok madt=ok fadt=ok dsdt=ok")
    );
}

#[test]
fn acpi_s5_powers_off() {
    if !require_kvm() {
        return;
    }
    // The probe takes PM1a_CNT and the S5 sleep type from the FADT and DSDT.
    let out = probe_run("probe=poweroff", &[]);
    assert_eq!(out.code(), 0, "{out:#?}");
    assert!(out.log.contains("guest powered off"), "{}", out.log);
}

#[test]
fn pci_bus_enumerates_through_ports_and_ecam() {
    if !require_kvm() {
        return;
    }
    let bare = probe_run("probe=pci", &[]);
    assert_eq!(bare.code(), debug_exit(0), "{bare:#?}");
    assert_eq!(
        bare.field("probe: pci count", "count").as_deref(),
        Some("1")
    );
    assert!(
        bare.line("probe: pci 00:00.0 vendor=0x1b36 device=0x0008 class=0x060000")
            .is_some(),
        "{bare:#?}"
    );

    let out = probe_run("probe=pci", &["--rng"]);
    assert_eq!(out.code(), debug_exit(0), "{out:#?}");
    assert!(
        out.line("probe: pci legacy and ecam agree").is_some(),
        "{out:#?}"
    );
    assert_eq!(out.field("probe: pci count", "count").as_deref(), Some("2"));
    let rng = out
        .line("probe: pci 00:01.0")
        .expect("virtio-rng at slot 1");
    assert!(
        rng.contains("vendor=0x1af4 device=0x1044 class=0xff0000 irq_pin=1"),
        "{rng}"
    );
    assert!(
        rng.contains("0x11(msix)") && rng.contains("bar0=mem64:0xc0000000+0x8000"),
        "{rng}"
    );
}

#[test]
fn virtio_rng_delivers_entropy_with_msix() {
    if !require_kvm() {
        return;
    }
    let out = probe_run("probe=rng", &["--rng", "--cpus", "boot=2"]);
    assert_eq!(out.code(), debug_exit(0), "{out:#?}");
    assert_eq!(
        out.field("probe: rng bytes", "bytes").as_deref(),
        Some("65536")
    );
    assert_eq!(
        out.field("probe: rng bytes", "distinct").as_deref(),
        Some("256")
    );
    let irqs: u32 = out
        .field("probe: rng bytes", "msix_irqs")
        .unwrap()
        .parse()
        .unwrap();
    assert!(irqs > 0, "completions arrive through MSI-X");
    assert!(out.line("probe: PASS").is_some());
}

#[test]
fn no_rng_device_fails_the_rng_program() {
    if !require_kvm() {
        return;
    }
    let out = probe_run("probe=rng", &[]);
    assert_eq!(out.code(), debug_exit(1), "{out:#?}");
}

/// The guest ABI: a configuration always yields the same PCI layout, and
/// `addr=` pins a slot. This is the layout pinned for every release.
#[test]
fn pci_layout_is_stable_and_addr_pins_slots() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("pci-layout");
    let a = dir.join("a.img");
    let b = dir.join("b.img");
    for p in [&a, &b] {
        std::fs::File::create(p).unwrap().set_len(8 << 20).unwrap();
    }
    let out = probe_run(
        "probe=pci",
        &[
            "--disk",
            &format!("path={}", a.display()),
            "--disk",
            &format!("path={},addr=5", b.display()),
            "--rng",
        ],
    );
    assert_eq!(out.code(), debug_exit(0), "{out:#?}");
    let layout: Vec<String> = out
        .serial
        .iter()
        .filter(|l| l.starts_with("probe: pci 00:"))
        .map(|l| l.split_whitespace().take(5).collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        layout,
        [
            "probe: pci 00:00.0 vendor=0x1b36 device=0x0008",
            "probe: pci 00:01.0 vendor=0x1af4 device=0x1042",
            "probe: pci 00:02.0 vendor=0x1af4 device=0x1044",
            "probe: pci 00:05.0 vendor=0x1af4 device=0x1042",
        ]
    );
}

/// Without MSI-X the device interrupts through INTA#, routed to the GSI the
/// DSDT's _PRT gives for its slot (16 + slot % 8) and the IOAPIC.
#[test]
fn virtio_rng_falls_back_to_intx() {
    if !require_kvm() {
        return;
    }
    let out = probe_run("probe=rng irq=intx", &["--rng"]);
    assert_eq!(out.code(), debug_exit(0), "{out:#?}");
    assert_eq!(out.field("probe: rng bytes", "gsi").as_deref(), Some("17"));
    let irqs: u32 = out
        .field("probe: rng bytes", "intx_irqs")
        .unwrap()
        .parse()
        .unwrap();
    assert!(irqs > 0, "{out:#?}");
    assert_eq!(
        out.field("probe: rng intx pin", "line").as_deref(),
        Some("17")
    );
}

/// The guest's ACPI reboot: the FADT's reset register (0xCF9, which shares
/// the PCI configuration ports) with its reset value.
#[test]
fn acpi_reset_register_reboots() {
    if !require_kvm() {
        return;
    }
    let out = probe_run("probe=reboot method=acpi", &["--on-reboot", "exit"]);
    assert_eq!(out.code(), 0, "{out:#?}");
    assert_eq!(
        out.line("probe: rebooting"),
        Some("probe: rebooting method=acpi reg=io:0xcf9 value=0x06")
    );
    assert!(
        out.log
            .contains("guest rebooted; exiting (--on-reboot exit)"),
        "{}",
        out.log
    );
}
