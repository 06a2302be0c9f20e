//! `probe=acpi`: the RSDP, the tables its RSDT/XSDT lists, and what the
//! MADT, FADT, MCFG and DSDT say; checksums of the RSDP, root table, FADT,
//! MADT and DSDT.

use super::Outcome;
use crate::acpi_access::{self, Tables};
use crate::exit::Reason;
use crate::phys::PhysRange;
use crate::start_info::StartInfo;
use crate::{aml_scan, bail, fail_reason, madt, say, text};
use acpi::address::{AddressSpace, GenericAddress};
use acpi::fadt::Fadt;
use acpi::madt::{Madt, MadtEntry};
use acpi::mcfg::Mcfg;
use acpi::AcpiTable;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::{self, Write};

/// RSDP: ACPI 1.0 and 2.0 lengths, and the offsets of its fields.
const RSDP_V1_LEN: u64 = 20;
const RSDP_V2_LEN: u64 = 36;
const RSDP_OEM_ID: u64 = 9;
const RSDP_REVISION: u64 = 15;
const RSDP_RSDT: u64 = 16;
const RSDP_LENGTH: u64 = 20;
const RSDP_XSDT: u64 = 24;
/// FADT fields the crate keeps private, and the length needed for later ones.
const FADT_FLAGS: u64 = 112;
const FADT_RESET_END: u32 = 129;
const FADT_SLEEP_CONTROL_END: u32 = 256;

pub fn run(info: &StartInfo) -> Outcome {
    let found = acpi_access::find(info.rsdp_paddr)?;
    let mut checks = Checks::default();

    // SAFETY: firmware tables are not written while the probe runs.
    let rsdp = unsafe { PhysRange::new("rsdp", found.rsdp_addr, RSDP_V1_LEN)? };
    let revision = rsdp.byte(RSDP_REVISION);
    let oem: String = (RSDP_OEM_ID..RSDP_OEM_ID + 6)
        .map(|i| char::from(rsdp.byte(i)))
        .collect();
    let mut rsdp_ok = rsdp.checksum_ok();
    let (root_name, root_addr) = if revision >= 2 {
        // SAFETY: as above; an ACPI 2.0 RSDP has the length and XSDT fields.
        let v2 = unsafe { PhysRange::new("rsdp", found.rsdp_addr, RSDP_V2_LEN)? };
        let len = u64::from(v2.read::<u32>(RSDP_LENGTH).unwrap_or(0));
        // SAFETY: as above, with the length the RSDP declares.
        let extended = unsafe { PhysRange::new("rsdp", found.rsdp_addr, len.max(RSDP_V2_LEN))? };
        rsdp_ok &= extended.checksum_ok();
        ("XSDT", v2.read::<u64>(RSDP_XSDT).unwrap_or(0))
    } else {
        ("RSDT", u64::from(rsdp.read::<u32>(RSDP_RSDT).unwrap_or(0)))
    };
    checks.add("rsdp", Ok(rsdp_ok));
    checks.add(
        "root",
        acpi_access::table(root_addr, root_name).map(|t| t.checksum_ok()),
    );

    let mut tables = String::new();
    for header in found.tables.headers() {
        let _ = write!(tables, "{},", header.signature.as_str());
    }
    tables.push_str("DSDT");
    say!(
        "acpi oem={} revision={} root={} tables={}",
        oem.trim_end(),
        revision,
        root_name,
        tables
    );

    report_madt(&found, &mut checks)?;
    let fadt = report_fadt(&found, &mut checks)?;
    report_mcfg(&found)?;
    if let Some(fadt) = fadt {
        report_dsdt(&fadt, &mut checks)?;
    } else {
        checks.add("dsdt", Err(fail_reason!("no fadt")));
    }

    say!("acpi checksums {}", checks);
    checks.verdict()
}

/// The PASS conditions: each table found, with a valid checksum.
#[derive(Default)]
struct Checks(Vec<(&'static str, Result<bool, Reason>)>);

impl Checks {
    fn add(&mut self, name: &'static str, checksum: Result<bool, Reason>) {
        self.0.push((name, checksum));
    }

    fn verdict(self) -> Outcome {
        for (name, checksum) in self.0 {
            match checksum {
                Ok(true) => {}
                Ok(false) => bail!("{} checksum is invalid", name),
                Err(reason) => return Err(reason),
            }
        }
        Ok(())
    }
}

impl fmt::Display for Checks {
    /// `rsdp=ok root=ok fadt=bad madt=missing`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, checksum)) in self.0.iter().enumerate() {
            let state = match checksum {
                Ok(true) => "ok",
                Ok(false) => "bad",
                Err(_) => "missing",
            };
            write!(f, "{}{}={}", if i > 0 { " " } else { "" }, name, state)?;
        }
        Ok(())
    }
}

fn report_madt(found: &Tables, checks: &mut Checks) -> Outcome {
    let madt = match found.tables.find_table::<Madt>() {
        Ok(madt) => madt,
        Err(e) => {
            say!("acpi madt none");
            checks.add("madt", Err(fail_reason!("no madt: {:?}", e)));
            return Ok(());
        }
    };
    let addr = madt.physical_start() as u64;
    checks.add(
        "madt",
        acpi_access::table(addr, "madt").map(|t| t.checksum_ok()),
    );
    madt::check_entries(addr, madt.region_length() as u64)?;
    let (mut lapics, mut x2apics, mut ioapics) = (0, 0, 0);
    let mut isos = String::new();
    for entry in madt.get().entries() {
        match entry {
            MadtEntry::LocalApic(lapic) if lapic.flags & madt::LAPIC_ENABLED != 0 => lapics += 1,
            MadtEntry::LocalX2Apic(x2apic) if x2apic.flags & madt::LAPIC_ENABLED != 0 => {
                x2apics += 1
            }
            MadtEntry::IoApic(_) => ioapics += 1,
            MadtEntry::InterruptSourceOverride(iso) => {
                let (irq, gsi) = (iso.irq, iso.global_system_interrupt);
                let sep = if isos.is_empty() { "" } else { "," };
                let _ = write!(isos, "{}{}->{}", sep, irq, gsi);
            }
            _ => {}
        }
    }
    if isos.is_empty() {
        isos.push_str("none");
    }
    say!(
        "acpi madt lapics={} x2apics={} ioapics={} isos={}",
        lapics,
        x2apics,
        ioapics,
        isos
    );
    Ok(())
}

