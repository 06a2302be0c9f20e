//! Dynamic VHD disks: the dynamic header (`cxsparse`), the block allocation
//! table (BAT) and blocks, each a sector bitmap followed by the data.
//! Sectors whose bitmap bit is clear read as zeros.

use std::fs::File;
use std::io;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError};

use lru::LruCache;

use super::footer::{be32, be64, checksum};
use crate::readonly::{invalid, read_exact_at};

/// The dynamic header cookie.
const COOKIE: &[u8; 8] = b"cxsparse";
/// Dynamic header length.
const HEADER_BYTES: usize = 1024;
/// A BAT entry for a block that is not allocated.
const UNALLOCATED: u32 = u32::MAX;
/// The largest block size accepted (QEMU writes 2 MiB, Hyper-V up to 256 MiB).
pub const MAX_BLOCK_BYTES: u32 = 256 << 20;
/// The most BAT entries loaded (a 64 MiB table).
pub const MAX_BAT_ENTRIES: u32 = 1 << 24;
/// Sector bitmaps kept in memory.
const BITMAP_CACHE: usize = 256;

/// How a stretch of a dynamic disk is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    /// Not allocated (or bitmap bit clear when `in_block`): reads as zeros.
    Zero {
        /// Whether the stretch lies in an allocated block.
        in_block: bool,
    },
    /// Stored at this file offset.
    Data(u64),
}

/// An open dynamic disk.
pub struct DynamicDisk {
    file: File,
    name: String,
    block_size: u64,
    bitmap_bytes: u64,
    bat: Vec<u32>,
    bitmaps: Mutex<LruCache<usize, Arc<Vec<u8>>>>,
}

impl DynamicDisk {
    /// Opens the dynamic structures of a disk of `size` bytes whose dynamic
    /// header lies at `header_at`.
    pub fn open(file: File, name: &str, header_at: u64, size: u64) -> io::Result<DynamicDisk> {
        let file_len = file.metadata()?.len();
        let mut h = [0u8; HEADER_BYTES];
        let what = format!("vhd {name}: dynamic header at offset {header_at:#x}");
        read_exact_at(&file, &mut h, header_at, &what)?;
        let bad = |why: String| invalid(format!("{what}: {why}"));
        if &h[0..8] != COOKIE {
            return Err(bad("no cxsparse cookie".into()));
        }
        let (stored, computed) = (be32(&h, 36), checksum(&h, 36));
        if stored != computed {
            return Err(bad(format!(
                "checksum {stored:#010x} does not match the contents ({computed:#010x})"
            )));
        }
        let bat_at = be64(&h, 16);
        let entries = be32(&h, 28);
        let block_size = be32(&h, 32);
        if !block_size.is_power_of_two() || !(512..=MAX_BLOCK_BYTES).contains(&block_size) {
            return Err(bad(format!(
                "block size {block_size} (a power of two from 512 to {MAX_BLOCK_BYTES})"
            )));
        }
        if entries > MAX_BAT_ENTRIES {
            return Err(bad(format!(
                "{entries} BAT entries exceed the limit of {MAX_BAT_ENTRIES}"
            )));
        }
        let block_size = u64::from(block_size);
        if u64::from(entries) * block_size < size {
            return Err(bad(format!(
                "{entries} blocks of {block_size} bytes do not cover the disk size of {size}"
            )));
        }
        let bat_bytes = u64::from(entries) * 4;
        if bat_at.saturating_add(bat_bytes) > file_len {
            return Err(bad(format!(
                "the BAT at offset {bat_at:#x} ({bat_bytes} bytes) lies past the end of the file ({file_len} bytes)"
            )));
        }
        let mut raw = vec![0u8; bat_bytes as usize];
        read_exact_at(&file, &mut raw, bat_at, format!("vhd {name}: BAT"))?;
        let bat: Vec<u32> = raw.chunks_exact(4).map(|c| be32(c, 0)).collect();
        let bitmap_bytes = (block_size / 512).div_ceil(8).next_multiple_of(512);
        let block_span = bitmap_bytes + block_size;
        if let Some((i, s)) = bat
            .iter()
            .enumerate()
            .find(|(_, s)| **s != UNALLOCATED && u64::from(**s) * 512 + block_span > file_len)
        {
            return Err(invalid(format!(
                "vhd {name}: BAT at offset {bat_at:#x}: entry {i} (sector {s}) points past the end of the file ({file_len} bytes)"
            )));
        }
        let cache = NonZeroUsize::new(BITMAP_CACHE).unwrap_or(NonZeroUsize::MIN);
        Ok(DynamicDisk {
            file,
            name: name.to_owned(),
            block_size,
            bitmap_bytes,
            bat,
            bitmaps: Mutex::new(LruCache::new(cache)),
        })
    }

    /// The sector bitmap of block `index` stored at sector `sector`.
    fn bitmap(&self, index: usize, sector: u32) -> io::Result<Arc<Vec<u8>>> {
        if let Some(b) = self
            .bitmaps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&index)
        {
            return Ok(b.clone());
        }
        let mut raw = vec![0u8; self.bitmap_bytes as usize];
        read_exact_at(
            &self.file,
            &mut raw,
            u64::from(sector) * 512,
            format_args!("vhd {}: sector bitmap of block {index}", self.name),
        )?;
        let raw = Arc::new(raw);
        self.bitmaps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .put(index, raw.clone());
        Ok(raw)
    }

    /// The run at disk byte `offset`, at most `max_len` bytes and never
    /// past the block: its length and how it is stored.
    pub fn run(&self, offset: u64, max_len: u64) -> io::Result<(u64, Run)> {
        let index = (offset / self.block_size) as usize;
        let within = offset % self.block_size;
        let limit = max_len.min(self.block_size - within);
        let sector = match self.bat.get(index) {
            Some(&s) if s != UNALLOCATED => s,
            _ => return Ok((limit, Run::Zero { in_block: false })),
        };
        let bitmap = self.bitmap(index, sector)?;
        let bit = |sector_in_block: u64| {
            let byte = bitmap[(sector_in_block / 8) as usize];
            byte & (0x80 >> (sector_in_block % 8)) != 0
        };
        let first = within / 512;
        let set = bit(first);
        let mut end = (first + 1) * 512;
        while end < within + limit && bit(end / 512) == set {
            end += 512;
        }
        let len = (end - within).min(limit);
        let data_at = u64::from(sector) * 512 + self.bitmap_bytes + within;
        Ok((
            len,
            if set {
                Run::Data(data_at)
            } else {
                Run::Zero { in_block: true }
            },
        ))
    }

    /// Fills `buf` from disk byte `offset`.
    pub fn read(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let (len, run) = self.run(at, (buf.len() - done) as u64)?;
            let dst = &mut buf[done..done + len as usize];
            match run {
                Run::Zero { .. } => dst.fill(0),
                Run::Data(host) => read_exact_at(
                    &self.file,
                    dst,
                    host,
                    format_args!("vhd {}: block {}", self.name, at / self.block_size),
                )?,
            }
            done += len as usize;
        }
        Ok(())
    }
}
