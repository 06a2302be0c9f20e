//! A virtio block device on PCI bus 0, for `probe=blk` and
//! `probe=blkbench`.
//!
//! Set up like `probe=rng` (BARs, MSI-X, `virtio-drivers`' PCI transport),
//! but the requests are the probe's own: the crate's `VirtIOBlk` negotiates
//! only RO and FLUSH, has no discard or write-zeroes request, spins for
//! completions and uses a fixed 16-entry queue. Requests are
//! `virtio_blk_req` headers and status bytes in a DMA page (one per slot),
//! data is shared in place, the device is notified with one MMIO write
//! ([`QueueNotify`]) and completions are waited for in `hlt` until the
//! queue's MSI-X vector fires (or by polling the used ring).
//!
//! Two queue drivers: [`Blk`] uses the crate's `VirtQueue` (any request,
//! any buffer); [`FixedBlk`](crate::blk_ring::FixedBlk) is a split ring
//! whose descriptor chains are built once, for benchmarks (the crate's
//! `add` + `pop_used` cost ~300 µs of emulated instructions per request
//! here).

use crate::apic::{LocalApic, TIMER_DIVIDE_16};
use crate::exit::Reason;
use crate::idt::{DEVICE_VECTOR_BASE, TIMER_VECTOR};
use crate::msix::Msix;
use crate::pci::{self, Bdf, ConfigAccess};
use crate::start_info::StartInfo;
use crate::tsc::{self, Deadline};
use crate::virtio_hal::ProbeHal;
use crate::virtio_msix::{CommonCfg, QueueNotify};
use crate::virtio_pci;
use crate::{bail, fail_reason};
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::pci::bus::{DeviceFunction, PciRoot};
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::{DeviceStatus, Transport};
use virtio_drivers::{BufferDirection, Hal, PAGE_SIZE};
use x86_64::instructions::interrupts;

/// Modern (virtio 1.x) and transitional block device IDs.
const BLK_MODERN: u16 = 0x1042;
const BLK_TRANSITIONAL: u16 = 0x1001;

/// Bytes per sector: request addresses are in these units whatever the
/// device's block size.
pub const SECTOR_SIZE: u64 = 512;

/// Feature bits (virtio 1.2, 5.2.3; VERSION_1 is 6).
pub mod feature {
    pub const SIZE_MAX: u64 = 1 << 1;
    pub const SEG_MAX: u64 = 1 << 2;
    pub const GEOMETRY: u64 = 1 << 4;
    pub const RO: u64 = 1 << 5;
    pub const BLK_SIZE: u64 = 1 << 6;
    pub const FLUSH: u64 = 1 << 9;
    pub const TOPOLOGY: u64 = 1 << 10;
    pub const DISCARD: u64 = 1 << 13;
    pub const WRITE_ZEROES: u64 = 1 << 14;
    pub const VERSION_1: u64 = 1 << 32;
}

/// Features the probe accepts when the device offers them. Not MQ (one
/// queue is used), EVENT_IDX, INDIRECT_DESC (needs the crate's `alloc`)
/// or CONFIG_WCE.
const ACCEPTED: u64 = feature::SIZE_MAX
    | feature::SEG_MAX
    | feature::GEOMETRY
    | feature::RO
    | feature::BLK_SIZE
    | feature::FLUSH
    | feature::TOPOLOGY
    | feature::DISCARD
    | feature::WRITE_ZEROES
    | feature::VERSION_1;

/// Request types (`virtio_blk_req.type`).
pub mod kind {
    pub const IN: u32 = 0;
    pub const OUT: u32 = 1;
    pub const FLUSH: u32 = 4;
    pub const GET_ID: u32 = 8;
    pub const DISCARD: u32 = 11;
    pub const WRITE_ZEROES: u32 = 13;
}

/// Request status values.
pub const STATUS_OK: u8 = 0;
pub const STATUS_IOERR: u8 = 1;
pub const STATUS_UNSUPP: u8 = 2;
/// Written into the status byte before submission: the device never
/// returns it.
const STATUS_UNSET: u8 = 0xff;

/// Length of `virtio_blk_req`'s header (type, reserved, sector).
const HEADER_LEN: usize = 16;
/// Length of one discard / write-zeroes segment.
pub const RANGE_SEGMENT_LEN: usize = 16;
/// Data buffers per request at most (split at `size_max`).
const MAX_DATA_SEGS: usize = 16;
const MAX_BUFFERS: usize = MAX_DATA_SEGS + 2;

