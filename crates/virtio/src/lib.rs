//! virtio 1.x devices over the PCI transport. Queues come from
//! `virtio-queue`; each activated device runs its queues on a worker thread
//! of its own, woken by ioeventfds, and interrupts the guest through MSI-X.

pub mod balloon;
pub mod block;
pub mod console;
pub mod device;
pub mod net;
pub mod pci_transport;
pub mod rng;
#[cfg(test)]
mod test_util;
pub mod worker;

pub use device::{ActivateError, Interrupt, QueueSet, SharedDevice, VirtioDevice};
pub use pci_transport::{IoEventRegistrar, VirtioPci};

/// The guest memory type devices use.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;

/// Device status bits (virtio 1.x §2.1).
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u8 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u8 = 2;
    /// The driver is ready: the device may run.
    pub const DRIVER_OK: u8 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u8 = 8;
    /// The device hit an error the driver must reset.
    pub const NEEDS_RESET: u8 = 0x40;
    /// The driver gave up.
    pub const FAILED: u8 = 0x80;
}

/// Feature bits common to all devices.
pub mod features {
    /// Indirect descriptors.
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    /// used_event / avail_event notification suppression.
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    /// virtio 1.x (modern) device.
    pub const VERSION_1: u64 = 1 << 32;
}
