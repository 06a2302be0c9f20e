//! Helpers shared by the device tests: an interrupt that counts, guest
//! memory, and descriptor construction for `MockSplitQueue` chains.

use std::sync::atomic::{AtomicUsize, Ordering};

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use vm_memory::GuestAddress;

use crate::device::Interrupt;
use crate::GuestMemory;

/// Descriptor flag: device-writable.
pub const WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
/// Descriptor flag: chained to `next`.
pub const NEXT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;

/// Counts queue interrupts and NEEDS_RESET reports.
#[derive(Default)]
pub struct Counter {
    pub queue: AtomicUsize,
    pub reset: AtomicUsize,
}

impl Interrupt for Counter {
    fn notify_queue(&self, _q: u16) {
        self.queue.fetch_add(1, Ordering::SeqCst);
    }
    fn notify_config(&self) {}
    fn needs_reset(&self) {
        self.reset.fetch_add(1, Ordering::SeqCst);
    }
}

/// 16 MiB of guest memory at 0.
pub fn memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
}

/// A split-ring descriptor.
pub fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}
