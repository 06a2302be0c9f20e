//! Glue for the `virtio-drivers` crate: its [`Hal`] (identity-mapped, DMA
//! from a pool reserved in the kernel image, below 4 GiB) and its PCI configuration access through
//! the probe's [`ConfigAccess`].

use crate::pci::{Bdf, ConfigAccess};
use crate::phys::MAPPED_LIMIT;
use core::arch::global_asm;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};
use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction};
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

/// Pages in the DMA pool (virtqueues only; data buffers are shared in place).
const DMA_PAGES: usize = 16;

extern "C" {
    /// `DMA_PAGES` page-aligned pages reserved in the kernel image (identity
    /// mapped, below 4 GiB), not zeroed at boot: `dma_alloc` zeroes them.
    static mut dma_pool: u8;
}

global_asm!(
    r#"
    .section .noinit.dma_pool, "aw", @nobits
    .balign 4096
    .globl dma_pool
dma_pool:
    .skip {size}
    .text
    "#,
    size = const DMA_PAGES * PAGE_SIZE,
    options(att_syntax)
);

static DMA_NEXT_PAGE: AtomicUsize = AtomicUsize::new(0);

/// The probe's `virtio-drivers` HAL. Physical addresses equal virtual ones.
pub struct ProbeHal;

// SAFETY: `dma_alloc` returns zeroed, page-aligned, never-reused pages of a
// static pool; `mmio_phys_to_virt` returns the identity address of a range
// the caller mapped with `paging::map_device`; shared buffers live in the
// identity-mapped kernel image or heap, so their address is their physical
// address.
unsafe impl Hal for ProbeHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let first = DMA_NEXT_PAGE.fetch_add(pages, Ordering::Relaxed);
        if first.checked_add(pages).is_none_or(|end| end > DMA_PAGES) {
            // Physical address 0 makes the crate report `Error::DmaError`.
            return (0, NonNull::dangling());
        }
        // SAFETY: `first..first + pages` is inside the pool and was never
        // handed out before (the index only grows).
        let ptr = unsafe { core::ptr::addr_of_mut!(dma_pool).add(first * PAGE_SIZE) };
        // SAFETY: as above; zero the pages as the trait requires.
        unsafe { ptr.write_bytes(0, pages * PAGE_SIZE) };
        match NonNull::new(ptr) {
            Some(vaddr) => (ptr as PhysAddr, vaddr),
            None => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, _vaddr: NonNull<u8>, _pages: usize) -> i32 {
        // A bump allocator: pages are not reused (the probe sets up one
        // device once).
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        match NonNull::new(paddr as *mut u8) {
            Some(vaddr) => vaddr,
            None => panic!("virtio mmio region at physical address 0"),
        }
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        let addr = buffer.as_ptr().cast::<u8>() as PhysAddr;
        if addr + buffer.len() as u64 > MAPPED_LIMIT {
            panic!("dma buffer at {:#x} is not identity mapped", addr);
        }
        addr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

fn bdf(function: DeviceFunction) -> Bdf {
    Bdf {
        bus: function.bus,
        device: function.device,
        function: function.function,
    }
}

impl ConfigurationAccess for ConfigAccess {
    fn read_word(&self, device_function: DeviceFunction, register_offset: u8) -> u32 {
        self.read32(bdf(device_function), u16::from(register_offset))
    }

    fn write_word(&mut self, device_function: DeviceFunction, register_offset: u8, data: u32) {
        self.write32(bdf(device_function), u16::from(register_offset), data)
    }

    unsafe fn unsafe_clone(&self) -> Self {
        *self
    }
}
