//! A virtio memory balloon on PCI bus 0 (virtio 1.2, 5.5), for
//! `probe=balloon`. `virtio-drivers` has no balloon driver, so this is a
//! small one: the crate's PCI transport for the registers, and for each
//! queue a split ring of the probe's own ([`Ring`]) holding at most one
//! descriptor chain at a time (every balloon request is waited for before
//! the next one on that queue).
//!
//! Set up like `probe=blk` (BARs, bus master, MSI-X entry 0 for
//! configuration changes, entry 1 for every queue), except that MSI-X is
//! optional: without it the probe polls the used rings and the
//! configuration on its 10 ms wake timer.

use crate::apic::{LocalApic, TIMER_DIVIDE_16};
use crate::exit::Reason;
use crate::idt::{self, DEVICE_VECTOR_BASE, TIMER_VECTOR};
use crate::msix::Msix;
use crate::pci::Bdf;
use crate::start_info::StartInfo;
use crate::tsc::Deadline;
use crate::virtio_blk::dma_page;
use crate::virtio_hal::ProbeHal;
use crate::virtio_msix::{CommonCfg, QueueNotify};
use crate::virtio_pci;
use crate::{bail, fail_reason};
use alloc::vec::Vec;
use core::sync::atomic::{compiler_fence, fence, Ordering};
use virtio_drivers::transport::pci::bus::{DeviceFunction, PciRoot};
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::{DeviceStatus, Transport};
use x86_64::instructions::interrupts;

/// Modern (virtio 1.x, 0x1040 + 5) and transitional balloon device IDs.
const BALLOON_MODERN: u16 = 0x1045;
const BALLOON_TRANSITIONAL: u16 = 0x1002;

/// Feature bits (virtio 1.2, 5.5.3).
/// Not accepted: MUST_TELL_HOST (0; the probe tells the host before
/// reusing pages anyway, but need not promise it) and DEFLATE_ON_OOM (2;
/// the probe never runs out of memory).
pub mod feature {
    pub const STATS_VQ: u64 = 1 << 1;
    pub const PAGE_REPORTING: u64 = 1 << 5;
    pub const VERSION_1: u64 = 1 << 32;
}

/// Features the probe accepts when offered.
const ACCEPTED: u64 = feature::VERSION_1 | feature::STATS_VQ | feature::PAGE_REPORTING;

/// Configuration space offsets (5.5.4).
const CONFIG_NUM_PAGES: usize = 0;
const CONFIG_ACTUAL: usize = 4;

/// MSI-X table entries and the vectors they raise.
const CONFIG_ENTRY: u16 = 0;
const QUEUE_ENTRY: u16 = 1;
pub const CONFIG_VECTOR: u8 = DEVICE_VECTOR_BASE;
pub const QUEUE_VECTOR: u8 = DEVICE_VECTOR_BASE + 1;
/// APIC timer period (10 ms on KVM): it bounds every `hlt`.
const WAKE_TIMER_COUNT: u32 = 625_000;
/// How long the device may take to return a buffer.
const REQUEST_TIMEOUT_US: u64 = 5_000_000;

/// Entries of every ring at least, and at most (one page holds it).
const MIN_RING: u16 = 8;
const MAX_RING: u16 = 64;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
/// `used.flags`: the device does not want notifications.
const USED_F_NO_NOTIFY: u16 = 1;
const DESC_LEN: usize = 16;
/// Offset of the used ring in the ring's page (4-byte aligned, past the
/// descriptor table and available ring of [`MAX_RING`] entries).
const USED_OFFSET: usize = 2048;

/// What a queue is for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    Inflate,
    Deflate,
    Stats,
    Reporting,
}

/// A split virtqueue (2.7) in one DMA page with at most one descriptor
/// chain in flight, always in descriptors `0..n` (head 0).
pub struct Ring {
    pub index: u16,
    pub role: Role,
    pub size: u16,
    desc: *mut u8,
    /// flags, idx, ring[size], used_event (u16s).
    avail: *mut u16,
    /// flags, idx (u16s), then (id: u32, len: u32) elements.
    used: *mut u8,
    avail_idx: u16,
    last_used: u16,
    busy: bool,
    notify: QueueNotify,
}

