//! The MSI-X vector fields of a virtio PCI device's common configuration
//! structure (`msix_config`, `queue_msix_vector`), which `virtio-drivers`
//! does not expose. Offsets are fixed by the virtio 1.x spec (4.1.4.3).

use crate::bail;
use crate::exit::Reason;
use crate::pci::{Bar, BarKind, Bdf, ConfigAccess};

/// Vendor-specific capability ID (virtio structures).
const CAP_VENDOR: u8 = 0x09;
/// `virtio_pci_cap.cfg_type` of the common configuration.
const CFG_TYPE_COMMON: u8 = 1;
const COMMON_MSIX_CONFIG: u64 = 0x10;
const COMMON_QUEUE_SELECT: u64 = 0x16;
const COMMON_QUEUE_MSIX_VECTOR: u64 = 0x1a;
/// Length of the fields up to `queue_msix_vector`.
const COMMON_MIN_LEN: u64 = 0x1c;

/// The common configuration structure of one device.
pub struct CommonCfg {
    addr: u64,
}

impl CommonCfg {
    /// Finds the common configuration capability of `bdf` in `bars`
    /// (already assigned and mapped by the caller).
    pub fn find(access: &ConfigAccess, bdf: Bdf, bars: &[Bar]) -> Result<Self, Reason> {
        for (cap, id) in access.capabilities(bdf)? {
            let cap = u16::from(cap);
            if id != CAP_VENDOR || access.read8(bdf, cap + 3) != CFG_TYPE_COMMON {
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
                    "{} virtio common config is in bar{}, not a memory bar",
                    bdf,
                    bar_index
                );
            };
            if bar.addr == 0 || len < COMMON_MIN_LEN || offset + len > bar.size {
                bail!(
                    "{} virtio common config {:#x}+{:#x} does not fit {}",
                    bdf,
                    offset,
                    len,
                    bar
                );
            }
            return Ok(CommonCfg {
                addr: bar.addr + offset,
            });
        }
        bail!("{} has no virtio common config capability", bdf)
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
}
