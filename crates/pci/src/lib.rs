//! The PCI root complex a guest enumerates: per-function configuration
//! space with BARs and a capability list, MSI-X tables, the host bridge, and
//! the two configuration access mechanisms (ports 0xCF8/0xCFC and PCIe ECAM).
//!
//! Everything the guest writes into configuration space is hostile input:
//! only the bits a register defines as writable change, and every offset is
//! bounds-checked.

pub mod access;
pub mod allocator;
pub mod config;
pub mod msix;
pub mod root;

pub use access::{PciConfigIo, PciConfigMmio};
pub use allocator::AddressAllocator;
pub use config::{Bar, BarKind, ConfigSpace};
pub use msix::{MsiMessage, MsiSender, MsixTable};
pub use root::{PciDevice, PciRoot};

/// The vendor ID of Red Hat / virtio devices, also used for our host bridge.
pub const VENDOR_REDHAT: u16 = 0x1af4;

/// Bus/device/function of a PCI function on segment 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    /// Bus number.
    pub bus: u8,
    /// Device (slot) number, 0..32.
    pub device: u8,
    /// Function number, 0..8.
    pub function: u8,
}

impl std::fmt::Display for Bdf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}
