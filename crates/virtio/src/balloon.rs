//! virtio-balloon: the host asks the guest to give back memory (inflate)
//! or take it again (deflate); pages the guest gives back, and free pages it
//! reports, are returned to the host (MADV_DONTNEED for private memory,
//! MADV_REMOVE for shared or file-backed memory), so the VMM's RSS falls.
//! The statistics queue carries the guest's memory statistics.

use std::io::Read;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_device::Counters;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

use crate::device::{ActivateError, Interrupt, QueueSet, VirtioDevice};
use crate::features::VERSION_1;
use crate::worker::{QueueHandler, Worker};
use crate::GuestMemory;
use vmm_sys_util::eventfd::EventFd;

/// virtio device ID of the memory balloon.
pub const DEVICE_TYPE: u16 = 5;
/// Pages are 4 KiB for the balloon whatever the guest uses.
pub const PAGE_SIZE: u64 = 4096;
const QUEUE_SIZE: u16 = 256;

/// Feature bits (virtio 1.2 §5.5.3).
pub mod feature {
    /// The guest tells the host before using deflated pages.
    pub const MUST_TELL_HOST: u64 = 1 << 0;
    /// A statistics queue.
    pub const STATS_VQ: u64 = 1 << 1;
    /// The guest deflates when it runs out of memory.
    pub const DEFLATE_ON_OOM: u64 = 1 << 2;
    /// Free page reporting.
    pub const PAGE_REPORTING: u64 = 1 << 5;
}

/// The counters of the balloon (`vm.counters`), in [`Counters`] index order:
/// what it did, then the guest's latest statistics in tag order (virtio
/// 1.2 §5.5.6.3: tag 0 swap in ... tag 9 hugetlb failures).
pub const COUNTER_NAMES: &[&str] = &[
    "target_pages",
    "actual_pages",
    "inflated_pages",
    "deflated_pages",
    "reported_bytes",
    "discarded_bytes",
    "bad_requests",
    "stat_swap_in",
    "stat_swap_out",
    "stat_major_faults",
    "stat_minor_faults",
    "stat_free_memory",
    "stat_total_memory",
    "stat_available_memory",
    "stat_disk_caches",
    "stat_hugetlb_allocations",
    "stat_hugetlb_failures",
];
const TARGET: usize = 0;
const ACTUAL: usize = 1;
const INFLATED: usize = 2;
const DEFLATED: usize = 3;
const REPORTED: usize = 4;
const DISCARDED: usize = 5;
const BAD: usize = 6;
const FIRST_STAT: usize = 7;
/// Statistics tags the device records (0..STAT_TAGS).
const STAT_TAGS: usize = COUNTER_NAMES.len() - FIRST_STAT;

/// What the balloon offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalloonConfig {
    /// Initial target, in bytes.
    pub size: u64,
    /// Offer DEFLATE_ON_OOM.
    pub deflate_on_oom: bool,
    /// Offer free page reporting.
    pub free_page_reporting: bool,
}

/// State shared by the device, its worker and the control plane.
struct Shared {
    /// Pages the host wants in the balloon.
    target: AtomicU32,
    /// Pages the guest says are in it.
    actual: AtomicU32,
    counters: Arc<Counters>,
    interrupt: Mutex<Option<Arc<dyn Interrupt>>>,
    /// Signalled when the host wants fresh statistics.
    stats_request: EventFd,
}

/// A handle to resize the balloon and read its state.
#[derive(Clone)]
pub struct BalloonHandle(Arc<Shared>);

impl BalloonHandle {
    /// Sets the target to `bytes` (rounded down to pages) and tells the guest.
    pub fn resize(&self, bytes: u64) -> Result<(), String> {
        let pages = u32::try_from(bytes / PAGE_SIZE)
            .map_err(|_| format!("{bytes} bytes is more than the balloon can hold"))?;
        self.0.target.store(pages, Ordering::SeqCst);
        self.0.counters_sync();
        let interrupt = self.0.interrupt.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = interrupt.as_ref() {
            i.notify_config();
        }
        Ok(())
    }

