//! PCI configuration space: the legacy 0xCF8/0xCFC mechanism and the
//! memory-mapped ECAM, function enumeration on bus 0, capability lists and
//! BAR sizing.

use crate::bail;
use crate::exit::Reason;
use crate::paging;
use alloc::vec::Vec;
use core::fmt;
use x86_64::instructions::port::Port;

const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;
const CONFIG_ENABLE: u32 = 1 << 31;
/// ECAM bytes per bus (32 devices x 8 functions x 4 KiB).
const ECAM_BUS_SIZE: u64 = 1 << 20;

pub const REG_VENDOR: u16 = 0x00;
pub const REG_COMMAND: u16 = 0x04;
pub const REG_CLASS: u16 = 0x08;
pub const REG_HEADER_TYPE: u16 = 0x0e;
pub const REG_BAR0: u16 = 0x10;
pub const REG_CAP_PTR: u16 = 0x34;
pub const REG_INTERRUPT_PIN: u16 = 0x3d;

pub const COMMAND_IO: u16 = 1 << 0;
pub const COMMAND_MEMORY: u16 = 1 << 1;
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
const STATUS_CAP_LIST: u16 = 1 << 4;
const HEADER_MULTI_FUNCTION: u8 = 0x80;
const NO_DEVICE: u16 = 0xffff;
/// More capabilities than fit in 256 bytes means a looping list.
const MAX_CAPS: usize = 48;

/// A bus/device/function address.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Bdf {
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

/// How configuration space is reached.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ConfigAccess {
    /// I/O ports 0xCF8 (address) and 0xCFC (data): 256 bytes per function.
    Legacy,
    /// Memory-mapped (ECAM, from the MCFG): 4 KiB per function. `base` is
    /// the address of bus 0.
    Ecam { base: u64 },
}

impl ConfigAccess {
    /// The legacy mechanism, if 0xCF8 holds what is written to it (the PCI
    /// 2.1 "configuration mechanism #1" check).
    pub fn legacy() -> Option<Self> {
        let mut address: Port<u32> = Port::new(CONFIG_ADDRESS);
        // SAFETY: 0xCF8 only selects the register 0xCFC accesses; the old
        // value is put back.
        let works = unsafe {
            let old = address.read();
            address.write(CONFIG_ENABLE);
            let works = address.read() == CONFIG_ENABLE;
            address.write(old);
            works
        };
        works.then_some(ConfigAccess::Legacy)
    }

    /// ECAM at `base` (the MCFG's address for bus 0); maps bus 0's MiB
    /// uncached. Bus 0 must be in `start_bus..=end_bus`.
    pub fn ecam(base: u64, start_bus: u8, end_bus: u8) -> Result<Self, Reason> {
        if start_bus != 0 || end_bus < start_bus {
            bail!(
                "ecam at {:#x} covers buses {}-{}, not bus 0",
                base,
                start_bus,
                end_bus
            );
        }
        if base == 0 || !base.is_multiple_of(ECAM_BUS_SIZE) {
            bail!("ecam base {:#x} is not 1 MiB aligned", base);
        }
        paging::map_device(base, ECAM_BUS_SIZE)?;
        Ok(ConfigAccess::Ecam { base })
    }

