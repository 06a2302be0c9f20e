//! Per-queue-pair counters of a NIC (`vm.counters`): `qN.rx_packets`, ...
//! and the control queue's, in one [`Counters`] per device.

use std::sync::{Arc, OnceLock};

use vm_device::Counters;

use super::MAX_QUEUE_PAIRS;

/// What each queue pair counts, in index order within the pair.
pub const PAIR_COUNTERS: &[&str] = &[
    "rx_packets",
    "rx_bytes",
    "rx_drops",
    "rx_malformed",
    "tx_packets",
    "tx_bytes",
    "tx_drops",
    "tx_malformed",
    "tx_retries",
];
/// Frames delivered to the guest.
pub const RX_PACKETS: usize = 0;
/// Their bytes (without the header).
pub const RX_BYTES: usize = 1;
/// Frames from the host that no guest buffer could hold (truncated).
pub const RX_DROPS: usize = 2;
/// Receive chains the guest got wrong (completed empty).
pub const RX_MALFORMED: usize = 3;
/// Frames sent to the host.
pub const TX_PACKETS: usize = 4;
/// Their bytes (without the header).
pub const TX_BYTES: usize = 5;
/// Frames the host refused (interface down, kernel checks).
pub const TX_DROPS: usize = 6;
/// Transmit chains or headers the guest got wrong (dropped).
pub const TX_MALFORMED: usize = 7;
/// Writes that found the TAP full and were kept to retry.
pub const TX_RETRIES: usize = 8;

/// Device-wide counters after the pairs'.
const DEVICE_COUNTERS: &[&str] = &["ctrl_commands", "ctrl_errors"];
/// Control commands served.
pub const CTRL_COMMANDS: usize = 0;
/// Control commands refused (unknown, malformed or out of range).
pub const CTRL_ERRORS: usize = 1;

/// The names of every counter for [`MAX_QUEUE_PAIRS`] pairs, made once.
fn all_names() -> &'static [&'static str] {
    static NAMES: OnceLock<Vec<&'static str>> = OnceLock::new();
    NAMES.get_or_init(|| {
        let mut names: Vec<&'static str> = DEVICE_COUNTERS.to_vec();
        for pair in 0..MAX_QUEUE_PAIRS {
            for name in PAIR_COUNTERS {
                names.push(Box::leak(format!("q{pair}.{name}").into_boxed_str()));
            }
        }
        names
    })
}

/// The counters of one NIC with `pairs` queue pairs.
#[derive(Clone)]
pub struct NetCounters {
    inner: Arc<Counters>,
}

impl NetCounters {
    /// Zeroed counters for `pairs` pairs (at most [`MAX_QUEUE_PAIRS`]).
    pub fn new(pairs: usize) -> NetCounters {
        let names = all_names();
        let len = DEVICE_COUNTERS.len() + pairs.min(MAX_QUEUE_PAIRS) * PAIR_COUNTERS.len();
        NetCounters {
            inner: Arc::new(Counters::new(&names[..len])),
        }
    }

    /// The shared counters (`vm.counters`).
    pub fn shared(&self) -> Arc<Counters> {
        self.inner.clone()
    }

    /// Adds `n` to counter `which` (`RX_PACKETS`, ...) of pair `pair`.
    pub fn pair_add(&self, pair: usize, which: usize, n: u64) {
        let index = DEVICE_COUNTERS.len() + pair * PAIR_COUNTERS.len() + which;
        self.inner.add(index, n);
    }

    /// Adds `n` to device counter `which` (`CTRL_COMMANDS`, `CTRL_ERRORS`).
    pub fn device_add(&self, which: usize, n: u64) {
        self.inner.add(which, n);
    }

    /// The value of counter `which` of pair `pair` (for tests).
    pub fn pair_get(&self, pair: usize, which: usize) -> u64 {
        let index = DEVICE_COUNTERS.len() + pair * PAIR_COUNTERS.len() + which;
        self.inner.snapshot().get(index).map_or(0, |(_, v)| *v)
    }

    /// The value of device counter `which` (for tests).
    pub fn device_get(&self, which: usize) -> u64 {
        self.inner.snapshot().get(which).map_or(0, |(_, v)| *v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_pairs() {
        let c = NetCounters::new(2);
        c.pair_add(1, TX_BYTES, 7);
        c.device_add(CTRL_ERRORS, 1);
        let snap = c.shared().snapshot();
        assert_eq!(snap.len(), 2 + 2 * PAIR_COUNTERS.len());
        assert!(snap.contains(&("q1.tx_bytes", 7)));
        assert!(snap.contains(&("ctrl_errors", 1)));
        assert_eq!(c.pair_get(1, TX_BYTES), 7);
    }
}
