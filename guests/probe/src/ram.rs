//! Scratch RAM for large buffers (I/O buffers, AP stacks), taken from the
//! memory map above the kernel image instead of being reserved in it (so
//! the image, and every boot, stays small).

use crate::bail;
use crate::exit::Reason;
use crate::phys::MAPPED_LIMIT;
use crate::start_info::{StartInfo, MEM_TYPE_RAM};
use core::sync::atomic::{AtomicU64, Ordering};

/// Alignment of each region (one large page of the identity map).
const ALIGN: u64 = 2 << 20;

extern "C" {
    /// End of the kernel image, from `link.ld` (reserved areas included).
    static __image_end: u8;
}

/// End of the last region handed out (0: none yet).
static NEXT: AtomicU64 = AtomicU64::new(0);
/// Start of the first region handed out (0: none yet).
static FIRST: AtomicU64 = AtomicU64::new(0);

/// The span from the start of the first region handed out to the end of
/// the last (`start..end`), or `None` if none was.
pub fn handed_out() -> Option<(u64, u64)> {
    match (FIRST.load(Ordering::Relaxed), NEXT.load(Ordering::Relaxed)) {
        (_, 0) => None,
        (first, next) => Some((first, next)),
    }
}

/// `len` bytes (rounded up to 4 KiB) of RAM at the first 2 MiB-aligned
/// address above the kernel image and above every region handed out
/// before, that the memory map lists as RAM, below 4 GiB (identity mapped,
/// cacheable). Contents are whatever they were. Each call hands out a new
/// region; nothing is ever given back. Boot CPU only.
pub fn scratch(info: &StartInfo, len: usize) -> Result<&'static mut [u8], Reason> {
    let len = (len as u64).next_multiple_of(4096);
    // Only the address of the symbol is used.
    let image_end = core::ptr::addr_of!(__image_end) as u64;
    let floor = image_end.max(NEXT.load(Ordering::Relaxed));
    let Some(start) = info.memmap().iter().find_map(|entry| {
        let end = entry.addr.saturating_add(entry.size).min(MAPPED_LIMIT);
        let start = entry.addr.max(floor).next_multiple_of(ALIGN);
        (entry.kind == MEM_TYPE_RAM && start.checked_add(len)? <= end).then_some(start)
    }) else {
        bail!("no {} bytes of ram above {:#x} below 4 GiB", len, floor);
    };
    if NEXT.load(Ordering::Relaxed) == 0 {
        FIRST.store(start, Ordering::Relaxed);
    }
    NEXT.store(start + len, Ordering::Relaxed);
    // SAFETY: the range is RAM per the memory map, above everything the
    // kernel image holds (code, data, stacks, heap, page tables, DMA pool)
    // and every earlier region, and identity mapped; the loader's
    // structures in it were copied at boot. It is handed out once, so
    // nothing else refers to it.
    Ok(unsafe { core::slice::from_raw_parts_mut(start as *mut u8, len as usize) })
}
