//! virtio-net on a TAP device: one worker per queue pair, each with a TAP
//! queue of its own, frames moved between guest memory and the TAP with
//! `readv`/`writev`, and a control queue for multiqueue and offloads.
//!
//! Frames, chains and headers are hostile input: anything malformed is
//! dropped and counted (`vm.counters`), never a panic or a stall.

mod counters;
mod ctrl;
mod device;
mod frames;
pub mod header;
mod pair;
mod rx;
pub mod tap;
#[cfg(test)]
mod tests;
mod tx;

pub use counters::{NetCounters, PAIR_COUNTERS};
pub use device::{feature, Net, NetConfig, NetError, DEVICE_TYPE, STATUS_LINK_UP};
pub use frames::{FrameIo, MemoryHost};
pub use tap::{TapError, TapQueue};

/// The most queue pairs a NIC may have.
pub const MAX_QUEUE_PAIRS: usize = 16;

/// Serves a queue pair once on the calling thread, as a worker would (for
/// fuzzing): sends every transmit chain to `host`, then delivers its
/// frames into the receive chains (MRG_RXBUF on, every offload
/// negotiated). Returns whether the guest broke a ring (NEEDS_RESET).
pub fn serve_pair_once(
    mem: &crate::GuestMemory,
    rx: virtio_queue::Queue,
    tx: virtio_queue::Queue,
    host: &mut MemoryHost,
) -> bool {
    use crate::worker::QueueHandler;
    struct NoInterrupt;
    impl crate::Interrupt for NoInterrupt {
        fn notify_queue(&self, _: u16) {}
        fn notify_config(&self) {}
        fn needs_reset(&self) {}
    }
    let all = header::TxOffloads {
        csum: true,
        tso4: true,
        tso6: true,
        ecn: true,
        ufo: true,
    };
    let need = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(
        header::HEADER_LEN + header::MAX_FRAME,
    ));
    let mut pair = pair::QueuePair {
        mem: mem.clone(),
        rx: rx::RxQueue::new(rx, true, need, 0),
        tx: tx::TxQueue::new(tx, all, 0),
        host: std::mem::take(host),
        interrupt: std::sync::Arc::new(NoInterrupt),
        counters: NetCounters::new(1),
        rx_index: 0,
        broken: false,
    };
    pair.process(pair::TX_KICK);
    pair.process(pair::HOST_READY);
    *host = pair.host;
    pair.broken
}

/// A stable, locally administered unicast MAC for NIC `nic` of a VM named
/// by `seed` (FNV-1a over both, the first octet's multicast bit cleared and
/// local bit set).
pub fn derive_mac(seed: &str, nic: &str) -> [u8; 6] {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.bytes().chain([0]).chain(nic.bytes()) {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let b = hash.to_le_bytes();
    [(b[0] & 0xfe) | 0x02, b[1], b[2], b[3], b[4], b[5]]
}
