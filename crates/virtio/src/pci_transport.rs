//! The virtio-over-PCI transport (virtio 1.x "modern" layout): one 64-bit
//! memory BAR holding the common configuration, ISR, device configuration,
//! notification area and the MSI-X table and PBA, described by vendor
//! capabilities.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use pci::config::{BarKind, ConfigSpace, Identity};
use pci::msix::{Delivery, MsiMessage, MsiSender, MsixTable};
use pci::PciDevice;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use crate::device::{Interrupt, QueueSet, VirtioDevice};
use crate::status;
use crate::GuestMemory;

/// Offsets inside BAR 0.
pub mod layout {
    /// Common configuration.
    pub const COMMON: u64 = 0x0000;
    /// Size of the common configuration structure.
    pub const COMMON_SIZE: u64 = 0x38;
    /// ISR status.
    pub const ISR: u64 = 0x1000;
    /// Device configuration.
    pub const DEVICE: u64 = 0x2000;
    /// Size reserved for device configuration.
    pub const DEVICE_SIZE: u64 = 0x1000;
    /// Queue notifications: queue `q` at `NOTIFY + 4 * q`.
    pub const NOTIFY: u64 = 0x3000;
    /// Bytes between two queues' notification addresses.
    pub const NOTIFY_MULTIPLIER: u32 = 4;
    /// MSI-X table.
    pub const MSIX_TABLE: u64 = 0x4000;
    /// MSI-X pending-bit array.
    pub const MSIX_PBA: u64 = 0x6000;
    /// Size of BAR 0.
    pub const BAR_SIZE: u64 = 0x8000;
}

/// "No vector" in msix_config / queue_msix_vector.
const NO_VECTOR: u16 = 0xffff;
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;
const VENDOR_CAP: u8 = 0x09;

/// Registers queue-notification eventfds with the hypervisor so that guest
/// notifications do not exit to the VMM.
pub trait IoEventRegistrar: Send + Sync {
    /// Signal `event` on guest writes to MMIO `addr`.
    fn register(&self, event: &EventFd, addr: u64) -> std::io::Result<()>;
    /// Stop doing so.
    fn unregister(&self, event: &EventFd, addr: u64);
}

#[derive(Debug, Clone, Copy, Default)]
struct QueueRegs {
    size: u16,
    max_size: u16,
    msix_vector: u16,
    enabled: bool,
    desc: u64,
    avail: u64,
    used: u64,
}

/// INTA#: a level-triggered line, high from an interrupt until the driver
/// reads ISR, and never raised while the command register disables INTx.
pub struct IntxLine {
    set_level: Box<dyn Fn(bool) + Send + Sync>,
    disabled: std::sync::atomic::AtomicBool,
}

impl IntxLine {
    fn raise(&self) {
        if !self.disabled.load(Ordering::SeqCst) {
            (self.set_level)(true);
        }
    }

    fn lower(&self) {
        (self.set_level)(false);
    }
}

/// Interrupt delivery shared by the transport and the device's workers.
struct PciInterrupt {
    msix: Arc<Mutex<MsixTable>>,
    sender: Arc<dyn MsiSender>,
    isr: Arc<AtomicU8>,
    status: Arc<AtomicU8>,
    queue_vectors: Vec<u16>,
    /// The configuration-change vector; the driver may change it while running.
    config_vector: Arc<std::sync::atomic::AtomicU16>,
    /// Bus mastering: without it the function sends no MSI.
    bus_master: Arc<std::sync::atomic::AtomicBool>,
    intx: Option<Arc<IntxLine>>,
}

impl PciInterrupt {
    /// MSI-X when the driver enabled it (NO_VECTOR then means "no
    /// interrupt"), else the INTx line with the ISR bit.
    fn send(&self, vector: u16, isr_bit: u8) {
        let mut msix = self.msix.lock().unwrap_or_else(|p| p.into_inner());
        if !msix.enabled() {
            drop(msix);
            self.isr.fetch_or(isr_bit, Ordering::SeqCst);
            if let Some(line) = &self.intx {
                line.raise();
            }
            return;
        }
        if vector == NO_VECTOR {
            return;
        }
        let delivery = msix.deliver(vector);
        drop(msix);
        if let Delivery::Send(msg) = delivery {
            // An MSI is a memory write by the device: only with bus mastering on.
            if self.bus_master.load(Ordering::SeqCst) {
                self.sender.send(vector, msg);
            }
        }
    }
}

