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
pub use frames::FrameIo;
pub use tap::{TapError, TapQueue};

/// The most queue pairs a NIC may have.
pub const MAX_QUEUE_PAIRS: usize = 16;

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
