//! Multiboot (version 1): finding the header in a kernel image and writing
//! the information structure the kernel receives in EBX.

use crate::bytes::{le32, LeWriter};
use crate::layout::{EBDA_ADDR, HIGH_MEMORY_START};
use crate::memory_map::{E820Entry, E820_RAM};

/// The magic a multiboot kernel puts in its header.
pub const HEADER_MAGIC: u32 = 0x1bad_b002;
/// The magic the loader leaves in EAX.
pub const BOOTLOADER_MAGIC: u32 = 0x2bad_b002;
/// The header must lie in the first 8 KiB, 4-byte aligned.
const SEARCH_LIMIT: usize = 8192;
/// Header flag: the load addresses are in the header (a.out kludge).
pub const FLAG_ADDRESSES: u32 = 1 << 16;
/// Required-feature flags we honour: page-aligned modules, memory info, video
/// mode (we offer text mode only, which is allowed).
const KNOWN_REQUIRED: u32 = 0b111;

/// A parsed multiboot header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Offset of the header in the file.
    pub offset: usize,
    /// The header's flags.
    pub flags: u32,
    /// With `FLAG_ADDRESSES`: header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr.
    pub addresses: Option<[u32; 5]>,
}

/// Why a multiboot header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The header asks for a feature this loader lacks.
    #[error("the multiboot header requires unsupported features (flags {0:#x})")]
    Unsupported(u32),
    /// The address fields are truncated.
    #[error("the multiboot header is truncated")]
    Truncated,
}

/// Finds a multiboot header with a valid checksum in the first 8 KiB of `file`.
pub fn find_header(file: &[u8]) -> Option<Result<Header, HeaderError>> {
    let limit = file.len().min(SEARCH_LIMIT);
    (0..limit.saturating_sub(11)).step_by(4).find_map(|offset| {
        let magic = le32(file, offset)?;
        let flags = le32(file, offset + 4)?;
        let sum = le32(file, offset + 8)?;
        if magic != HEADER_MAGIC || magic.wrapping_add(flags).wrapping_add(sum) != 0 {
            return None;
        }
        Some(parse_header(file, offset, flags))
    })
}

fn parse_header(file: &[u8], offset: usize, flags: u32) -> Result<Header, HeaderError> {
    let required = flags & 0xffff;
    if required & !KNOWN_REQUIRED != 0 {
        return Err(HeaderError::Unsupported(flags));
    }
    let addresses = if flags & FLAG_ADDRESSES != 0 {
        let mut a = [0u32; 5];
        for (i, slot) in a.iter_mut().enumerate() {
            *slot = le32(file, offset + 12 + 4 * i).ok_or(HeaderError::Truncated)?;
        }
        Some(a)
    } else {
        None
    };
    Ok(Header {
        offset,
        flags,
        addresses,
    })
}

/// A module handed to the kernel (the initramfs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Module {
    /// Guest physical start.
    pub start: u32,
    /// Guest physical end (exclusive).
    pub end: u32,
}

const INFO_MEMORY: u32 = 1 << 0;
const INFO_CMDLINE: u32 = 1 << 2;
const INFO_MODULES: u32 = 1 << 3;
const INFO_MEMORY_MAP: u32 = 1 << 6;
const INFO_LOADER_NAME: u32 = 1 << 9;
/// Size of the fixed part of the information structure.
const INFO_SIZE: usize = 88;

/// Builds the multiboot information structure to be placed at `addr`, with its
/// memory map, module list and loader name after it.
pub fn build_info(
    addr: u32,
    e820: &[E820Entry],
    cmdline_addr: u32,
    module: Option<Module>,
) -> Vec<u8> {
    let mem_lower_kib = (EBDA_ADDR / 1024) as u32;
    let mem_upper_kib = e820
        .iter()
        .find(|e| e.addr == HIGH_MEMORY_START && e.kind == E820_RAM)
        .map_or(0, |e| (e.size / 1024).min(u64::from(u32::MAX)) as u32);

    let mmap_addr = addr + INFO_SIZE as u32;
    let mut mmap = LeWriter::new();
    for e in e820 {
        mmap.u32(20).u64(e.addr).u64(e.size).u32(e.kind);
    }
    let mods_addr = mmap_addr + mmap.len() as u32;
    let mut mods = LeWriter::new();
    if let Some(m) = module {
        mods.u32(m.start).u32(m.end).u32(0).u32(0);
    }
    let name_addr = mods_addr + mods.len() as u32;

    let mut flags = INFO_MEMORY | INFO_CMDLINE | INFO_MEMORY_MAP | INFO_LOADER_NAME;
    if module.is_some() {
        flags |= INFO_MODULES;
    }
    let mut info = LeWriter::new();
    info.u32(flags)
        .u32(mem_lower_kib)
        .u32(mem_upper_kib)
        .u32(0xffff_ffff);
    info.u32(cmdline_addr)
        .u32(u32::from(module.is_some()))
        .u32(mods_addr);
    info.u32(0).u32(0).u32(0).u32(0); // symbol table: none
    info.u32(mmap.len() as u32).u32(mmap_addr);
    info.u32(0).u32(0).u32(0); // drives length and address, config table
    info.u32(name_addr).u32(0); // boot loader name, APM table
    info.bytes(&[0u8; INFO_SIZE - 72]); // VBE fields: none
    debug_assert_eq!(info.len(), INFO_SIZE);
    info.bytes(mmap.as_slice())
        .bytes(mods.as_slice())
        .bytes(b"ferrovisor\0");
    info.into_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory_map::e820_map;

    fn header(flags: u32) -> Vec<u8> {
        let mut f = vec![0u8; 64];
        f[16..20].copy_from_slice(&HEADER_MAGIC.to_le_bytes());
        f[20..24].copy_from_slice(&flags.to_le_bytes());
        f[24..28].copy_from_slice(
            &0u32
                .wrapping_sub(HEADER_MAGIC.wrapping_add(flags))
                .to_le_bytes(),
        );
        f
    }

    #[test]
    fn finds_header() {
        assert_eq!(
            find_header(&header(3)),
            Some(Ok(Header {
                offset: 16,
                flags: 3,
                addresses: None
            }))
        );
    }

    #[test]
    fn refuses_bad_checksum_unknown_flags_and_truncation() {
        let mut f = header(0);
        f[24] ^= 1;
        assert_eq!(find_header(&f), None);
        assert!(matches!(
            find_header(&header(1 << 5)),
            Some(Err(HeaderError::Unsupported(_)))
        ));
        let f = header(FLAG_ADDRESSES);
        assert_eq!(find_header(&f[..40]), Some(Err(HeaderError::Truncated)));
        assert_eq!(find_header(&[]), None);
    }

    #[test]
    fn info_layout() {
        let map = e820_map(128 << 20);
        let info = build_info(
            0x6000,
            &map,
            0x20000,
            Some(Module {
                start: 0x700_0000,
                end: 0x700_0010,
            }),
        );
        let flags = le32(&info, 0).unwrap();
        assert_eq!(flags & INFO_MODULES, INFO_MODULES);
        assert_eq!(le32(&info, 4), Some(639));
        assert_eq!(le32(&info, 8), Some((127 << 10) as u32));
        assert_eq!(le32(&info, 16), Some(0x20000));
        assert_eq!(le32(&info, 20), Some(1));
        let mods = le32(&info, 24).unwrap() as usize - 0x6000;
        assert_eq!(le32(&info, mods), Some(0x700_0000));
        assert_eq!(le32(&info, 44), Some(24 * map.len() as u32));
    }
}
