//! The two ways a guest reaches configuration space: the legacy
//! CONFIG_ADDRESS/CONFIG_DATA ports (0xCF8/0xCFC) and PCIe ECAM (MMIO).

use std::sync::{Arc, Mutex};

use vm_device::{BusDevice, SharedDevice};

use crate::root::PciRoot;
use crate::Bdf;

/// Base of the legacy configuration ports.
pub const CONFIG_IO_PORT: u64 = 0xcf8;
/// Ports claimed: CONFIG_ADDRESS (0xCF8–0xCFB) and CONFIG_DATA (0xCFC–0xCFF).
pub const CONFIG_IO_LEN: u64 = 8;
const ENABLE: u32 = 1 << 31;

fn root_lock(root: &Mutex<PciRoot>) -> std::sync::MutexGuard<'_, PciRoot> {
    root.lock().unwrap_or_else(|p| p.into_inner())
}

/// Ports 0xCF8–0xCFF. A byte access to 0xCF9 is the reset control register,
/// which shares the range; it is passed on to `reset`.
pub struct PciConfigIo {
    root: Arc<Mutex<PciRoot>>,
    address: u32,
    reset: Option<SharedDevice>,
}

impl PciConfigIo {
    /// The port device over `root`, passing 0xCF9 byte accesses to `reset`.
    pub fn new(root: Arc<Mutex<PciRoot>>, reset: Option<SharedDevice>) -> PciConfigIo {
        PciConfigIo {
            root,
            address: 0,
            reset,
        }
    }

    fn target(&self, data_offset: u64) -> Option<(Bdf, usize)> {
        if self.address & ENABLE == 0 {
            return None;
        }
        let a = self.address;
        let bdf = Bdf {
            bus: (a >> 16) as u8,
            device: ((a >> 11) & 0x1f) as u8,
            function: ((a >> 8) & 0x7) as u8,
        };
        Some((bdf, (a & 0xfc) as usize + data_offset as usize))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            0 if data.len() == 4 => data.copy_from_slice(&self.address.to_le_bytes()),
            1 if data.len() == 1 => match &self.reset {
                Some(r) => vm_device::lock(r).read(0, data),
                None => data.fill(0),
            },
            4..=7 => match self.target(offset - 4) {
                Some((bdf, reg)) if (offset - 4) as usize + data.len() <= 4 => {
                    root_lock(&self.root).config_read(bdf, reg, data)
                }
                _ => data.fill(0xff),
            },
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            0 if data.len() == 4 => {
                self.address = u32::from_le_bytes([data[0], data[1], data[2], data[3]])
            }
            1 if data.len() == 1 => {
                if let Some(r) = &self.reset {
                    vm_device::lock(r).write(0, data);
                }
            }
            4..=7 => {
                if let Some((bdf, reg)) = self.target(offset - 4) {
                    if (offset - 4) as usize + data.len() <= 4 {
                        root_lock(&self.root).config_write(bdf, reg, data);
                    }
                }
            }
            _ => {}
        }
    }
}

/// The ECAM window: 4 KiB of configuration space per function.
pub struct PciConfigMmio {
    root: Arc<Mutex<PciRoot>>,
}

impl PciConfigMmio {
    /// The ECAM device over `root`.
    pub fn new(root: Arc<Mutex<PciRoot>>) -> PciConfigMmio {
        PciConfigMmio { root }
    }
}

fn ecam_target(offset: u64, len: usize) -> Option<(Bdf, usize)> {
    let reg = (offset & 0xfff) as usize;
    if reg + len > 0x1000 {
        return None;
    }
    let bdf = Bdf {
        bus: (offset >> 20) as u8,
        device: ((offset >> 15) & 0x1f) as u8,
        function: ((offset >> 12) & 0x7) as u8,
    };
    Some((bdf, reg))
}

impl BusDevice for PciConfigMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match ecam_target(offset, data.len()) {
            Some((bdf, reg)) => root_lock(&self.root).config_read(bdf, reg, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some((bdf, reg)) = ecam_target(offset, data.len()) {
            root_lock(&self.root).config_write(bdf, reg, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_device::Bus;

    fn root() -> Arc<Mutex<PciRoot>> {
        Arc::new(Mutex::new(PciRoot::new(
            Arc::new(Bus::new()),
            Arc::new(Bus::new()),
        )))
    }

    #[test]
    fn legacy_ports_reach_the_host_bridge() {
        let mut io = PciConfigIo::new(root(), None);
        io.write(0, &0x8000_0000u32.to_le_bytes());
        let mut v = [0u8; 4];
        io.read(4, &mut v);
        assert_eq!(u32::from_le_bytes(v), 0x0008_1b36);
        let mut w = [0u8; 2];
        io.read(6, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x0008);
        // Disabled address: all ones.
        io.write(0, &0u32.to_le_bytes());
        io.read(4, &mut v);
        assert_eq!(v, [0xff; 4]);
        // Straddling the data register: all ones, no panic.
        io.write(0, &0x8000_0000u32.to_le_bytes());
        io.read(6, &mut v);
        assert_eq!(v, [0xff; 4]);
        io.write(7, &[1, 2, 3, 4]);
        io.read(9, &mut v);
    }

    #[test]
    fn cf9_byte_goes_to_the_reset_register() {
        struct Reg(Vec<u8>);
        impl BusDevice for Reg {
            fn read(&mut self, _: u64, d: &mut [u8]) {
                d[0] = 0x42;
            }
            fn write(&mut self, _: u64, d: &[u8]) {
                self.0.extend_from_slice(d);
            }
        }
        let reg = Arc::new(Mutex::new(Reg(Vec::new())));
        let mut io = PciConfigIo::new(root(), Some(reg.clone()));
        io.write(1, &[0x06]);
        let mut b = [0u8];
        io.read(1, &mut b);
        assert_eq!((reg.lock().unwrap().0.clone(), b[0]), (vec![0x06], 0x42));
    }

    #[test]
    fn ecam_decodes_bdf_and_register() {
        let mut m = PciConfigMmio::new(root());
        let mut v = [0u8; 4];
        m.read(0, &mut v);
        assert_eq!(u32::from_le_bytes(v), 0x0008_1b36);
        m.read(1 << 15, &mut v);
        assert_eq!(v, [0xff; 4]);
        m.read(0xffe, &mut v);
        assert_eq!(v, [0xff; 4], "crosses into the next function");
        m.write(u64::MAX, &[0; 8]);
    }
}
