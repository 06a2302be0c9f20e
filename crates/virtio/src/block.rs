//! virtio-blk: a disk from the `block` crate, one worker thread per queue,
//! requests served straight between the image and guest memory.
//!
//! Requests are hostile input: every length, sector and segment is checked,
//! a malformed request gets IOERR (or nothing, when it has no status byte),
//! and a broken ring puts the device in NEEDS_RESET.

use std::sync::Arc;

use block::DiskFile;
use sandbox::seccomp::ThreadKind;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_device::Counters;
use vm_memory::{GuestMemoryBackend, VolatileSlice};
use vmm_sys_util::eventfd::EventFd;

use crate::device::{ActivateError, Interrupt, QueueSet, VirtioDevice};
use crate::features::{RING_EVENT_IDX, RING_INDIRECT_DESC, VERSION_1};
use crate::worker::{QueueHandler, Worker};
use crate::GuestMemory;

/// virtio device ID of a block device.
pub const DEVICE_TYPE: u16 = 2;
/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;

/// Feature bits (virtio 1.x §5.2.3).
pub mod feature {
    /// Maximum segments per request is in seg_max.
    pub const SEG_MAX: u64 = 1 << 2;
    /// The disk is read-only.
    pub const RO: u64 = 1 << 5;
    /// blk_size holds the logical block size.
    pub const BLK_SIZE: u64 = 1 << 6;
    /// Cache flush command.
    pub const FLUSH: u64 = 1 << 9;
    /// Topology fields are valid.
    pub const TOPOLOGY: u64 = 1 << 10;
    /// Several request queues.
    pub const MQ: u64 = 1 << 12;
    /// Discard command.
    pub const DISCARD: u64 = 1 << 13;
    /// Write-zeroes command.
    pub const WRITE_ZEROES: u64 = 1 << 14;
}

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
const ID_BYTES: usize = 20;
const HEADER_BYTES: usize = 16;
const SEGMENT_BYTES: usize = 16;
const MAX_DISCARD_SEGMENTS: u32 = 1;
const WRITE_ZEROES_UNMAP: u32 = 1;

/// How the guest sees the disk.
#[derive(Clone)]
pub struct BlockConfig {
    /// The image.
    pub disk: Arc<dyn DiskFile>,
    /// Refuse writes (RO feature).
    pub read_only: bool,
    /// GET_ID answer (at most 20 bytes are used).
    pub serial: String,
    /// Request queues.
    pub num_queues: u16,
    /// Maximum size of each queue.
    pub queue_size: u16,
    /// Logical block size override (else what the host reports).
    pub logical_block_size: Option<u32>,
    /// Physical block size override (else what the host reports).
    pub physical_block_size: Option<u32>,
    /// Offer DISCARD and WRITE_ZEROES.
    pub discard: bool,
}

/// The block device.
pub struct Block {
    config: BlockConfig,
    config_space: Vec<u8>,
    queue_sizes: Vec<u16>,
    features: u64,
    workers: Vec<Worker>,
    counters: Arc<Counters>,
}

/// The counters of a block device (`vm.counters`), in [`Counters`] index order.
pub const COUNTER_NAMES: &[&str] = &[
    "read_ops",
    "read_bytes",
    "write_ops",
    "write_bytes",
    "flush_ops",
    "discard_ops",
    "write_zeroes_ops",
    "errors",
];
const READ_OPS: usize = 0;
const READ_BYTES: usize = 1;
const WRITE_OPS: usize = 2;
const WRITE_BYTES: usize = 3;
const FLUSH_OPS: usize = 4;
const DISCARD_OPS: usize = 5;
const WRITE_ZEROES_OPS: usize = 6;
const ERRORS: usize = 7;

