//! The Intel MultiProcessor Specification 1.4 table: how a guest without ACPI
//! finds its CPUs, its IOAPIC and how ISA interrupts are wired.

use crate::bytes::{checksum, LeWriter};
use crate::layout::{EBDA_ADDR, HIGH_MEMORY_START, IOAPIC_ADDR, LAPIC_ADDR};
use crate::{write_bytes, Error, GuestMemory, Result};

/// The most CPUs an MP table can describe (xAPIC IDs 0..=254, 255 is broadcast,
/// and the IOAPIC takes the ID after the last CPU).
pub const MAX_CPUS: u32 = 254;
/// ISA interrupts routed to the IOAPIC pins of the same number.
const ISA_IRQS: u8 = 16;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;

/// Builds the MP floating pointer and configuration table for CPUs with APIC
/// IDs `ids` (the first is the boot CPU), to be placed at `addr`. The IOAPIC
/// takes the ID after the highest; every ID must fit in 0..=254.
pub fn build(ids: &[u32], addr: u64) -> Result<Vec<u8>> {
    let max = ids.iter().copied().max().unwrap_or(0);
    if ids.is_empty() || ids.len() > MAX_CPUS as usize || max >= MAX_CPUS {
        return Err(Error::TooLarge("MP table"));
    }
    let ioapic_id = (max + 1) as u8;
    let mut t = LeWriter::new();
    // Configuration table header; length, count and checksum are patched below.
    t.bytes(b"PCMP")
        .u16(0)
        .u8(4)
        .u8(0)
        .bytes(b"FERROVSR")
        .bytes(b"FERROVISOR  ");
    t.u32(0)
        .u16(0)
        .u16(0)
        .u32(LAPIC_ADDR as u32)
        .u16(0)
        .u8(0)
        .u8(0);
    let mut entries = 0u16;
    for (i, &id) in ids.iter().enumerate() {
        let flags = CPU_ENABLED | if i == 0 { CPU_BSP } else { 0 };
        t.u8(ENTRY_PROCESSOR)
            .u8(id as u8)
            .u8(APIC_VERSION)
            .u8(flags);
        t.u32(0x600).u32(0x201).u64(0);
        entries += 1;
    }
    t.u8(ENTRY_BUS).u8(0).bytes(b"ISA   ");
    t.u8(ENTRY_IOAPIC)
        .u8(ioapic_id)
        .u8(IOAPIC_VERSION)
        .u8(1)
        .u32(IOAPIC_ADDR as u32);
    entries += 2;
    for irq in 0..ISA_IRQS {
        t.u8(ENTRY_IO_INTERRUPT)
            .u8(INT_TYPE_INT)
            .u16(0)
            .u8(0)
            .u8(irq)
            .u8(ioapic_id)
            .u8(irq);
        entries += 1;
    }
    for (kind, lint) in [(INT_TYPE_EXTINT, 0u8), (INT_TYPE_NMI, 1u8)] {
        t.u8(ENTRY_LOCAL_INTERRUPT)
            .u8(kind)
            .u16(0)
            .u8(0)
            .u8(0)
            .u8(0xff)
            .u8(lint);
        entries += 1;
    }
    let len = u16::try_from(t.len()).map_err(|_| Error::TooLarge("MP table"))?;
    t.patch_u16(4, len);
    t.patch_u16(34, entries);
    let sum = checksum(t.as_slice());
    t.patch_u8(7, sum);

    let config_addr = addr + 16;
    let mut fp = LeWriter::new();
    fp.bytes(b"_MP_")
        .u32(config_addr as u32)
        .u8(1)
        .u8(4)
        .u8(0)
        .u8(0)
        .u32(0);
    let sum = checksum(fp.as_slice());
    fp.patch_u8(10, sum);

    let mut out = fp.into_vec();
    out.extend_from_slice(t.as_slice());
    Ok(out)
}

/// Writes the MP table for CPUs with APIC IDs `ids` at the start of the EBDA; a large
/// table runs on into the reserved area below 1 MiB.
pub fn write(mem: &GuestMemory, ids: &[u32]) -> Result<()> {
    let table = build(ids, EBDA_ADDR)?;
    if EBDA_ADDR + table.len() as u64 > HIGH_MEMORY_START {
        return Err(Error::TooLarge("MP table"));
    }
    write_bytes(mem, "MP table", EBDA_ADDR, &table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bytes::{le16, le32};

    fn sums_to_zero(b: &[u8]) -> bool {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x)) == 0
    }

    #[test]
    fn table_is_well_formed() {
        let t = build(&[0, 1, 2, 3], EBDA_ADDR).unwrap();
        assert_eq!(&t[..4], b"_MP_");
        assert!(sums_to_zero(&t[..16]));
        assert_eq!(le32(&t, 4), Some(EBDA_ADDR as u32 + 16));
        let cfg = &t[16..];
        assert_eq!(&cfg[..4], b"PCMP");
        let len = le16(cfg, 4).unwrap() as usize;
        assert_eq!(len, cfg.len());
        assert!(sums_to_zero(cfg));
        assert_eq!(le16(cfg, 34), Some(4 + 2 + 16 + 2));
        // The first processor entry is the enabled BSP with APIC ID 0.
        assert_eq!(&cfg[44..48], &[0, 0, APIC_VERSION, CPU_ENABLED | CPU_BSP]);
    }

    #[test]
    fn biggest_table_fits_the_ebda() {
        let all: Vec<u32> = (0..MAX_CPUS).collect();
        let t = build(&all, EBDA_ADDR).unwrap();
        assert!(EBDA_ADDR + t.len() as u64 <= HIGH_MEMORY_START);
        assert!(build(&[], EBDA_ADDR).is_err());
        let too_many: Vec<u32> = (0..=MAX_CPUS).collect();
        assert!(build(&too_many, EBDA_ADDR).is_err());
        assert!(
            build(&[0, 254], EBDA_ADDR).is_err(),
            "no ID left for the IOAPIC"
        );
        let sparse = build(&[0, 2, 4], EBDA_ADDR).unwrap();
        assert!(sparse.windows(2).any(|w| w == [ENTRY_IOAPIC, 5]));
    }
}
