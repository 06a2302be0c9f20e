//! Named counters (and gauges) a device updates from any thread and the
//! control plane reads (`vm.counters`): relaxed atomics, no locks on the
//! I/O path.

use std::sync::atomic::{AtomicU64, Ordering};

/// A fixed set of named counters.
#[derive(Debug)]
pub struct Counters {
    names: &'static [&'static str],
    values: Box<[AtomicU64]>,
}

impl Counters {
    /// Counters called `names`, all zero.
    pub fn new(names: &'static [&'static str]) -> Counters {
        Counters {
            names,
            values: names.iter().map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Adds `n` to counter `index` (an index into the names; others are ignored).
    pub fn add(&self, index: usize, n: u64) {
        if let Some(v) = self.values.get(index) {
            v.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Sets counter `index` to `value` (for gauges: a size, the latest
    /// statistic a guest reported).
    pub fn set(&self, index: usize, value: u64) {
        if let Some(v) = self.values.get(index) {
            v.store(value, Ordering::Relaxed);
        }
    }

    /// Every counter with its name, in the order of the names.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        self.names
            .iter()
            .zip(self.values.iter())
            .map(|(n, v)| (*n, v.load(Ordering::Relaxed)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_index_and_ignores_unknown_indices() {
        let c = Counters::new(&["a", "b"]);
        c.add(1, 5);
        c.add(1, 2);
        c.add(7, 1);
        assert_eq!(c.snapshot(), vec![("a", 0), ("b", 7)]);
        c.set(0, 42);
        c.set(9, 1);
        assert_eq!(c.snapshot(), vec![("a", 42), ("b", 7)]);
    }
}