impl Block {
    /// A block device for `config`.
    pub fn new(config: BlockConfig) -> Block {
        let topo = config.disk.topology();
        let logical = config
            .logical_block_size
            .unwrap_or(topo.logical_block_size)
            .max(512);
        let physical = config
            .physical_block_size
            .unwrap_or(topo.physical_block_size)
            .max(logical);
        let queue_size = config.queue_size.max(2);
        let mut features = VERSION_1 | RING_INDIRECT_DESC | RING_EVENT_IDX | feature::SEG_MAX;
        features |= feature::BLK_SIZE | feature::FLUSH | feature::TOPOLOGY;
        if config.num_queues > 1 {
            features |= feature::MQ;
        }
        if config.read_only {
            features |= feature::RO;
        } else if config.discard {
            features |= feature::DISCARD | feature::WRITE_ZEROES;
        }
        let mut cs = vec![0u8; 60];
        let put32 = |cs: &mut Vec<u8>, off: usize, v: u32| {
            cs[off..off + 4].copy_from_slice(&v.to_le_bytes())
        };
        cs[0..8].copy_from_slice(&(config.disk.size() / SECTOR_SIZE).to_le_bytes());
        put32(&mut cs, 12, u32::from(queue_size - 2)); // seg_max: the header and status take two
        put32(&mut cs, 20, logical);
        cs[24] = (physical / logical).trailing_zeros() as u8;
        cs[25] = topo.alignment_offset.min(255) as u8;
        let min_io = (topo.min_io_size.max(physical) / logical).min(u32::from(u16::MAX)) as u16;
        cs[26..28].copy_from_slice(&min_io.to_le_bytes());
        put32(&mut cs, 28, topo.opt_io_size / logical);
        cs[34..36].copy_from_slice(&config.num_queues.max(1).to_le_bytes());
        let max_sectors = u32::MAX / SECTOR_SIZE as u32;
        put32(&mut cs, 36, max_sectors);
        put32(&mut cs, 40, MAX_DISCARD_SEGMENTS);
        put32(&mut cs, 44, logical / SECTOR_SIZE as u32);
        put32(&mut cs, 48, max_sectors);
        put32(&mut cs, 52, MAX_DISCARD_SEGMENTS);
        cs[56] = 1; // write_zeroes_may_unmap
        let queue_sizes = vec![queue_size; usize::from(config.num_queues.max(1))];
        Block {
            config,
            config_space: cs,
            queue_sizes,
            features,
            workers: Vec::new(),
            counters: Arc::new(Counters::new(COUNTER_NAMES)),
        }
    }

    /// Its I/O counters, shared with its workers.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::device::read_config_bytes(&self.config_space, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // writeback (offset 32) is not offered; everything else is read-only.
    }

    fn activate(&mut self, set: QueueSet) -> Result<(), ActivateError> {
        for (index, queue, event) in set.queues {
            let executor = Executor {
                mem: set.mem.clone(),
                disk: self.config.disk.clone(),
                read_only: self.config.read_only,
                discard: self.config.discard && !self.config.read_only,
                serial: self.config.serial.clone(),
                counters: self.counters.clone(),
            };
            let completions = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
            let name = format!("virtio-blk-q{index}");
            let pool = IoPool::new(&executor, &name, completions.try_clone()?)?;
            let handler = RequestQueue {
                index,
                mem: set.mem.clone(),
                queue,
                interrupt: set.interrupt.clone(),
                executor,
                pool: Some(pool),
                broken: false,
            };
            self.workers.push(Worker::spawn(
                name,
                ThreadKind::VirtioBlock,
                vec![event, completions],
                handler,
            )?);
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.workers.clear();
    }

    fn pause(&mut self) -> bool {
        crate::worker::pause_all(&self.workers)
    }

    fn resume(&mut self) {
        crate::worker::resume_all(&self.workers);
    }
}

/// Serves every request available on `queue` once, on the calling thread,
/// as a worker would (for tests and fuzzing): returns the requests completed,
/// or the queue error that would put the device in NEEDS_RESET.
pub fn serve_queue_once(
    mem: &GuestMemory,
    queue: Queue,
    disk: Arc<dyn DiskFile>,
    read_only: bool,
) -> Result<usize, virtio_queue::Error> {
    struct NoInterrupt;
    impl Interrupt for NoInterrupt {
        fn notify_queue(&self, _: u16) {}
        fn notify_config(&self) {}
        fn needs_reset(&self) {}
    }
    let mut rq = RequestQueue {
        index: 0,
        mem: mem.clone(),
        queue,
        interrupt: Arc::new(NoInterrupt),
        executor: Executor {
            mem: mem.clone(),
            disk,
            read_only,
            discard: !read_only,
            serial: "fuzz".into(),
            counters: Arc::new(Counters::new(COUNTER_NAMES)),
        },
        pool: None,
        broken: false,
    };
    rq.serve()
}

/// One request queue and what serving it needs.
struct RequestQueue {
    index: u16,
    mem: GuestMemory,
    queue: Queue,
    interrupt: Arc<dyn Interrupt>,
    executor: Executor,
    /// I/O threads; without them requests run on the queue's own thread.
    pool: Option<IoPool>,
    broken: bool,
}

/// What executing a request needs; cheap to clone into I/O threads.
#[derive(Clone)]
struct Executor {
    mem: GuestMemory,
    disk: Arc<dyn DiskFile>,
    read_only: bool,
    discard: bool,
    serial: String,
    counters: Arc<Counters>,
}

/// One descriptor of a request, owned so the request can move to an I/O thread.
#[derive(Debug, Clone, Copy)]
struct Desc {
    addr: vm_memory::GuestAddress,
    len: u32,
    write: bool,
}

