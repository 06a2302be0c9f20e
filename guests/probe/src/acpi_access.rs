//! Access to the firmware's ACPI tables through the `acpi` crate: the
//! identity-mapping handler, finding the RSDP, and copies of AML tables.

use crate::exit::Reason;
use crate::fail_reason;
use crate::phys::{PhysRange, MAPPED_LIMIT};
use acpi::fadt::Fadt;
use acpi::rsdp::Rsdp;
use acpi::{AcpiHandler, AcpiTables, PhysicalMapping};
use alloc::vec::Vec;
use core::ptr::NonNull;

/// Size of an SDT header.
pub const SDT_HEADER_LEN: u64 = 36;

/// Maps ACPI tables through the boot identity map.
#[derive(Clone, Copy)]
pub struct IdentityMap;

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

/// The tables and where their RSDP was found.
pub struct Tables {
    pub tables: AcpiTables<IdentityMap>,
    /// Physical address of the RSDP.
    pub rsdp_addr: u64,
}

/// Finds the RSDP through `rsdp_paddr` or, if that is 0, the BIOS search
/// areas (EBDA, 0xe0000..0xfffff), and opens its RSDT/XSDT.
pub fn find(rsdp_paddr: u64) -> Result<Tables, Reason> {
    let rsdp = if rsdp_paddr != 0 {
        // SAFETY: the loader says an RSDP lives there; it is validated next.
        let rsdp = unsafe {
            IdentityMap
                .map_physical_region::<Rsdp>(rsdp_paddr as usize, core::mem::size_of::<Rsdp>())
        };
        rsdp.validate()
            .map_err(|e| fail_reason!("bad rsdp at {:#x}: {:?}", rsdp_paddr, e))?;
        rsdp
    } else {
        // SAFETY: PVH guests boot on BIOS-style platforms (no UEFI), so the
        // EBDA and 0xe0000..0xfffff are the places to look.
        unsafe { Rsdp::search_for_on_bios(IdentityMap) }
            .map_err(|e| fail_reason!("no rsdp found: {:?}", e))?
    };
    let rsdp_addr = rsdp.physical_start() as u64;
    // SAFETY: the RSDP was validated above (or by the search).
    let tables = unsafe { AcpiTables::from_validated_rsdp(IdentityMap, rsdp) }
        .map_err(|e| fail_reason!("bad acpi root table: {:?}", e))?;
    Ok(Tables { tables, rsdp_addr })
}

/// The DSDT (header included) named by the FADT.
pub fn dsdt(fadt: &Fadt) -> Result<PhysRange, Reason> {
    let addr = fadt
        .dsdt_address()
        .map_err(|e| fail_reason!("fadt names no dsdt: {:?}", e))? as u64;
    table(addr, "dsdt")
}

/// A table at `addr`, with the length its header declares.
pub fn table(addr: u64, what: &str) -> Result<PhysRange, Reason> {
    // SAFETY: firmware tables are not written while the probe runs.
    let header = unsafe { PhysRange::new(what, addr, SDT_HEADER_LEN)? };
    let len = u64::from(header.read::<u32>(4).unwrap_or(0));
    if len < SDT_HEADER_LEN {
        return Err(fail_reason!("{} at {:#x} has length {}", what, addr, len));
    }
    // SAFETY: as above, with the declared length.
    unsafe { PhysRange::new(what, addr, len) }
}

/// A copy of `range` (so AML can be scanned as a slice).
pub fn copy(range: &PhysRange) -> Vec<u8> {
    let mut bytes = alloc::vec![0u8; range.len() as usize];
    // SAFETY: `range` is identity mapped and readable for its length (see
    // `PhysRange::new`); the vector is a separate allocation of that length.
    unsafe {
        core::ptr::copy_nonoverlapping(range.addr() as *const u8, bytes.as_mut_ptr(), bytes.len());
    }
    bytes
}