impl Ring {
    /// Puts one chain of `(address, length, device_writable)` buffers on
    /// the ring and notifies the device (unless it asked not to be).
    ///
    /// # Safety
    /// The buffers must be identity-mapped memory the probe does not touch
    /// until [`Ring::poll`] returned the chain or the device is reset.
    pub unsafe fn submit(&mut self, buffers: &[(u64, u32, bool)]) -> Result<(), Reason> {
        if self.busy || buffers.is_empty() || buffers.len() > usize::from(self.size) {
            bail!(
                "queue {} ({:?}): cannot take {} buffers (busy={})",
                self.index,
                self.role,
                buffers.len(),
                self.busy
            );
        }
        let last = buffers.len() - 1;
        for (i, &(addr, len, write)) in buffers.iter().enumerate() {
            let mut flags = if write { DESC_F_WRITE } else { 0 };
            if i < last {
                flags |= DESC_F_NEXT;
            }
            // SAFETY: `i < size`: inside the descriptor table, which the
            // device does not read while no chain is in flight.
            unsafe {
                let d = self.desc.add(i * DESC_LEN);
                d.cast::<u64>().write_volatile(addr);
                d.add(8).cast::<u32>().write_volatile(len);
                d.add(12).cast::<u16>().write_volatile(flags);
                d.add(14).cast::<u16>().write_volatile((i + 1) as u16);
            }
        }
        let slot = 2 + usize::from(self.avail_idx & (self.size - 1));
        // SAFETY: an available ring entry the device does not read until
        // the index below is published.
        unsafe { self.avail.add(slot).write_volatile(0) };
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.busy = true;
        // x86 keeps stores in order: only the compiler must not reorder.
        compiler_fence(Ordering::Release);
        // SAFETY: `avail.idx`.
        unsafe { self.avail.add(1).write_volatile(self.avail_idx) };
        // The index store must be visible before `used.flags` is read.
        fence(Ordering::SeqCst);
        // SAFETY: `used.flags`, written by the device.
        let flags = unsafe { self.used.cast::<u16>().read_volatile() };
        if flags & USED_F_NO_NOTIFY == 0 {
            self.notify.notify();
        }
        Ok(())
    }

    /// Whether the device has returned the chain (without taking it).
    pub fn ready(&self) -> bool {
        // SAFETY: `used.idx`, written by the device.
        self.busy && unsafe { self.used.add(2).cast::<u16>().read_volatile() } != self.last_used
    }

    /// Takes the returned chain: its used length, or `None` if the device
    /// still holds it.
    pub fn poll(&mut self) -> Result<Option<u32>, Reason> {
        if !self.ready() {
            return Ok(None);
        }
        // x86 keeps loads in order: only the compiler must not reorder.
        compiler_fence(Ordering::Acquire);
        let entry = 4 + 8 * usize::from(self.last_used & (self.size - 1));
        // SAFETY: a used ring element the device published.
        let (id, len) = unsafe {
            (
                self.used.add(entry).cast::<u32>().read_volatile(),
                self.used.add(entry + 4).cast::<u32>().read_volatile(),
            )
        };
        self.last_used = self.last_used.wrapping_add(1);
        if id != 0 {
            bail!(
                "queue {} ({:?}): device returned descriptor {}, not the chain's head 0",
                self.index,
                self.role,
                id
            );
        }
        self.busy = false;
        Ok(Some(len))
    }
}

/// A running balloon (DRIVER_OK), its queues set up.
pub struct Balloon {
    pub bdf: Bdf,
    pub device_id: u16,
    /// Feature bits as offered.
    pub device_features: u64,
    /// Feature bits accepted.
    pub features: u64,
    pub inflate: Ring,
    pub deflate: Ring,
    pub stats: Option<Ring>,
    pub reporting: Option<Ring>,
    /// Whether MSI-X interrupts are used (else everything is polled).
    pub msix: bool,
    /// Interrupts on [`CONFIG_VECTOR`] when last asked by
    /// [`Balloon::config_changed`].
    config_irqs: u64,
    lapic: LocalApic,
    // Last: the other fields hold no device resources; dropping the
    // transport resets the device.
    transport: PciTransport,
}

