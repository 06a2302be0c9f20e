//! A split virtqueue (virtio 1.x, 2.7) with descriptor chains built once,
//! for `probe=blkbench`: every request slot owns a fixed chain (header,
//! its data buffer split at `size_max`, status), so submitting a request
//! is a sector number and an available-ring entry, and completing one is
//! a used-ring entry and a status byte. Under emulated ring-0 code this
//! costs tens of µs per request instead of the ~300 µs the crate's
//! `VirtQueue::add` + `pop_used` (chains rebuilt each time) take.

use crate::exit::Reason;
use crate::virtio_blk::{dma_page, dma_pages, Device, Running, WaitMode, SECTOR_SIZE};
use crate::{bail, fail_reason};
use core::sync::atomic::{compiler_fence, fence, Ordering};
use virtio_drivers::PAGE_SIZE;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
/// `avail.flags`: do not interrupt on used buffers.
const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// `used.flags`: do not notify on available buffers.
const USED_F_NO_NOTIFY: u16 = 1;
const HEADER_LEN: usize = 16;
const DESC_LEN: usize = 16;
const USED_ELEM_LEN: usize = 8;
/// Slots are tracked in a 64-bit mask.
pub const MAX_SLOTS: usize = 64;
/// Written into status bytes before submission; devices never return it.
const STATUS_UNSET: u8 = 0xff;

/// A block device whose request queue is a [`FixedBlk`] ring.
pub struct FixedBlk {
    // Declared first: dropping it resets the device before anything else.
    pub run: Running,
    /// Queue size minus one (the size is a power of two).
    mask: u16,
    /// `avail` ring: flags, idx, ring[size], used_event (u16s).
    avail: *mut u16,
    /// `used` ring: flags, idx (u16s), then (id: u32, len: u32) elements.
    used: *mut u8,
    avail_idx: u16,
    last_used: u16,
    /// Descriptors per slot; slot `i`'s chain starts at `i * per_slot`.
    per_slot: u16,
    slots: usize,
    /// One 16-byte request header per slot, then one status byte per slot.
    headers: *mut u8,
    /// Bit `i`: slot `i` is in flight.
    busy: u64,
    /// Queue entries.
    pub size: u16,
}

impl FixedBlk {
    /// Sets up the ring for `slots` requests of type `kind` (read or
    /// write), slot `i` transferring `bs` bytes at `data + i * bs`
    /// (device-writable if `device_writes`), and starts the device.
    ///
    /// # Safety
    /// `data..data + slots * bs` must be identity-mapped memory that
    /// nothing else accesses while requests are in flight, and that stays
    /// valid until the returned value is dropped (which resets the
    /// device).
    pub unsafe fn start(
        mut dev: Device,
        mode: WaitMode,
        slots: usize,
        kind: u32,
        data: *mut u8,
        bs: usize,
        device_writes: bool,
    ) -> Result<FixedBlk, Reason> {
        let seg = dev.seg_limit();
        let segs = bs.div_ceil(seg);
        let per_slot = 2 + segs;
        let needed = slots * per_slot;
        if slots == 0 || slots > MAX_SLOTS || bs == 0 || !bs.is_multiple_of(SECTOR_SIZE as usize) {
            bail!("bad ring request: {} slots of {} bytes", slots, bs);
        }
        if segs > dev.max_segments() {
            bail!(
                "{}-byte requests need {} data descriptors, the device takes {}",
                bs,
                segs,
                dev.max_segments()
            );
        }
        let size = needed.next_power_of_two().max(2);
        if (dev.max_queue_size as usize) < size {
            bail!(
                "{} requests of {} descriptors need a queue of {} entries, the device's holds {}",
                slots,
                per_slot,
                size,
                dev.max_queue_size
            );
        }
        let size16 = u16::try_from(size).map_err(|_| fail_reason!("queue of {} entries", size))?;
        let pages = |bytes: usize| bytes.div_ceil(PAGE_SIZE);
        let driver_area = dma_pages(pages(DESC_LEN * size + 2 * (3 + size)), "the ring")?;
        let device_area = dma_pages(pages(4 + 2 + USED_ELEM_LEN * size), "the ring")?;
        let headers = dma_page("request headers")? as *mut u8;
        let desc = driver_area as *mut u8;
        let avail = (driver_area + DESC_LEN * size) as *mut u16;

        let write_desc = |index: usize, addr: u64, len: usize, flags: u16, next: usize| {
            // SAFETY: `index < size`: inside the descriptor table, which
            // the device does not read before the queue is enabled.
            unsafe {
                let d = desc.add(index * DESC_LEN);
                d.cast::<u64>().write_volatile(addr);
                d.add(8).cast::<u32>().write_volatile(len as u32);
                d.add(12).cast::<u16>().write_volatile(flags);
                d.add(14).cast::<u16>().write_volatile(next as u16);
            }
        };
        let data_flags = if device_writes {
            DESC_F_NEXT | DESC_F_WRITE
        } else {
            DESC_F_NEXT
        };
        for slot in 0..slots {
            let head = slot * per_slot;
            // SAFETY: the header page holds `MAX_SLOTS` headers and status
            // bytes.
            let header = unsafe { headers.add(slot * HEADER_LEN) };
            // SAFETY: as above.
            unsafe {
                header.cast::<u32>().write_volatile(kind);
                header.add(4).cast::<u32>().write_volatile(0);
            }
            write_desc(head, header as u64, HEADER_LEN, DESC_F_NEXT, head + 1);
            let buffer = data as u64 + (slot * bs) as u64;
            for i in 0..segs {
                let len = seg.min(bs - i * seg);
                let addr = buffer + (i * seg) as u64;
                write_desc(head + 1 + i, addr, len, data_flags, head + 2 + i);
            }
            let status = headers as u64 + (MAX_SLOTS * HEADER_LEN + slot) as u64;
            write_desc(head + 1 + segs, status, 1, DESC_F_WRITE, 0);
        }
        if mode == WaitMode::Poll {
            // SAFETY: `avail.flags`, in the driver area.
            unsafe { avail.write_volatile(AVAIL_F_NO_INTERRUPT) };
        }
        dev.set_queue(size16, driver_area as u64, avail as u64, device_area as u64);
        Ok(FixedBlk {
            run: dev.go(mode)?,
            mask: size16 - 1,
            avail,
            used: device_area as *mut u8,
            avail_idx: 0,
            last_used: 0,
            per_slot: per_slot as u16,
            slots,
            headers,
            busy: 0,
            size: size16,
        })
    }