    /// Asks the guest for fresh statistics (they arrive in the counters).
    pub fn request_stats(&self) {
        let _ = self.0.stats_request.write(1);
    }

    /// `(target, actual)` in bytes.
    pub fn sizes(&self) -> (u64, u64) {
        (
            u64::from(self.0.target.load(Ordering::SeqCst)) * PAGE_SIZE,
            u64::from(self.0.actual.load(Ordering::SeqCst)) * PAGE_SIZE,
        )
    }
}

impl Shared {
    /// Mirrors the target and actual sizes into the counters.
    fn counters_sync(&self) {
        let target = self.target.load(Ordering::SeqCst);
        let actual = self.actual.load(Ordering::SeqCst);
        self.counters.set(TARGET, u64::from(target));
        self.counters.set(ACTUAL, u64::from(actual));
    }
}

/// The balloon device.
pub struct Balloon {
    config: BalloonConfig,
    shared: Arc<Shared>,
    queue_sizes: Vec<u16>,
    worker: Option<Worker>,
}

impl Balloon {
    /// A balloon offering what `config` says.
    pub fn new(config: BalloonConfig) -> std::io::Result<Balloon> {
        let counters = Arc::new(Counters::new(COUNTER_NAMES));
        let target = u32::try_from(config.size / PAGE_SIZE).unwrap_or(u32::MAX);
        let shared = Arc::new(Shared {
            target: AtomicU32::new(target),
            actual: AtomicU32::new(0),
            counters,
            interrupt: Mutex::new(None),
            stats_request: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
        });
        shared.counters_sync();
        let mut queue_sizes = vec![QUEUE_SIZE; 3];
        if config.free_page_reporting {
            queue_sizes.push(QUEUE_SIZE);
        }
        Ok(Balloon {
            config,
            shared,
            queue_sizes,
            worker: None,
        })
    }

    /// Its counters.
    pub fn counters(&self) -> Arc<Counters> {
        self.shared.counters.clone()
    }

    /// A handle for the control plane.
    pub fn handle(&self) -> BalloonHandle {
        BalloonHandle(self.shared.clone())
    }