/// A generic address as `0x604` (I/O), `mem:0xfea00200`, or `none`.
struct Gas(Option<GenericAddress>);

impl fmt::Display for Gas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(gas) if gas.address != 0 => match gas.address_space {
                AddressSpace::SystemIo => write!(f, "{:#x}", gas.address),
                space => write!(f, "{}:{:#x}", space_name(space), gas.address),
            },
            _ => f.write_str("none"),
        }
    }
}

fn space_name(space: AddressSpace) -> &'static str {
    match space {
        AddressSpace::SystemMemory => "mem",
        AddressSpace::SystemIo => "io",
        AddressSpace::PciConfigSpace => "pci",
        AddressSpace::EmbeddedController => "ec",
        AddressSpace::SMBus => "smbus",
        AddressSpace::SystemCmos => "cmos",
        AddressSpace::FunctionalFixedHardware => "ffh",
        _ => "other",
    }
}

fn report_fadt(
    found: &Tables,
    checks: &mut Checks,
) -> Result<Option<acpi::PhysicalMapping<acpi_access::IdentityMap, Fadt>>, Reason> {
    let fadt = match found.tables.find_table::<Fadt>() {
        Ok(fadt) => fadt,
        Err(e) => {
            say!("acpi fadt none");
            checks.add("fadt", Err(fail_reason!("no fadt: {:?}", e)));
            return Ok(None);
        }
    };
    let table = acpi_access::table(fadt.physical_start() as u64, "fadt")?;
    checks.add("fadt", Ok(table.checksum_ok()));
    let len = fadt.header().length;
    let flags = table.read::<u32>(FADT_FLAGS).unwrap_or(0);
    let sci = fadt.sci_interrupt;
    let reset = if len >= FADT_RESET_END {
        fadt.reset_register().ok().filter(|gas| gas.address != 0)
    } else {
        None
    };
    let reset = match reset {
        Some(gas) => text!(
            "{}:{:#x}={:#04x}",
            space_name(gas.address_space),
            gas.address,
            fadt.reset_value
        ),
        None => text!("none"),
    };
    let sleep_control = if len >= FADT_SLEEP_CONTROL_END {
        fadt.sleep_control_register()
            .ok()
            .flatten()
            .filter(|gas| gas.address != 0)
    } else {
        None
    };
    let sleep_control = match sleep_control {
        Some(gas) => text!(" sleep_ctl={}", Gas(Some(gas))),
        None => text!(""),
    };
    say!(
        "acpi fadt sci={} pm1a_evt={} pm1a_cnt={} pm_tmr={} reset={} flags={:#x}{}",
        sci,
        Gas(fadt.pm1a_event_block().ok()),
        Gas(fadt.pm1a_control_block().ok()),
        Gas(fadt.pm_timer_block().ok().flatten()),
        reset,
        flags,
        sleep_control
    );
    Ok(Some(fadt))
}

fn report_mcfg(found: &Tables) -> Outcome {
    let Ok(mcfg) = found.tables.find_table::<Mcfg>() else {
        say!("acpi mcfg none");
        return Ok(());
    };
    for entry in mcfg.entries() {
        let (base, segment) = (entry.base_address, entry.pci_segment_group);
        let (start, end) = (entry.bus_number_start, entry.bus_number_end);
        if segment == 0 {
            say!("acpi mcfg base={:#x} buses={}-{}", base, start, end);
        } else {
            say!(
                "acpi mcfg base={:#x} buses={}-{} segment={}",
                base,
                start,
                end,
                segment
            );
        }
    }
    Ok(())
}

fn report_dsdt(fadt: &Fadt, checks: &mut Checks) -> Outcome {
    let dsdt = match acpi_access::dsdt(fadt) {
        Ok(dsdt) => dsdt,
        Err(reason) => {
            say!("acpi dsdt none");
            checks.add("dsdt", Err(reason));
            return Ok(());
        }
    };
    let bytes = acpi_access::copy(&dsdt);
    let checksum_ok = bytes.iter().fold(0u8, |sum, &b| sum.wrapping_add(b)) == 0;
    checks.add("dsdt", Ok(checksum_ok));
    let aml = bytes
        .get(acpi_access::SDT_HEADER_LEN as usize..)
        .unwrap_or(&[]);
    let s5 = match aml_scan::s5_slp_typa(aml) {
        Some(value) => text!("{}", value),
        None => text!("none"),
    };
    let pci0 = if aml_scan::declares_device(aml, b"PCI0") {
        "yes"
    } else {
        "no"
    };
    let cba = match aml_scan::config_base(aml) {
        Some(base) => text!("{:#x}", base),
        None => text!("none"),
    };
    say!(
        "acpi dsdt bytes={} s5={} pci0={} cba={}",
        bytes.len(),
        s5,
        pci0,
        cba
    );
    Ok(())
}