    /// Puts slot `slot` (idle) on the available ring for `sector`. The
    /// device sees it after [`FixedBlk::kick`].
    pub fn submit(&mut self, slot: usize, sector: u64) -> Result<(), Reason> {
        let bit = 1u64 << (slot % MAX_SLOTS);
        if slot >= self.slots || self.busy & bit != 0 {
            bail!("request slot {} is busy or out of range", slot);
        }
        self.busy |= bit;
        let index = 2 + usize::from(self.avail_idx & self.mask);
        // SAFETY: the slot's header sector field and status byte (idle, so
        // the device does not use them) and an available ring entry the
        // device does not read until the index is published.
        unsafe {
            self.headers
                .add(slot * HEADER_LEN + 8)
                .cast::<u64>()
                .write_volatile(sector);
            self.headers
                .add(MAX_SLOTS * HEADER_LEN + slot)
                .write_volatile(STATUS_UNSET);
            self.avail
                .add(index)
                .write_volatile(slot as u16 * self.per_slot);
        }
        self.avail_idx = self.avail_idx.wrapping_add(1);
        Ok(())
    }

    /// Publishes the submitted requests and notifies the device unless it
    /// suppressed notifications.
    pub fn kick(&mut self) {
        // x86 keeps stores in order: only the compiler must not reorder.
        compiler_fence(Ordering::Release);
        // SAFETY: `avail.idx`.
        unsafe { self.avail.add(1).write_volatile(self.avail_idx) };
        // The index store must be visible before `used.flags` is read.
        fence(Ordering::SeqCst);
        // SAFETY: `used.flags`.
        let flags = unsafe { self.used.cast::<u16>().read_volatile() };
        if flags & USED_F_NO_NOTIFY == 0 {
            self.run.notify();
        }
    }

    fn used_idx(used: *mut u8) -> u16 {
        // SAFETY: `used.idx`, written by the device.
        unsafe { used.add(2).cast::<u16>().read_volatile() }
    }

    /// Waits until a completion is in the used ring (see
    /// [`Running::wait`]).
    pub fn wait(&mut self) -> Result<(), Reason> {
        let (used, last) = (self.used, self.last_used);
        self.run.wait(|| Self::used_idx(used) != last)
    }

    /// The next completion as (slot, status), if any.
    pub fn complete(&mut self) -> Result<Option<(usize, u8)>, Reason> {
        if Self::used_idx(self.used) == self.last_used {
            return Ok(None);
        }
        // x86 keeps loads in order: only the compiler must not reorder.
        compiler_fence(Ordering::Acquire);
        let entry = 4 + USED_ELEM_LEN * usize::from(self.last_used & self.mask);
        // SAFETY: a used ring element the device published.
        let id = unsafe { self.used.add(entry).cast::<u32>().read_volatile() } as usize;
        self.last_used = self.last_used.wrapping_add(1);
        let per_slot = usize::from(self.per_slot);
        let slot = id / per_slot;
        let bit = 1u64 << (slot % MAX_SLOTS);
        if !id.is_multiple_of(per_slot) || slot >= self.slots || self.busy & bit == 0 {
            self.run.reset();
            bail!(
                "device completed descriptor {}, which is not in flight (device reset)",
                id
            );
        }
        self.busy &= !bit;
        // SAFETY: the slot's status byte; the device has written it.
        let status = unsafe {
            self.headers
                .add(MAX_SLOTS * HEADER_LEN + slot)
                .read_volatile()
        };
        Ok(Some((slot, status)))
    }
}
