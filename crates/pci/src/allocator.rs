//! A bump allocator of naturally aligned address ranges (BARs).

/// Hands out aligned ranges from a window, in order.
#[derive(Debug, Clone)]
pub struct AddressAllocator {
    next: u64,
    end: u64,
}

impl AddressAllocator {
    /// An allocator over `[start, start + size)`.
    pub fn new(start: u64, size: u64) -> AddressAllocator {
        AddressAllocator {
            next: start,
            end: start.saturating_add(size),
        }
    }

    /// Allocates `size` bytes aligned to `size` (a power of two), or `None` when full.
    pub fn allocate(&mut self, size: u64) -> Option<u64> {
        if size == 0 || !size.is_power_of_two() {
            return None;
        }
        let base = self.next.checked_add(size - 1)? & !(size - 1);
        let end = base.checked_add(size)?;
        if end > self.end {
            return None;
        }
        self.next = end;
        Some(base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_and_fills() {
        let mut a = AddressAllocator::new(0x1000, 0x10000);
        assert_eq!(a.allocate(0x100), Some(0x1000));
        assert_eq!(a.allocate(0x4000), Some(0x4000));
        assert_eq!(a.allocate(0x8000), Some(0x8000));
        assert_eq!(a.allocate(0x4000), None);
        assert_eq!(a.allocate(3), None);
        assert_eq!(a.allocate(0), None);
        let mut b = AddressAllocator::new(u64::MAX - 0x10, 0x100);
        assert_eq!(b.allocate(0x100), None);
    }
}