/// A request handed to the I/O threads.
struct Job {
    head: u16,
    descs: Vec<Desc>,
}

/// I/O threads serving one queue: requests run in parallel, as the guest's
/// queue depth allows; completions come back over a channel and an eventfd.
struct IoPool {
    jobs: Option<std::sync::mpsc::Sender<Job>>,
    done: std::sync::mpsc::Receiver<(u16, u32)>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Set when the pool goes away: queued requests are dropped, not run.
    abort: Arc<std::sync::atomic::AtomicBool>,
    /// Requests handed out and not yet put in the used ring.
    in_flight: usize,
}

/// I/O threads per queue.
const IO_THREADS: usize = 8;

impl IoPool {
    fn new(executor: &Executor, name: &str, signal: EventFd) -> std::io::Result<IoPool> {
        let (jobs, job_rx) = std::sync::mpsc::channel::<Job>();
        let (done_tx, done) = std::sync::mpsc::channel();
        let job_rx = Arc::new(std::sync::Mutex::new(job_rx));
        let signal = Arc::new(signal);
        let abort = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut threads = Vec::new();
        for i in 0..IO_THREADS {
            let abort = abort.clone();
            let (job_rx, done_tx, signal, executor) = (
                job_rx.clone(),
                done_tx.clone(),
                signal.clone(),
                executor.clone(),
            );
            let thread =
                sandbox::thread::spawn(ThreadKind::BlockIo, format!("{name}-io{i}"), move || {
                    loop {
                        let job = match job_rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        if abort.load(std::sync::atomic::Ordering::Acquire) {
                            return;
                        }
                        let used = executor.run(&job.descs);
                        if done_tx.send((job.head, used)).is_err() {
                            return;
                        }
                        let _ = signal.write(1);
                    }
                })?;
            threads.push(thread);
        }
        Ok(IoPool {
            jobs: Some(jobs),
            done,
            threads,
            abort,
            in_flight: 0,
        })
    }
}

impl Drop for IoPool {
    fn drop(&mut self) {
        // Requests still queued are dropped: the driver reset the device or
        // the VM is going away. Threads finish the request they are running.
        self.abort.store(true, std::sync::atomic::Ordering::Release);
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The buffers of one request, split as the protocol frames them.
struct Request<'a> {
    readable: Vec<VolatileSlice<'a>>,
    writable: Vec<VolatileSlice<'a>>,
}

/// Splits the first `n` bytes off `slices` (linear in the number of slices).
fn take_front<'a>(slices: &mut Vec<VolatileSlice<'a>>, n: usize) -> Option<Vec<VolatileSlice<'a>>> {
    let mut taken = 0;
    let mut whole = 0;
    for s in slices.iter() {
        if taken + s.len() > n {
            break;
        }
        taken += s.len();
        whole += 1;
    }
    let mut rest = slices.split_off(whole);
    if taken < n {
        let first = *rest.first()?;
        let cut = n - taken;
        slices.push(first.subslice(0, cut).ok()?);
        rest[0] = first.offset(cut).ok()?;
    }
    Some(std::mem::replace(slices, rest))
}

/// Splits the last `n` bytes off `slices` (linear in the number of slices).
fn take_back<'a>(slices: &mut Vec<VolatileSlice<'a>>, n: usize) -> Option<Vec<VolatileSlice<'a>>> {
    let total: usize = slices.iter().map(|s| s.len()).sum();
    let keep = total.checked_sub(n)?;
    let front = take_front(slices, keep)?;
    Some(std::mem::replace(slices, front))
}

fn read_bytes(slices: &[VolatileSlice], out: &mut [u8]) -> Option<()> {
    let mut done = 0;
    for s in slices {
        let n = s.len().min(out.len() - done);
        s.subslice(0, n).ok()?.copy_to(&mut out[done..done + n]);
        done += n;
    }
    (done == out.len()).then_some(())
}

fn write_bytes(slices: &[VolatileSlice], data: &[u8]) -> usize {
    let mut done = 0;
    for s in slices {
        if done == data.len() {
            break;
        }
        let n = s.len().min(data.len() - done);
        if let Ok(part) = s.subslice(0, n) {
            part.copy_from(&data[done..done + n]);
            done += n;
        }
    }
    done
}

fn len_of(slices: &[VolatileSlice]) -> u64 {
    slices.iter().map(|s| s.len() as u64).sum()
}

