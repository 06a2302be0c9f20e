//! ACPI CPU discovery: the MADT's enabled local APIC entries, through the
//! `acpi` crate.

use crate::acpi_access::IdentityMap;
use crate::bail;
use crate::cpus::{CpuList, Source};
use crate::exit::Reason;
use crate::fail_reason;
use crate::phys::PhysRange;
use acpi::madt::{Madt, MadtEntry};
use acpi::AcpiTables;

/// Size of the fixed MADT header (SDT header, LAPIC address, flags).
const MADT_HEADER_LEN: u64 = 44;
/// Flags bit 0 of local APIC and x2APIC entries.
pub const LAPIC_ENABLED: u32 = 1 << 0;

/// Lists the enabled CPUs in the MADT, finding the RSDP through
/// `rsdp_paddr` or, if that is 0, the BIOS search areas.
pub fn cpus(rsdp_paddr: u64) -> Result<CpuList, Reason> {
    let tables = if rsdp_paddr != 0 {
        // SAFETY: the loader says an RSDP lives there; the crate validates it.
        unsafe { AcpiTables::from_rsdp(IdentityMap, rsdp_paddr as usize) }
    } else {
        // SAFETY: PVH guests boot on BIOS-style platforms (no UEFI), so the
        // EBDA and 0xe0000..0xfffff are the places to look.
        unsafe { AcpiTables::search_for_rsdp_bios(IdentityMap) }
    }
    .map_err(|e| fail_reason!("no mptable, and no acpi tables: {:?}", e))?;
    let madt = tables
        .find_table::<Madt>()
        .map_err(|e| fail_reason!("no mptable, and no madt: {:?}", e))?;
    check_entries(madt.physical_start() as u64, madt.region_length() as u64)?;

    let mut cpus = CpuList::new(Source::Acpi);
    for entry in madt.get().entries() {
        match entry {
            MadtEntry::LocalApic(lapic) if lapic.flags & LAPIC_ENABLED != 0 => {
                cpus.push(u32::from(lapic.apic_id))?;
            }
            MadtEntry::LocalX2Apic(x2apic) if x2apic.flags & LAPIC_ENABLED != 0 => {
                cpus.push(x2apic.x2apic_id)?;
            }
            _ => {}
        }
    }
    cpus.check_unique()?;
    Ok(cpus)
}

/// Checks that the entry lengths tile the table exactly (the crate's
/// iterator trusts them).
pub fn check_entries(addr: u64, len: u64) -> Result<(), Reason> {
    // SAFETY: the crate mapped and checksummed this table.
    let table = unsafe { PhysRange::new("madt", addr, len)? };
    if len < MADT_HEADER_LEN {
        bail!("madt length {} too short", len);
    }
    let mut offset = MADT_HEADER_LEN;
    while offset < len {
        let entry_len = u64::from(table.byte(offset + 1));
        if entry_len < 2 || offset + entry_len > len {
            bail!(
                "madt entry at offset {} has bad length {}",
                offset,
                entry_len
            );
        }
        offset += entry_len;
    }
    Ok(())
}