    /// Reads the dword at `offset` (rounded down to 4); all ones for a
    /// missing function.
    pub fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
        match *self {
            ConfigAccess::Legacy => {
                let mut address: Port<u32> = Port::new(CONFIG_ADDRESS);
                let mut data: Port<u32> = Port::new(CONFIG_DATA);
                // SAFETY: selecting and reading a configuration register has
                // no side effects on the devices the probe enumerates.
                unsafe {
                    address.write(legacy_address(bdf, offset));
                    data.read()
                }
            }
            ConfigAccess::Ecam { base } => {
                // SAFETY: `ecam` mapped bus 0's configuration space; the
                // address is a dword inside it.
                unsafe { (ecam_address(base, bdf, offset) as *const u32).read_volatile() }
            }
        }
    }

    /// Writes the dword at `offset` (rounded down to 4).
    pub fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
        match *self {
            ConfigAccess::Legacy => {
                let mut address: Port<u32> = Port::new(CONFIG_ADDRESS);
                let mut data: Port<u32> = Port::new(CONFIG_DATA);
                // SAFETY: callers only write registers they own (BARs being
                // sized or assigned, command, MSI-X control).
                unsafe {
                    address.write(legacy_address(bdf, offset));
                    data.write(value);
                }
            }
            ConfigAccess::Ecam { base } => {
                // SAFETY: as for `read32`; see the legacy case for the value.
                unsafe { (ecam_address(base, bdf, offset) as *mut u32).write_volatile(value) }
            }
        }
    }

    /// Reads the 16-bit register at `offset` (2-byte aligned).
    pub fn read16(&self, bdf: Bdf, offset: u16) -> u16 {
        (self.read32(bdf, offset) >> ((offset & 2) * 8)) as u16
    }

    /// Reads the byte at `offset`.
    pub fn read8(&self, bdf: Bdf, offset: u16) -> u8 {
        (self.read32(bdf, offset) >> ((offset & 3) * 8)) as u8
    }

    /// Writes the 16-bit register at `offset` (2-byte aligned) with a
    /// read-modify-write of its dword. Do not use on dwords whose other half
    /// has write-1-to-clear bits (e.g. the command/status pair: use
    /// [`ConfigAccess::set_command`]).
    pub fn write16(&self, bdf: Bdf, offset: u16, value: u16) {
        let shift = (offset & 2) * 8;
        let old = self.read32(bdf, offset) & !(0xffff << shift);
        self.write32(bdf, offset, old | (u32::from(value) << shift));
    }

    /// Writes the command register, writing zeros to the (write-1-to-clear)
    /// status register beside it.
    pub fn set_command(&self, bdf: Bdf, command: u16) {
        self.write32(bdf, REG_COMMAND, u32::from(command));
    }

    /// The command register.
    pub fn command(&self, bdf: Bdf) -> u16 {
        self.read16(bdf, REG_COMMAND)
    }

    /// Short name for reports.
    pub fn name(&self) -> &'static str {
        match self {
            ConfigAccess::Legacy => "legacy",
            ConfigAccess::Ecam { .. } => "ecam",
        }
    }

    /// Every function on bus 0: all 32 devices, functions 1-7 only when
    /// function 0 is multi-function.
    pub fn functions_on_bus0(&self) -> Vec<Bdf> {
        let mut found = Vec::new();
        for device in 0..32 {
            let bdf = Bdf {
                bus: 0,
                device,
                function: 0,
            };
            if self.read16(bdf, REG_VENDOR) == NO_DEVICE {
                continue;
            }
            found.push(bdf);
            if self.read8(bdf, REG_HEADER_TYPE) & HEADER_MULTI_FUNCTION == 0 {
                continue;
            }
            for function in 1..8 {
                let bdf = Bdf { function, ..bdf };
                if self.read16(bdf, REG_VENDOR) != NO_DEVICE {
                    found.push(bdf);
                }
            }
        }
        found
    }

    /// The capability list as `(offset, id)` pairs, in list order. Fails on
    /// a pointer into the header or a list that does not end.
    pub fn capabilities(&self, bdf: Bdf) -> Result<Vec<(u8, u8)>, Reason> {
        let mut caps = Vec::new();
        let status = self.read16(bdf, REG_COMMAND + 2);
        if status & STATUS_CAP_LIST == 0 {
            return Ok(caps);
        }
        let mut offset = self.read8(bdf, REG_CAP_PTR) & 0xfc;
        while offset != 0 {
            if offset < 0x40 {
                bail!(
                    "{} capability pointer {:#x} points into the header",
                    bdf,
                    offset
                );
            }
            if caps.len() == MAX_CAPS {
                bail!("{} capability list does not end", bdf);
            }
            let header = self.read16(bdf, u16::from(offset));
            caps.push((offset, header as u8));
            offset = (header >> 8) as u8 & 0xfc;
        }
        Ok(caps)
    }

    /// Offset of the first capability with `id`.
    pub fn find_capability(&self, bdf: Bdf, id: u8) -> Result<Option<u8>, Reason> {
        Ok(self
            .capabilities(bdf)?
            .into_iter()
            .find(|&(_, cap)| cap == id)
            .map(|(offset, _)| offset))
    }

    /// Sizes every BAR by writing all ones and reading back, with decoding
    /// turned off meanwhile; original values are restored. Type 0 headers
    /// have 6 BARs, bridges 2, others none.
    pub fn bars(&self, bdf: Bdf) -> Result<Vec<Bar>, Reason> {
        let count = match self.read8(bdf, REG_HEADER_TYPE) & 0x7f {
            0 => 6,
            1 => 2,
            _ => 0,
        };
        let command = self.command(bdf);
        self.set_command(bdf, command & !(COMMAND_IO | COMMAND_MEMORY));
        let mut bars = Vec::new();
        let mut index = 0;
        let mut result = Ok(());
        while index < count {
            match self.size_bar(bdf, index, count) {
                Ok(Some(bar)) => {
                    index += if bar.kind == BarKind::Mem64 { 2 } else { 1 };
                    bars.push(bar);
                }
                Ok(None) => index += 1,
                Err(reason) => {
                    result = Err(reason);
                    break;
                }
            }
        }
        self.set_command(bdf, command);
        result.map(|()| bars)
    }

    /// Sizes BAR `index` (decoding must be off).
    fn size_bar(&self, bdf: Bdf, index: u8, count: u8) -> Result<Option<Bar>, Reason> {
        let reg = REG_BAR0 + 4 * u16::from(index);
        let original = self.read32(bdf, reg);
        self.write32(bdf, reg, u32::MAX);
        let mask = self.read32(bdf, reg);
        self.write32(bdf, reg, original);

        if original & 1 == 1 {
            let mask = mask & !0x3;
            if mask == 0 {
                return Ok(None);
            }
            // Devices may hardwire the upper 16 bits of I/O BARs to 0.
            let mask = if mask & 0xffff_0000 == 0 {
                mask | 0xffff_0000
            } else {
                mask
            };
            return Ok(Some(Bar {
                index,
                kind: BarKind::Io,
                addr: u64::from(original & !0x3),
                size: u64::from((!mask).wrapping_add(1)),
            }));
        }
        let low_mask = u64::from(mask & !0xf);
        if (original >> 1) & 0x3 == 0x2 {
            if index + 1 >= count {
                bail!("{} bar{} is 64-bit but has no upper half", bdf, index);
            }
            let upper_reg = reg + 4;
            let upper = self.read32(bdf, upper_reg);
            self.write32(bdf, upper_reg, u32::MAX);
            let upper_mask = self.read32(bdf, upper_reg);
            self.write32(bdf, upper_reg, upper);
            let mask = (u64::from(upper_mask) << 32) | low_mask;
            if mask == 0 {
                return Ok(None);
            }
            return Ok(Some(Bar {
                index,
                kind: BarKind::Mem64,
                addr: (u64::from(upper) << 32) | u64::from(original & !0xf),
                size: (!mask).wrapping_add(1),
            }));
        }
        if low_mask == 0 {
            return Ok(None);
        }
        Ok(Some(Bar {
            index,
            kind: BarKind::Mem32,
            addr: u64::from(original & !0xf),
            size: u64::from((!(low_mask as u32)).wrapping_add(1)),
        }))
    }

    /// Programs memory BAR `bar` with `addr` (decoding should be off).
    pub fn set_bar(&self, bdf: Bdf, bar: &Bar, addr: u64) {
        let reg = REG_BAR0 + 4 * u16::from(bar.index);
        let flags = self.read32(bdf, reg) & 0xf;
        self.write32(bdf, reg, (addr as u32 & !0xf) | flags);
        if bar.kind == BarKind::Mem64 {
            self.write32(bdf, reg + 4, (addr >> 32) as u32);
        }
    }
}