impl Executor {
    /// Maps a request's descriptors to guest memory; `None` when a buffer lies
    /// outside guest RAM or a readable buffer follows a writable one.
    fn map<'a>(mem: &'a GuestMemory, descs: &[Desc]) -> Option<Request<'a>> {
        let mut req = Request {
            readable: Vec::new(),
            writable: Vec::new(),
        };
        for desc in descs {
            if desc.len == 0 {
                continue;
            }
            let slice = mem.get_slice(desc.addr, desc.len as usize).ok()?;
            if desc.write {
                req.writable.push(slice);
            } else if req.writable.is_empty() {
                req.readable.push(slice);
            } else {
                return None;
            }
        }
        Some(req)
    }

    /// Executes one request and writes its status; returns the used length.
    fn run(&self, descs: &[Desc]) -> u32 {
        let Some(mut req) = Self::map(&self.mem, descs) else {
            return 0;
        };
        // No room for a status byte: nothing can be reported.
        let Some(status) = take_back(&mut req.writable, 1) else {
            return 0;
        };
        let (s, written) = self.execute(&mut req);
        if s != S_OK {
            self.counters.add(ERRORS, 1);
        }
        write_bytes(&status, &[s]);
        written + 1
    }

    /// Executes one request; returns its status and the bytes it wrote into data buffers.
    fn execute(&self, req: &mut Request) -> (u8, u32) {
        let mut header = [0u8; HEADER_BYTES];
        let Some(hdr) = take_front(&mut req.readable, HEADER_BYTES) else {
            return (S_IOERR, 0);
        };
        if read_bytes(&hdr, &mut header).is_none() {
            return (S_IOERR, 0);
        }
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let sector = u64::from_le_bytes(header[8..16].try_into().unwrap_or([0; 8]));
        let size = self.disk.size();
        let range_ok = |len: u64| {
            len % SECTOR_SIZE == 0
                && sector
                    .checked_mul(SECTOR_SIZE)
                    .and_then(|o| o.checked_add(len))
                    .is_some_and(|end| end <= size)
        };
        match kind {
            T_IN => {
                let len = len_of(&req.writable);
                // Data for the guest must be device-writable, and only that;
                // the used length (data + status) must fit its u32.
                if !req.readable.is_empty() || !range_ok(len) || len >= u64::from(u32::MAX) {
                    return (S_IOERR, 0);
                }
                if block::read_exact_vectored_at(
                    self.disk.as_ref(),
                    &req.writable,
                    sector * SECTOR_SIZE,
                )
                .is_err()
                {
                    return (S_IOERR, 0);
                }
                self.counters.add(READ_OPS, 1);
                self.counters.add(READ_BYTES, len);
                (S_OK, len as u32)
            }
            T_OUT => {
                let len = len_of(&req.readable);
                if self.read_only || !req.writable.is_empty() || !range_ok(len) {
                    return (S_IOERR, 0);
                }
                if block::write_all_vectored_at(
                    self.disk.as_ref(),
                    &req.readable,
                    sector * SECTOR_SIZE,
                )
                .is_err()
                {
                    return (S_IOERR, 0);
                }
                self.counters.add(WRITE_OPS, 1);
                self.counters.add(WRITE_BYTES, len);
                (S_OK, 0)
            }
            T_FLUSH => (
                if self.disk.flush().is_ok() {
                    self.counters.add(FLUSH_OPS, 1);
                    S_OK
                } else {
                    S_IOERR
                },
                0,
            ),
            T_GET_ID => {
                let mut id = [0u8; ID_BYTES];
                let bytes = self.serial.as_bytes();
                let n = bytes.len().min(ID_BYTES);
                id[..n].copy_from_slice(&bytes[..n]);
                let written = write_bytes(&req.writable, &id);
                (S_OK, written as u32)
            }
            T_DISCARD | T_WRITE_ZEROES if self.discard => {
                let (s, n) = self.discard_or_zero(kind, req);
                if s == S_OK {
                    let counter = if kind == T_DISCARD {
                        DISCARD_OPS
                    } else {
                        WRITE_ZEROES_OPS
                    };
                    self.counters.add(counter, 1);
                }
                (s, n)
            }
            T_DISCARD | T_WRITE_ZEROES if self.read_only => (S_IOERR, 0),
            _ => (S_UNSUPP, 0),
        }
    }

    fn discard_or_zero(&self, kind: u32, req: &mut Request) -> (u8, u32) {
        let payload = len_of(&req.readable);
        if payload == 0
            || payload % SEGMENT_BYTES as u64 != 0
            || payload / SEGMENT_BYTES as u64 > u64::from(MAX_DISCARD_SEGMENTS)
        {
            return (S_IOERR, 0);
        }
        let mut seg = [0u8; SEGMENT_BYTES];
        if read_bytes(&req.readable, &mut seg).is_none() {
            return (S_IOERR, 0);
        }
        let sector = u64::from_le_bytes(seg[0..8].try_into().unwrap_or([0; 8]));
        let count = u64::from(u32::from_le_bytes(seg[8..12].try_into().unwrap_or([0; 4])));
        let flags = u32::from_le_bytes(seg[12..16].try_into().unwrap_or([0; 4]));
        let allowed_flags = if kind == T_WRITE_ZEROES {
            WRITE_ZEROES_UNMAP
        } else {
            0
        };
        if flags & !allowed_flags != 0 {
            return (S_UNSUPP, 0);
        }
        let (Some(offset), Some(len)) = (
            sector.checked_mul(SECTOR_SIZE),
            count.checked_mul(SECTOR_SIZE),
        ) else {
            return (S_IOERR, 0);
        };
        if offset
            .checked_add(len)
            .is_none_or(|end| end > self.disk.size())
        {
            return (S_IOERR, 0);
        }
        let result = if kind == T_DISCARD {
            self.disk.discard(offset, len)
        } else {
            self.disk
                .write_zeroes(offset, len, flags & WRITE_ZEROES_UNMAP != 0)
        };
        (if result.is_ok() { S_OK } else { S_IOERR }, 0)
    }
}

