//! The hosted sparse extent header (`KDMV`, 512 bytes, little-endian), and
//! the streamOptimized footer that replaces it when the grain directory
//! lies at the end of the file.

use std::fs::File;
use std::io;

use crate::readonly::{invalid, read_exact_at};

/// The sparse extent magic, as the first four bytes of the file.
pub const MAGIC: &[u8; 4] = b"KDMV";
/// The legacy (VMDK3, ESX "COWD") sparse magic, which is not supported.
pub const COWD_MAGIC: &[u8; 4] = b"COWD";
/// One sector.
pub const SECTOR: u64 = 512;
/// The largest grain read (it sizes the buffers of compressed reads).
pub const MAX_GRAIN_BYTES: u64 = 16 << 20;
/// The most grain table entries per table (VMware and QEMU write 512).
pub const MAX_GTES_PER_GT: u32 = 512;
/// The most grain directory entries loaded (a 64 MiB directory).
pub const MAX_GD_ENTRIES: u64 = 1 << 24;
/// The gdOffset that says "read the footer at the end of the file".
pub const GD_AT_END: u64 = u64::MAX;

const FLAG_NEWLINE_TEST: u32 = 1 << 0;
const FLAG_ZERO_GRAIN: u32 = 1 << 2;
const FLAG_MARKERS: u32 = 1 << 17;
const COMPRESSION_NONE: u16 = 0;
const COMPRESSION_DEFLATE: u16 = 1;

/// Marker types of streamOptimized files.
const MARKER_END_OF_STREAM: u32 = 0;
const MARKER_FOOTER: u32 = 3;

/// A validated sparse extent header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseHeader {
    /// Header version (1, 2 or 3).
    pub version: u32,
    /// Virtual size in sectors.
    pub capacity: u64,
    /// Grain size in sectors.
    pub grain_sectors: u64,
    /// Embedded descriptor offset and size in sectors (0: none).
    pub descriptor_offset: u64,
    /// Embedded descriptor size in sectors.
    pub descriptor_sectors: u64,
    /// Grain table entries per grain table.
    pub gtes_per_gt: u32,
    /// Grain directory offset in sectors.
    pub gd_offset: u64,
    /// Grain table entry 1 means "zeroed grain".
    pub zero_grain: bool,
    /// Grains are deflate-compressed (streamOptimized).
    pub compressed: bool,
    /// Compressed grains start with a marker (lba, size).
    pub markers: bool,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}

impl SparseHeader {
    /// Parses and checks a header read from `where_` (named in errors).
    pub fn parse(b: &[u8; 512], where_: &str) -> io::Result<SparseHeader> {
        let bad = |why: String| invalid(format!("{where_}: {why}"));
        if &b[0..4] != MAGIC {
            return Err(bad("no KDMV magic".into()));
        }
        let version = u32_at(b, 4);
        if !(1..=3).contains(&version) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("{where_}: sparse header version {version} is not supported (1 to 3 are)"),
            ));
        }
        let flags = u32_at(b, 8);
        if flags & FLAG_NEWLINE_TEST != 0 && b[73..77] != *b"\n \r\n" {
            return Err(bad(
                "the newline check bytes are wrong (the file went through a text-mode transfer)"
                    .into(),
            ));
        }
        let capacity = u64_at(b, 12);
        let grain_sectors = u64_at(b, 20);
        if grain_sectors == 0 || grain_sectors > MAX_GRAIN_BYTES / SECTOR {
            return Err(bad(format!(
                "grain size of {grain_sectors} sectors (1 to {} allowed)",
                MAX_GRAIN_BYTES / SECTOR
            )));
        }
        let gtes_per_gt = u32_at(b, 44);
        if gtes_per_gt == 0 || gtes_per_gt > MAX_GTES_PER_GT {
            return Err(bad(format!(
                "{gtes_per_gt} grain table entries per table (1 to {MAX_GTES_PER_GT} allowed)"
            )));
        }
        if capacity > u64::MAX / SECTOR {
            return Err(bad(format!("capacity of {capacity} sectors overflows")));
        }
        let compressed = match u16_at(b, 77) {
            COMPRESSION_NONE => false,
            COMPRESSION_DEFLATE => true,
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("{where_}: compression algorithm {other} is not supported"),
                ))
            }
        };
        let header = SparseHeader {
            version,
            capacity,
            grain_sectors,
            descriptor_offset: u64_at(b, 28),
            descriptor_sectors: u64_at(b, 36),
            gtes_per_gt,
            gd_offset: u64_at(b, 56),
            zero_grain: flags & FLAG_ZERO_GRAIN != 0,
            compressed,
            markers: flags & FLAG_MARKERS != 0,
        };
        let entries = header.gd_entries();
        if entries > MAX_GD_ENTRIES {
            return Err(bad(format!(
                "a grain directory of {entries} entries (capacity {capacity} sectors) exceeds \
                 the limit of {MAX_GD_ENTRIES}"
            )));
        }
        Ok(header)
    }

    /// Grain size in bytes.
    pub fn grain_bytes(&self) -> u64 {
        self.grain_sectors * SECTOR
    }

    /// Sectors one grain table covers.
    pub fn gt_coverage(&self) -> u64 {
        self.grain_sectors * u64::from(self.gtes_per_gt)
    }

    /// Grain directory entries the capacity needs.
    pub fn gd_entries(&self) -> u64 {
        self.capacity.div_ceil(self.gt_coverage())
    }
}

