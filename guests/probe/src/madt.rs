//! ACPI CPU discovery: the MADT's enabled local APIC entries, through the
//! `acpi` crate.

use crate::bail;
use crate::cpus::{CpuList, Source};
use crate::exit::Reason;
use crate::fail_reason;
use crate::phys::{PhysRange, MAPPED_LIMIT};
use acpi::madt::{Madt, MadtEntry};
use acpi::{AcpiHandler, AcpiTables, PhysicalMapping};
use core::ptr::NonNull;

/// Size of the fixed MADT header (SDT header, LAPIC address, flags).
const MADT_HEADER_LEN: u64 = 44;
const LAPIC_ENABLED: u32 = 1 << 0;

/// Maps ACPI tables through the boot identity map.
#[derive(Clone, Copy)]
struct IdentityMap;

impl AcpiHandler for IdentityMap {
    unsafe fn map_physical_region<T>(
        &self,
        physical_address: usize,
        size: usize,
    ) -> PhysicalMapping<Self, T> {
        let end = physical_address as u64 + size as u64;
        // The trait cannot return an error: a bad address in a table ends the
        // probe through the panic handler, which prints FAIL with the reason.
        let Some(virtual_start) =
            NonNull::new(physical_address as *mut T).filter(|_| end <= MAPPED_LIMIT)
        else {
            panic!(
                "acpi table at {:#x} (+{:#x}) is not mapped",
                physical_address, size
            );
        };
        // SAFETY: physical == virtual below 4 GiB (checked above).
        unsafe { PhysicalMapping::new(physical_address, virtual_start, size, size, *self) }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

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
    Ok(cpus)
}

/// Checks that the entry lengths tile the table exactly (the crate's
/// iterator trusts them).
fn check_entries(addr: u64, len: u64) -> Result<(), Reason> {
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
