//! virtio-rng: fills the buffers the guest offers with bytes from the host's
//! getrandom(2).

use std::io::Write;
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};

use crate::device::{ActivateError, Interrupt, QueueSet, VirtioDevice};
use crate::features::{RING_EVENT_IDX, RING_INDIRECT_DESC, VERSION_1};
use crate::worker::{QueueHandler, Worker};
use crate::GuestMemory;
use vm_device::Counters;

/// virtio device ID of the entropy source.
pub const DEVICE_TYPE: u16 = 4;
const QUEUE_SIZES: [u16; 1] = [256];
/// The most bytes one request is given (a larger buffer gets a partial fill, as allowed).
const MAX_REQUEST: usize = 64 << 10;

/// The entropy device.
pub struct Rng {
    worker: Option<Worker>,
    counters: Arc<Counters>,
}

/// The counters of the entropy device (`vm.counters`).
pub const COUNTER_NAMES: &[&str] = &["requests", "bytes"];

impl Default for Rng {
    fn default() -> Rng {
        Rng {
            worker: None,
            counters: Arc::new(Counters::new(COUNTER_NAMES)),
        }
    }
}

impl Rng {
    /// A new, inactive entropy device.
    pub fn new() -> Rng {
        Rng::default()
    }

    /// Its counters, shared with its worker.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VERSION_1 | RING_INDIRECT_DESC | RING_EVENT_IDX
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, set: QueueSet) -> Result<(), ActivateError> {
        let mut queues = set.queues.into_iter();
        let Some((0, queue, event)) = queues.next() else {
            return Err(ActivateError::QueueNotReady(0));
        };
        let handler = RequestQueue {
            mem: set.mem,
            queue,
            interrupt: set.interrupt,
            broken: false,
            counters: self.counters.clone(),
        };
        self.worker = Some(Worker::spawn(
            "virtio-rng".into(),
            sandbox::seccomp::ThreadKind::VirtioRng,
            vec![event],
            handler,
        )?);
        Ok(())
    }

    fn reset(&mut self) {
        self.worker = None;
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

/// The request queue and what serving it needs.
struct RequestQueue {
    mem: GuestMemory,
    queue: Queue,
    interrupt: Arc<dyn Interrupt>,
    broken: bool,
    counters: Arc<Counters>,
}

impl RequestQueue {
    /// Serves every available request; returns how many were completed.
    /// An avail index the queue cannot hold is an error (never a spin).
    fn serve(&mut self) -> Result<usize, virtio_queue::Error> {
        let mut done = 0;
        loop {
            self.queue.disable_notification(&self.mem)?;
            let chains: Vec<_> = self.queue.iter(&self.mem)?.collect();
            for chain in chains {
                let head = chain.head_index();
                let written = match chain.writer(&self.mem) {
                    Ok(mut writer) => fill_random(&mut writer),
                    // A chain with device-readable-only or out-of-memory buffers
                    // completes with nothing written.
                    Err(_) => 0,
                };
                self.counters.add(0, 1);
                self.counters.add(1, written as u64);
                self.queue.add_used(&self.mem, head, written as u32)?;
                done += 1;
            }
            if !self.queue.enable_notification(&self.mem)? {
                return Ok(done);
            }
        }
    }
}

impl QueueHandler for RequestQueue {
    fn process(&mut self, _index: usize) {
        if self.broken {
            return;
        }
        let result = self.serve();
        crate::device::after_pass(
            result,
            &mut self.queue,
            &self.mem,
            self.interrupt.as_ref(),
            0,
            &mut self.broken,
        );
    }

    fn quiesce(&mut self) {
        // Requests complete within `process`: nothing is ever in flight.
    }
}

/// Writes up to [`MAX_REQUEST`] random bytes into `writer`; returns how many.
fn fill_random(writer: &mut impl WriterLike) -> usize {
    let want = writer.available().min(MAX_REQUEST);
    let mut buf = [0u8; 4096];
    let mut written = 0;
    while written < want {
        let n = (want - written).min(buf.len());
        if getrandom(&mut buf[..n]).is_err() {
            break;
        }
        match writer.write_all(&buf[..n]) {
            Ok(()) => written += n,
            Err(_) => break,
        }
    }
    written
}

/// The part of virtio-queue's `Writer` the fill loop uses.
trait WriterLike: Write {
    fn available(&self) -> usize;
}

impl<B: vm_memory::bitmap::BitmapSlice> WriterLike for virtio_queue::Writer<'_, B> {
    fn available(&self) -> usize {
        self.available_bytes()
    }
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let r =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += r as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{desc, memory, Counter, NEXT, WRITE};
    use std::sync::atomic::Ordering;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};

    fn serve<'a>(
        mem: &'a GuestMemory,
        descs: &[RawDescriptor],
    ) -> (Arc<Counter>, MockSplitQueue<'a, GuestMemory>, usize) {
        let mock = MockSplitQueue::new(mem, 16);
        mock.add_desc_chains(descs, 0).unwrap();
        let counter = Arc::new(Counter::default());
        let mut rq = RequestQueue {
            mem: mem.clone(),
            queue: mock.create_queue().unwrap(),
            interrupt: counter.clone(),
            broken: false,
            counters: Arc::new(Counters::new(COUNTER_NAMES)),
        };
        rq.process(0);
        let used = rq.queue.next_used() as usize;
        (counter, mock, used)
    }

    #[test]
    fn fills_writable_buffers() {
        let mem = memory();
        let (counter, mock, used) = serve(&mem, &[desc(0x10_0000, 4096, WRITE, 0)]);
        assert_eq!(used, 1);
        assert_eq!(counter.queue.load(Ordering::SeqCst), 1);
        let len: u32 = mem.read_obj(mock.used_addr().unchecked_add(8)).unwrap();
        assert_eq!(len, 4096);
        let mut data = vec![0u8; 4096];
        mem.read_slice(&mut data, GuestAddress(0x10_0000)).unwrap();
        let distinct: std::collections::HashSet<u8> = data.iter().copied().collect();
        assert!(distinct.len() > 200, "looks random");
    }

    #[test]
    fn malformed_chains_complete_empty() {
        let mem = memory();
        // A read-only buffer, and a buffer outside guest memory: both complete with 0 bytes.
        for d in [desc(0x10_0000, 64, 0, 0), desc(0x2000_0000, 64, WRITE, 0)] {
            let (_, mock, used) = serve(&mem, &[d]);
            assert_eq!(used, 1);
            let len: u32 = mem.read_obj(mock.used_addr().unchecked_add(8)).unwrap();
            assert_eq!(len, 0);
        }
    }

    #[test]
    fn huge_and_looping_chains_are_bounded() {
        let mem = memory();
        // Two chained buffers of 4 GiB - 1 each (far beyond RAM): bounded, no panic.
        let (_, _, used) = serve(
            &mem,
            &[
                desc(0x10_0000, u32::MAX, WRITE | NEXT, 1),
                desc(0x10_0000, u32::MAX, WRITE, 0),
            ],
        );
        assert_eq!(used, 1);
        let (_, _, used) = serve(&mem, &[desc(0x10_0000, 0, WRITE, 0)]);
        assert_eq!(used, 1, "zero-length buffer");
    }

    #[test]
    fn broken_avail_index_needs_reset() {
        let mem = memory();
        let mock = MockSplitQueue::new(&mem, 16);
        // avail.idx far ahead of what the queue can hold.
        mem.write_obj(1000u16, mock.avail_addr().unchecked_add(2))
            .unwrap();
        let counter = Arc::new(Counter::default());
        let mut rq = RequestQueue {
            mem: mem.clone(),
            queue: mock.create_queue().unwrap(),
            interrupt: counter.clone(),
            broken: false,
            counters: Arc::new(Counters::new(COUNTER_NAMES)),
        };
        rq.process(0);
        rq.process(0);
        assert_eq!(counter.reset.load(Ordering::SeqCst), 1);
    }
}
