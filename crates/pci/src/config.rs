//! One function's configuration space: a register file in which only the
//! bits each register defines as writable can change, BARs that answer the
//! sizing protocol, and a capability list.

/// Size of a function's configuration space (PCIe extended space).
pub const CONFIG_SPACE_SIZE: usize = 4096;
/// Where the capability list starts.
const FIRST_CAPABILITY: usize = 0x40;
/// The end of the conventional (capability-bearing) header space.
const CONVENTIONAL_END: usize = 0x100;

/// Register offsets of the type 0 header.
pub mod reg {
    /// Vendor ID.
    pub const VENDOR_ID: usize = 0x00;
    /// Device ID.
    pub const DEVICE_ID: usize = 0x02;
    /// Command register.
    pub const COMMAND: usize = 0x04;
    /// Status register.
    pub const STATUS: usize = 0x06;
    /// Revision ID.
    pub const REVISION: usize = 0x08;
    /// Programming interface, subclass, class.
    pub const CLASS: usize = 0x09;
    /// Header type.
    pub const HEADER_TYPE: usize = 0x0e;
    /// First BAR.
    pub const BAR0: usize = 0x10;
    /// Subsystem vendor ID.
    pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
    /// Subsystem ID.
    pub const SUBSYSTEM_ID: usize = 0x2e;
    /// Capabilities pointer.
    pub const CAPABILITIES: usize = 0x34;
    /// Interrupt line.
    pub const INTERRUPT_LINE: usize = 0x3c;
    /// Interrupt pin.
    pub const INTERRUPT_PIN: usize = 0x3d;
}

/// Command register: I/O space decoding.
pub const COMMAND_IO: u16 = 1 << 0;
/// Command register: memory space decoding.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command register: bus mastering (DMA, MSI).
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Command register: INTx disabled.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
const STATUS_CAPABILITIES: u16 = 1 << 4;

/// What a BAR maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// 32-bit memory.
    Memory32,
    /// 64-bit memory (takes two BAR slots).
    Memory64,
    /// I/O ports.
    Io,
}

/// A BAR as the device declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    /// Its index (0..6).
    pub index: usize,
    /// Kind.
    pub kind: BarKind,
    /// Size in bytes (a power of two).
    pub size: u64,
}

/// A function's configuration registers.
pub struct ConfigSpace {
    regs: Box<[u8; CONFIG_SPACE_SIZE]>,
    writable: Box<[u8; CONFIG_SPACE_SIZE]>,
    bars: [Option<Bar>; 6],
    last_capability: Option<usize>,
    next_capability: usize,
}

/// Identity of a type 0 function.
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Class code (class << 16 | subclass << 8 | prog-if).
    pub class: u32,
    /// Revision.
    pub revision: u8,
    /// Subsystem vendor ID.
    pub subsystem_vendor: u16,
    /// Subsystem ID.
    pub subsystem: u16,
}

impl ConfigSpace {
    /// A type 0 header for `id`, with INTx pin `pin` (0 none, 1 INTA#..4 INTD#).
    pub fn new(id: Identity, pin: u8) -> ConfigSpace {
        let mut c = ConfigSpace {
            regs: Box::new([0; CONFIG_SPACE_SIZE]),
            writable: Box::new([0; CONFIG_SPACE_SIZE]),
            bars: [None; 6],
            last_capability: None,
            next_capability: FIRST_CAPABILITY,
        };
        c.set16(reg::VENDOR_ID, id.vendor);
        c.set16(reg::DEVICE_ID, id.device);
        c.regs[reg::REVISION] = id.revision;
        c.regs[reg::CLASS..reg::CLASS + 3].copy_from_slice(&id.class.to_le_bytes()[..3]);
        c.set16(reg::SUBSYSTEM_VENDOR_ID, id.subsystem_vendor);
        c.set16(reg::SUBSYSTEM_ID, id.subsystem);
        c.regs[reg::INTERRUPT_PIN] = pin;
        let command_mask = COMMAND_IO | COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE;
        c.writable[reg::COMMAND..reg::COMMAND + 2].copy_from_slice(&command_mask.to_le_bytes());
        c.writable[reg::INTERRUPT_LINE] = 0xff;
        c
    }