/// The descriptors of a chain, owned.
fn collect(chain: DescriptorChain<&GuestMemory>) -> Vec<Desc> {
    chain
        .map(|d| Desc {
            addr: d.addr(),
            len: d.len(),
            write: d.is_write_only(),
        })
        .collect()
}

impl RequestQueue {
    /// Takes every available request: runs it here, or hands it to the I/O
    /// threads. Returns how many were completed here. An avail index the
    /// queue cannot hold is an error (never a spin).
    fn serve(&mut self) -> Result<usize, virtio_queue::Error> {
        let mut done = 0;
        loop {
            self.queue.disable_notification(&self.mem)?;
            // No more requests in flight than the ring holds: a guest that
            // reposts heads without waiting cannot grow the backlog.
            let limit = usize::from(self.queue.size());
            let room = self
                .pool
                .as_ref()
                .map_or(usize::MAX, |p| limit.saturating_sub(p.in_flight));
            let chains: Vec<_> = self.queue.iter(&self.mem)?.take(room).collect();
            let full = chains.len() == room;
            for chain in chains {
                let job = Job {
                    head: chain.head_index(),
                    descs: collect(chain),
                };
                if let Some(pool) = self.pool.as_mut() {
                    match pool.jobs.as_ref().map(|j| j.send(job)) {
                        Some(Ok(())) => pool.in_flight += 1,
                        Some(Err(std::sync::mpsc::SendError(job))) => {
                            self.queue.add_used(&self.mem, job.head, 0)?;
                            done += 1;
                        }
                        None => {}
                    }
                    continue;
                }
                let used = self.executor.run(&job.descs);
                self.queue.add_used(&self.mem, job.head, used)?;
                done += 1;
            }
            // At the in-flight limit, completions resume the queue.
            if full || !self.queue.enable_notification(&self.mem)? {
                return Ok(done);
            }
        }
    }

    /// Puts the requests the I/O threads finished in the used ring, then
    /// takes requests that waited for room.
    fn complete(&mut self) -> Result<usize, virtio_queue::Error> {
        let Some(pool) = self.pool.as_mut() else {
            return Ok(0);
        };
        let finished: Vec<(u16, u32)> = pool.done.try_iter().collect();
        pool.in_flight = pool.in_flight.saturating_sub(finished.len());
        for (head, used) in &finished {
            self.queue.add_used(&self.mem, *head, *used)?;
        }
        Ok(finished.len() + self.serve()?)
    }

    /// Waits for every request the I/O threads hold and puts it in the used
    /// ring; serves nothing new.
    fn drain(&mut self) -> Result<usize, virtio_queue::Error> {
        let Some(pool) = self.pool.as_mut() else {
            return Ok(0);
        };
        let mut finished = Vec::new();
        while pool.in_flight > finished.len() {
            match pool.done.recv() {
                Ok(done) => finished.push(done),
                Err(_) => break,
            }
        }
        pool.in_flight -= finished.len();
        for (head, used) in &finished {
            self.queue.add_used(&self.mem, *head, *used)?;
        }
        Ok(finished.len())
    }
}

impl QueueHandler for RequestQueue {
    /// Index 0: the guest notified the queue; index 1: I/O threads finished requests.
    fn process(&mut self, index: usize) {
        if self.broken {
            return;
        }
        let result = if index == 0 {
            self.serve()
        } else {
            self.complete()
        };
        self.after(result);
    }

    fn quiesce(&mut self) {
        if self.broken {
            return;
        }
        let result = self.drain();
        self.after(result);
    }
}

