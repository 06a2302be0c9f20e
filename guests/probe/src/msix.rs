//! MSI-X: the capability, its vector table in a memory BAR, and table
//! entries that deliver fixed, edge-triggered interrupts to one local APIC.

use crate::bail;
use crate::exit::Reason;
use crate::paging;
use crate::pci::{Bar, BarKind, Bdf, ConfigAccess};

/// Capability ID of MSI-X.
pub const CAP_ID: u8 = 0x11;
const CONTROL_ENABLE: u16 = 1 << 15;
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
const CONTROL_TABLE_SIZE: u16 = 0x7ff;
const ENTRY_SIZE: u64 = 16;
const ENTRY_ADDR_LOW: u64 = 0;
const ENTRY_ADDR_HIGH: u64 = 4;
const ENTRY_DATA: u64 = 8;
const ENTRY_CONTROL: u64 = 12;
const ENTRY_MASKED: u32 = 1;
/// Message address of the local APIC range; the destination APIC ID goes
/// in bits 12-19 (physical destination mode).
const MSI_ADDRESS: u32 = 0xfee0_0000;

/// A function's MSI-X capability with its table mapped.
pub struct Msix {
    bdf: Bdf,
    /// Configuration space offset of the capability.
    cap: u16,
    /// Number of table entries.
    pub table_size: u16,
    /// Physical (= virtual) address of the table.
    pub table: u64,
}

impl Msix {
    /// Finds the capability of `bdf` and maps its table, which must lie in
    /// one of `bars` (already assigned). `None` if there is no MSI-X.
    pub fn find(access: &ConfigAccess, bdf: Bdf, bars: &[Bar]) -> Result<Option<Msix>, Reason> {
        let Some(cap) = access.find_capability(bdf, CAP_ID)? else {
            return Ok(None);
        };
        let cap = u16::from(cap);
        let table_size = (access.read16(bdf, cap + 2) & CONTROL_TABLE_SIZE) + 1;
        let table_reg = access.read32(bdf, cap + 4);
        let table_bar = (table_reg & 0x7) as u8;
        let offset = u64::from(table_reg & !0x7);
        let Some(bar) = bars
            .iter()
            .find(|bar| bar.index == table_bar && bar.kind != BarKind::Io)
        else {
            bail!(
                "{} msi-x table is in bar{}, which is not a memory bar",
                bdf,
                table_bar
            );
        };
        let len = u64::from(table_size) * ENTRY_SIZE;
        if bar.addr == 0 || offset + len > bar.size {
            bail!(
                "{} msi-x table {:#x}+{:#x} does not fit {}",
                bdf,
                offset,
                len,
                bar
            );
        }
        let table = bar.addr + offset;
        paging::map_device(table, len)?;
        Ok(Some(Msix {
            bdf,
            cap,
            table_size,
            table,
        }))
    }

    fn write(&self, entry: u16, field: u64, value: u32) {
        let addr = self.table + u64::from(entry) * ENTRY_SIZE + field;
        // SAFETY: `find` mapped the table and callers check `entry` against
        // `table_size`; MSI-X table fields are dword registers.
        unsafe { (addr as *mut u32).write_volatile(value) }
    }

    /// Points `entry` at `vector` on the local APIC `apic_id`, leaving it
    /// masked.
    pub fn set_entry(&self, entry: u16, apic_id: u32, vector: u8) -> Result<(), Reason> {
        if entry >= self.table_size {
            bail!(
                "{} msi-x has {} entries, not {}",
                self.bdf,
                self.table_size,
                entry + 1
            );
        }
        if apic_id > 0xff {
            bail!("apic id {} does not fit an msi address", apic_id);
        }
        self.write(entry, ENTRY_CONTROL, ENTRY_MASKED);
        self.write(entry, ENTRY_ADDR_LOW, MSI_ADDRESS | (apic_id << 12));
        self.write(entry, ENTRY_ADDR_HIGH, 0);
        // Fixed delivery, edge triggered.
        self.write(entry, ENTRY_DATA, u32::from(vector));
        Ok(())
    }

    /// Unmasks `entry` (checked by [`Msix::set_entry`]).
    pub fn unmask(&self, entry: u16) {
        if entry < self.table_size {
            self.write(entry, ENTRY_CONTROL, 0);
        }
    }

    /// Sets MSI-X Enable and clears Function Mask in the message control
    /// register (which also turns off INTx for the function).
    pub fn enable(&self, access: &ConfigAccess) {
        let control = access.read16(self.bdf, self.cap + 2);
        let control = (control | CONTROL_ENABLE) & !CONTROL_FUNCTION_MASK;
        access.write16(self.bdf, self.cap + 2, control);
    }

    /// Whether MSI-X Enable is set.
    pub fn enabled(&self, access: &ConfigAccess) -> bool {
        access.read16(self.bdf, self.cap + 2) & CONTROL_ENABLE != 0
    }

    /// Clears MSI-X Enable (the function then signals INTx again).
    pub fn disable(&self, access: &ConfigAccess) {
        let control = access.read16(self.bdf, self.cap + 2);
        access.write16(self.bdf, self.cap + 2, control & !CONTROL_ENABLE);
    }
}