    fn set16(&mut self, offset: usize, v: u16) {
        self.regs[offset..offset + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn set32(&mut self, offset: usize, v: u32) {
        self.regs[offset..offset + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn get32(&self, offset: usize) -> u32 {
        u32::from_le_bytes([
            self.regs[offset],
            self.regs[offset + 1],
            self.regs[offset + 2],
            self.regs[offset + 3],
        ])
    }

    /// Declares BAR `index` of `kind` and `size` (a power of two, at least 16
    /// bytes for memory, 4 for I/O) at address `addr`.
    pub fn add_bar(&mut self, index: usize, kind: BarKind, size: u64, addr: u64) {
        assert!(
            size.is_power_of_two() && index < 6,
            "BAR declarations are VMM constants"
        );
        assert!(
            kind != BarKind::Memory64 || index < 5,
            "a 64-bit BAR needs two slots"
        );
        let offset = reg::BAR0 + 4 * index;
        let mask = !(size - 1);
        match kind {
            BarKind::Io => {
                self.set32(offset, (addr as u32 & !0x3) | 0x1);
                self.writable[offset..offset + 4]
                    .copy_from_slice(&((mask as u32) & !0x3).to_le_bytes());
            }
            BarKind::Memory32 => {
                self.set32(offset, addr as u32 & !0xf);
                self.writable[offset..offset + 4]
                    .copy_from_slice(&((mask as u32) & !0xf).to_le_bytes());
            }
            BarKind::Memory64 => {
                self.set32(offset, (addr as u32 & !0xf) | 0x4);
                self.set32(offset + 4, (addr >> 32) as u32);
                self.writable[offset..offset + 4]
                    .copy_from_slice(&((mask as u32) & !0xf).to_le_bytes());
                self.writable[offset + 4..offset + 8]
                    .copy_from_slice(&((mask >> 32) as u32).to_le_bytes());
            }
        }
        self.bars[index] = Some(Bar { index, kind, size });
    }

    /// The BARs the device declared.
    pub fn bars(&self) -> impl Iterator<Item = Bar> + '_ {
        self.bars.iter().flatten().copied()
    }

    /// The address BAR `index` currently holds.
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let bar = self.bars.get(index).copied().flatten()?;
        let offset = reg::BAR0 + 4 * index;
        let low = self.get32(offset);
        Some(match bar.kind {
            BarKind::Io => u64::from(low & !0x3),
            BarKind::Memory32 => u64::from(low & !0xf),
            BarKind::Memory64 => u64::from(low & !0xf) | (u64::from(self.get32(offset + 4)) << 32),
        })
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        u16::from_le_bytes([self.regs[reg::COMMAND], self.regs[reg::COMMAND + 1]])
    }

    /// Appends a capability whose first byte is its ID (the next pointer,
    /// byte 1, is filled in); `writable` gives the guest-writable bits of each
    /// byte (same length as `body`). Returns its offset.
    pub fn add_capability(&mut self, body: &[u8], writable: &[u8]) -> usize {
        assert!(
            body.len() >= 2 && body.len() == writable.len(),
            "capability layouts are VMM constants"
        );
        let offset = self.next_capability;
        assert!(
            offset + body.len() <= CONVENTIONAL_END,
            "capabilities must fit the conventional header"
        );
        self.regs[offset..offset + body.len()].copy_from_slice(body);
        self.regs[offset + 1] = 0;
        self.writable[offset..offset + body.len()].copy_from_slice(writable);
        self.writable[offset + 1] = 0;
        match self.last_capability {
            Some(prev) => self.regs[prev + 1] = offset as u8,
            None => {
                self.regs[reg::CAPABILITIES] = offset as u8;
                let status =
                    u16::from_le_bytes([self.regs[reg::STATUS], self.regs[reg::STATUS + 1]]);
                self.set16(reg::STATUS, status | STATUS_CAPABILITIES);
            }
        }
        self.last_capability = Some(offset);
        self.next_capability = (offset + body.len() + 3) & !3;
        offset
    }

    /// Reads `data.len()` bytes at `offset`; bytes past the space read as 0xff.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i)
                .and_then(|o| self.regs.get(o))
                .copied()
                .unwrap_or(0xff);
        }
    }

