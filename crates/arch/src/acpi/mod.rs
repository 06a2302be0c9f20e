//! The guest's ACPI tables: RSDP, XSDT, FADT (with FACS and DSDT), MADT and
//! MCFG, describing a PC-style platform (not hardware-reduced): the PM1a block
//! and PM timer at 0x600, the reset register at 0xCF9, the CPUs' local APICs,
//! the IOAPIC, and the PCIe host bridge with its ECAM and MMIO windows.
//!
//! The tables are built with the rust-vmm `acpi_tables` crate (typed builders
//! where it has them, raw [`Sdt`](acpi_tables::sdt::Sdt) bytes where it does
//! not) and placed in the BIOS area: the RSDP at
//! [`ACPI_RSDP_ADDR`](crate::layout::ACPI_RSDP_ADDR), where a guest that scans
//! 0xE0000–0xFFFFF finds it, and the other tables after it, below
//! [`ACPI_TABLES_END`](crate::layout::ACPI_TABLES_END). The e820 map reserves
//! that area.

mod dsdt;
mod tables;

pub use dsdt::{dsdt, pci_intx_gsi, PCI_INTX_GSI_BASE, PCI_INTX_GSI_COUNT};
pub use tables::{facs, fadt, ioapic_id, madt, madt_len, mcfg, xsdt};

use acpi_tables::rsdp::Rsdp;
use acpi_tables::Aml;

use crate::layout::{ACPI_RSDP_ADDR, ACPI_TABLES_END};
use crate::{write_bytes, Error, Result};

/// OEM ID in every table's header and in the RSDP.
pub const OEM_ID: [u8; 6] = *b"FERROV";
/// OEM table ID in every table's header (the MP table uses the same).
pub const OEM_TABLE_ID: [u8; 8] = *b"FERROVSR";
/// OEM revision in every table's header.
pub const OEM_REVISION: u32 = 1;

/// The most CPUs the tables describe (more than any KVM allows).
pub const MAX_CPUS: u32 = 1 << 16;

/// What the tables describe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiConfig {
    /// vCPUs present at boot: the first `cpus` of `apic_ids`.
    pub cpus: u32,
    /// The APIC ID of every possible vCPU, in CPU (ACPI UID) order; those
    /// past `cpus` are listed as not present yet (online capable). Empty:
    /// APIC IDs 0..cpus.
    pub apic_ids: Vec<u32>,
    /// Guest RAM in bytes (places the 64-bit PCI MMIO window above it).
    pub mem_size: u64,
}

impl AcpiConfig {
    /// `cpus` vCPUs with APIC IDs 0..cpus, all present.
    pub fn sequential(cpus: u32, mem_size: u64) -> AcpiConfig {
        AcpiConfig {
            cpus,
            apic_ids: Vec::new(),
            mem_size,
        }
    }

    /// The APIC ID of every possible vCPU.
    pub fn ids(&self) -> Vec<u32> {
        if self.apic_ids.is_empty() {
            (0..self.cpus).collect()
        } else {
            self.apic_ids.clone()
        }
    }
}

/// Where each table was placed (guest physical addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableAddresses {
    /// Root System Description Pointer.
    pub rsdp: u64,
    /// Extended System Description Table.
    pub xsdt: u64,
    /// Fixed ACPI Description Table.
    pub fadt: u64,
    /// Firmware ACPI Control Structure.
    pub facs: u64,
    /// Differentiated System Description Table.
    pub dsdt: u64,
    /// Multiple APIC Description Table.
    pub madt: u64,
    /// PCI Express memory-mapped configuration space table.
    pub mcfg: u64,
    /// First byte after the last table.
    pub end: u64,
}

/// Hands out addresses in the ACPI area, in order.
struct Area {
    next: u64,
}

impl Area {
    /// Reserves `len` bytes aligned to `align` (a power of two).
    fn take(&mut self, len: usize, align: u64) -> Result<u64> {
        let too_large = || Error::TooLarge("ACPI tables");
        let addr = self.next.checked_add(align - 1).ok_or_else(too_large)? & !(align - 1);
        let end = addr.checked_add(len as u64).ok_or_else(too_large)?;
        if end > ACPI_TABLES_END {
            return Err(too_large());
        }
        self.next = end;
        Ok(addr)
    }
}

/// The serialised bytes of an `acpi_tables` object.
pub(crate) fn to_bytes(aml: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    aml.to_aml_bytes(&mut bytes);
    bytes
}

/// A 32-bit table pointer (the area lies below 1 MiB).
fn addr32(addr: u64) -> Result<u32> {
    u32::try_from(addr).map_err(|_| Error::TooLarge("ACPI tables"))
}

/// Writes the RSDP at [`ACPI_RSDP_ADDR`] and the other tables after it
/// (ending below [`ACPI_TABLES_END`]); returns the RSDP address, to be handed
/// to the guest through its boot protocol.
pub fn write_tables(mem: &crate::GuestMemory, config: &AcpiConfig) -> Result<u64> {
    write_tables_at(mem, config).map(|a| a.rsdp)
}