impl Interrupt for PciInterrupt {
    fn notify_queue(&self, queue: u16) {
        let vector = self
            .queue_vectors
            .get(usize::from(queue))
            .copied()
            .unwrap_or(NO_VECTOR);
        self.send(vector, 1);
    }

    fn notify_config(&self) {
        self.send(self.config_vector.load(Ordering::SeqCst), 2);
    }

    fn needs_reset(&self) {
        self.status.fetch_or(status::NEEDS_RESET, Ordering::SeqCst);
        self.notify_config();
    }
}

/// A virtio device on PCI.
pub struct VirtioPci<D: VirtioDevice> {
    config: ConfigSpace,
    device: D,
    mem: GuestMemory,
    msix: Arc<Mutex<MsixTable>>,
    msix_cap: usize,
    sender: Arc<dyn MsiSender>,
    ioevents: Arc<dyn IoEventRegistrar>,
    notify_events: Vec<EventFd>,
    bar_addr: Option<u64>,
    intx: Option<Arc<IntxLine>>,
    config_vector: Arc<std::sync::atomic::AtomicU16>,
    bus_master: Arc<std::sync::atomic::AtomicBool>,
    isr: Arc<AtomicU8>,
    status: Arc<AtomicU8>,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    msix_config: u16,
    queue_select: u16,
    queues: Vec<QueueRegs>,
    active: bool,
}