impl Balloon {
    /// Finds and initialises the device: features, queues (`report_chunks`
    /// descriptors at least on the reporting queue), MSI-X if present,
    /// DRIVER_OK, and the APIC wake timer (stopped on drop).
    pub fn open(info: &StartInfo, report_chunks: usize) -> Result<Balloon, Reason> {
        let virtio_pci::Function {
            access,
            bdf,
            device_id,
            assigned,
        } = virtio_pci::open(
            info,
            "virtio balloon device",
            &[BALLOON_MODERN, BALLOON_TRANSITIONAL],
            None,
            false,
        )?;
        let lapic = virtio_pci::interrupt_lapic()?;
        let msix = Msix::find(&access, bdf, &assigned.bars)?.filter(|m| m.table_size >= 2);
        if let Some(msix) = &msix {
            msix.set_entry(CONFIG_ENTRY, lapic.id(), CONFIG_VECTOR)?;
            msix.set_entry(QUEUE_ENTRY, lapic.id(), QUEUE_VECTOR)?;
            msix.enable(&access);
        }
        let common = CommonCfg::find(&access, bdf, &assigned.bars)?;

        let mut root = PciRoot::new(access);
        let function = DeviceFunction {
            bus: bdf.bus,
            device: bdf.device,
            function: bdf.function,
        };
        let mut transport = PciTransport::new::<ProbeHal, _>(&mut root, function)
            .map_err(|e| fail_reason!("virtio pci transport: {}", e))?;
        let (device_features, features) = virtio_pci::negotiate(&mut transport, bdf, ACCEPTED)?;

        // Queues numbered compactly over the accepted features (5.5.2).
        let mut roles = Vec::new();
        roles.push((Role::Inflate, MIN_RING));
        roles.push((Role::Deflate, MIN_RING));
        if features & feature::STATS_VQ != 0 {
            roles.push((Role::Stats, MIN_RING));
        }
        if features & feature::PAGE_REPORTING != 0 {
            let want = u16::try_from(report_chunks.next_power_of_two())
                .unwrap_or(MAX_RING)
                .clamp(MIN_RING, MAX_RING);
            roles.push((Role::Reporting, want));
        }
        if msix.is_some() {
            let config_vector = common.set_config_vector(CONFIG_ENTRY);
            if config_vector != CONFIG_ENTRY {
                bail!(
                    "device refused msi-x vector: msix_config={:#x}",
                    config_vector
                );
            }
        }
        let mut rings = Vec::new();
        for (index, &(role, want)) in roles.iter().enumerate() {
            let index = index as u16;
            if msix.is_some() {
                let vector = common.set_queue_vector(index, QUEUE_ENTRY);
                if vector != QUEUE_ENTRY {
                    bail!(
                        "device refused msi-x vector: queue {} queue_msix_vector={:#x}",
                        index,
                        vector
                    );
                }
            }
            let max = transport.max_queue_size(index);
            if max == 0 {
                bail!("queue {} ({:?}) is not available", index, role);
            }
            // The largest power of two up to `want` the device takes.
            let mut size = want;
            while u32::from(size) > max {
                size /= 2;
            }
            if size < 2 {
                bail!("queue {} ({:?}) holds only {} entries", index, role, max);
            }
            let page = dma_page("a balloon ring")?;
            let desc = page as *mut u8;
            let avail = (page + DESC_LEN * usize::from(size)) as *mut u16;
            let used = (page + USED_OFFSET) as *mut u8;
            transport.queue_set(
                index,
                u32::from(size),
                desc as u64,
                avail as u64,
                used as u64,
            );
            let notify = QueueNotify::find(&access, bdf, &assigned.bars, &common, index)?;
            rings.push(Ring {
                index,
                role,
                size,
                desc,
                avail,
                used,
                avail_idx: 0,
                last_used: 0,
                busy: false,
                notify,
            });
        }
        transport.finish_init();
        if let Some(msix) = &msix {
            msix.unmask(CONFIG_ENTRY);
            msix.unmask(QUEUE_ENTRY);
        }
        lapic.start_periodic_timer(TIMER_VECTOR, TIMER_DIVIDE_16, WAKE_TIMER_COUNT);

        let mut rings = rings.into_iter();
        let (Some(inflate), Some(deflate)) = (rings.next(), rings.next()) else {
            bail!("balloon queues missing");
        };
        let mut stats = None;
        let mut reporting = None;
        for ring in rings {
            match ring.role {
                Role::Stats => stats = Some(ring),
                _ => reporting = Some(ring),
            }
        }
        Ok(Balloon {
            bdf,
            device_id,
            device_features,
            features,
            inflate,
            deflate,
            stats,
            reporting,
            msix: msix.is_some(),
            config_irqs: idt::device_irqs(CONFIG_VECTOR),
            lapic,
            transport,
        })
    }

