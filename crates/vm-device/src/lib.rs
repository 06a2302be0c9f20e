//! Address buses that route guest port I/O and MMIO accesses to devices.
//!
//! A device occupies one range on a bus. Devices are shared as
//! `Arc<Mutex<dyn BusDevice>>`: an access in flight holds its own reference,
//! so removing a device from the bus never frees it under a running access.

mod counters;

pub use counters::Counters;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

/// A device on a bus. `offset` is relative to the start of its range, and
/// `data.len()` is the access width (1, 2, 4 or 8 bytes; guests choose it).
pub trait BusDevice: Send {
    /// Handles a guest read; fill `data` (it is zeroed beforehand).
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a guest write.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the bus and its owner.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// An error inserting a device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The range is empty or wraps around.
    #[error("invalid bus range {base:#x}+{len:#x}")]
    InvalidRange {
        /// Start.
        base: u64,
        /// Length.
        len: u64,
    },
    /// The range overlaps a device already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps another device")]
    Overlap {
        /// Start.
        base: u64,
        /// Length.
        len: u64,
    },
}

#[derive(Clone)]
struct Entry {
    len: u64,
    device: SharedDevice,
}

/// A set of non-overlapping address ranges, each served by one device.
/// Ranges can change while vCPUs use the bus (a guest moving a PCI BAR).
#[derive(Default)]
pub struct Bus {
    ranges: RwLock<BTreeMap<u64, Entry>>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Bus {
        Bus::default()
    }

    /// Places `device` at `[base, base + len)`.
    pub fn insert(&self, device: SharedDevice, base: u64, len: u64) -> Result<(), Error> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(Error::InvalidRange { base, len })?;
        let mut ranges = self.ranges.write().unwrap_or_else(|p| p.into_inner());
        if ranges
            .range(..end)
            .next_back()
            .is_some_and(|(b, e)| b + e.len > base)
        {
            return Err(Error::Overlap { base, len });
        }
        ranges.insert(base, Entry { len, device });
        Ok(())
    }

    /// Removes the device whose range starts at `base`; returns it.
    pub fn remove(&self, base: u64) -> Option<SharedDevice> {
        let mut ranges = self.ranges.write().unwrap_or_else(|p| p.into_inner());
        ranges.remove(&base).map(|e| e.device)
    }

    fn resolve(&self, addr: u64, width: usize) -> Option<(u64, SharedDevice)> {
        let ranges = self.ranges.read().unwrap_or_else(|p| p.into_inner());
        let (base, entry) = ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        // The whole access must fall inside the device's range.
        if offset.checked_add(width as u64)? > entry.len {
            return None;
        }
        Some((offset, entry.device.clone()))
    }

    /// Routes a read; returns false (and leaves `data` all ones) when no device
    /// claims the whole access, as an unclaimed ISA/PCI read returns.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((offset, device)) => {
                data.fill(0);
                lock(&device).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Routes a write; returns false when no device claims the whole access
    /// (the write is then dropped).
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((offset, device)) => {
                lock(&device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, recovering from a poisoned lock: a device whose access
/// panicked keeps its last consistent state rather than taking the VMM down.
pub fn lock(device: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last_write: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data[0] = offset as u8;
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_offset() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let bus = Bus::new();
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b[0], 2);
        assert!(bus.write(0x3ff, &[7]));
        assert_eq!(dev.lock().unwrap().last_write, vec![(7, vec![7])]);
    }

    #[test]
    fn unclaimed_and_straddling_accesses() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let bus = Bus::new();
        bus.insert(dev, 0x70, 2).unwrap();
        let mut b = [0u8; 2];
        assert!(!bus.read(0x71, &mut b), "access straddles the end");
        assert_eq!(b, [0xff, 0xff]);
        assert!(!bus.read(0x6f, &mut b));
        assert!(!bus.write(u64::MAX, &[1, 2]));
        let mut b8 = [0u8; 8];
        assert!(!bus.read(u64::MAX - 3, &mut b8));
    }

    #[test]
    fn refuses_overlaps_and_bad_ranges() {
        let bus = Bus::new();
        let d = || -> SharedDevice { Arc::new(Mutex::new(Recorder::default())) };
        bus.insert(d(), 0x10, 0x10).unwrap();
        assert!(bus.insert(d(), 0x18, 4).is_err());
        assert!(bus.insert(d(), 0x08, 0x9).is_err());
        assert!(bus.insert(d(), 0x20, 4).is_ok());
        assert!(bus.insert(d(), 0x0, 0).is_err());
        assert!(bus.insert(d(), u64::MAX, 2).is_err());
        assert!(bus.remove(0x10).is_some());
        assert!(bus.insert(d(), 0x18, 4).is_ok());
    }
}