impl<D: VirtioDevice> VirtioPci<D> {
    /// Wraps `device`; its BAR starts at `bar_addr` (from the VMM's allocator).
    pub fn new(
        device: D,
        mem: GuestMemory,
        bar_addr: u64,
        sender: Arc<dyn MsiSender>,
        ioevents: Arc<dyn IoEventRegistrar>,
    ) -> std::io::Result<VirtioPci<D>> {
        let device_type = device.device_type();
        let id = Identity {
            vendor: pci::VENDOR_REDHAT,
            device: 0x1040 + device_type,
            class: class_of(device_type),
            revision: 1,
            subsystem_vendor: pci::VENDOR_REDHAT,
            subsystem: 0x40,
        };
        let mut config = ConfigSpace::new(id, 1);
        config.add_bar(0, BarKind::Memory64, layout::BAR_SIZE, bar_addr);
        for (kind, offset, length) in [
            (CAP_COMMON, layout::COMMON, layout::COMMON_SIZE),
            (CAP_ISR, layout::ISR, 1),
            (CAP_DEVICE, layout::DEVICE, layout::DEVICE_SIZE),
        ] {
            let cap = vendor_cap(kind, offset, length, None);
            config.add_capability(&cap, &vec![0; cap.len()]);
        }
        let queue_count = device.queue_max_sizes().len();
        let notify_len = (queue_count as u64).max(1) * u64::from(layout::NOTIFY_MULTIPLIER);
        let cap = vendor_cap(
            CAP_NOTIFY,
            layout::NOTIFY,
            notify_len,
            Some(layout::NOTIFY_MULTIPLIER),
        );
        config.add_capability(&cap, &vec![0; cap.len()]);
        // One vector per queue plus one for configuration changes.
        let msix = MsixTable::new(queue_count as u16 + 1);
        let (body, writable) =
            msix.capability(0, layout::MSIX_TABLE as u32, 0, layout::MSIX_PBA as u32);
        let msix_cap = config.add_capability(&body, &writable);
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| QueueRegs {
                size: max,
                max_size: max,
                msix_vector: NO_VECTOR,
                ..Default::default()
            })
            .collect();
        let notify_events = (0..queue_count)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(VirtioPci {
            config,
            device,
            mem,
            msix: Arc::new(Mutex::new(msix)),
            msix_cap,
            sender,
            ioevents,
            notify_events,
            bar_addr: None,
            intx: None,
            config_vector: Arc::new(std::sync::atomic::AtomicU16::new(NO_VECTOR)),
            bus_master: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            isr: Arc::new(AtomicU8::new(0)),
            status: Arc::new(AtomicU8::new(0)),
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            msix_config: NO_VECTOR,
            queue_select: 0,
            queues,
            active: false,
        })
    }

    /// Wires INTA# to `set_level` (which drives interrupt `irq`) for drivers
    /// that do not enable MSI-X; `irq` is reported in the interrupt line register.
    pub fn set_intx(&mut self, set_level: Box<dyn Fn(bool) + Send + Sync>, irq: u8) {
        self.config.write(pci::config::reg::INTERRUPT_LINE, &[irq]);
        self.intx = Some(Arc::new(IntxLine {
            set_level,
            disabled: std::sync::atomic::AtomicBool::new(false),
        }));
    }

    fn selected(&mut self) -> Option<&mut QueueRegs> {
        self.queues.get_mut(usize::from(self.queue_select))
    }

    fn reset(&mut self) {
        self.device.reset();
        self.active = false;
        self.status.store(0, Ordering::SeqCst);
        self.isr.store(0, Ordering::SeqCst);
        self.driver_features = 0;
        self.msix_config = NO_VECTOR;
        self.config_vector.store(NO_VECTOR, Ordering::SeqCst);
        for q in &mut self.queues {
            *q = QueueRegs {
                size: q.max_size,
                max_size: q.max_size,
                msix_vector: NO_VECTOR,
                ..Default::default()
            };
        }
    }

    fn write_status(&mut self, value: u8) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status.load(Ordering::SeqCst);
        let mut value = value;
        if value & status::FEATURES_OK != 0 && old & status::FEATURES_OK == 0 {
            // Refuse a feature set the device did not offer, or without VERSION_1.
            let offered = self.device.features();
            if self.driver_features & !offered != 0
                || self.driver_features & crate::features::VERSION_1 == 0
            {
                value &= !status::FEATURES_OK;
            }
        }
        self.status
            .store(value | (old & status::NEEDS_RESET), Ordering::SeqCst);
        if value & status::DRIVER_OK != 0 && !self.active && value & status::FEATURES_OK != 0 {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let mut queues = Vec::new();
        for (i, regs) in self.queues.iter().enumerate() {
            if !regs.enabled {
                continue;
            }
            let Ok(mut q) = Queue::new(regs.max_size) else {
                continue;
            };
            q.set_size(regs.size);
            q.set_desc_table_address(Some(regs.desc as u32), Some((regs.desc >> 32) as u32));
            q.set_avail_ring_address(Some(regs.avail as u32), Some((regs.avail >> 32) as u32));
            q.set_used_ring_address(Some(regs.used as u32), Some((regs.used >> 32) as u32));
            q.set_event_idx(self.driver_features & crate::features::RING_EVENT_IDX != 0);
            q.set_ready(true);
            if !q.is_valid(&self.mem) {
                // Guest-triggered: debug level, so a looping guest cannot flood the log.
                tracing::debug!(
                    "virtio: queue {i} is not valid in guest memory; device needs reset"
                );
                self.status.fetch_or(status::NEEDS_RESET, Ordering::SeqCst);
                return;
            }
            let Ok(event) = self.notify_events[i].try_clone() else {
                return;
            };
            queues.push((i as u16, q, event));
        }
        let interrupt = Arc::new(PciInterrupt {
            msix: self.msix.clone(),
            sender: self.sender.clone(),
            isr: self.isr.clone(),
            status: self.status.clone(),
            queue_vectors: self.queues.iter().map(|q| q.msix_vector).collect(),
            config_vector: self.config_vector.clone(),
            bus_master: self.bus_master.clone(),
            intx: self.intx.clone(),
        });
        let set = QueueSet {
            mem: self.mem.clone(),
            queues,
            interrupt,
            acked_features: self.driver_features,
        };
        match self.device.activate(set) {
            Ok(()) => self.active = true,
            Err(e) => {
                tracing::debug!("virtio: activation failed: {e}");
                // Queues that did start must not keep running beside a retry.
                self.device.reset();
                self.status.fetch_or(status::NEEDS_RESET, Ordering::SeqCst);
            }
        }
    }

    fn common_read(&mut self, offset: u64, data: &mut [u8]) {
        let features = self.device.features();
        let q = self
            .queues
            .get(usize::from(self.queue_select))
            .copied()
            .unwrap_or_default();
        let value: u64 = match (offset, data.len()) {
            (0x00, 4) => u64::from(self.device_feature_select),
            (0x04, 4) => match self.device_feature_select {
                0 => features & 0xffff_ffff,
                1 => features >> 32,
                _ => 0,
            },
            (0x08, 4) => u64::from(self.driver_feature_select),
            (0x0c, 4) => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            (0x10, 2) => u64::from(self.msix_config),
            (0x12, 2) => self.queues.len() as u64,
            (0x14, 1) => u64::from(self.status.load(Ordering::SeqCst)),
            (0x15, 1) => 0,
            (0x16, 2) => u64::from(self.queue_select),
            (0x18, 2) => u64::from(q.size),
            (0x1a, 2) => u64::from(q.msix_vector),
            (0x1c, 2) => u64::from(q.enabled),
            (0x1e, 2) => u64::from(self.queue_select),
            (0x20, 4) => q.desc & 0xffff_ffff,
            (0x24, 4) => q.desc >> 32,
            (0x28, 4) => q.avail & 0xffff_ffff,
            (0x2c, 4) => q.avail >> 32,
            (0x30, 4) => q.used & 0xffff_ffff,
            (0x34, 4) => q.used >> 32,
            (0x20 | 0x28 | 0x30, 8) => [q.desc, q.avail, q.used][((offset - 0x20) / 8) as usize],
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        let n = data.len().min(8);
        data[..n].copy_from_slice(&bytes[..n]);
    }

    fn common_write(&mut self, offset: u64, data: &[u8]) {
        let mut b = [0u8; 8];
        let n = data.len().min(8);
        b[..n].copy_from_slice(&data[..n]);
        let v = u64::from_le_bytes(b);
        let running = self.status.load(Ordering::SeqCst) & status::DRIVER_OK != 0;
        let queue_vectors = self.msix.lock().unwrap_or_else(|p| p.into_inner()).len() as u64;
        let vector = |v: u64| {
            if v < queue_vectors {
                v as u16
            } else {
                NO_VECTOR
            }
        };
        match (offset, data.len()) {
            (0x00, 4) => self.device_feature_select = v as u32,
            (0x08, 4) => self.driver_feature_select = v as u32,
            (0x0c, 4) if !running => match self.driver_feature_select {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v,
                1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (v << 32),
                _ => {}
            },
            (0x10, 2) => {
                self.msix_config = vector(v);
                self.config_vector.store(self.msix_config, Ordering::SeqCst);
            }
            (0x14, 1) => self.write_status(v as u8),
            (0x16, 2) => self.queue_select = v as u16,
            _ if running => {} // queue registers are frozen while the device runs
            (0x18, 2) => {
                if let Some(q) = self.selected() {
                    // A size must be a power of two no larger than the maximum.
                    if (v as u16).is_power_of_two() && v as u16 <= q.max_size {
                        q.size = v as u16;
                    }
                }
            }
            (0x1a, 2) => {
                let vec = vector(v);
                if let Some(q) = self.selected() {
                    q.msix_vector = vec;
                }
            }
            (0x1c, 2) => {
                if let Some(q) = self.selected() {
                    q.enabled = v & 1 == 1;
                }
            }
            (0x20..=0x37, 4) | (0x20 | 0x28 | 0x30, 8) => {
                if let Some(q) = self.selected() {
                    let field = match offset {
                        0x20..=0x27 => &mut q.desc,
                        0x28..=0x2f => &mut q.avail,
                        _ => &mut q.used,
                    };
                    *field = match (offset % 8, data.len()) {
                        (0, 8) => v,
                        (0, _) => (*field & !0xffff_ffff) | v,
                        _ => (*field & 0xffff_ffff) | (v << 32),
                    };
                }
            }
            _ => {}
        }
    }

    fn send_all(&self, messages: Vec<(u16, MsiMessage)>) {
        if !self.bus_master.load(Ordering::SeqCst) {
            return;
        }
        for (vector, msg) in messages {
            self.sender.send(vector, msg);
        }
    }
}