const REQUEST_QUEUE: u16 = 0;
/// MSI-X table entries and the vectors they raise (as `probe=rng`).
const CONFIG_ENTRY: u16 = 0;
const QUEUE_ENTRY: u16 = 1;
const CONFIG_VECTOR: u8 = DEVICE_VECTOR_BASE;
pub const QUEUE_VECTOR: u8 = DEVICE_VECTOR_BASE + 1;
/// How long a wait for a completion may take.
const REQUEST_TIMEOUT_US: u64 = 5_000_000;
/// APIC timer period while waiting in `hlt` (10 ms on KVM): it bounds each
/// `hlt`, so a lost interrupt only delays a completion.
const WAKE_TIMER_COUNT: u32 = 625_000;

/// The device configuration (5.2.4). Fields whose feature the device does
/// not offer are 0.
#[derive(Clone, Copy, Default)]
pub struct Config {
    /// In 512-byte sectors.
    pub capacity: u64,
    pub size_max: u32,
    pub seg_max: u32,
    pub cylinders: u16,
    pub heads: u8,
    pub sectors: u8,
    pub blk_size: u32,
    pub physical_block_exp: u8,
    pub alignment_offset: u8,
    pub min_io_size: u16,
    pub opt_io_size: u32,
    pub max_discard_sectors: u32,
    pub max_discard_seg: u32,
    pub discard_sector_alignment: u32,
    pub max_write_zeroes_sectors: u32,
    pub max_write_zeroes_seg: u32,
}

/// How completions are waited for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum WaitMode {
    /// `hlt` until the queue's MSI-X vector (or the 10 ms wake timer) fires.
    Irq,
    /// Spin on the used ring; the device is asked not to interrupt.
    Poll,
}

impl WaitMode {
    pub fn name(self) -> &'static str {
        match self {
            WaitMode::Irq => "irq",
            WaitMode::Poll => "poll",
        }
    }
}

/// Which way a request's data moves.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// No data (flush).
    None,
    /// Device-readable (write, discard and write-zeroes segments).
    ToDevice,
    /// Device-writable (read, get-id).
    FromDevice,
}

/// A virtio block function, reset, features negotiated, MSI-X vectors set,
/// before its queue exists ([`Device::start`]).
pub struct Device {
    pub bdf: Bdf,
    pub device_id: u16,
    /// Feature bits as the device offers them.
    pub device_features: u64,
    /// Feature bits the probe accepted.
    pub features: u64,
    pub config: Config,
    /// The request queue's maximum size.
    pub max_queue_size: u32,
    /// Data bytes per descriptor at most, whatever `size_max` says
    /// (`blk_seg=`, to exercise devices with long chains).
    pub seg_override: Option<usize>,
    // The first field with a destructor: it drops (and resets the device)
    // before the others.
    transport: PciTransport,
    access: ConfigAccess,
    bars: alloc::vec::Vec<pci::Bar>,
    common: CommonCfg,
    msix: Msix,
    lapic: LocalApic,
}

impl Device {
    /// Finds, configures and resets the device, negotiates features
    /// (VERSION_1 required) and reads its configuration.
    pub fn open(info: &StartInfo, slot: Option<u8>) -> Result<Device, Reason> {
        let virtio_pci::Function {
            access,
            bdf,
            device_id,
            assigned,
        } = virtio_pci::open(
            info,
            "virtio block device",
            &[BLK_MODERN, BLK_TRANSITIONAL],
            slot,
            false,
        )?;
        let lapic = virtio_pci::interrupt_lapic()?;
        let Some(msix) = Msix::find(&access, bdf, &assigned.bars)? else {
            bail!("{} has no msi-x capability", bdf);
        };
        msix.set_entry(CONFIG_ENTRY, lapic.id(), CONFIG_VECTOR)?;
        msix.set_entry(QUEUE_ENTRY, lapic.id(), QUEUE_VECTOR)?;
        msix.enable(&access);
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
        // After the reset, which clears the vectors.
        let config_vector = common.set_config_vector(CONFIG_ENTRY);
        let queue_vector = common.set_queue_vector(REQUEST_QUEUE, QUEUE_ENTRY);
        if config_vector != CONFIG_ENTRY || queue_vector != QUEUE_ENTRY {
            bail!(
                "device refused msi-x vectors: msix_config={:#x} queue_msix_vector={:#x}",
                config_vector,
                queue_vector
            );
        }
        let config = read_config(&transport, device_features)
            .map_err(|e| fail_reason!("{} configuration space: {}", bdf, e))?;
        let max_queue_size = transport.max_queue_size(REQUEST_QUEUE);
        Ok(Device {
            bdf,
            device_id,
            device_features,
            features,
            config,
            max_queue_size,
            seg_override: None,
            transport,
            access,
            bars: assigned.bars,
            common,
            msix,
            lapic,
        })
    }

