//! The root bus: functions by slot, the host bridge at 00.0, and the BAR
//! windows each function has on the MMIO and port buses, kept in step with
//! what the guest programs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};

use vm_device::{Bus, BusDevice};

use crate::config::{self, BarKind, ConfigSpace, Identity};
use crate::Bdf;

/// A PCI function.
pub trait PciDevice: Send {
    /// Its configuration space.
    fn config(&self) -> &ConfigSpace;
    /// Its configuration space, for guest writes.
    fn config_mut(&mut self) -> &mut ConfigSpace;
    /// Called after the guest wrote `len` bytes of configuration space at `offset`.
    fn config_written(&mut self, offset: usize, len: usize);
    /// A guest read inside BAR `bar` at `offset`.
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    /// A guest write inside BAR `bar` at `offset`.
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]);
    /// BAR `bar` now decodes at `addr` (`None`: not decoded).
    fn bar_mapped(&mut self, bar: usize, addr: Option<u64>);
    /// Stops its work behind the guest's back (workers park, requests in
    /// flight complete); `false` if it could not stop in time.
    fn pause(&mut self) -> bool;
    /// Continues after [`PciDevice::pause`].
    fn resume(&mut self);
}

/// A function shared by the root and its BAR windows.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

fn lock(device: &SharedPciDevice) -> std::sync::MutexGuard<'_, dyn PciDevice + 'static> {
    device.lock().unwrap_or_else(|p| p.into_inner())
}

/// One BAR of one function as a device on the MMIO or port bus.
struct BarWindow {
    device: SharedPciDevice,
    bar: usize,
}

impl BusDevice for BarWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.device).bar_read(self.bar, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.device).bar_write(self.bar, offset, data);
    }
}

/// The host bridge at 00.0.
struct HostBridge {
    config: ConfigSpace,
}

impl PciDevice for HostBridge {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
    fn config_written(&mut self, _offset: usize, _len: usize) {}
    fn bar_read(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn bar_write(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
    fn bar_mapped(&mut self, _bar: usize, _addr: Option<u64>) {}
    fn pause(&mut self) -> bool {
        true
    }
    fn resume(&mut self) {}
}

/// Why a function could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The slot is out of range or taken.
    #[error("PCI slot {0} is not free")]
    SlotTaken(u8),
}

struct Slot {
    device: SharedPciDevice,
    /// Where each BAR is mapped now.
    mapped: [Option<u64>; 6],
}

/// Bus 0 of segment 0.
pub struct PciRoot {
    slots: BTreeMap<u8, Slot>,
    // Weak: the buses hold the configuration access devices, which hold the root.
    mmio: Weak<Bus>,
    pio: Weak<Bus>,
}

/// Slots a guest can use (0 is the host bridge).
pub const SLOTS: u8 = 32;

impl PciRoot {
    /// A root bus with the host bridge, mapping BARs on `mmio` and `pio`.
    pub fn new(mmio: Arc<Bus>, pio: Arc<Bus>) -> PciRoot {
        let id = Identity {
            vendor: 0x1b36,
            device: 0x0008,
            class: 0x06_0000,
            revision: 0,
            subsystem_vendor: 0x1af4,
            subsystem: 0x1100,
        };
        let bridge: SharedPciDevice = Arc::new(Mutex::new(HostBridge {
            config: ConfigSpace::new(id, 0),
        }));
        let mut slots = BTreeMap::new();
        slots.insert(
            0,
            Slot {
                device: bridge,
                mapped: [None; 6],
            },
        );
        PciRoot {
            slots,
            mmio: Arc::downgrade(&mmio),
            pio: Arc::downgrade(&pio),
        }
    }

    /// Adds a function at `slot`, function 0, and maps its BARs if decoding is on.
    pub fn add(&mut self, slot: u8, device: SharedPciDevice) -> Result<(), Error> {
        if slot == 0 || slot >= SLOTS || self.slots.contains_key(&slot) {
            return Err(Error::SlotTaken(slot));
        }
        self.slots.insert(
            slot,
            Slot {
                device,
                mapped: [None; 6],
            },
        );
        self.sync_bars(slot);
        Ok(())
    }

