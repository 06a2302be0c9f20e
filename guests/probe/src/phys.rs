//! Bounds-checked reads from identity-mapped physical memory (firmware and
//! loader tables).

use crate::bail;
use crate::exit::Reason;
use core::mem::size_of;

/// Everything below 4 GiB is identity mapped by the entry code.
pub const MAPPED_LIMIT: u64 = 1 << 32;

/// A range of physical memory that may be read with [`PhysRange::read`].
#[derive(Clone, Copy)]
pub struct PhysRange {
    addr: u64,
    len: u64,
}

impl PhysRange {
    /// Checks that `addr..addr+len` is non-null and identity mapped; `what`
    /// names the range in the failure reason.
    ///
    /// # Safety
    /// The range must not overlap memory that Rust code mutates while the
    /// returned value is in use.
    pub unsafe fn new(what: &str, addr: u64, len: u64) -> Result<Self, Reason> {
        match addr.checked_add(len) {
            Some(end) if addr != 0 && end <= MAPPED_LIMIT => Ok(Self { addr, len }),
            _ => bail!(
                "{} at {:#x} (+{:#x}) is outside the first 4 GiB",
                what,
                addr,
                len
            ),
        }
    }

    /// Physical address of the first byte.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Reads a `T` (little endian, unaligned) at `offset`, or `None` if it
    /// would cross the end of the range.
    pub fn read<T: Copy>(&self, offset: u64) -> Option<T> {
        let end = offset.checked_add(size_of::<T>() as u64)?;
        if end > self.len {
            return None;
        }
        // SAFETY: the bytes lie inside a range that `new` checked to be
        // identity mapped and that its caller promised is not being mutated.
        Some(unsafe { ((self.addr + offset) as *const T).read_unaligned() })
    }

    /// Reads a byte at `offset`, or 0 past the end.
    pub fn byte(&self, offset: u64) -> u8 {
        self.read(offset).unwrap_or(0)
    }

    /// Whether all bytes of the range add up to 0 (mod 256).
    pub fn checksum_ok(&self) -> bool {
        (0..self.len).fold(0u8, |sum, i| sum.wrapping_add(self.byte(i))) == 0
    }
}
