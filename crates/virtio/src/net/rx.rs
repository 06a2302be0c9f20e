//! The receive queue: frames read from the host straight into the guest's
//! buffers with one `readv` each. With MRG_RXBUF a frame may fill several
//! chains (`num_buffers` in its header says how many); chains that were
//! gathered but not needed are held for the next frame.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};

use super::counters::{NetCounters, RX_BYTES, RX_DROPS, RX_MALFORMED, RX_PACKETS};
use super::frames::{collect, push_iovecs, write_at, Buffers, FrameIo};
use super::header::{HEADER_LEN, NUM_BUFFERS_OFFSET};
use crate::GuestMemory;

/// How a receive pass ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RxStop {
    /// The host has no frame waiting.
    HostEmpty,
    /// The guest has too few buffers posted for a frame.
    NoBuffers,
}

/// One receive queue.
pub(crate) struct RxQueue {
    pub queue: Queue,
    /// Chains may be merged (MRG_RXBUF).
    pub mergeable: bool,
    /// Buffer bytes a frame may need (header included): a full GSO frame
    /// when the guest takes receive offloads, else an MTU-sized one.
    pub need: Arc<AtomicUsize>,
    pub pair: usize,
    /// Chains popped from the ring and not yet filled, oldest first. Keeping
    /// them (instead of rewinding the ring) keeps `avail_event` at the
    /// guest's avail index, so its next refill notifies.
    held: VecDeque<Gathered>,
}

/// One chain gathered for a frame.
struct Gathered {
    head: u16,
    buffers: Buffers,
}

impl RxQueue {
    /// A receive queue over `queue`.
    pub fn new(queue: Queue, mergeable: bool, need: Arc<AtomicUsize>, pair: usize) -> RxQueue {
        RxQueue {
            queue,
            mergeable,
            need,
            pair,
            held: VecDeque::new(),
        }
    }

    /// Moves frames from `host` to the guest until one side runs out;
    /// returns how many frames were delivered and why it stopped.
    pub fn fill(
        &mut self,
        mem: &GuestMemory,
        host: &mut dyn FrameIo,
        counters: &NetCounters,
    ) -> Result<(usize, RxStop), virtio_queue::Error> {
        let mut delivered = 0;
        let mut iovecs: Vec<libc::iovec> = Vec::new();
        loop {
            let need = self.need.load(Ordering::Relaxed).max(HEADER_LEN + 1);
            let total = self.gather(mem, need, counters)?;
            if self.held.is_empty() || (self.mergeable && total < need) {
                return Ok((delivered, RxStop::NoBuffers));
            }
            let chains = if self.mergeable { self.held.len() } else { 1 };
            iovecs.clear();
            for c in self.held.iter().take(chains) {
                push_iovecs(mem, &c.buffers.segments, &mut iovecs);
            }
            let capacity: usize = self.held.iter().take(chains).map(|c| c.buffers.len).sum();
            let n = match host.read_frame(&iovecs) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok((delivered, RxStop::HostEmpty));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!("virtio-net: reading the TAP failed: {e}");
                    return Ok((delivered, RxStop::HostEmpty));
                }
            };
            if n > capacity || n < HEADER_LEN {
                // Truncated (the buffers were too small) or not a frame:
                // the frame is gone; the buffers stay for the next one.
                counters.pair_add(self.pair, RX_DROPS, 1);
                continue;
            }
            self.complete(mem, n)?;
            counters.pair_add(self.pair, RX_PACKETS, 1);
            counters.pair_add(self.pair, RX_BYTES, (n - HEADER_LEN) as u64);
            delivered += 1;
        }
    }

    /// Pops chains until the held ones hold `need` bytes (one chain without
    /// MRG_RXBUF); returns the bytes held. A malformed chain is completed
    /// empty and counted.
    fn gather(
        &mut self,
        mem: &GuestMemory,
        need: usize,
        counters: &NetCounters,
    ) -> Result<usize, virtio_queue::Error> {
        let mut total: usize = self.held.iter().map(|c| c.buffers.len).sum();
        let enough = |held: &VecDeque<Gathered>, total: usize| {
            total >= need || (!self.mergeable && !held.is_empty())
        };
        while !enough(&self.held, total) {
            let Some(chain) = self.queue.iter(mem)?.next() else {
                break;
            };
            let head = chain.head_index();
            match collect(mem, chain, true) {
                Ok(buffers) if buffers.len >= HEADER_LEN => {
                    total += buffers.len;
                    self.held.push_back(Gathered { head, buffers });
                }
                _ => {
                    counters.pair_add(self.pair, RX_MALFORMED, 1);
                    self.queue.add_used(mem, head, 0)?;
                }
            }
        }
        Ok(total)
    }

    /// Completes the held chains a frame of `n` bytes filled and writes
    /// their count into `num_buffers`.
    fn complete(&mut self, mem: &GuestMemory, n: usize) -> Result<(), virtio_queue::Error> {
        let mut left = n;
        let mut used = 0usize;
        for c in &self.held {
            if left == 0 {
                break;
            }
            used += 1;
            left -= left.min(c.buffers.len);
        }
        let count = (used as u16).to_le_bytes();
        if let Some(first) = self.held.front() {
            write_at(mem, &first.buffers.segments, NUM_BUFFERS_OFFSET, &count);
        }
        let mut left = n;
        for c in self.held.drain(..used) {
            let len = left.min(c.buffers.len);
            left -= len;
            self.queue.add_used(mem, c.head, len as u32)?;
        }
        Ok(())
    }
}