    fn config_space(&self) -> [u8; 8] {
        let mut cs = [0u8; 8];
        cs[0..4].copy_from_slice(&self.shared.target.load(Ordering::SeqCst).to_le_bytes());
        cs[4..8].copy_from_slice(&self.shared.actual.load(Ordering::SeqCst).to_le_bytes());
        cs
    }
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        let mut f = VERSION_1 | feature::STATS_VQ;
        if self.config.deflate_on_oom {
            f |= feature::DEFLATE_ON_OOM;
        }
        if self.config.free_page_reporting {
            f |= feature::PAGE_REPORTING;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::device::read_config_bytes(&self.config_space(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` (offset 4, 4 bytes) is the driver's to write.
        if offset == 4 && data.len() == 4 {
            let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            self.shared.actual.store(v, Ordering::SeqCst);
            self.shared.counters_sync();
        }
    }

    fn activate(&mut self, set: QueueSet) -> Result<(), ActivateError> {
        let stats = set.acked_features & feature::STATS_VQ != 0;
        let reporting = set.acked_features & feature::PAGE_REPORTING != 0;
        // Queues are numbered compactly over the features the driver took.
        let mut roles = vec![Role::Inflate, Role::Deflate];
        if stats {
            roles.push(Role::Stats);
        }
        if reporting {
            roles.push(Role::Reporting);
        }
        *self
            .shared
            .interrupt
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(set.interrupt.clone());
        let mut queues = Vec::new();
        let mut events = Vec::new();
        for (index, queue, event) in set.queues {
            let Some(role) = roles.get(usize::from(index)).copied() else {
                continue;
            };
            queues.push(BalloonQueue {
                index,
                role,
                queue,
                held_stats: None,
                broken: false,
            });
            events.push(event);
        }
        // The last event: the host wants fresh statistics.
        events.push(self.shared.stats_request.try_clone()?);
        for needed in [0u16, 1] {
            if !queues.iter().any(|q| q.index == needed) {
                return Err(ActivateError::QueueNotReady(needed));
            }
        }
        let handler = Handler {
            mem: set.mem,
            queues,
            interrupt: set.interrupt,
            shared: self.shared.clone(),
        };
        self.worker = Some(Worker::spawn(
            "virtio-balloon".into(),
            sandbox::seccomp::ThreadKind::VirtioBalloon,
            events,
            handler,
        )?);
        Ok(())
    }

    fn reset(&mut self) {
        self.worker = None;
        *self
            .shared
            .interrupt
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        self.shared.actual.store(0, Ordering::SeqCst);
        self.shared.counters_sync();
    }

    fn pause(&mut self) -> bool {
        self.worker.as_ref().is_none_or(Worker::pause)
    }

    fn resume(&mut self) {
        if let Some(w) = &self.worker {
            w.resume();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Inflate,
    Deflate,
    Stats,
    Reporting,
}

struct BalloonQueue {
    index: u16,
    role: Role,
    queue: Queue,
    /// The stats buffer the device keeps until it wants fresh numbers.
    held_stats: Option<u16>,
    broken: bool,
}

struct Handler {
    mem: GuestMemory,
    queues: Vec<BalloonQueue>,
    interrupt: Arc<dyn Interrupt>,
    shared: Arc<Shared>,
}

/// The most PFNs one inflate/deflate buffer may carry (Linux sends 256).
const MAX_PFNS: usize = 4096;

impl Handler {
    /// Gives the host the guest range `[addr, addr + len)`, if it is RAM.
    fn discard(&self, addr: u64, len: u64) -> bool {
        let Some(region) = self.mem.find_region(GuestAddress(addr)) else {
            return false;
        };
        let offset = addr - region.start_addr().0;
        if offset.checked_add(len).is_none_or(|end| end > region.len()) {
            return false;
        }
        let Ok(host) = region.get_host_address(MemoryRegionAddress(offset)) else {
            return false;
        };
        let advice = if region.file_offset().is_some() {
            libc::MADV_REMOVE
        } else {
            libc::MADV_DONTNEED
        };
        // SAFETY: the range lies inside a guest RAM mapping this process
        // owns (checked above); discarding it only makes the guest read
        // zeros there, which is what it asked for.
        let r = unsafe { libc::madvise(host.cast(), len as usize, advice) };
        if r == 0 {
            self.shared.counters.add(DISCARDED, len);
        }
        r == 0
    }

    fn serve(&mut self, i: usize) -> Result<usize, virtio_queue::Error> {
        let mem = self.mem.clone();
        let mut done = 0;
        loop {
            let q = &mut self.queues[i];
            q.queue.disable_notification(&mem)?;
            let chains: Vec<_> = q.queue.iter(&mem)?.collect();
            let role = q.role;
            for chain in chains {
                let head = chain.head_index();
                match role {
                    Role::Inflate | Role::Deflate => {
                        let pfns = match chain.reader(&mem) {
                            Ok(mut r) => read_u32s(&mut r),
                            Err(_) => Vec::new(),
                        };
                        for pfn in &pfns {
                            let addr = u64::from(*pfn) * PAGE_SIZE;
                            if role == Role::Inflate {
                                if self.discard(addr, PAGE_SIZE) {
                                    self.shared.counters.add(INFLATED, 1);
                                } else {
                                    self.shared.counters.add(BAD, 1);
                                }
                            } else {
                                self.shared.counters.add(DEFLATED, 1);
                            }
                        }
                        self.queues[i].queue.add_used(&mem, head, 0)?;
                    }
                    Role::Stats => {
                        if let Ok(mut r) = chain.reader(&mem) {
                            self.record_stats(&mut r);
                        }
                        // Kept until the host wants fresh numbers.
                        let q = &mut self.queues[i];
                        if let Some(old) = q.held_stats.replace(head) {
                            q.queue.add_used(&mem, old, 0)?;
                        }
                    }
                    Role::Reporting => {
                        let ranges: Vec<(u64, u64)> = chain
                            .clone()
                            .map(|d| (d.addr().0, u64::from(d.len())))
                            .collect();
                        for (addr, len) in ranges {
                            if self.discard(addr, len) {
                                self.shared.counters.add(REPORTED, len);
                            } else {
                                self.shared.counters.add(BAD, 1);
                            }
                        }
                        self.queues[i].queue.add_used(&mem, head, 0)?;
                    }
                }
                done += 1;
            }
            if !self.queues[i].queue.enable_notification(&mem)? {
                return Ok(done);
            }
        }
    }

    /// Hands the held stats buffer back, so the guest refills it.
    fn release_stats(&mut self) {
        let mem = self.mem.clone();
        for q in self.queues.iter_mut().filter(|q| q.role == Role::Stats) {
            if let Some(head) = q.held_stats.take() {
                let result = q.queue.add_used(&mem, head, 0).map(|()| 1);
                crate::device::after_pass(
                    result,
                    &mut q.queue,
                    &mem,
                    self.interrupt.as_ref(),
                    q.index,
                    &mut q.broken,
                );
            }
        }
    }

    fn record_stats(&self, r: &mut impl Read) {
        // Each entry: u16 tag, u64 value, packed (10 bytes).
        let mut entry = [0u8; 10];
        for _ in 0..64 {
            if r.read_exact(&mut entry).is_err() {
                return;
            }
            let tag = u16::from_le_bytes([entry[0], entry[1]]);
            let value = u64::from_le_bytes(entry[2..10].try_into().unwrap_or([0; 8]));
            if usize::from(tag) < STAT_TAGS {
                self.shared
                    .counters
                    .set(FIRST_STAT + usize::from(tag), value);
            }
        }
    }
}

/// Reads little-endian u32s until the buffers end (at most [`MAX_PFNS`]).
fn read_u32s(r: &mut impl Read) -> Vec<u32> {
    let mut out = Vec::new();
    let mut word = [0u8; 4];
    while out.len() < MAX_PFNS && r.read_exact(&mut word).is_ok() {
        out.push(u32::from_le_bytes(word));
    }
    out
}

impl QueueHandler for Handler {
    fn process(&mut self, index: usize) {
        if index == self.queues.len() {
            self.release_stats();
            return;
        }
        if index > self.queues.len() || self.queues[index].broken {
            return;
        }
        let result = self.serve(index);
        let mem = self.mem.clone();
        let q = &mut self.queues[index];
        crate::device::after_pass(
            result,
            &mut q.queue,
            &mem,
            self.interrupt.as_ref(),
            q.index,
            &mut q.broken,
        );
    }

    fn quiesce(&mut self) {
        // Every request completes inside `process`; the held stats buffer
        // is the guest's to wait on, not work in flight.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{desc, memory, Counter, WRITE};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::Bytes;

    fn shared() -> Arc<Shared> {
        Arc::new(Shared {
            target: AtomicU32::new(0),
            actual: AtomicU32::new(0),
            counters: Arc::new(Counters::new(COUNTER_NAMES)),
            interrupt: Mutex::new(None),
            stats_request: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        })
    }

    fn counter(s: &Shared, name: &str) -> u64 {
        s.counters
            .snapshot()
            .into_iter()
            .find(|(n, _)| *n == name)
            .unwrap()
            .1
    }

    /// Serves `descs` on a queue in `role`; returns the shared state and used count.
    fn serve(
        mem: &GuestMemory,
        role: Role,
        descs: &[virtio_queue::desc::RawDescriptor],
    ) -> (Arc<Shared>, u16, Arc<Counter>) {
        let mock = MockSplitQueue::new(mem, 16);
        mock.add_desc_chains(descs, 0).unwrap();
        let irq = Arc::new(Counter::default());
        let s = shared();
        let mut h = Handler {
            mem: mem.clone(),
            queues: vec![BalloonQueue {
                index: 0,
                role,
                queue: mock.create_queue().unwrap(),
                held_stats: None,
                broken: false,
            }],
            interrupt: irq.clone(),
            shared: s.clone(),
        };
        h.process(0);
        let used = h.queues[0].queue.next_used();
        (s, used, irq)
    }

    #[test]
    fn inflated_pages_go_back_to_the_host_and_bad_pfns_are_counted() {
        let mem = memory();
        // A page the guest wrote, then gives to the balloon: it reads zero after.
        mem.write_obj(0xdead_beefu32, GuestAddress(0x40_0000))
            .unwrap();
        let pfns: Vec<u8> = [0x400u32, 0x401, 0xffff_ffff]
            .iter()
            .flat_map(|p| p.to_le_bytes())
            .collect();
        mem.write_slice(&pfns, GuestAddress(0x10_0000)).unwrap();
        let (s, used, _) = serve(&mem, Role::Inflate, &[desc(0x10_0000, 12, 0, 0)]);
        assert_eq!(used, 1);
        assert_eq!(counter(&s, "inflated_pages"), 2);
        assert_eq!(counter(&s, "bad_requests"), 1, "PFN outside RAM");
        assert_eq!(mem.read_obj::<u32>(GuestAddress(0x40_0000)).unwrap(), 0);
    }

    #[test]
    fn reported_free_ranges_are_discarded_within_ram_only() {
        let mem = memory();
        mem.write_obj(7u64, GuestAddress(0x80_0000)).unwrap();
        let (s, used, _) = serve(
            &mem,
            Role::Reporting,
            &[desc(0x80_0000, 0x20_0000, WRITE, 0)],
        );
        assert_eq!(used, 1);
        assert_eq!(counter(&s, "reported_bytes"), 0x20_0000);
        assert_eq!(mem.read_obj::<u64>(GuestAddress(0x80_0000)).unwrap(), 0);
        // A range running off the end of RAM is refused whole.
        let (s, _, _) = serve(&mem, Role::Reporting, &[desc(0xff_f000, 0x2000, WRITE, 0)]);
        assert_eq!(
            (counter(&s, "reported_bytes"), counter(&s, "bad_requests")),
            (0, 1)
        );
    }

    #[test]
    fn stats_are_recorded_and_the_buffer_is_held() {
        let mem = memory();
        let mut buf = Vec::new();
        for (tag, val) in [(4u16, 100u64 << 20), (5, 512 << 20), (99, 1)] {
            buf.extend(tag.to_le_bytes());
            buf.extend(val.to_le_bytes());
        }
        mem.write_slice(&buf, GuestAddress(0x10_0000)).unwrap();
        let (s, used, _) = serve(
            &mem,
            Role::Stats,
            &[desc(0x10_0000, buf.len() as u32, 0, 0)],
        );
        assert_eq!(used, 0, "held until the host wants fresh numbers");
        assert_eq!(counter(&s, "stat_free_memory"), 100 << 20);
        assert_eq!(counter(&s, "stat_total_memory"), 512 << 20);
    }

    #[test]
    fn a_write_only_or_empty_inflate_buffer_completes_without_effect() {
        let mem = memory();
        let (s, used, irq) = serve(&mem, Role::Inflate, &[desc(0x10_0000, 8, WRITE, 0)]);
        assert_eq!(used, 1);
        assert_eq!(counter(&s, "inflated_pages"), 0);
        assert_eq!(irq.reset.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[test]
    fn resize_sets_the_target_and_the_guest_writes_actual() {
        let mut b = Balloon::new(BalloonConfig {
            size: 64 << 20,
            deflate_on_oom: true,
            free_page_reporting: true,
        })
        .unwrap();
        assert_ne!(b.features() & feature::DEFLATE_ON_OOM, 0);
        assert_eq!(b.queue_max_sizes().len(), 4);
        let mut cs = [0u8; 8];
        b.read_config(0, &mut cs);
        assert_eq!(u32::from_le_bytes(cs[0..4].try_into().unwrap()), 16384);
        b.handle().resize(256 << 20).unwrap();
        b.write_config(4, &1000u32.to_le_bytes());
        b.write_config(0, &5u32.to_le_bytes()); // num_pages is the host's: ignored
        assert_eq!(b.handle().sizes(), (256 << 20, 1000 * 4096));
        assert!(b.handle().resize(u64::MAX).is_err());
        let snapshot: Vec<u64> = b.counters().snapshot().iter().map(|c| c.1).collect();
        assert_eq!(&snapshot[..2], &[65536, 1000]);
    }
}