    /// Turns on memory and I/O decoding and bus mastering of the function at
    /// `slot`, as firmware does for the devices it assigned BARs to.
    pub fn enable_decoding(&mut self, slot: u8) {
        let Some(s) = self.slots.get(&slot) else {
            return;
        };
        let command = config::COMMAND_MEMORY | config::COMMAND_IO | config::COMMAND_BUS_MASTER;
        {
            let mut device = lock(&s.device);
            device
                .config_mut()
                .write(config::reg::COMMAND, &command.to_le_bytes());
            device.config_written(config::reg::COMMAND, 2);
        }
        self.sync_bars(slot);
    }

    /// The lowest free slot.
    pub fn free_slot(&self) -> Option<u8> {
        (1..SLOTS).find(|s| !self.slots.contains_key(s))
    }

    /// The functions on the bus, by address.
    pub fn functions(&self) -> Vec<(Bdf, SharedPciDevice)> {
        self.slots
            .iter()
            .map(|(s, slot)| {
                (
                    Bdf {
                        bus: 0,
                        device: *s,
                        function: 0,
                    },
                    slot.device.clone(),
                )
            })
            .collect()
    }

    fn slot_of(&self, bdf: Bdf) -> Option<&Slot> {
        if bdf.bus != 0 || bdf.function != 0 {
            return None;
        }
        self.slots.get(&bdf.device)
    }

    /// Pauses every function; `false` if one could not stop in time (the
    /// others are paused all the same).
    pub fn pause_all(&self) -> bool {
        let mut all_paused = true;
        for slot in self.slots.values() {
            all_paused &= lock(&slot.device).pause();
        }
        all_paused
    }

    /// Resumes every function.
    pub fn resume_all(&self) {
        for slot in self.slots.values() {
            lock(&slot.device).resume();
        }
    }

    /// A configuration read; absent functions read as all ones.
    pub fn config_read(&self, bdf: Bdf, offset: usize, data: &mut [u8]) {
        match self.slot_of(bdf) {
            Some(slot) => lock(&slot.device).config().read(offset, data),
            None => data.fill(0xff),
        }
    }

    /// A configuration write; BAR windows follow the new BARs and command register.
    pub fn config_write(&mut self, bdf: Bdf, offset: usize, data: &[u8]) {
        let Some(slot) = self.slot_of(bdf) else {
            return;
        };
        {
            let mut device = lock(&slot.device);
            device.config_mut().write(offset, data);
            device.config_written(offset, data.len());
        }
        let touches = |start: usize, end: usize| offset < end && offset + data.len() > start;
        if touches(config::reg::COMMAND, config::reg::COMMAND + 2)
            || touches(config::reg::BAR0, config::reg::BAR0 + 24)
        {
            self.sync_bars(bdf.device);
        }
    }

