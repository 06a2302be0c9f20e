//! A bounds-checked reader of ELF program headers (32- and 64-bit), for the
//! multiboot loader: linux-loader's ELF loader handles only 64-bit images.
//!
//! The file is hostile input: every offset and size is checked before use.

use crate::bytes::{le16, le32, le64};

/// Most program headers accepted.
const MAX_PROGRAM_HEADERS: usize = 128;
const PT_LOAD: u32 = 1;

/// A loadable segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Offset of the segment's bytes in the file.
    pub offset: u64,
    /// Guest physical load address.
    pub paddr: u64,
    /// Bytes taken from the file.
    pub filesz: u64,
    /// Bytes in memory (the rest is zeroed).
    pub memsz: u64,
}

/// The parts of an ELF file a loader needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfImage {
    /// ELFCLASS64 rather than ELFCLASS32.
    pub is_64bit: bool,
    /// The entry address.
    pub entry: u64,
    /// The PT_LOAD segments.
    pub segments: Vec<Segment>,
}

/// Why an ELF file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    /// Not an ELF file.
    #[error("not an ELF file")]
    NotElf,
    /// Not little-endian x86.
    #[error("not a little-endian x86 ELF file")]
    WrongMachine,
    /// A header field points outside the file or is inconsistent.
    #[error("malformed ELF file: {0}")]
    Malformed(&'static str),
}

/// True when `file` starts with the ELF magic.
pub fn is_elf(file: &[u8]) -> bool {
    file.starts_with(b"\x7fELF")
}