fn legacy_address(bdf: Bdf, offset: u16) -> u32 {
    CONFIG_ENABLE
        | (u32::from(bdf.bus) << 16)
        | (u32::from(bdf.device & 0x1f) << 11)
        | (u32::from(bdf.function & 0x7) << 8)
        | u32::from(offset & 0xfc)
}

fn ecam_address(base: u64, bdf: Bdf, offset: u16) -> u64 {
    base + ((u64::from(bdf.bus) << 20)
        | (u64::from(bdf.device & 0x1f) << 15)
        | (u64::from(bdf.function & 0x7) << 12)
        | u64::from(offset & 0xffc))
}

/// What a BAR decodes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BarKind {
    Io,
    Mem32,
    Mem64,
}

/// One implemented BAR.
#[derive(Clone, Copy, Debug)]
pub struct Bar {
    /// BAR number (0-5); a 64-bit BAR also uses `index + 1`.
    pub index: u8,
    pub kind: BarKind,
    /// Programmed address (0: unassigned).
    pub addr: u64,
    /// Size from the all-ones readback (a power of two).
    pub size: u64,
}

impl fmt::Display for Bar {
    /// `bar4=mem64:0xfe000000+0x4000`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            BarKind::Io => "io",
            BarKind::Mem32 => "mem32",
            BarKind::Mem64 => "mem64",
        };
        write!(
            f,
            "bar{}={}:{:#x}+{:#x}",
            self.index, kind, self.addr, self.size
        )
    }
}

/// Short names of the capability IDs the probe prints.
pub fn capability_name(id: u8) -> &'static str {
    match id {
        0x01 => "pm",
        0x03 => "vpd",
        0x05 => "msi",
        0x07 => "pcix",
        0x09 => "vendor",
        0x0a => "debug",
        0x0c => "hotplug",
        0x0d => "ssvid",
        0x10 => "pcie",
        0x11 => "msix",
        0x12 => "sata",
        0x13 => "af",
        _ => "other",
    }
}