    /// Whether the device offers `bit`.
    pub fn offers(&self, bit: u64) -> bool {
        self.device_features & bit != 0
    }

    /// Largest data buffer per descriptor: `size_max` in whole sectors if
    /// negotiated, else unlimited; at most [`Device::seg_override`].
    pub fn seg_limit(&self) -> usize {
        let sector = SECTOR_SIZE as usize;
        let size_max = if self.features & feature::SIZE_MAX != 0 && self.config.size_max != 0 {
            (self.config.size_max as usize / sector * sector).max(sector)
        } else {
            usize::MAX
        };
        size_max.min(self.seg_override.unwrap_or(usize::MAX))
    }

    /// Data descriptors per request the device takes: `seg_max` if
    /// negotiated (and not 0), else unlimited.
    pub fn max_segments(&self) -> usize {
        if self.features & feature::SEG_MAX != 0 && self.config.seg_max != 0 {
            self.config.seg_max as usize
        } else {
            usize::MAX
        }
    }

    /// Creates the request queue with `Q` entries (the crate's `VirtQueue`)
    /// and starts the device.
    pub fn start<const Q: usize>(mut self, mode: WaitMode) -> Result<Blk<Q>, Reason> {
        const { assert!(Q * (HEADER_LEN + 1) <= PAGE_SIZE) };
        self.check_queue_size(Q)?;
        let mut queue =
            VirtQueue::<ProbeHal, Q>::new(&mut self.transport, REQUEST_QUEUE, false, false)
                .map_err(|e| fail_reason!("virtqueue setup: {}", e))?;
        let requests = dma_page("request headers")?;
        if mode == WaitMode::Poll {
            queue.set_dev_notify(false);
        }
        let seg_limit = self.seg_limit();
        let max_segments = self.max_segments().min(MAX_DATA_SEGS);
        Ok(Blk {
            run: self.go(mode)?,
            queue,
            requests,
            pending: [Pending::IDLE; Q],
            token_slot: [0; Q],
            seg_limit,
            max_segments,
        })
    }

    /// Fails unless the request queue can hold `size` entries.
    pub fn check_queue_size(&self, size: usize) -> Result<(), Reason> {
        if (self.max_queue_size as usize) < size {
            bail!(
                "queue {} holds {} entries, want {}",
                REQUEST_QUEUE,
                self.max_queue_size,
                size
            );
        }
        Ok(())
    }

    /// Sets up the request queue at these addresses (`size` entries).
    pub fn set_queue(&mut self, size: u16, desc: u64, avail: u64, used: u64) {
        self.transport
            .queue_set(REQUEST_QUEUE, size.into(), desc, avail, used);
    }

    /// Once the request queue is set up: DRIVER_OK, MSI-X entries unmasked,
    /// and with [`WaitMode::Irq`] the APIC wake timer (until the returned
    /// [`Running`] is dropped).
    pub fn go(mut self, mode: WaitMode) -> Result<Running, Reason> {
        let notify = QueueNotify::find(
            &self.access,
            self.bdf,
            &self.bars,
            &self.common,
            REQUEST_QUEUE,
        )?;
        self.transport.finish_init();
        self.msix.unmask(CONFIG_ENTRY);
        self.msix.unmask(QUEUE_ENTRY);
        if mode == WaitMode::Irq {
            self.lapic
                .start_periodic_timer(TIMER_VECTOR, TIMER_DIVIDE_16, WAKE_TIMER_COUNT);
        }
        Ok(Running {
            dev: self,
            notify,
            mode,
            stats: Stats::default(),
            timeout_cycles: tsc::cycles_for_us(REQUEST_TIMEOUT_US),
        })
    }
}

/// A zeroed page from the DMA pool; its address.
pub fn dma_page(what: &str) -> Result<usize, Reason> {
    dma_pages(1, what)
}

