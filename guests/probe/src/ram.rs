//! Scratch RAM for large I/O buffers, taken from the memory map above the
//! kernel image instead of being reserved in it (so the image, and every
//! boot, stays small).

use crate::bail;
use crate::exit::Reason;
use crate::phys::MAPPED_LIMIT;
use crate::start_info::{StartInfo, MEM_TYPE_RAM};
use core::sync::atomic::{AtomicBool, Ordering};

/// Alignment of the region (one large page of the identity map).
const ALIGN: u64 = 2 << 20;

extern "C" {
    /// End of the kernel image, from `link.ld` (reserved areas included).
    static __image_end: u8;
}

static TAKEN: AtomicBool = AtomicBool::new(false);

/// `len` bytes (rounded up to 4 KiB) of RAM at the first 2 MiB-aligned
/// address above the kernel image that the memory map lists as RAM, below
/// 4 GiB (identity mapped, cacheable). Contents are whatever they were.
/// Can be taken once per boot.
pub fn scratch(info: &StartInfo, len: usize) -> Result<&'static mut [u8], Reason> {
    let len = (len as u64).next_multiple_of(4096);
    // Only the address of the symbol is used.
    let image_end = core::ptr::addr_of!(__image_end) as u64;
    let Some(start) = info.memmap().iter().find_map(|entry| {
        let end = entry.addr.saturating_add(entry.size).min(MAPPED_LIMIT);
        let start = entry.addr.max(image_end).next_multiple_of(ALIGN);
        (entry.kind == MEM_TYPE_RAM && start.checked_add(len)? <= end).then_some(start)
    }) else {
        bail!(
            "no {} bytes of ram above the image (end {:#x}) below 4 GiB",
            len,
            image_end
        );
    };
    if TAKEN.swap(true, Ordering::Relaxed) {
        bail!("scratch ram taken twice");
    }
    // SAFETY: the range is RAM per the memory map, above everything the
    // kernel image holds (code, data, stacks, heap, page tables, DMA pool)
    // and identity mapped; the loader's structures in it were copied at
    // boot. It is handed out once, so nothing else refers to it.
    Ok(unsafe { core::slice::from_raw_parts_mut(start as *mut u8, len as usize) })
}
