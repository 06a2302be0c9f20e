//! The VHD footer (512 bytes, big-endian, at the end of every VHD and
//! copied at the start of dynamic ones) and QEMU's rule for the disk size
//! (CHS geometry or current size, depending on the creator).

use std::io;

use crate::readonly::invalid;

/// The footer cookie.
pub const COOKIE: &[u8; 8] = b"conectix";
/// Footer length.
pub const FOOTER_BYTES: u64 = 512;
/// The largest disk VHD describes (2040 GiB, as QEMU allows).
pub const MAX_SECTORS: u64 = 0xff00_0000;
/// The largest CHS geometry, which says "use the current size".
const MAX_GEOMETRY_SECTORS: u64 = 65535 * 16 * 255;

/// The kind of disk a footer describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskType {
    /// The data lies before the footer, sector for sector.
    Fixed,
    /// A dynamic header, a block allocation table and blocks.
    Dynamic,
}

/// A validated footer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    /// Where the dynamic header lies (dynamic disks).
    pub data_offset: u64,
    /// The disk size in bytes, by QEMU's rule.
    pub size: u64,
    /// Fixed or dynamic.
    pub disk_type: DiskType,
}

/// The big-endian u32 at `at` of `b` (which the caller sized).
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The big-endian u64 at `at` of `b` (which the caller sized).
pub(crate) fn be64(b: &[u8], at: usize) -> u64 {
    (u64::from(be32(b, at)) << 32) | u64::from(be32(b, at + 4))
}

/// The VHD checksum: the one's complement of the byte sum of `b`, with the
/// four checksum bytes at `field` counted as zero.
pub fn checksum(b: &[u8], field: usize) -> u32 {
    let sum = b
        .iter()
        .enumerate()
        .filter(|(i, _)| !(field..field + 4).contains(i))
        .fold(0u32, |s, (_, v)| s.wrapping_add(u32::from(*v)));
    !sum
}

impl Footer {
    /// Parses and checks a footer read from `where_` (named in errors).
    pub fn parse(b: &[u8; 512], where_: &str) -> io::Result<Footer> {
        let bad = |why: String| invalid(format!("{where_}: {why}"));
        if &b[0..8] != COOKIE {
            return Err(bad("no conectix cookie".into()));
        }
        let stored = be32(b, 64);
        let computed = checksum(b, 64);
        if stored != computed {
            return Err(bad(format!(
                "checksum {stored:#010x} does not match the contents ({computed:#010x})"
            )));
        }
        let disk_type = match be32(b, 60) {
            2 => DiskType::Fixed,
            3 => DiskType::Dynamic,
            4 => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("{where_}: differencing VHD disks are not supported"),
                ))
            }
            other => return Err(bad(format!("unknown disk type {other}"))),
        };
        let cylinders = u64::from(u16::from_be_bytes([b[56], b[57]]));
        let chs_sectors = cylinders * u64::from(b[58]) * u64::from(b[59]);
        let creator = &b[28..32];
        let uses_size = [b"win ", b"qem2", b"d2v ", b"CTXS", b"tap\0"]
            .iter()
            .any(|c| creator == *c);
        let current_size = be64(b, 48);
        let sectors = if uses_size || chs_sectors == MAX_GEOMETRY_SECTORS {
            current_size / 512
        } else {
            chs_sectors
        };
        if sectors > MAX_SECTORS {
            return Err(bad(format!(
                "a disk of {sectors} sectors exceeds the VHD limit of {MAX_SECTORS}"
            )));
        }
        Ok(Footer {
            data_offset: be64(b, 16),
            size: sectors * 512,
            disk_type,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A footer of `disk_type` whose creator is `creator`, with CHS
    /// 100/16/63 and current size `size`, checksummed.
    pub(crate) fn footer_bytes(disk_type: u32, creator: &[u8; 4], size: u64) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[0..8].copy_from_slice(COOKIE);
        b[8..12].copy_from_slice(&2u32.to_be_bytes());
        b[12..16].copy_from_slice(&0x10000u32.to_be_bytes());
        b[16..24].copy_from_slice(&u64::MAX.to_be_bytes());
        b[28..32].copy_from_slice(creator);
        b[40..48].copy_from_slice(&size.to_be_bytes());
        b[48..56].copy_from_slice(&size.to_be_bytes());
        b[56..58].copy_from_slice(&100u16.to_be_bytes());
        b[58] = 16;
        b[59] = 63;
        b[60..64].copy_from_slice(&disk_type.to_be_bytes());
        let sum = checksum(&b, 64);
        b[64..68].copy_from_slice(&sum.to_be_bytes());
        b
    }

    #[test]
    fn size_follows_the_creator() {
        let chs = Footer::parse(&footer_bytes(2, b"qemu", 1 << 20), "f").unwrap();
        assert_eq!(chs.size, 100 * 16 * 63 * 512);
        assert_eq!(chs.disk_type, DiskType::Fixed);
        let sz = Footer::parse(&footer_bytes(3, b"win ", 1 << 20), "f").unwrap();
        assert_eq!(sz.size, 1 << 20);
        assert_eq!(sz.disk_type, DiskType::Dynamic);
    }

    #[test]
    fn malformed_footers_are_refused() {
        let mut b = footer_bytes(2, b"qemu", 1 << 20);
        b[100] ^= 1;
        let e = Footer::parse(&b, "foot").unwrap_err();
        assert!(e.to_string().starts_with("foot: checksum"), "{e}");
        let mut b = footer_bytes(2, b"qemu", 1 << 20);
        b[0] = b'C';
        assert!(Footer::parse(&b, "f")
            .unwrap_err()
            .to_string()
            .contains("cookie"));
        let e = Footer::parse(&footer_bytes(4, b"qemu", 1 << 20), "f").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Unsupported);
        assert!(e.to_string().contains("differencing"));
        let e = Footer::parse(&footer_bytes(7, b"qemu", 1 << 20), "f").unwrap_err();
        assert!(e.to_string().contains("disk type 7"));
        let e = Footer::parse(&footer_bytes(2, b"win ", u64::MAX), "f").unwrap_err();
        assert!(e.to_string().contains("exceeds"), "{e}");
    }
}