/// `count` zeroed, contiguous pages from the DMA pool; their address.
pub fn dma_pages(count: usize, what: &str) -> Result<usize, Reason> {
    let (paddr, _) = ProbeHal::dma_alloc(count, BufferDirection::Both);
    if paddr == 0 {
        bail!("out of dma pages for {}", what);
    }
    Ok(paddr as usize)
}

/// Reads the configuration fields the offered features make meaningful.
fn read_config(transport: &PciTransport, offered: u64) -> Result<Config, virtio_drivers::Error> {
    let has = |bit: u64| offered & bit != 0;
    transport.read_consistent(|| {
        let mut c = Config {
            capacity: u64::from(transport.read_config_space::<u32>(0)?)
                | (u64::from(transport.read_config_space::<u32>(4)?) << 32),
            ..Config::default()
        };
        if has(feature::SIZE_MAX) {
            c.size_max = transport.read_config_space(8)?;
        }
        if has(feature::SEG_MAX) {
            c.seg_max = transport.read_config_space(12)?;
        }
        if has(feature::GEOMETRY) {
            c.cylinders = transport.read_config_space(16)?;
            c.heads = transport.read_config_space(18)?;
            c.sectors = transport.read_config_space(19)?;
        }
        if has(feature::BLK_SIZE) {
            c.blk_size = transport.read_config_space(20)?;
        }
        if has(feature::TOPOLOGY) {
            c.physical_block_exp = transport.read_config_space(24)?;
            c.alignment_offset = transport.read_config_space(25)?;
            c.min_io_size = transport.read_config_space(26)?;
            c.opt_io_size = transport.read_config_space(28)?;
        }
        if has(feature::DISCARD) {
            c.max_discard_sectors = transport.read_config_space(36)?;
            c.max_discard_seg = transport.read_config_space(40)?;
            c.discard_sector_alignment = transport.read_config_space(44)?;
        }
        if has(feature::WRITE_ZEROES) {
            c.max_write_zeroes_sectors = transport.read_config_space(48)?;
            c.max_write_zeroes_seg = transport.read_config_space(52)?;
        }
        Ok(c)
    })
}

/// One request slot's data buffer while it is in flight.
#[derive(Clone, Copy)]
struct Pending {
    data: *mut u8,
    len: usize,
    dir: Dir,
    token: u16,
    busy: bool,
}

impl Pending {
    const IDLE: Pending = Pending {
        data: core::ptr::null_mut(),
        len: 0,
        dir: Dir::None,
        token: 0,
        busy: false,
    };
}

/// Counters for reports.
#[derive(Clone, Copy, Default)]
pub struct Stats {
    /// Writes to the notification register.
    pub notifies: u64,
    /// `hlt`s executed while waiting.
    pub halts: u64,
}

/// A completed request.
#[derive(Clone, Copy)]
pub struct Done {
    pub slot: usize,
    pub status: u8,
    /// The used length the device reported.
    pub len: u32,
}

/// A running device (driver OK) and what both queue drivers share:
/// notification, waiting, counters.
pub struct Running {
    // Declared first so that the transport resets the device before a
    // queue driver releases its memory.
    pub dev: Device,
    notify: QueueNotify,
    pub mode: WaitMode,
    pub stats: Stats,
    /// [`REQUEST_TIMEOUT_US`] in TSC cycles.
    timeout_cycles: u64,
}

impl Running {
    /// Notifies the device of new buffers.
    pub fn notify(&mut self) {
        self.notify.notify();
        self.stats.notifies += 1;
    }

    /// Waits until `ready()` (a completion is in the used ring). On a
    /// timeout the device is reset (so it no longer touches request
    /// buffers) and the wait fails.
    pub fn wait(&mut self, ready: impl Fn() -> bool) -> Result<(), Reason> {
        if ready() {
            return Ok(());
        }
        let deadline = Deadline::after_cycles(self.timeout_cycles);
        let mut spins = 0u32;
        loop {
            match self.mode {
                WaitMode::Irq => {
                    // Interrupts are off outside this `sti; hlt`, so one
                    // arriving after the check above still ends the `hlt`.
                    interrupts::enable_and_hlt();
                    interrupts::disable();
                    self.stats.halts += 1;
                }
                WaitMode::Poll => {
                    spins = spins.wrapping_add(1);
                    if !spins.is_multiple_of(1024) {
                        if ready() {
                            return Ok(());
                        }
                        continue;
                    }
                }
            }
            if ready() {
                return Ok(());
            }
            if deadline.expired() {
                self.reset();
                bail!(
                    "no completion within {} ms (device reset)",
                    REQUEST_TIMEOUT_US / 1000
                );
            }
        }
    }