/// Like [`write_tables`], and returns where every table went.
pub fn write_tables_at(mem: &crate::GuestMemory, config: &AcpiConfig) -> Result<TableAddresses> {
    if config.cpus == 0 {
        return Err(Error::Acpi("no CPUs to describe"));
    }
    let area_size = ACPI_TABLES_END - ACPI_RSDP_ADDR;
    // Checked before any list is built from the count.
    if config.cpus > MAX_CPUS || config.apic_ids.len() > MAX_CPUS as usize {
        return Err(Error::TooLarge("MADT"));
    }
    let ids = config.ids();
    if (ids.len() as u64) < u64::from(config.cpus) {
        return Err(Error::Acpi("fewer APIC IDs than CPUs"));
    }
    if madt_len(&ids) > area_size {
        return Err(Error::TooLarge("MADT"));
    }
    let dsdt = dsdt(config);
    let madt = madt(&ids, config.cpus);
    let mcfg = mcfg();
    let facs = facs();

    const TABLES_IN_XSDT: usize = 3;
    let mut area = Area {
        next: ACPI_RSDP_ADDR,
    };
    let rsdp_addr = area.take(Rsdp::len(), 16)?;
    let xsdt_addr = area.take(tables::xsdt_len(TABLES_IN_XSDT), 8)?;
    let fadt_addr = area.take(tables::FADT_LEN, 8)?;
    let madt_addr = area.take(madt.len(), 8)?;
    let mcfg_addr = area.take(mcfg.len(), 8)?;
    let facs_addr = area.take(facs.len(), 64)?;
    let dsdt_addr = area.take(dsdt.len(), 8)?;
    let end = area.next;

    let fadt = fadt(addr32(dsdt_addr)?, addr32(facs_addr)?);
    let xsdt = xsdt(&[fadt_addr, madt_addr, mcfg_addr]);
    let rsdp = to_bytes(&Rsdp::new(OEM_ID, xsdt_addr));

    write_bytes(mem, "ACPI RSDP", rsdp_addr, &rsdp)?;
    write_bytes(mem, "ACPI XSDT", xsdt_addr, &xsdt)?;
    write_bytes(mem, "ACPI FADT", fadt_addr, &fadt)?;
    write_bytes(mem, "ACPI MADT", madt_addr, &madt)?;
    write_bytes(mem, "ACPI MCFG", mcfg_addr, &mcfg)?;
    write_bytes(mem, "ACPI FACS", facs_addr, &facs)?;
    write_bytes(mem, "ACPI DSDT", dsdt_addr, &dsdt)?;
    Ok(TableAddresses {
        rsdp: rsdp_addr,
        xsdt: xsdt_addr,
        fadt: fadt_addr,
        facs: facs_addr,
        dsdt: dsdt_addr,
        madt: madt_addr,
        mcfg: mcfg_addr,
        end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bytes::{le32, le64};
    use vm_memory::{Bytes, GuestAddress};

    fn memory() -> crate::GuestMemory {
        crate::GuestMemory::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap()
    }

    fn read(mem: &crate::GuestMemory, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn rsdp_points_at_xsdt_listing_the_tables() {
        let mem = memory();
        let cfg = AcpiConfig {
            cpus: 4,
            apic_ids: Vec::new(),
            mem_size: 512 << 20,
        };
        let a = write_tables_at(&mem, &cfg).unwrap();
        assert_eq!(write_tables(&mem, &cfg).unwrap(), 0xe_0000);
        assert_eq!(a.rsdp, 0xe_0000);
        assert!(a.end <= ACPI_TABLES_END);
        assert_eq!(a.facs % 64, 0);
        let rsdp = read(&mem, a.rsdp, 36);
        assert_eq!(&rsdp[0..8], b"RSD PTR ");
        assert_eq!(&rsdp[9..15], b"FERROV");
        assert_eq!(rsdp[15], 2);
        assert_eq!(le32(&rsdp, 20), Some(36));
        assert_eq!(le64(&rsdp, 24), Some(a.xsdt));
        assert_eq!(sum(&rsdp[..20]), 0);
        assert_eq!(sum(&rsdp), 0);
        let xsdt = read(&mem, a.xsdt, 36 + 24);
        assert_eq!(&xsdt[0..4], b"XSDT");
        assert_eq!(le32(&xsdt, 4), Some(60));
        assert_eq!(sum(&xsdt), 0);
        assert_eq!(le64(&xsdt, 36), Some(a.fadt));
        assert_eq!(le64(&xsdt, 44), Some(a.madt));
        assert_eq!(le64(&xsdt, 52), Some(a.mcfg));
        let fadt = read(&mem, a.fadt, tables::FADT_LEN);
        assert_eq!(le32(&fadt, 36), Some(a.facs as u32));
        assert_eq!(le32(&fadt, 40), Some(a.dsdt as u32));
        assert_eq!(le64(&fadt, 140), Some(a.dsdt));
        assert_eq!(le64(&fadt, 132), Some(a.facs));
        assert_eq!(&read(&mem, a.dsdt, 4), b"DSDT");
        assert_eq!(&read(&mem, a.facs, 4), b"FACS");
    }

    #[test]
    fn refuses_zero_and_absurd_cpu_counts() {
        let mem = memory();
        let cfg = |cpus| AcpiConfig {
            cpus,
            apic_ids: Vec::new(),
            mem_size: 512 << 20,
        };
        assert!(matches!(write_tables(&mem, &cfg(0)), Err(Error::Acpi(_))));
        assert!(matches!(
            write_tables(&mem, &cfg(u32::MAX)),
            Err(Error::TooLarge(_))
        ));
        // Thousands of x2APIC CPUs still fit the area.
        assert!(write_tables(&mem, &cfg(4096)).is_ok());
    }
}
