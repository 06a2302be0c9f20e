//! The fixed-layout tables: FADT (with FACS), MADT, MCFG and XSDT.

use acpi_tables::facs::FACS;
use acpi_tables::fadt::{FADTBuilder, Flags, PmProfile};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::mcfg::MCFG;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;

use super::{to_bytes, OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::layout::{ACPI_SCI_IRQ, IOAPIC_ADDR, LAPIC_ADDR, PCI_ECAM_BUSES, PCI_ECAM_START};

/// Size of the FADT (revision 6.5).
pub(crate) const FADT_LEN: usize = 276;
const _: () = assert!(FADT_LEN == core::mem::size_of::<FADTBuilder>());

/// PM1a event block (PM1_STS, PM1_EN): I/O port and length.
const PM1A_EVT_BLK: (u16, u8) = (0x600, 4);
/// PM1a control block (PM1_CNT): I/O port and length.
const PM1A_CNT_BLK: (u16, u8) = (0x604, 2);
/// PM timer (24-bit): I/O port and length.
const PM_TMR_BLK: (u16, u8) = (0x608, 4);
/// Reset register (I/O) and the value that resets.
const RESET_REG: (u16, u8) = (0xcf9, 0x06);
/// CMOS RAM index of the RTC's century byte.
const RTC_CENTURY: u8 = 0x32;
/// IAPC_BOOT_ARCH: an 8042 is present (bit 1) and VGA is not (bit 2).
const IAPC_BOOT_ARCH: u16 = (1 << 1) | (1 << 2);
/// P_LVL2_LAT above 100 and P_LVL3_LAT above 1000: no C2 or C3.
const NO_C2_LATENCY: u16 = 0x0fff;
const NO_C3_LATENCY: u16 = 0x0fff;

const MADT_REVISION: u8 = 5;
const MADT_PCAT_COMPAT: u32 = 1;
const MADT_HEADER_LEN: usize = 44;
const MADT_LOCAL_APIC_LEN: u64 = 8;
const MADT_IOAPIC_LEN: u64 = 12;
const MADT_ISO_LEN: u64 = 10;
const MADT_LAPIC_NMI_LEN: u64 = 6;
const MADT_X2APIC_LEN: u64 = 16;
const MADT_X2APIC_NMI_LEN: u64 = 12;
const MADT_TYPE_ISO: u8 = 2;
const MADT_TYPE_LAPIC_NMI: u8 = 4;
const MADT_TYPE_X2APIC: u8 = 9;
const MADT_TYPE_X2APIC_NMI: u8 = 10;
/// Interrupt source override flags: active-high (bits 1:0 = 01), level (bits 3:2 = 11).
const ISO_LEVEL_ACTIVE_HIGH: u16 = 0x000d;
/// Local APIC NMI flags: conforms to the bus (edge, active-high for NMI).
const NMI_FLAGS: u16 = 0;
/// The NMI is wired to LINT1.
const NMI_LINT: u8 = 1;
/// The first APIC ID that needs an x2APIC entry (0xFF is the xAPIC broadcast ID).
const FIRST_X2APIC_ID: u32 = 0xff;
/// Processor UID meaning "all processors".
const ALL_PROCESSORS_8: u8 = 0xff;
const ALL_PROCESSORS_32: u32 = u32::MAX;

/// The IOAPIC's ID for a guest whose CPUs have APIC IDs `ids`: the ID after
/// the highest, as in the MP table. When that is not a valid 8-bit ID
/// (x2APIC guests, beyond the MP table) the IOAPIC gets 0; its ID then
/// matters to no one (x2APIC IDs and the IOAPIC's ID are separate spaces).
pub fn ioapic_id(ids: &[u32]) -> u8 {
    let next = ids.iter().max().map_or(0, |m| m.saturating_add(1));
    match u8::try_from(next) {
        Ok(id) if id != 0xff => id,
        _ => 0,
    }
}

/// The FADT of a PC-style platform: SCI on IRQ 9, ACPI always enabled (no
/// SMI command port), the PM1a block and PM timer, the reset register, a
/// fixed-feature power button and no sleep button. `dsdt` and `facs` are
/// written to both the 32-bit and the 64-bit (X_) fields.
pub fn fadt(dsdt: u32, facs: u32) -> Vec<u8> {
    let mut b = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .preferred_pm_profile(PmProfile::Unspecified)
        .flag(Flags::Wbinvd)
        .flag(Flags::ProcC1)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup);
    b.firmware_ctrl = facs.into();
    b.x_firmware_ctrl = u64::from(facs).into();
    b.dsdt = dsdt.into();
    b.x_dsdt = u64::from(dsdt).into();
    b.sci_int = (ACPI_SCI_IRQ as u16).into();
    b.smi_cmd = 0.into();
    b.pm1a_evt_blk = u32::from(PM1A_EVT_BLK.0).into();
    b.pm1_evt_len = PM1A_EVT_BLK.1;
    b.pm1a_cnt_blk = u32::from(PM1A_CNT_BLK.0).into();
    b.pm1_cnt_len = PM1A_CNT_BLK.1;
    b.pm_tmr_blk = u32::from(PM_TMR_BLK.0).into();
    b.pm_tmr_len = PM_TMR_BLK.1;
    b.p_lvl2_lat = NO_C2_LATENCY.into();
    b.p_lvl3_lat = NO_C3_LATENCY.into();
    b.century = RTC_CENTURY;
    b.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    b.reset_reg = io_gas(RESET_REG.0, 1, AccessSize::ByteAccess);
    b.reset_value = RESET_REG.1;
    // PM1_STS and PM1_EN are 16-bit registers; the block holds both.
    b.x_pm1a_evt_blk = io_gas(PM1A_EVT_BLK.0, PM1A_EVT_BLK.1, AccessSize::WordAccess);
    b.x_pm1a_cnt_blk = io_gas(PM1A_CNT_BLK.0, PM1A_CNT_BLK.1, AccessSize::WordAccess);
    b.x_pm_tmr_blk = io_gas(PM_TMR_BLK.0, PM_TMR_BLK.1, AccessSize::DwordAccess);
    to_bytes(&b.finalize())
}