/// Parses the ELF header and program headers of `file`.
pub fn parse(file: &[u8]) -> Result<ElfImage, ElfError> {
    if !is_elf(file) {
        return Err(ElfError::NotElf);
    }
    let class = *file.get(4).ok_or(ElfError::NotElf)?;
    let data = *file.get(5).ok_or(ElfError::NotElf)?;
    let is_64bit = match class {
        1 => false,
        2 => true,
        _ => return Err(ElfError::Malformed("unknown ELF class")),
    };
    let machine = le16(file, 18).ok_or(ElfError::Malformed("truncated header"))?;
    // EM_386 = 3, EM_X86_64 = 62.
    if data != 1 || !matches!(machine, 3 | 62) {
        return Err(ElfError::WrongMachine);
    }
    let short = ElfError::Malformed("truncated header");
    let (entry, phoff, phentsize, phnum) = if is_64bit {
        (
            le64(file, 24).ok_or(short.clone())?,
            le64(file, 32).ok_or(short.clone())?,
            le16(file, 54).ok_or(short.clone())?,
            le16(file, 56).ok_or(short)?,
        )
    } else {
        (
            u64::from(le32(file, 24).ok_or(short.clone())?),
            u64::from(le32(file, 28).ok_or(short.clone())?),
            le16(file, 42).ok_or(short.clone())?,
            le16(file, 44).ok_or(short)?,
        )
    };
    let min_entsize = if is_64bit { 56 } else { 32 };
    if usize::from(phentsize) < min_entsize {
        return Err(ElfError::Malformed("program header entries too small"));
    }
    if usize::from(phnum) > MAX_PROGRAM_HEADERS {
        return Err(ElfError::Malformed("too many program headers"));
    }
    let mut segments = Vec::new();
    for i in 0..u64::from(phnum) {
        let off = phoff
            .checked_add(i * u64::from(phentsize))
            .and_then(|o| usize::try_from(o).ok())
            .ok_or(ElfError::Malformed("program header offset overflows"))?;
        let bad = ElfError::Malformed("program header outside the file");
        let p_type = le32(file, off).ok_or(bad.clone())?;
        let seg = if is_64bit {
            Segment {
                offset: le64(file, off + 8).ok_or(bad.clone())?,
                paddr: le64(file, off + 24).ok_or(bad.clone())?,
                filesz: le64(file, off + 32).ok_or(bad.clone())?,
                memsz: le64(file, off + 40).ok_or(bad)?,
            }
        } else {
            Segment {
                offset: u64::from(le32(file, off + 4).ok_or(bad.clone())?),
                paddr: u64::from(le32(file, off + 12).ok_or(bad.clone())?),
                filesz: u64::from(le32(file, off + 16).ok_or(bad.clone())?),
                memsz: u64::from(le32(file, off + 20).ok_or(bad)?),
            }
        };
        if p_type != PT_LOAD || seg.memsz == 0 {
            continue;
        }
        if seg.filesz > seg.memsz {
            return Err(ElfError::Malformed(
                "segment file size exceeds its memory size",
            ));
        }
        let end = seg.offset.checked_add(seg.filesz);
        if end.is_none_or(|e| e > file.len() as u64) {
            return Err(ElfError::Malformed(
                "segment extends past the end of the file",
            ));
        }
        if seg.paddr.checked_add(seg.memsz).is_none() {
            return Err(ElfError::Malformed("segment address overflows"));
        }
        segments.push(seg);
    }
    if segments.is_empty() {
        return Err(ElfError::Malformed("no loadable segments"));
    }
    Ok(ElfImage {
        is_64bit,
        entry,
        segments,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ELF32 with one PT_LOAD of `code` at `paddr`, entry at `paddr`.
    pub(crate) fn elf32(paddr: u32, code: &[u8], bss: u32) -> Vec<u8> {
        let mut f = vec![0u8; 84];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 1;
        f[5] = 1;
        f[6] = 1;
        f[16..18].copy_from_slice(&2u16.to_le_bytes());
        f[18..20].copy_from_slice(&3u16.to_le_bytes());
        f[24..28].copy_from_slice(&paddr.to_le_bytes());
        f[28..32].copy_from_slice(&52u32.to_le_bytes());
        f[42..44].copy_from_slice(&32u16.to_le_bytes());
        f[44..46].copy_from_slice(&1u16.to_le_bytes());
        let ph = 52;
        f[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
        f[ph + 4..ph + 8].copy_from_slice(&84u32.to_le_bytes());
        f[ph + 8..ph + 12].copy_from_slice(&paddr.to_le_bytes());
        f[ph + 12..ph + 16].copy_from_slice(&paddr.to_le_bytes());
        f[ph + 16..ph + 20].copy_from_slice(&(code.len() as u32).to_le_bytes());
        f[ph + 20..ph + 24].copy_from_slice(&(code.len() as u32 + bss).to_le_bytes());
        f.extend_from_slice(code);
        f
    }

    #[test]
    fn parses_elf32() {
        let f = elf32(0x100000, &[0x90; 16], 32);
        let img = parse(&f).unwrap();
        assert!(!img.is_64bit);
        assert_eq!(img.entry, 0x100000);
        assert_eq!(
            img.segments,
            vec![Segment {
                offset: 84,
                paddr: 0x100000,
                filesz: 16,
                memsz: 48
            }]
        );
    }

    #[test]
    fn refuses_malformed_files() {
        let good = elf32(0x100000, &[0x90; 16], 0);
        assert_eq!(parse(b"MZ"), Err(ElfError::NotElf));
        assert!(parse(&good[..40]).is_err());
        let mut f = good.clone();
        f[52 + 16..52 + 20].copy_from_slice(&1000u32.to_le_bytes()); // filesz past EOF
        assert!(parse(&f).is_err());
        let mut f = good.clone();
        f[44..46].copy_from_slice(&500u16.to_le_bytes()); // absurd phnum
        assert!(parse(&f).is_err());
        let mut f = good.clone();
        f[28..32].copy_from_slice(&u32::MAX.to_le_bytes()); // phoff past EOF
        assert!(parse(&f).is_err());
        let mut f = good.clone();
        f[52 + 20..52 + 24].copy_from_slice(&1u32.to_le_bytes()); // memsz < filesz
        assert!(parse(&f).is_err());
        let mut f = good;
        f[18] = 40; // ARM
        assert_eq!(parse(&f), Err(ElfError::WrongMachine));
    }

    #[test]
    fn never_panics_on_truncations() {
        let good = elf32(0x100000, &[0x90; 16], 0);
        for n in 0..good.len() {
            let _ = parse(&good[..n]);
        }
        for i in 0..good.len() {
            let mut f = good.clone();
            f[i] ^= 0xff;
            let _ = parse(&f);
        }
    }
}