    /// Number of queues set up.
    pub fn queue_count(&self) -> usize {
        2 + usize::from(self.stats.is_some()) + usize::from(self.reporting.is_some())
    }

    /// The host's target (`num_pages`), in 4 KiB pages.
    pub fn num_pages(&self) -> Result<u32, Reason> {
        self.transport
            .read_config_space::<u32>(CONFIG_NUM_PAGES)
            .map_err(|e| fail_reason!("balloon config num_pages: {}", e))
    }

    /// Tells the host how many pages the balloon holds.
    pub fn set_actual(&mut self, pages: u32) -> Result<(), Reason> {
        self.transport
            .write_config_space::<u32>(CONFIG_ACTUAL, pages)
            .map_err(|e| fail_reason!("balloon config actual: {}", e))
    }

    /// Whether a configuration change interrupt arrived since the last
    /// call.
    pub fn config_changed(&mut self) -> bool {
        let now = idt::device_irqs(CONFIG_VECTOR);
        let changed = now != self.config_irqs;
        self.config_irqs = now;
        changed
    }

    /// Interrupts taken on the configuration and queue vectors.
    pub fn irqs(&self) -> (u64, u64) {
        (
            idt::device_irqs(CONFIG_VECTOR),
            idt::device_irqs(QUEUE_VECTOR),
        )
    }

    /// Sleeps until the next interrupt (the wake timer's at the latest).
    pub fn sleep(&self) {
        // Interrupts are off outside this `sti; hlt`, so one arriving
        // after the caller's checks still ends the `hlt`.
        interrupts::enable_and_hlt();
        interrupts::disable();
    }

    /// Waits (in `hlt`) until `ring`'s chain is returned; its used length.
    /// On a timeout the device is reset (it no longer touches the buffers)
    /// and the wait fails.
    pub fn wait(&mut self, which: Role) -> Result<u32, Reason> {
        let deadline = Deadline::after_us(REQUEST_TIMEOUT_US);
        loop {
            let ring = match which {
                Role::Inflate => &mut self.inflate,
                Role::Deflate => &mut self.deflate,
                Role::Stats => self
                    .stats
                    .as_mut()
                    .ok_or_else(|| fail_reason!("no stats queue"))?,
                Role::Reporting => self
                    .reporting
                    .as_mut()
                    .ok_or_else(|| fail_reason!("no reporting queue"))?,
            };
            if let Some(len) = ring.poll()? {
                return Ok(len);
            }
            let index = ring.index;
            if deadline.expired() {
                let status = self.transport.get_status();
                self.transport.set_status(DeviceStatus::empty());
                bail!(
                    "queue {} ({:?}): buffer not returned within {} ms (status={:#x}; device reset)",
                    index,
                    which,
                    REQUEST_TIMEOUT_US / 1000,
                    status.bits()
                );
            }
            self.sleep();
        }
    }
}

impl Drop for Balloon {
    fn drop(&mut self) {
        self.lapic.stop_timer();
        interrupts::disable();
    }
}