    /// Resets the device: it stops using every buffer it was given.
    pub fn reset(&mut self) {
        self.dev.transport.set_status(DeviceStatus::empty());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.dev.lapic.stop_timer();
        interrupts::disable();
    }
}

/// The device with its request queue of `Q` entries (the crate's
/// `VirtQueue`), driver OK.
pub struct Blk<const Q: usize> {
    // Declared first: see `Running`.
    pub run: Running,
    queue: VirtQueue<ProbeHal, Q>,
    /// DMA page: `Q` 16-byte request headers, then `Q` status bytes.
    requests: usize,
    pending: [Pending; Q],
    /// Slot of each in-flight head descriptor (token).
    token_slot: [u16; Q],
    /// Largest data buffer per descriptor (`size_max`, whole sectors).
    seg_limit: usize,
    /// Data descriptors per request at most (`seg_max`, and what the
    /// probe's chain arrays hold).
    max_segments: usize,
}

/// The descriptor chain of one request split at `size_max`, as
/// `VirtQueue::add` takes it.
struct Buffers<'a> {
    inputs: [&'a [u8]; MAX_BUFFERS],
    inputs_len: usize,
    outputs: [&'a mut [u8]; MAX_BUFFERS],
    outputs_len: usize,
}

impl<const Q: usize> Blk<Q> {
    /// The device.
    pub fn dev(&self) -> &Device {
        &self.run.dev
    }

    /// Data descriptors a request of `len` bytes takes.
    pub fn data_segments(&self, len: usize) -> usize {
        len.div_ceil(self.seg_limit)
    }

    /// How many requests with `len` data bytes each fit in the queue at
    /// once (header, data segments, status).
    pub fn max_in_flight(&self, len: usize) -> usize {
        Q / (2 + self.data_segments(len).max(1))
    }

    fn header(&self, slot: usize) -> *mut u8 {
        (self.requests + slot * HEADER_LEN) as *mut u8
    }

    fn status(&self, slot: usize) -> *mut u8 {
        (self.requests + Q * HEADER_LEN + slot) as *mut u8
    }

    /// Calls `f` with the chain of `slot` as `VirtQueue::add` takes it:
    /// header, data (split at `seg_limit`), status.
    ///
    /// # Safety
    /// `slot`'s pending entry must describe live memory that only the
    /// device accesses; `f` must not keep the slices.
    unsafe fn with_chain<R>(
        &mut self,
        slot: usize,
        f: impl for<'a> FnOnce(&mut VirtQueue<ProbeHal, Q>, &'a [&'a [u8]], &'a mut [&'a mut [u8]]) -> R,
    ) -> R {
        let p = self.pending[slot];
        // SAFETY: the header and status live in the DMA page this queue
        // owns, one per slot; the caller vouches for the data.
        let (header, status) = unsafe {
            (
                core::slice::from_raw_parts(self.header(slot), HEADER_LEN),
                core::slice::from_raw_parts_mut(self.status(slot), 1),
            )
        };
        // SAFETY: as above.
        let data = || unsafe { core::slice::from_raw_parts_mut(p.data, p.len) };
        // The common cases without the general arrays (every emulated
        // instruction counts).
        match p.dir {
            Dir::None => return f(&mut self.queue, &[header], &mut [status]),
            Dir::ToDevice if p.len <= self.seg_limit => {
                return f(&mut self.queue, &[header, data()], &mut [status])
            }
            Dir::FromDevice if p.len <= self.seg_limit => {
                return f(&mut self.queue, &[header], &mut [data(), status])
            }
            _ => {}
        }
        let mut b = Buffers {
            inputs: [&[][..]; MAX_BUFFERS],
            inputs_len: 1,
            outputs: core::array::from_fn(|_| <&mut [u8]>::default()),
            outputs_len: 0,
        };
        b.inputs[0] = header;
        if p.dir == Dir::ToDevice {
            for chunk in data().chunks(self.seg_limit) {
                b.inputs[b.inputs_len] = chunk;
                b.inputs_len += 1;
            }
        } else {
            for chunk in data().chunks_mut(self.seg_limit) {
                b.outputs[b.outputs_len] = chunk;
                b.outputs_len += 1;
            }
        }
        b.outputs[b.outputs_len] = status;
        b.outputs_len += 1;
        f(
            &mut self.queue,
            &b.inputs[..b.inputs_len],
            &mut b.outputs[..b.outputs_len],
        )
    }

    /// Queues request `slot` (< `Q`, not in flight): `kind` at `sector` with
    /// `len` data bytes at `data` moving `dir`. The device is not notified:
    /// call [`Blk::kick`].
    ///
    /// # Safety
    /// `data..data + len` must be identity-mapped memory that nothing else
    /// reads or writes until [`Blk::complete`] returns `slot` or the device
    /// is reset.
    pub unsafe fn submit(
        &mut self,
        slot: usize,
        kind: u32,
        sector: u64,
        data: *mut u8,
        len: usize,
        dir: Dir,
    ) -> Result<(), Reason> {
        if slot >= Q || self.pending[slot].busy {
            bail!("request slot {} is busy or out of range", slot);
        }
        if (dir == Dir::None) != (len == 0) {
            bail!("bad request buffer: {} bytes", len);
        }
        let segments = self.data_segments(len);
        if segments > self.max_segments {
            bail!(
                "a {}-byte request needs {} data descriptors, at most {} allowed",
                len,
                segments,
                self.max_segments
            );
        }
        let header = self.header(slot);
        // SAFETY: the slot's header and status bytes in the DMA page; the
        // device does not own them while the slot is idle.
        unsafe {
            header.cast::<u32>().write_volatile(kind);
            header.add(4).cast::<u32>().write_volatile(0);
            header.add(8).cast::<u64>().write_volatile(sector);
            self.status(slot).write_volatile(STATUS_UNSET);
        }
        self.pending[slot] = Pending {
            data,
            len,
            dir,
            token: 0,
            busy: false,
        };
        // SAFETY: the caller vouches for the data, header and status are
        // the slot's own; the buffers stay untouched until `complete` pops
        // them (or the device is reset).
        let token =
            unsafe { self.with_chain(slot, |queue, inputs, outputs| queue.add(inputs, outputs)) }
                .map_err(|e| fail_reason!("virtqueue add: {}", e))?;
        self.pending[slot].token = token;
        self.pending[slot].busy = true;
        self.token_slot[usize::from(token)] = slot as u16;
        Ok(())
    }

    /// Notifies the device of new requests, unless it asked not to be.
    pub fn kick(&mut self) {
        if self.queue.should_notify() {
            self.run.notify();
        }
    }

    /// Waits until a completion is in the used ring (see
    /// [`Running::wait`]).
    pub fn wait(&mut self) -> Result<(), Reason> {
        let queue = &self.queue;
        self.run.wait(|| queue.can_pop())
    }

    /// Pops the next completed request, if any.
    pub fn complete(&mut self) -> Result<Option<Done>, Reason> {
        let Some(token) = self.queue.peek_used() else {
            return Ok(None);
        };
        let slot = usize::from(*self.token_slot.get(usize::from(token)).unwrap_or(&u16::MAX));
        if slot >= Q || !self.pending[slot].busy || self.pending[slot].token != token {
            bail!(
                "device completed descriptor {}, which is not in flight",
                token
            );
        }
        // SAFETY: the slot is in flight with these buffers and the device is
        // done with them: the same buffers that `submit` added for this
        // token.
        let len = unsafe {
            self.with_chain(slot, |queue, inputs, outputs| {
                queue.pop_used(token, inputs, outputs)
            })
        }
        .map_err(|e| fail_reason!("virtqueue pop: {}", e))?;
        self.pending[slot].busy = false;
        // SAFETY: the slot's status byte; the device has written it.
        let status = unsafe { self.status(slot).read_volatile() };
        Ok(Some(Done { slot, status, len }))
    }

    /// Runs one request in slot 0 to completion.
    pub fn request(
        &mut self,
        kind: u32,
        sector: u64,
        data: &mut [u8],
        dir: Dir,
    ) -> Result<Done, Reason> {
        let len = if dir == Dir::None { 0 } else { data.len() };
        // SAFETY: `data` stays borrowed until the request completes; when
        // this returns early with the request in flight, the device has
        // been reset.
        unsafe { self.submit(0, kind, sector, data.as_mut_ptr(), len, dir)? };
        self.kick();
        let done = self.wait().and_then(|()| match self.complete()? {
            Some(done) => Ok(done),
            None => bail!("used ring emptied under us"),
        });
        if done.is_err() {
            self.run.reset();
        }
        done
    }
}