impl RequestQueue {
    fn after(&mut self, result: Result<usize, virtio_queue::Error>) {
        crate::device::after_pass(
            result,
            &mut self.queue,
            &self.mem,
            self.interrupt.as_ref(),
            self.index,
            &mut self.broken,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{desc, memory, Counter, NEXT, WRITE};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};

    const HDR: u64 = 0x10_0000;
    const DATA: u64 = 0x20_0000;
    const STATUS: u64 = 0x30_0000;

    struct Disk {
        path: std::path::PathBuf,
    }

    impl Drop for Disk {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    fn disk(read_only: bool) -> (Disk, Arc<dyn DiskFile>) {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("ferrovisor-blk-{}-{n}", std::process::id()));
        let content: Vec<u8> = (0..1u32 << 20).map(|i| (i / 512) as u8).collect();
        std::fs::write(&path, content).unwrap();
        let raw = block::RawFile::open(
            &path,
            block::OpenOptions {
                read_only,
                direct: false,
            },
        )
        .unwrap();
        (Disk { path }, Arc::new(raw))
    }

    fn header(mem: &GuestMemory, kind: u32, sector: u64) {
        mem.write_obj(kind, GuestAddress(HDR)).unwrap();
        mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
        mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
    }

    /// Runs one chain; returns (status byte, used length, resets).
    fn run(
        mem: &GuestMemory,
        d: Arc<dyn DiskFile>,
        read_only: bool,
        descs: &[RawDescriptor],
    ) -> (u8, u32, usize) {
        mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let mock = MockSplitQueue::new(mem, 16);
        mock.add_desc_chains(descs, 0).unwrap();
        let counter = Arc::new(Counter::default());
        let mut rq = RequestQueue {
            index: 0,
            mem: mem.clone(),
            queue: mock.create_queue().unwrap(),
            interrupt: counter.clone(),
            executor: Executor {
                mem: mem.clone(),
                disk: d,
                read_only,
                discard: !read_only,
                serial: "disk-serial-0123456789".into(),
                counters: Arc::new(Counters::new(COUNTER_NAMES)),
            },
            pool: None,
            broken: false,
        };
        rq.process(0);
        let status: u8 = mem.read_obj(GuestAddress(STATUS)).unwrap();
        let used: u32 = mem.read_obj(mock.used_addr().unchecked_add(8)).unwrap();
        (status, used, counter.reset.load(Ordering::SeqCst))
    }

    fn three(
        kind: u32,
        sector: u64,
        data_len: u32,
        data_flags: u16,
        mem: &GuestMemory,
    ) -> Vec<RawDescriptor> {
        header(mem, kind, sector);
        vec![
            desc(HDR, 16, NEXT, 1),
            desc(DATA, data_len, data_flags | NEXT, 2),
            desc(STATUS, 1, WRITE, 0),
        ]
    }

    #[test]
    fn reads_and_writes_sectors() {
        let mem = memory();
        let (_f, d) = disk(false);
        let (s, used, _) = run(&mem, d.clone(), false, &three(T_IN, 3, 1024, WRITE, &mem));
        assert_eq!((s, used), (S_OK, 1025));
        let mut buf = [0u8; 1024];
        mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
        assert!(buf[..512].iter().all(|b| *b == 3) && buf[512..].iter().all(|b| *b == 4));

        mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
        let (s, used, _) = run(&mem, d.clone(), false, &three(T_OUT, 10, 512, 0, &mem));
        assert_eq!((s, used), (S_OK, 1));
        let (s, _, _) = run(&mem, d.clone(), false, &three(T_FLUSH, 0, 0, 0, &mem)[..]);
        assert_eq!(s, S_OK);
        let (s, _, _) = run(&mem, d, false, &three(T_IN, 10, 512, WRITE, &mem));
        assert_eq!(s, S_OK);
        let mut back = [0u8; 512];
        mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
        assert_eq!(back, [0xab; 512]);
    }

    #[test]
    fn bad_requests_get_ioerr_or_unsupp() {
        let mem = memory();
        let (_f, d) = disk(false);
        let sectors = d.size() / 512;
        for (kind, sector, len, flags, expect) in [
            (T_IN, sectors, 512, WRITE, S_IOERR),      // past the end
            (T_IN, sectors - 1, 1024, WRITE, S_IOERR), // straddles the end
            (T_IN, 0, 100, WRITE, S_IOERR),            // not a sector multiple
            (T_OUT, u64::MAX / 256, 512, 0, S_IOERR),  // offset overflows
            (T_IN, 0, 512, 0, S_IOERR),                // data buffer not writable
            (99, 0, 512, 0, S_UNSUPP),                 // unknown type
        ] {
            let (s, _, resets) = run(
                &mem,
                d.clone(),
                false,
                &three(kind, sector, len, flags, &mem),
            );
            assert_eq!(
                (s, resets),
                (expect, 0),
                "type {kind} sector {sector} len {len}"
            );
        }
    }

    #[test]
    fn read_only_disk_refuses_writes() {
        let mem = memory();
        let (_f, d) = disk(true);
        let (s, _, _) = run(&mem, d.clone(), true, &three(T_OUT, 0, 512, 0, &mem));
        assert_eq!(s, S_IOERR);
        let (s, _, _) = run(&mem, d, true, &three(T_DISCARD, 0, 16, 0, &mem));
        assert_eq!(s, S_IOERR);
    }

    #[test]
    fn get_id_discard_and_write_zeroes() {
        let mem = memory();
        let (f, d) = disk(false);
        let (s, used, _) = run(&mem, d.clone(), false, &three(T_GET_ID, 0, 20, WRITE, &mem));
        assert_eq!((s, used), (S_OK, 21));
        let mut id = [0u8; 20];
        mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id, b"disk-serial-01234567");
        for (kind, flags) in [(T_DISCARD, 0u32), (T_WRITE_ZEROES, WRITE_ZEROES_UNMAP)] {
            mem.write_obj(8u64, GuestAddress(DATA)).unwrap();
            mem.write_obj(8u32, GuestAddress(DATA + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(DATA + 12)).unwrap();
            let (s, _, _) = run(&mem, d.clone(), false, &three(kind, 0, 16, 0, &mem));
            assert_eq!(s, S_OK);
        }
        let content = std::fs::read(&f.path).unwrap();
        assert!(
            content[8 * 512..16 * 512].iter().all(|b| *b == 0),
            "discarded sectors read as zeros"
        );
        // Reserved flag bits, too many segments, ranges past the end.
        mem.write_obj(2u32, GuestAddress(DATA + 12)).unwrap();
        assert_eq!(
            run(&mem, d.clone(), false, &three(T_DISCARD, 0, 16, 0, &mem)).0,
            S_UNSUPP
        );
        assert_eq!(
            run(&mem, d.clone(), false, &three(T_DISCARD, 0, 32, 0, &mem)).0,
            S_IOERR
        );
        mem.write_obj(u64::MAX, GuestAddress(DATA)).unwrap();
        mem.write_obj(0u32, GuestAddress(DATA + 12)).unwrap();
        assert_eq!(
            run(&mem, d, false, &three(T_DISCARD, 0, 16, 0, &mem)).0,
            S_IOERR
        );
    }

    #[test]
    fn malformed_chains() {
        let mem = memory();
        let (_f, d) = disk(false);
        header(&mem, T_IN, 0);
        // No writable status byte at all: completes with nothing written.
        let (s, used, _) = run(&mem, d.clone(), false, &[desc(HDR, 16, 0, 0)]);
        assert_eq!((s, used), (0xff, 0));
        // A header shorter than 16 bytes.
        let (s, _, _) = run(
            &mem,
            d.clone(),
            false,
            &[desc(HDR, 8, NEXT, 1), desc(STATUS, 1, WRITE, 0)],
        );
        assert_eq!(s, S_IOERR);
        // A buffer outside guest memory.
        let (_, used, _) = run(
            &mem,
            d.clone(),
            false,
            &[
                desc(HDR, 16, NEXT, 1),
                desc(0x4000_0000, 512, WRITE | NEXT, 2),
                desc(STATUS, 1, WRITE, 0),
            ],
        );
        assert_eq!(used, 0);
        // A readable buffer after a writable one.
        let (_, used, _) = run(
            &mem,
            d.clone(),
            false,
            &[
                desc(HDR, 16, NEXT, 1),
                desc(DATA, 512, WRITE | NEXT, 2),
                desc(DATA, 512, NEXT, 3),
                desc(STATUS, 1, WRITE, 0),
            ],
        );
        assert_eq!(used, 0);
        // A header split over two descriptors is fine.
        let (s, _, _) = run(
            &mem,
            d,
            false,
            &[
                desc(HDR, 8, NEXT, 1),
                desc(HDR + 8, 8, NEXT, 2),
                desc(DATA, 512, WRITE | NEXT, 3),
                desc(STATUS, 1, WRITE, 0),
            ],
        );
        assert_eq!(s, S_OK);
    }

    /// A disk whose reads wait until the test opens the gate.
    struct GatedDisk {
        inner: Arc<dyn DiskFile>,
        gate: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    }

    impl DiskFile for GatedDisk {
        fn size(&self) -> u64 {
            self.inner.size()
        }
        fn read_only(&self) -> bool {
            false
        }
        fn topology(&self) -> block::Topology {
            self.inner.topology()
        }
        fn read_vectored_at(&self, bufs: &[VolatileSlice], offset: u64) -> std::io::Result<usize> {
            let (lock, open) = &*self.gate;
            let mut is_open = lock.lock().unwrap();
            while !*is_open {
                is_open = open.wait(is_open).unwrap();
            }
            drop(is_open);
            self.inner.read_vectored_at(bufs, offset)
        }
        fn write_vectored_at(&self, bufs: &[VolatileSlice], offset: u64) -> std::io::Result<usize> {
            self.inner.write_vectored_at(bufs, offset)
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
            self.inner.discard(offset, len)
        }
        fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> std::io::Result<()> {
            self.inner.write_zeroes(offset, len, unmap)
        }
        fn extent_at(&self, offset: u64, max_len: u64) -> std::io::Result<block::Extent> {
            self.inner.extent_at(offset, max_len)
        }
    }

    /// A guest that reposts requests without waiting for completions cannot
    /// put more in flight than the ring holds; the rest waits in the ring.
    #[test]
    fn requests_in_flight_are_bounded_by_the_ring() {
        let mem = memory();
        let (_f, inner) = disk(false);
        let gate = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        /// Opens the gate when dropped, so a failing assertion cannot leave
        /// I/O threads blocked while the pool joins them.
        struct OpenOnDrop(Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>);
        impl Drop for OpenOnDrop {
            fn drop(&mut self) {
                *self.0 .0.lock().unwrap_or_else(|p| p.into_inner()) = true;
                self.0 .1.notify_all();
            }
        }
        let d: Arc<dyn DiskFile> = Arc::new(GatedDisk {
            inner,
            gate: gate.clone(),
        });
        let mock = MockSplitQueue::new(&mem, 16);
        header(&mem, T_IN, 0);
        let chain: Vec<RawDescriptor> = (0..5u16)
            .flat_map(|c| {
                let base = c * 3;
                [
                    desc(HDR, 16, NEXT, base + 1),
                    desc(DATA + u64::from(c) * 0x1000, 512, WRITE | NEXT, base + 2),
                    desc(STATUS + u64::from(c), 1, WRITE, 0),
                ]
            })
            .collect();
        mock.add_desc_chains(&chain, 0).unwrap();
        let executor = Executor {
            mem: mem.clone(),
            disk: d,
            read_only: false,
            discard: true,
            serial: String::new(),
            counters: Arc::new(Counters::new(COUNTER_NAMES)),
        };
        let signal = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let pool = IoPool::new(&executor, "test", signal.try_clone().unwrap()).unwrap();
        let mut rq = RequestQueue {
            index: 0,
            mem: mem.clone(),
            queue: mock.create_queue().unwrap(),
            interrupt: Arc::new(Counter::default()),
            executor,
            pool: Some(pool),
            broken: false,
        };
        // Declared after `rq`: dropped first, so the pool can join its threads.
        let _open = OpenOnDrop(gate.clone());
        rq.process(0);
        for _ in 0..3 {
            mock.add_desc_chains(&chain, 0).unwrap();
            rq.process(0);
        }
        assert_eq!(
            rq.pool.as_ref().unwrap().in_flight,
            16,
            "20 posted, 16 taken"
        );
        assert_eq!(rq.queue.next_avail(), 16);
        // Open the gate: completions make room and the waiting 4 are taken.
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while rq.queue.next_avail() < 20 || rq.pool.as_ref().unwrap().in_flight > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "requests did not drain"
            );
            let _ = signal.read();
            rq.process(1);
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let used: u16 = mem.read_obj(mock.used_addr().unchecked_add(2)).unwrap();
        assert_eq!(used, 20, "every request completed exactly once");
    }

    #[test]
    fn config_space_reports_geometry() {
        let (_f, d) = disk(false);
        let b = Block::new(BlockConfig {
            disk: d,
            read_only: false,
            serial: String::new(),
            num_queues: 2,
            queue_size: 128,
            logical_block_size: Some(512),
            physical_block_size: Some(4096),
            discard: true,
        });
        let mut cap = [0u8; 8];
        b.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 2048);
        let mut t = [0u8; 8];
        b.read_config(20, &mut t);
        assert_eq!(u32::from_le_bytes(t[..4].try_into().unwrap()), 512);
        assert_eq!(t[4], 3, "physical block exponent: 4096 = 512 << 3");
        let mut nq = [0u8; 2];
        b.read_config(34, &mut nq);
        assert_eq!(u16::from_le_bytes(nq), 2);
        assert_ne!(b.features() & feature::MQ, 0);
        assert_ne!(b.features() & feature::DISCARD, 0);
        let mut past = [0xaau8; 8];
        b.read_config(58, &mut past);
        assert_eq!(&past[2..], &[0; 6]);
        b.read_config(u64::MAX, &mut past);
    }
}