impl<D: VirtioDevice> Drop for VirtioPci<D> {
    /// The VM instance is going away: stop the device's workers (a shared
    /// device keeps its host side for the next instance).
    fn drop(&mut self) {
        self.device.reset();
    }
}

fn class_of(device_type: u16) -> u32 {
    match device_type {
        1 => 0x02_0000, // network
        2 => 0x01_8000, // mass storage
        3 => 0x07_8000, // communication
        _ => 0xff_0000,
    }
}

fn vendor_cap(kind: u8, offset: u64, length: u64, multiplier: Option<u32>) -> Vec<u8> {
    let len = if multiplier.is_some() { 20 } else { 16 };
    let mut cap = vec![VENDOR_CAP, 0, len, kind, 0, 0, 0, 0];
    cap.extend_from_slice(&(offset as u32).to_le_bytes());
    cap.extend_from_slice(&(length as u32).to_le_bytes());
    if let Some(m) = multiplier {
        cap.extend_from_slice(&m.to_le_bytes());
    }
    cap
}

impl<D: VirtioDevice> PciDevice for VirtioPci<D> {
    fn pause(&mut self) -> bool {
        self.device.pause()
    }

    fn resume(&mut self) {
        self.device.resume()
    }

    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn config_written(&mut self, offset: usize, len: usize) {
        let command = self.config.command();
        self.bus_master.store(
            command & pci::config::COMMAND_BUS_MASTER != 0,
            Ordering::SeqCst,
        );
        if let Some(line) = &self.intx {
            let disabled = self.config.command() & pci::config::COMMAND_INTX_DISABLE != 0;
            line.disabled.store(disabled, Ordering::SeqCst);
            if disabled {
                line.lower();
            }
        }
        let control_at = self.msix_cap + 2;
        if offset < control_at + 2 && offset + len > control_at {
            let b = self.config.bytes(control_at, 2);
            let control = u16::from_le_bytes([b[0], b[1]]);
            let fired = self
                .msix
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .set_control(control);
            self.send_all(fired);
        }
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if bar != 0 {
            return;
        }
        match offset {
            o if o < layout::COMMON + layout::COMMON_SIZE => self.common_read(o, data),
            layout::ISR => {
                if let Some(b) = data.first_mut() {
                    *b = self.isr.swap(0, Ordering::SeqCst);
                    // Reading ISR acknowledges the interrupt: the line goes low.
                    if let Some(line) = &self.intx {
                        line.lower();
                    }
                }
            }
            o if (layout::DEVICE..layout::DEVICE + layout::DEVICE_SIZE).contains(&o) => {
                self.device.read_config(o - layout::DEVICE, data)
            }
            o if (layout::MSIX_TABLE..layout::MSIX_PBA).contains(&o) => self
                .msix
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .read_table(o - layout::MSIX_TABLE, data),
            o if o >= layout::MSIX_PBA => self
                .msix
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .read_pba(o - layout::MSIX_PBA, data),
            _ => {}
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar != 0 {
            return;
        }
        match offset {
            o if o < layout::COMMON + layout::COMMON_SIZE => self.common_write(o, data),
            o if (layout::DEVICE..layout::DEVICE + layout::DEVICE_SIZE).contains(&o) => {
                self.device.write_config(o - layout::DEVICE, data)
            }
            o if (layout::NOTIFY..layout::MSIX_TABLE).contains(&o) => {
                // Reached only when the ioeventfd is not registered.
                let q = ((o - layout::NOTIFY) / u64::from(layout::NOTIFY_MULTIPLIER)) as usize;
                if let Some(e) = self.notify_events.get(q) {
                    let _ = e.write(1);
                }
            }
            o if (layout::MSIX_TABLE..layout::MSIX_PBA).contains(&o) => {
                let fired = self
                    .msix
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .write_table(o - layout::MSIX_TABLE, data);
                self.send_all(fired);
            }
            _ => {}
        }
    }

    fn bar_mapped(&mut self, bar: usize, addr: Option<u64>) {
        if bar != 0 || addr == self.bar_addr {
            return;
        }
        let notify = |base: u64, q: usize| {
            base + layout::NOTIFY + q as u64 * u64::from(layout::NOTIFY_MULTIPLIER)
        };
        if let Some(old) = self.bar_addr {
            for (q, e) in self.notify_events.iter().enumerate() {
                self.ioevents.unregister(e, notify(old, q));
            }
        }
        if let Some(new) = addr {
            for (q, e) in self.notify_events.iter().enumerate() {
                if let Err(err) = self.ioevents.register(e, notify(new, q)) {
                    tracing::debug!(
                        "virtio: notification ioeventfd at {:#x}: {err}",
                        notify(new, q)
                    );
                }
            }
        }
        self.bar_addr = addr;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    struct NoMsi;
    impl MsiSender for NoMsi {
        fn send(&self, _: u16, _: MsiMessage) {}
    }

    struct NoIoEvents;
    impl IoEventRegistrar for NoIoEvents {
        fn register(&self, _: &EventFd, _: u64) -> std::io::Result<()> {
            Ok(())
        }
        fn unregister(&self, _: &EventFd, _: u64) {}
    }

    fn transport() -> VirtioPci<crate::rng::Rng> {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        VirtioPci::new(
            crate::rng::Rng::new(),
            mem,
            0xc000_0000,
            Arc::new(NoMsi),
            Arc::new(NoIoEvents),
        )
        .unwrap()
    }

    fn read(t: &mut VirtioPci<crate::rng::Rng>, offset: u64, len: usize) -> u64 {
        let mut b = vec![0u8; len];
        t.bar_read(0, offset, &mut b);
        b.iter().rev().fold(0, |acc, x| (acc << 8) | u64::from(*x))
    }

    fn write(t: &mut VirtioPci<crate::rng::Rng>, offset: u64, len: usize, v: u64) {
        t.bar_write(0, offset, &v.to_le_bytes()[..len]);
    }

    #[test]
    fn common_configuration_semantics() {
        let mut t = transport();
        assert_eq!(read(&mut t, 0x12, 2), 1, "num_queues");
        write(&mut t, 0x00, 4, 1);
        assert_eq!(
            read(&mut t, 0x04, 4),
            1,
            "VERSION_1 in the high feature word"
        );
        assert_eq!(
            read(&mut t, 0x18, 2),
            256,
            "queue_size reads back the maximum"
        );
        write(&mut t, 0x18, 2, 100);
        assert_eq!(
            read(&mut t, 0x18, 2),
            256,
            "a size that is not a power of two is ignored"
        );
        write(&mut t, 0x18, 2, 64);
        assert_eq!(read(&mut t, 0x18, 2), 64);
        write(&mut t, 0x16, 2, 7);
        assert_eq!(read(&mut t, 0x18, 2), 0, "an absent queue reads as zero");
        write(&mut t, 0x1a, 2, 99);
        write(&mut t, 0x16, 2, 0);
        write(&mut t, 0x1a, 2, 5);
        assert_eq!(
            read(&mut t, 0x1a, 2),
            u64::from(NO_VECTOR),
            "vectors past the table are refused"
        );
        write(&mut t, 0x20, 8, 0x1234_5000);
        assert_eq!(read(&mut t, 0x20, 4), 0x1234_5000);
        write(&mut t, 0x14, 1, 0);
        assert_eq!(
            read(&mut t, 0x18, 2),
            256,
            "reset restores the queue registers"
        );
        assert_eq!(read(&mut t, 0x20, 4), 0);
    }

    #[test]
    fn features_ok_refuses_what_was_not_offered() {
        let mut t = transport();
        write(
            &mut t,
            0x14,
            1,
            u64::from(status::ACKNOWLEDGE | status::DRIVER),
        );
        // Without VERSION_1.
        write(&mut t, 0x08, 4, 0);
        write(&mut t, 0x0c, 4, 0);
        write(
            &mut t,
            0x14,
            1,
            u64::from(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK),
        );
        assert_eq!(read(&mut t, 0x14, 1) & u64::from(status::FEATURES_OK), 0);
        // VERSION_1 plus a bit the device does not offer.
        write(&mut t, 0x08, 4, 1);
        write(&mut t, 0x0c, 4, 1 | (1 << 20));
        write(
            &mut t,
            0x14,
            1,
            u64::from(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK),
        );
        assert_eq!(read(&mut t, 0x14, 1) & u64::from(status::FEATURES_OK), 0);
        write(&mut t, 0x0c, 4, 1);
        write(
            &mut t,
            0x14,
            1,
            u64::from(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK),
        );
        assert_ne!(read(&mut t, 0x14, 1) & u64::from(status::FEATURES_OK), 0);
    }

    #[test]
    fn hostile_bar_accesses_are_harmless() {
        let mut t = transport();
        for offset in [
            0u64,
            1,
            0x37,
            0x38,
            0xfff,
            0x1000,
            0x2fff,
            0x3000,
            0x3ffc,
            0x4000,
            0x5fff,
            0x6000,
            0x7fff,
            u64::MAX,
        ] {
            for len in [0usize, 1, 2, 3, 4, 8] {
                let mut b = vec![0xaa; len];
                t.bar_read(0, offset, &mut b);
                t.bar_write(0, offset, &b);
                t.bar_read(3, offset, &mut b);
            }
        }
    }
}
