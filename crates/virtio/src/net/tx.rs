//! The transmit queue: each chain's header is checked, then the frame goes
//! to the host with one `writev` straight from guest memory. A full host
//! keeps the chain (never dropped, never completed twice) until it drains.

use std::io;

use virtio_queue::{Queue, QueueOwnedT, QueueT};

use super::counters::{NetCounters, TX_BYTES, TX_DROPS, TX_MALFORMED, TX_PACKETS, TX_RETRIES};
use super::frames::{collect, push_iovecs, read_front, Buffers, FrameIo};
use super::header::{check_tx, HeaderError, NetHeader, TxOffloads, HEADER_LEN};
use crate::GuestMemory;

/// How a transmit pass ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxStop {
    /// Every available chain was sent (or dropped).
    Drained,
    /// The host is full; a chain waits for it to drain.
    HostFull,
}

/// A chain popped from the ring and not yet sent.
struct Pending {
    head: u16,
    buffers: Buffers,
}

/// One transmit queue.
pub(crate) struct TxQueue {
    pub queue: Queue,
    /// Offloads the driver negotiated for transmit.
    pub offloads: TxOffloads,
    pub pair: usize,
    pending: Option<Pending>,
}

impl TxQueue {
    /// A transmit queue over `queue`.
    pub fn new(queue: Queue, offloads: TxOffloads, pair: usize) -> TxQueue {
        TxQueue {
            queue,
            offloads,
            pair,
            pending: None,
        }
    }

    /// Whether a chain waits for the host to drain.
    pub fn blocked(&self) -> bool {
        self.pending.is_some()
    }

    /// Sends every available chain; returns how many chains were completed.
    pub fn send(
        &mut self,
        mem: &GuestMemory,
        host: &mut dyn FrameIo,
        counters: &NetCounters,
    ) -> Result<(usize, TxStop), virtio_queue::Error> {
        let mut completed = 0;
        let mut iovecs: Vec<libc::iovec> = Vec::new();
        loop {
            let next = match self.pending.take() {
                Some(p) => p,
                None => {
                    let Some(chain) = self.queue.iter(mem)?.next() else {
                        return Ok((completed, TxStop::Drained));
                    };
                    let head = chain.head_index();
                    match self.check(mem, chain) {
                        Ok(buffers) => Pending { head, buffers },
                        Err(e) => {
                            tracing::trace!("virtio-net: dropping a transmitted frame: {e}");
                            counters.pair_add(self.pair, TX_MALFORMED, 1);
                            self.queue.add_used(mem, head, 0)?;
                            completed += 1;
                            continue;
                        }
                    }
                }
            };
            iovecs.clear();
            push_iovecs(mem, &next.buffers.segments, &mut iovecs);
            match host.write_frame(&iovecs) {
                Ok(_) => {
                    counters.pair_add(self.pair, TX_PACKETS, 1);
                    let frame = next.buffers.len - HEADER_LEN;
                    counters.pair_add(self.pair, TX_BYTES, frame as u64);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    counters.pair_add(self.pair, TX_RETRIES, 1);
                    self.pending = Some(next);
                    return Ok((completed, TxStop::HostFull));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    self.pending = Some(next);
                    continue;
                }
                Err(e) => {
                    // EINVAL: the kernel's own header checks; EIO: the
                    // interface is down. Either way the frame is dropped.
                    tracing::trace!("virtio-net: the TAP refused a frame: {e}");
                    counters.pair_add(self.pair, TX_DROPS, 1);
                }
            }
            self.queue.add_used(mem, next.head, 0)?;
            completed += 1;
        }
    }

    /// The buffers of a transmit chain whose header and length pass.
    fn check(
        &self,
        mem: &GuestMemory,
        chain: virtio_queue::DescriptorChain<&GuestMemory>,
    ) -> Result<Buffers, TxRefusal> {
        let buffers = collect(mem, chain, false).map_err(TxRefusal::Chain)?;
        if buffers.len < HEADER_LEN {
            return Err(TxRefusal::Header(HeaderError::ShortChain(buffers.len)));
        }
        let mut raw = [0u8; HEADER_LEN];
        if !read_front(mem, &buffers.segments, &mut raw) {
            return Err(TxRefusal::Chain(super::frames::ChainError::Address));
        }
        let header = NetHeader::parse(&raw);
        check_tx(&header, buffers.len - HEADER_LEN, self.offloads).map_err(TxRefusal::Header)?;
        Ok(buffers)
    }
}

/// Why a transmit chain was dropped.
#[derive(Debug, thiserror::Error)]
enum TxRefusal {
    #[error("bad chain: {0:?}")]
    Chain(super::frames::ChainError),
    #[error("bad header: {0}")]
    Header(HeaderError),
}