    /// Writes `data` at `offset`, changing only writable bits.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, v) in data.iter().enumerate() {
            let Some(o) = offset.checked_add(i).filter(|o| *o < CONFIG_SPACE_SIZE) else {
                return;
            };
            let mask = self.writable[o];
            self.regs[o] = (self.regs[o] & !mask) | (v & mask);
        }
    }

    /// Bytes `[offset, offset + len)` as currently held, for a capability's owner.
    pub fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        let end = offset.saturating_add(len).min(CONFIG_SPACE_SIZE);
        &self.regs[offset.min(end)..end]
    }

    /// Overwrites bytes regardless of the writable mask (device-side state).
    pub fn set_bytes(&mut self, offset: usize, bytes: &[u8]) {
        let end = offset.saturating_add(bytes.len()).min(CONFIG_SPACE_SIZE);
        if offset < end {
            self.regs[offset..end].copy_from_slice(&bytes[..end - offset]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space() -> ConfigSpace {
        let id = Identity {
            vendor: 0x1af4,
            device: 0x1044,
            class: 0xff_0000,
            revision: 1,
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
        };
        ConfigSpace::new(id, 1)
    }

    fn read32(c: &ConfigSpace, o: usize) -> u32 {
        let mut b = [0u8; 4];
        c.read(o, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn identity_is_read_only() {
        let mut c = space();
        c.write(0, &[0xff; 16]);
        assert_eq!(read32(&c, 0), 0x1044_1af4);
        assert_eq!(read32(&c, 8) >> 8, 0xff_0000);
        assert_eq!(
            c.command(),
            COMMAND_IO | COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE
        );
    }

    #[test]
    fn bar_sizing_protocol() {
        let mut c = space();
        c.add_bar(0, BarKind::Memory64, 0x4000, 0x10_0000_0000);
        c.add_bar(2, BarKind::Memory32, 0x1000, 0xc000_0000);
        assert_eq!(c.bar_address(0), Some(0x10_0000_0000));
        c.write(0x10, &[0xff; 8]);
        assert_eq!(read32(&c, 0x10), 0xffff_c004);
        assert_eq!(read32(&c, 0x14), 0xffff_ffff);
        c.write(0x10, &0xd000_0000u32.to_le_bytes());
        c.write(0x14, &0u32.to_le_bytes());
        assert_eq!(c.bar_address(0), Some(0xd000_0000));
        c.write(0x18, &[0xff; 4]);
        assert_eq!(read32(&c, 0x18), 0xffff_f000);
        assert_eq!(
            read32(&c, 0x20),
            0,
            "undeclared BARs are hard-wired to zero"
        );
        assert_eq!(c.bar_address(4), None);
    }

    #[test]
    fn capability_chain() {
        let mut c = space();
        let a = c.add_capability(&[0x09, 0xaa, 4, 0], &[0; 4]);
        let b = c.add_capability(&[0x11, 0xbb, 0, 0, 0, 0], &[0, 0, 0xff, 0, 0, 0]);
        assert_eq!((a, b), (0x40, 0x44));
        let mut p = [0u8; 1];
        c.read(reg::CAPABILITIES, &mut p);
        assert_eq!(p[0], 0x40);
        assert_eq!(c.bytes(0x40, 2), &[0x09, 0x44]);
        assert_eq!(c.bytes(0x44, 2), &[0x11, 0x00]);
        assert_ne!(read32(&c, 4) >> 16 & u32::from(STATUS_CAPABILITIES), 0);
        c.write(0x44, &[0, 0, 0x5a, 0x5a]);
        assert_eq!(c.bytes(0x46, 2), &[0x5a, 0]);
    }

    #[test]
    fn out_of_range_accesses() {
        let mut c = space();
        let mut b = [0u8; 4];
        c.read(CONFIG_SPACE_SIZE - 2, &mut b);
        assert_eq!(&b[2..], &[0xff, 0xff]);
        c.write(CONFIG_SPACE_SIZE - 1, &[1, 2, 3, 4]);
        c.write(usize::MAX, &[1]);
        c.read(usize::MAX, &mut b);
        assert_eq!(c.bytes(usize::MAX, 4), &[] as &[u8]);
        c.set_bytes(CONFIG_SPACE_SIZE - 1, &[7, 7]);
    }
}
