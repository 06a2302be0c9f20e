//! A little-endian byte builder for the fixed-layout tables firmware and
//! boot protocols define (MP table, PVH start info, multiboot info).

/// Appends little-endian fields to a growing byte vector.
#[derive(Default, Debug, Clone)]
pub struct LeWriter {
    buf: Vec<u8>,
}

impl LeWriter {
    /// An empty writer.
    pub fn new() -> LeWriter {
        LeWriter::default()
    }

    /// Appends one byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    /// Appends a 16-bit value.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends a 32-bit value.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends a 64-bit value.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends raw bytes.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }

    /// Current length in bytes.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True when nothing was written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Overwrites a 16-bit value at `offset` (which must already be written).
    pub fn patch_u16(&mut self, offset: usize, v: u16) {
        self.buf[offset..offset + 2].copy_from_slice(&v.to_le_bytes());
    }

    /// Overwrites one byte at `offset` (which must already be written).
    pub fn patch_u8(&mut self, offset: usize, v: u8) {
        self.buf[offset] = v;
    }

    /// The bytes written so far.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf
    }

    /// Consumes the writer.
    pub fn into_vec(self) -> Vec<u8> {
        self.buf
    }
}

/// The byte that makes `bytes` sum to zero modulo 256.
pub fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Reads a little-endian u16 at `off`, if in bounds.
pub fn le16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(off..off.checked_add(2)?)?.try_into().ok()?,
    ))
}

/// Reads a little-endian u32 at `off`, if in bounds.
pub fn le32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// Reads a little-endian u64 at `off`, if in bounds.
pub fn le64(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(off..off.checked_add(8)?)?.try_into().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_makes_sum_zero() {
        let mut v = vec![1u8, 2, 250, 77];
        v.push(checksum(&v));
        assert_eq!(v.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
    }

    #[test]
    fn readers_refuse_out_of_bounds() {
        let b = [1u8, 0, 0, 0];
        assert_eq!(le32(&b, 0), Some(1));
        assert_eq!(le32(&b, 1), None);
        assert_eq!(le64(&b, 0), None);
        assert_eq!(le16(&b, usize::MAX), None);
    }
}