    /// Maps, moves or unmaps BAR windows to match the function's registers.
    fn sync_bars(&mut self, slot_number: u8) {
        let (Some(mmio), Some(pio)) = (self.mmio.upgrade(), self.pio.upgrade()) else {
            return;
        };
        let Some(slot) = self.slots.get_mut(&slot_number) else {
            return;
        };
        let device = slot.device.clone();
        let (bars, command, addresses): (Vec<_>, u16, Vec<_>) = {
            let d = lock(&device);
            let cfg = d.config();
            let bars: Vec<_> = cfg.bars().collect();
            let addrs = bars.iter().map(|b| cfg.bar_address(b.index)).collect();
            (bars, cfg.command(), addrs)
        };
        for (bar, addr) in bars.iter().zip(addresses) {
            let (bus, decode) = match bar.kind {
                BarKind::Io => (&pio, command & config::COMMAND_IO != 0),
                _ => (&mmio, command & config::COMMAND_MEMORY != 0),
            };
            let wanted = addr.filter(|a| decode && *a != 0 && a.checked_add(bar.size).is_some());
            let current = slot.mapped[bar.index];
            if wanted == current {
                continue;
            }
            if let Some(old) = current {
                bus.remove(old);
            }
            slot.mapped[bar.index] = None;
            if let Some(new) = wanted {
                let window = Arc::new(Mutex::new(BarWindow {
                    device: device.clone(),
                    bar: bar.index,
                }));
                match bus.insert(window, new, bar.size) {
                    Ok(()) => slot.mapped[bar.index] = Some(new),
                    Err(e) => tracing::debug!("00:{slot_number:02x}.0 BAR{}: {e}", bar.index),
                }
            }
            lock(&device).bar_mapped(bar.index, slot.mapped[bar.index]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Identity;

    pub(crate) struct Dummy {
        pub config: ConfigSpace,
        pub last_write: Option<(usize, u64, Vec<u8>)>,
        pub mapped: Vec<(usize, Option<u64>)>,
    }

    impl PciDevice for Dummy {
        fn config(&self) -> &ConfigSpace {
            &self.config
        }
        fn config_mut(&mut self) -> &mut ConfigSpace {
            &mut self.config
        }
        fn config_written(&mut self, _: usize, _: usize) {}
        fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
            data[0] = (bar as u8) << 4 | offset as u8;
        }
        fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
            self.last_write = Some((bar, offset, data.to_vec()));
        }
        fn bar_mapped(&mut self, bar: usize, addr: Option<u64>) {
            self.mapped.push((bar, addr));
        }
        fn pause(&mut self) -> bool {
            true
        }
        fn resume(&mut self) {}
    }

    pub(crate) fn dummy() -> Arc<Mutex<Dummy>> {
        let id = Identity {
            vendor: 0x1af4,
            device: 0x1044,
            class: 0xff_0000,
            revision: 1,
            subsystem_vendor: 0,
            subsystem: 0,
        };
        let mut config = ConfigSpace::new(id, 1);
        config.add_bar(0, BarKind::Memory32, 0x1000, 0xc000_0000);
        config.add_bar(2, BarKind::Memory64, 0x4000, 0x10_0000_0000);
        config.write(config::reg::COMMAND, &config::COMMAND_MEMORY.to_le_bytes());
        Arc::new(Mutex::new(Dummy {
            config,
            last_write: None,
            mapped: Vec::new(),
        }))
    }

    #[test]
    fn bars_follow_the_guest() {
        let (mmio, pio) = (Arc::new(Bus::new()), Arc::new(Bus::new()));
        let mut root = PciRoot::new(mmio.clone(), pio.clone());
        let d = dummy();
        root.add(3, d.clone()).unwrap();
        let bdf = Bdf {
            bus: 0,
            device: 3,
            function: 0,
        };
        let mut b = [0u8; 1];
        assert!(mmio.read(0xc000_0005, &mut b));
        assert_eq!(b[0], 0x05);
        assert!(mmio.read(0x10_0000_0003, &mut b));
        assert_eq!(b[0], 0x23);
        // Move BAR0; the old window disappears.
        root.config_write(bdf, 0x10, &0xc010_0000u32.to_le_bytes());
        assert!(!mmio.read(0xc000_0005, &mut b));
        assert!(mmio.write(0xc010_0007, &[9]));
        assert_eq!(d.lock().unwrap().last_write, Some((0, 7, vec![9])));
        // Memory decoding off unmaps everything.
        root.config_write(bdf, 0x04, &0u16.to_le_bytes());
        assert!(!mmio.read(0xc010_0000, &mut b));
        assert!(d.lock().unwrap().mapped.contains(&(2, None)));
    }

    #[test]
    fn absent_functions_and_slots() {
        let mut root = PciRoot::new(Arc::new(Bus::new()), Arc::new(Bus::new()));
        let mut v = [0u8; 4];
        root.config_read(
            Bdf {
                bus: 0,
                device: 5,
                function: 0,
            },
            0,
            &mut v,
        );
        assert_eq!(v, [0xff; 4]);
        root.config_read(
            Bdf {
                bus: 1,
                device: 0,
                function: 0,
            },
            0,
            &mut v,
        );
        assert_eq!(v, [0xff; 4]);
        root.config_read(
            Bdf {
                bus: 0,
                device: 0,
                function: 0,
            },
            0,
            &mut v,
        );
        assert_eq!(u32::from_le_bytes(v), 0x0008_1b36);
        root.config_write(
            Bdf {
                bus: 0,
                device: 9,
                function: 3,
            },
            0,
            &[1],
        );
        assert!(root.add(0, dummy()).is_err());
        assert!(root.add(32, dummy()).is_err());
        root.add(1, dummy()).unwrap();
        assert!(root.add(1, dummy()).is_err());
        assert_eq!(root.free_slot(), Some(2));
    }

    #[test]
    fn overlapping_bars_stay_unmapped() {
        let (mmio, pio) = (Arc::new(Bus::new()), Arc::new(Bus::new()));
        let mut root = PciRoot::new(mmio.clone(), pio.clone());
        root.add(1, dummy()).unwrap();
        let second = dummy();
        root.add(2, second.clone()).unwrap();
        // Both want 0xc0000000; only the first got it.
        assert!(second.lock().unwrap().mapped.contains(&(0, None)));
    }
}
