//! The MSI-X vector fields of a virtio PCI device's common configuration
//! structure (`msix_config`, `queue_msix_vector`), which `virtio-drivers`
//! does not expose, and a queue's notification address (the crate's
//! `notify` selects the queue and reads `queue_notify_off` on every call:
//! three MMIO exits instead of one). Offsets are fixed by the virtio 1.x
//! spec (4.1.4.3, 4.1.4.4).

use crate::bail;
use crate::exit::Reason;
use crate::pci::{Bar, BarKind, Bdf, ConfigAccess};

/// Vendor-specific capability ID (virtio structures).
const CAP_VENDOR: u8 = 0x09;
/// `virtio_pci_cap.cfg_type` of the common configuration.
const CFG_TYPE_COMMON: u8 = 1;
/// `virtio_pci_cap.cfg_type` of the notification structure.
const CFG_TYPE_NOTIFY: u8 = 2;
/// `virtio_pci_cap.cfg_type` of the ISR status register.
const CFG_TYPE_ISR: u8 = 3;
const COMMON_MSIX_CONFIG: u64 = 0x10;
const COMMON_QUEUE_SELECT: u64 = 0x16;
const COMMON_QUEUE_MSIX_VECTOR: u64 = 0x1a;
const COMMON_QUEUE_NOTIFY_OFF: u64 = 0x1e;
/// Length of the fields up to `queue_notify_off`.
const COMMON_MIN_LEN: u64 = 0x20;
/// `virtio_pci_notify_cap.notify_off_multiplier`, after the 16-byte
/// `virtio_pci_cap`.
const NOTIFY_CAP_MULTIPLIER: u16 = 16;

/// A virtio structure found through its vendor capability: its address
/// (in an assigned memory BAR) and length, and the capability's offset.
struct Structure {
    addr: u64,
    len: u64,
    cap: u16,
}

/// Finds the first vendor capability of `cfg_type` of `bdf` in `bars`
/// (already assigned and mapped by the caller); its structure must hold at
/// least `min_len` bytes.
fn find_structure(
    access: &ConfigAccess,
    bdf: Bdf,
    bars: &[Bar],
    cfg_type: u8,
    what: &str,
    min_len: u64,
) -> Result<Structure, Reason> {
    for (cap, id) in access.capabilities(bdf)? {
        let cap = u16::from(cap);
        if id != CAP_VENDOR || access.read8(bdf, cap + 3) != cfg_type {
            continue;
        }
        let bar_index = access.read8(bdf, cap + 4);
        let offset = u64::from(access.read32(bdf, cap + 8));
        let len = u64::from(access.read32(bdf, cap + 12));
        let Some(bar) = bars
            .iter()
            .find(|bar| bar.index == bar_index && bar.kind != BarKind::Io)
        else {
            bail!(
                "{} virtio {} is in bar{}, not a memory bar",
                bdf,
                what,
                bar_index
            );
        };
        if bar.addr == 0 || len < min_len || offset + len > bar.size {
            bail!(
                "{} virtio {} {:#x}+{:#x} does not fit {}",
                bdf,
                what,
                offset,
                len,
                bar
            );
        }
        return Ok(Structure {
            addr: bar.addr + offset,
            len,
            cap,
        });
    }
    bail!("{} has no virtio {} capability", bdf, what)
}

/// The common configuration structure of one device.
pub struct CommonCfg {
    addr: u64,
}

impl CommonCfg {
    /// Finds the common configuration capability of `bdf` in `bars`
    /// (already assigned and mapped by the caller).
    pub fn find(access: &ConfigAccess, bdf: Bdf, bars: &[Bar]) -> Result<Self, Reason> {
        let common = find_structure(
            access,
            bdf,
            bars,
            CFG_TYPE_COMMON,
            "common config",
            COMMON_MIN_LEN,
        )?;
        Ok(CommonCfg { addr: common.addr })
    }

    fn write16(&self, offset: u64, value: u16) {
        // SAFETY: `find` checked the field lies in an assigned memory BAR,
        // which the caller mapped; the crate's transport holds no reference
        // to it (only raw MMIO pointers), and the probe is single threaded.
        unsafe { ((self.addr + offset) as *mut u16).write_volatile(value) }
    }

    fn read16(&self, offset: u64) -> u16 {
        // SAFETY: as for `write16`.
        unsafe { ((self.addr + offset) as *const u16).read_volatile() }
    }

    /// Sets `msix_config`; returns the value read back (0xffff, NO_VECTOR,
    /// if the device refused).
    pub fn set_config_vector(&self, entry: u16) -> u16 {
        self.write16(COMMON_MSIX_CONFIG, entry);
        self.read16(COMMON_MSIX_CONFIG)
    }

    /// Sets `queue_msix_vector` of `queue`; returns the value read back.
    pub fn set_queue_vector(&self, queue: u16, entry: u16) -> u16 {
        self.write16(COMMON_QUEUE_SELECT, queue);
        self.write16(COMMON_QUEUE_MSIX_VECTOR, entry);
        self.read16(COMMON_QUEUE_MSIX_VECTOR)
    }

    /// `queue_notify_off` of `queue`.
    pub fn queue_notify_off(&self, queue: u16) -> u16 {
        self.write16(COMMON_QUEUE_SELECT, queue);
        self.read16(COMMON_QUEUE_NOTIFY_OFF)
    }
}

/// Where a driver writes a queue's index to notify the device (4.1.4.4).
pub struct QueueNotify {
    addr: u64,
    queue: u16,
}

impl QueueNotify {
    /// The notification address of `queue`: the notification structure of
    /// `bdf` (in `bars`, assigned and mapped) plus `queue_notify_off` times
    /// `notify_off_multiplier`.
    pub fn find(
        access: &ConfigAccess,
        bdf: Bdf,
        bars: &[Bar],
        common: &CommonCfg,
        queue: u16,
    ) -> Result<Self, Reason> {
        let notify = find_structure(access, bdf, bars, CFG_TYPE_NOTIFY, "notify config", 2)?;
        let multiplier = u64::from(access.read32(bdf, notify.cap + NOTIFY_CAP_MULTIPLIER));
        let offset = u64::from(common.queue_notify_off(queue)) * multiplier;
        if offset + 2 > notify.len {
            bail!(
                "{} queue {} notify offset {:#x} is outside the {:#x}-byte notify structure",
                bdf,
                queue,
                offset,
                notify.len
            );
        }
        Ok(QueueNotify {
            addr: notify.addr + offset,
            queue,
        })
    }

    /// Notifies the device that the queue has new buffers: one 16-bit
    /// write of the queue index.
    pub fn notify(&self) {
        // SAFETY: `find` checked the address lies in the notification
        // structure of an assigned, mapped memory BAR.
        unsafe { (self.addr as *mut u16).write_volatile(self.queue) }
    }
}

/// The address of the device's ISR status byte (4.1.4.5): reading it
/// returns the pending interrupt causes (bit 0 queue, bit 1 configuration),
/// clears them and deasserts INTx.
pub fn isr_status_addr(access: &ConfigAccess, bdf: Bdf, bars: &[Bar]) -> Result<u64, Reason> {
    Ok(find_structure(access, bdf, bars, CFG_TYPE_ISR, "isr status", 1)?.addr)
}