/// Reads the header at the start of `file`; when it says GD_AT_END, reads
/// the footer copy (footer marker, header, end-of-stream marker in the last
/// three sectors) and returns that instead.
pub fn read(file: &File, file_len: u64, name: &str) -> io::Result<SparseHeader> {
    let mut first = [0u8; 512];
    read_exact_at(file, &mut first, 0, format!("vmdk {name}: sparse header"))?;
    let header = SparseHeader::parse(&first, &format!("vmdk {name}: sparse header at offset 0x0"))?;
    if header.gd_offset != GD_AT_END {
        return Ok(header);
    }
    let tail_at = file_len
        .checked_sub(3 * SECTOR)
        .ok_or_else(|| invalid(format!("vmdk {name}: the grain directory lies at the end, but the file is too short for a footer")))?;
    let mut tail = [0u8; 3 * SECTOR as usize];
    read_exact_at(file, &mut tail, tail_at, format!("vmdk {name}: footer"))?;
    let marker_ok = |at: usize, kind: u32, value: u64| {
        u64_at(&tail, at) == value && u32_at(&tail, at + 8) == 0 && u32_at(&tail, at + 12) == kind
    };
    if !marker_ok(0, MARKER_FOOTER, 1) || !marker_ok(1024, MARKER_END_OF_STREAM, 0) {
        return Err(invalid(format!(
            "vmdk {name}: footer at offset {tail_at:#x}: no footer and end-of-stream markers"
        )));
    }
    let mut footer = [0u8; 512];
    footer.copy_from_slice(&tail[512..1024]);
    let at = tail_at + SECTOR;
    let footer = SparseHeader::parse(&footer, &format!("vmdk {name}: footer at offset {at:#x}"))?;
    if footer.gd_offset == GD_AT_END {
        return Err(invalid(format!(
            "vmdk {name}: footer at offset {at:#x} does not say where the grain directory is"
        )));
    }
    Ok(footer)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid version-1 header: `capacity` sectors, 128-sector grains, 512
    /// entries per table, grain directory at sector `gd`.
    pub(crate) fn header_bytes(capacity: u64, gd: u64) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[0..4].copy_from_slice(MAGIC);
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        b[8..12].copy_from_slice(&(FLAG_NEWLINE_TEST | FLAG_ZERO_GRAIN).to_le_bytes());
        b[12..20].copy_from_slice(&capacity.to_le_bytes());
        b[20..28].copy_from_slice(&128u64.to_le_bytes());
        b[44..48].copy_from_slice(&512u32.to_le_bytes());
        b[56..64].copy_from_slice(&gd.to_le_bytes());
        b[73..77].copy_from_slice(b"\n \r\n");
        b
    }

    #[test]
    fn valid_header_parses() {
        let h = SparseHeader::parse(&header_bytes(100_000, 1), "t").unwrap();
        assert_eq!(h.capacity, 100_000);
        assert_eq!(h.grain_bytes(), 65536);
        assert_eq!(h.gd_entries(), 2);
        assert!(h.zero_grain && !h.compressed && !h.markers);
    }

    #[test]
    fn malformed_headers_are_refused() {
        let mut cases: Vec<(&str, [u8; 512])> = Vec::new();
        let mut b = header_bytes(8, 1);
        b[0] = b'X';
        cases.push(("magic", b));
        let mut b = header_bytes(8, 1);
        b[4..8].copy_from_slice(&4u32.to_le_bytes());
        cases.push(("version 4", b));
        let mut b = header_bytes(8, 1);
        b[75] = b'\n';
        cases.push(("newline", b));
        let mut b = header_bytes(8, 1);
        b[20..28].copy_from_slice(&0u64.to_le_bytes());
        cases.push(("grain size of 0", b));
        let mut b = header_bytes(8, 1);
        b[20..28].copy_from_slice(&(1u64 << 40).to_le_bytes());
        cases.push(("grain size of", b));
        let mut b = header_bytes(8, 1);
        b[44..48].copy_from_slice(&0u32.to_le_bytes());
        cases.push(("entries per table", b));
        let mut b = header_bytes(8, 1);
        b[44..48].copy_from_slice(&100_000u32.to_le_bytes());
        cases.push(("entries per table", b));
        cases.push(("overflows", header_bytes(u64::MAX, 1)));
        cases.push(("exceeds", header_bytes(1 << 50, 1)));
        let mut b = header_bytes(8, 1);
        b[77] = 9;
        cases.push(("compression algorithm 9", b));
        for (want, bytes) in cases {
            let e = SparseHeader::parse(&bytes, "hdr").unwrap_err();
            assert!(e.to_string().contains(want), "{want}: {e}");
            assert!(e.to_string().starts_with("hdr: "), "{e}");
        }
    }
}
