//! The I/O APIC: found through the MADT (its address, GSI base and the ISA
//! interrupt source overrides), and redirection entries that deliver one
//! GSI as a fixed interrupt to one local APIC.

use crate::acpi_access;
use crate::bail;
use crate::exit::Reason;
use crate::paging;
use acpi::madt::{Madt, MadtEntry};

/// Where an I/O APIC sits when there is no MADT to say otherwise.
pub const DEFAULT_ADDR: u64 = 0xfec0_0000;
const REG_SELECT: u64 = 0x00;
const REG_WINDOW: u64 = 0x10;
const REG_VERSION: u32 = 0x01;
const REG_REDIR_BASE: u32 = 0x10;
const REDIR_MASKED: u32 = 1 << 16;
const REDIR_LEVEL: u32 = 1 << 15;
const REDIR_ACTIVE_LOW: u32 = 1 << 13;
/// MPS INTI flags (MADT interrupt source override): polarity in bits 0-1,
/// trigger mode in bits 2-3; 0 = conforming to the bus.
const INTI_POLARITY_MASK: u16 = 0x3;
const INTI_POLARITY_LOW: u16 = 0x3;
const INTI_POLARITY_HIGH: u16 = 0x1;
const INTI_TRIGGER_MASK: u16 = 0xc;
const INTI_TRIGGER_LEVEL: u16 = 0xc;
const INTI_TRIGGER_EDGE: u16 = 0x4;

/// Trigger mode and polarity of one interrupt input.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    pub level: bool,
    pub active_low: bool,
}

impl Mode {
    /// PCI INTx: level-triggered, active-low.
    pub const PCI: Mode = Mode {
        level: true,
        active_low: true,
    };
}

impl core::fmt::Display for Mode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(if self.level { "level" } else { "edge" })?;
        f.write_str(if self.active_low { "/low" } else { "/high" })
    }
}

/// One I/O APIC, mapped.
pub struct IoApic {
    pub addr: u64,
    /// First GSI of its inputs.
    pub gsi_base: u32,
    /// Number of redirection entries.
    pub pins: u32,
    /// Where the address came from: `madt` or `default`.
    pub source: &'static str,
}

/// What the MADT says about `line` (a PCI interrupt line register value):
/// the I/O APIC that serves the resulting GSI, the GSI, and its mode.
pub struct Route {
    pub ioapic: IoApic,
    pub gsi: u32,
    pub mode: Mode,
    /// An interrupt source override applied (`line` < 16 only).
    pub overridden: bool,
}

/// Resolves `line` to a GSI and I/O APIC through the MADT (RSDP as in
/// [`acpi_access::find`]). Lines below 16 are ISA IRQs that an interrupt
/// source override may move and give a mode; without one they map 1:1 and,
/// as PCI interrupts, are level/active-low. Lines 16 and up are GSIs
/// (level/active-low). Without a MADT the I/O APIC at [`DEFAULT_ADDR`]
/// with GSI base 0 is used.
pub fn route(rsdp_paddr: u64, line: u8) -> Result<Route, Reason> {
    let mut gsi = u32::from(line);
    let mut mode = Mode::PCI;
    let mut overridden = false;
    let mut ioapics: alloc::vec::Vec<(u64, u32)> = alloc::vec::Vec::new();
    let mut source = "default";
    if let Ok(found) = acpi_access::find(rsdp_paddr) {
        if let Ok(madt) = found.tables.find_table::<Madt>() {
            crate::madt::check_entries(madt.physical_start() as u64, madt.region_length() as u64)?;
            for entry in madt.get().entries() {
                match entry {
                    MadtEntry::IoApic(io) => {
                        let (addr, base) = (io.io_apic_address, io.global_system_interrupt_base);
                        ioapics.push((u64::from(addr), base));
                    }
                    MadtEntry::InterruptSourceOverride(iso) if iso.bus == 0 && iso.irq == line => {
                        let (target, flags) = (iso.global_system_interrupt, iso.flags);
                        gsi = target;
                        overridden = true;
                        match flags & INTI_TRIGGER_MASK {
                            INTI_TRIGGER_LEVEL => mode.level = true,
                            INTI_TRIGGER_EDGE => mode.level = false,
                            _ => {}
                        }
                        match flags & INTI_POLARITY_MASK {
                            INTI_POLARITY_LOW => mode.active_low = true,
                            INTI_POLARITY_HIGH => mode.active_low = false,
                            _ => {}
                        }
                    }
                    _ => {}
                }
            }
            if !ioapics.is_empty() {
                source = "madt";
            }
        }
    }
    if ioapics.is_empty() {
        ioapics.push((DEFAULT_ADDR, 0));
    }
    for (addr, gsi_base) in ioapics {
        if gsi < gsi_base {
            continue;
        }
        paging::map_device(addr, 0x20)?;
        let mut ioapic = IoApic {
            addr,
            gsi_base,
            pins: 0,
            source,
        };
        ioapic.pins = ((ioapic.read(REG_VERSION) >> 16) & 0xff) + 1;
        if gsi - gsi_base < ioapic.pins {
            return Ok(Route {
                ioapic,
                gsi,
                mode,
                overridden,
            });
        }
    }
    bail!("no i/o apic serves gsi {} (line {})", gsi, line)
}

impl IoApic {
    fn read(&self, reg: u32) -> u32 {
        // SAFETY: `route` mapped the register window (uncached); the select
        // and window registers are dwords, and the probe is single threaded.
        unsafe {
            ((self.addr + REG_SELECT) as *mut u32).write_volatile(reg);
            ((self.addr + REG_WINDOW) as *const u32).read_volatile()
        }
    }

    fn write(&self, reg: u32, value: u32) {
        // SAFETY: as for `read`.
        unsafe {
            ((self.addr + REG_SELECT) as *mut u32).write_volatile(reg);
            ((self.addr + REG_WINDOW) as *mut u32).write_volatile(value);
        }
    }

    /// The input of `gsi` (checked by [`route`]).
    fn pin(&self, gsi: u32) -> Result<u32, Reason> {
        match gsi.checked_sub(self.gsi_base) {
            Some(pin) if pin < self.pins => Ok(pin),
            _ => bail!(
                "gsi {} is not on the i/o apic at {:#x} (gsi {}..{})",
                gsi,
                self.addr,
                self.gsi_base,
                self.gsi_base + self.pins
            ),
        }
    }

    /// Points `gsi` at `vector` on the local APIC `apic_id` (fixed delivery,
    /// physical destination), with `mode`, unmasked.
    pub fn route(&self, gsi: u32, vector: u8, apic_id: u32, mode: Mode) -> Result<(), Reason> {
        let pin = self.pin(gsi)?;
        if apic_id > 0xff {
            bail!("apic id {} does not fit an i/o apic destination", apic_id);
        }
        let mut low = u32::from(vector);
        if mode.level {
            low |= REDIR_LEVEL;
        }
        if mode.active_low {
            low |= REDIR_ACTIVE_LOW;
        }
        let reg = REG_REDIR_BASE + 2 * pin;
        // Masked while the destination changes, then unmasked.
        self.write(reg, REDIR_MASKED | low);
        self.write(reg + 1, apic_id << 24);
        self.write(reg, low);
        Ok(())
    }

    /// Masks `gsi` again.
    pub fn mask(&self, gsi: u32) {
        if let Ok(pin) = self.pin(gsi) {
            let reg = REG_REDIR_BASE + 2 * pin;
            self.write(reg, REDIR_MASKED);
        }
    }
}