/// A System I/O generic address of `len` bytes.
fn io_gas(port: u16, len: u8, access: AccessSize) -> GAS {
    GAS::new(AddressSpace::SystemIo, len * 8, 0, access, u64::from(port))
}

/// The FACS (no global lock user, no S4BIOS, no waking vector yet).
pub fn facs() -> Vec<u8> {
    let mut f = FACS::new();
    f.version = 2;
    to_bytes(&f)
}

/// Size of the MADT for CPUs with APIC IDs `ids`.
pub fn madt_len(ids: &[u32]) -> u64 {
    let xapic = ids.iter().filter(|&&id| id < FIRST_X2APIC_ID).count() as u64;
    let x2apic = ids.len() as u64 - xapic;
    let x2apic_nmi = if x2apic > 0 { MADT_X2APIC_NMI_LEN } else { 0 };
    MADT_HEADER_LEN as u64
        + xapic * MADT_LOCAL_APIC_LEN
        + x2apic * MADT_X2APIC_LEN
        + MADT_IOAPIC_LEN
        + MADT_ISO_LEN
        + MADT_LAPIC_NMI_LEN
        + x2apic_nmi
}

/// The MADT: the local APIC address with PCAT_COMPAT (the 8259s exist), one
/// Processor Local APIC per CPU (UID = CPU index, APIC ID from `ids`;
/// Processor Local x2APIC entries for IDs from 255 on), enabled for the first
/// `present` and online-capable for the rest, the IOAPIC (ID [`ioapic_id`],
/// GSI base 0), the SCI's interrupt source override (ISA IRQ 9 → GSI 9,
/// level, active-high) and the NMI on LINT1 of every processor.
pub fn madt(ids: &[u32], present: u32) -> Vec<u8> {
    let mut sdt = Sdt::new(
        *b"APIC",
        MADT_HEADER_LEN as u32,
        MADT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    sdt.write_u32(36, LAPIC_ADDR as u32);
    sdt.write_u32(40, MADT_PCAT_COMPAT);

    let mut entries = Vec::new();
    for (uid, &id) in ids.iter().enumerate() {
        let status = if (uid as u64) < u64::from(present) {
            EnabledStatus::Enabled
        } else {
            EnabledStatus::DisabledOnlineCapable
        };
        match (u8::try_from(id), u8::try_from(uid)) {
            (Ok(id8), Ok(uid8)) if id < FIRST_X2APIC_ID => {
                entries.extend(to_bytes(&ProcessorLocalApic::new(uid8, id8, status)));
            }
            _ => {
                entries.extend([MADT_TYPE_X2APIC, MADT_X2APIC_LEN as u8, 0, 0]);
                entries.extend(id.to_le_bytes()); // x2APIC ID
                entries.extend((status as u32).to_le_bytes());
                entries.extend((uid as u32).to_le_bytes()); // ACPI processor UID
            }
        }
    }
    let has_x2apic =
        ids.iter().any(|&id| id >= FIRST_X2APIC_ID) || ids.len() > usize::from(u8::MAX);
    entries.extend(to_bytes(&IoApic::new(
        ioapic_id(ids),
        IOAPIC_ADDR as u32,
        0,
    )));
    entries.extend([MADT_TYPE_ISO, MADT_ISO_LEN as u8, 0, ACPI_SCI_IRQ as u8]);
    entries.extend(ACPI_SCI_IRQ.to_le_bytes());
    entries.extend(ISO_LEVEL_ACTIVE_HIGH.to_le_bytes());
    entries.extend([
        MADT_TYPE_LAPIC_NMI,
        MADT_LAPIC_NMI_LEN as u8,
        ALL_PROCESSORS_8,
    ]);
    entries.extend(NMI_FLAGS.to_le_bytes());
    entries.push(NMI_LINT);
    if has_x2apic {
        entries.extend([MADT_TYPE_X2APIC_NMI, MADT_X2APIC_NMI_LEN as u8]);
        entries.extend(NMI_FLAGS.to_le_bytes());
        entries.extend(ALL_PROCESSORS_32.to_le_bytes());
        entries.extend([NMI_LINT, 0, 0, 0]);
    }
    sdt.append_slice(&entries);
    sdt.as_slice().to_vec()
}

/// The MCFG: one ECAM allocation for segment 0, buses 0..PCI_ECAM_BUSES.
pub fn mcfg() -> Vec<u8> {
    let mut m = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    m.add_ecam(PCI_ECAM_START, 0, 0, (PCI_ECAM_BUSES - 1) as u8);
    to_bytes(&m)
}

/// Size of an XSDT listing `tables` tables.
pub(crate) fn xsdt_len(tables: usize) -> usize {
    36 + 8 * tables
}

/// The XSDT listing the tables at `tables`.
pub fn xsdt(tables: &[u64]) -> Vec<u8> {
    let mut x = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for &t in tables {
        x.add_entry(t);
    }
    to_bytes(&x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bytes::{le16, le32, le64};

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    /// The MADT's entries as (type, bytes).
    fn entries(madt: &[u8]) -> Vec<(u8, &[u8])> {
        let mut out = Vec::new();
        let mut off = MADT_HEADER_LEN;
        while off < madt.len() {
            let len = madt[off + 1] as usize;
            out.push((madt[off], &madt[off..off + len]));
            off += len;
        }
        assert_eq!(off, madt.len());
        out
    }

    #[test]
    fn fadt_fields() {
        let f = fadt(0xe_1000, 0xe_0f00);
        assert_eq!(f.len(), FADT_LEN);
        assert_eq!(acpi_tables::fadt::FADT::len(), FADT_LEN);
        assert_eq!(&f[0..4], b"FACP");
        assert_eq!(le32(&f, 4), Some(276));
        assert_eq!(f[8], 6);
        assert_eq!(f[131], 5, "minor version");
        assert_eq!(sum(&f), 0);
        assert_eq!(le16(&f, 46), Some(9), "SCI_INT");
        assert_eq!(le32(&f, 48), Some(0), "SMI_CMD");
        assert_eq!((f[52], f[53]), (0, 0), "ACPI_ENABLE/DISABLE");
        assert_eq!(le32(&f, 56), Some(0x600), "PM1a_EVT_BLK");
        assert_eq!(le32(&f, 64), Some(0x604), "PM1a_CNT_BLK");
        assert_eq!(le32(&f, 76), Some(0x608), "PM_TMR_BLK");
        assert_eq!(le32(&f, 80), Some(0), "GPE0_BLK");
        assert_eq!(
            (f[88], f[89], f[91]),
            (4, 2, 4),
            "PM1_EVT/CNT, PM_TMR lengths"
        );
        assert_eq!(f[108], 0x32, "CENTURY");
        assert_eq!(le16(&f, 109), Some(0x0006), "IAPC_BOOT_ARCH");
        // WBINVD | PROC_C1 | SLP_BUTTON | RESET_REG_SUP; PWR_BUTTON, TMR_VAL_EXT,
        // HW_REDUCED_ACPI clear.
        assert_eq!(le32(&f, 112), Some(0x0000_0425), "flags");
        assert_eq!(
            &f[116..120],
            &[1, 8, 0, 1],
            "RESET_REG: System I/O, 8 bits, byte"
        );
        assert_eq!(le64(&f, 120), Some(0xcf9));
        assert_eq!(f[128], 6, "RESET_VALUE");
        assert_eq!(le32(&f, 36), Some(0xe_0f00));
        assert_eq!(le64(&f, 132), Some(0xe_0f00));
        assert_eq!(le32(&f, 40), Some(0xe_1000));
        assert_eq!(le64(&f, 140), Some(0xe_1000));
        assert_eq!(&f[148..152], &[1, 32, 0, 2], "X_PM1a_EVT_BLK");
        assert_eq!(le64(&f, 152), Some(0x600));
        assert_eq!(&f[172..176], &[1, 16, 0, 2], "X_PM1a_CNT_BLK");
        assert_eq!(le64(&f, 176), Some(0x604));
        assert_eq!(&f[208..212], &[1, 32, 0, 3], "X_PM_TMR_BLK");
        assert_eq!(le64(&f, 212), Some(0x608));
        assert_eq!(le64(&f, 160), Some(0), "X_PM1b_EVT_BLK");
    }

    #[test]
    fn facs_is_64_bytes() {
        let f = facs();
        assert_eq!(f.len(), 64);
        assert_eq!(&f[0..4], b"FACS");
        assert_eq!(le32(&f, 4), Some(64));
    }

    #[test]
    fn madt_for_four_cpus() {
        let ids = [0, 1, 2, 3];
        let m = madt(&ids, 4);
        assert_eq!(&m[0..4], b"APIC");
        assert_eq!(le32(&m, 4), Some(m.len() as u32));
        assert_eq!(m.len() as u64, madt_len(&ids));
        assert_eq!(sum(&m), 0);
        assert_eq!(le32(&m, 36), Some(0xfee0_0000));
        assert_eq!(le32(&m, 40), Some(1), "PCAT_COMPAT");
        let e = entries(&m);
        let count = |t| e.iter().filter(|(ty, _)| *ty == t).count();
        assert_eq!(
            (count(0), count(1), count(2), count(4), count(9)),
            (4, 1, 1, 1, 0)
        );
        assert_eq!(
            e[2].1,
            &[0, 8, 2, 2, 1, 0, 0, 0],
            "CPU 2: UID 2, APIC ID 2, enabled"
        );
        assert_eq!(
            e[4].1,
            &[1, 12, 4, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0],
            "IOAPIC 4"
        );
        assert_eq!(e[5].1, &[2, 10, 0, 9, 9, 0, 0, 0, 0x0d, 0], "SCI override");
        assert_eq!(e[6].1, &[4, 6, 0xff, 0, 0, 1], "NMI on LINT1");
    }

    #[test]
    fn madt_uses_x2apic_entries_from_id_255() {
        let ids: Vec<u32> = (0..300).collect();
        let m = madt(&ids, 300);
        assert_eq!(m.len() as u64, madt_len(&ids));
        assert_eq!(le32(&m, 4), Some(m.len() as u32));
        assert_eq!(sum(&m), 0);
        let e = entries(&m);
        let count = |t| e.iter().filter(|(ty, _)| *ty == t).count();
        assert_eq!((count(0), count(9), count(10)), (255, 45, 1));
        let first = e.iter().find(|(t, _)| *t == 9).unwrap().1;
        assert_eq!(le32(first, 4), Some(255));
        assert_eq!(le32(first, 8), Some(1));
        assert_eq!(le32(first, 12), Some(255));
        assert_eq!(ioapic_id(&ids), 0);
        assert_eq!(ioapic_id(&ids[..254]), 254);
        assert_eq!(ioapic_id(&ids[..255]), 0);
    }

    #[test]
    fn madt_follows_sparse_ids_and_lists_absent_cpus_as_online_capable() {
        // 2 sockets x 3 cores: APIC IDs 0,1,2,4,5,6; 4 present.
        let ids = [0, 1, 2, 4, 5, 6];
        let m = madt(&ids, 4);
        assert_eq!(sum(&m), 0);
        let e = entries(&m);
        let cpus: Vec<&[u8]> = e.iter().filter(|(t, _)| *t == 0).map(|(_, b)| *b).collect();
        assert_eq!(cpus.len(), 6);
        assert_eq!(
            cpus[3],
            &[0, 8, 3, 4, 1, 0, 0, 0],
            "UID 3, APIC ID 4, enabled"
        );
        assert_eq!(
            cpus[4],
            &[0, 8, 4, 5, 2, 0, 0, 0],
            "UID 4, APIC ID 5, online capable"
        );
        assert_eq!(ioapic_id(&ids), 7);
    }

    #[test]
    fn mcfg_allocation() {
        let m = mcfg();
        assert_eq!(&m[0..4], b"MCFG");
        assert_eq!(m.len(), 60);
        assert_eq!(le32(&m, 4), Some(60));
        assert_eq!(sum(&m), 0);
        assert_eq!(le64(&m, 44), Some(0xe000_0000));
        assert_eq!(le16(&m, 52), Some(0), "segment");
        assert_eq!((m[54], m[55]), (0, 0), "buses 0..=0");
    }
}
