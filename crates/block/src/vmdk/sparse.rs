//! A hosted sparse extent: the grain directory (loaded at open), grain
//! tables (read on demand into a bounded LRU cache) and the grains they
//! point to, plain or (streamOptimized) compressed.

use std::fs::File;
use std::io;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError};

use lru::LruCache;

use super::compressed;
use super::header::{self, SparseHeader, SECTOR};
use crate::readonly::{invalid, read_exact_at};

/// Grain tables (at most 2 KiB each) one image keeps in memory, shared out
/// among its sparse extents (16 MiB).
pub const GT_CACHE_BUDGET: usize = 8192;
/// Grain tables each sparse extent may keep, however many extents there are.
const GT_CACHE_MIN: usize = 8;
/// The most grain tables one [`SparseExtent::run`] looks at.
pub const MAX_RUN_TABLES: u32 = 1024;

/// What a grain table entry says about one grain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grain {
    /// Never written: reads as zeros.
    Unallocated,
    /// Marked zeroed (entry 1 with the zero-grain flag).
    Zeroed,
    /// Stored plainly at this file offset.
    Data(u64),
    /// Stored compressed (with its marker) at this file offset.
    Compressed(u64),
}

/// An open sparse extent file.
pub struct SparseExtent {
    file: File,
    file_len: u64,
    name: String,
    header: SparseHeader,
    /// Grain table offsets in sectors (0: table not allocated).
    directory: Vec<u32>,
    tables: Mutex<LruCache<usize, Arc<Vec<u32>>>>,
}

impl SparseExtent {
    /// Opens the extent in `file`; `name` names it in errors. It caches
    /// its share of the grain tables of an image with `sparse_extents`.
    pub fn open(file: File, name: &str, sparse_extents: usize) -> io::Result<SparseExtent> {
        let file_len = file.metadata()?.len();
        let header = header::read(&file, file_len, name)?;
        let entries = header.gd_entries() as usize; // capped by MAX_GD_ENTRIES
        let gd_at = header
            .gd_offset
            .checked_mul(SECTOR)
            .filter(|at| at.saturating_add(entries as u64 * 4) <= file_len)
            .ok_or_else(|| {
                invalid(format!(
                    "vmdk {name}: grain directory at sector {} ({entries} entries) lies past the end of the file ({file_len} bytes)",
                    header.gd_offset
                ))
            })?;
        let mut raw = vec![0u8; entries * 4];
        read_exact_at(
            &file,
            &mut raw,
            gd_at,
            format!("vmdk {name}: grain directory"),
        )?;
        let directory: Vec<u32> = raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let gt_bytes = u64::from(header.gtes_per_gt) * 4;
        if let Some((index, sector)) = directory
            .iter()
            .enumerate()
            .find(|(_, s)| **s != 0 && u64::from(**s) * SECTOR + gt_bytes > file_len)
        {
            return Err(invalid(format!(
                "vmdk {name}: grain directory at offset {gd_at:#x}: entry {index} puts grain table {index} at offset {:#x}, past the end of the file ({file_len} bytes)",
                u64::from(*sector) * SECTOR
            )));
        }
        let share = (GT_CACHE_BUDGET / sparse_extents.max(1)).max(GT_CACHE_MIN);
        let cache = NonZeroUsize::new(share).unwrap_or(NonZeroUsize::MIN);
        Ok(SparseExtent {
            file,
            file_len,
            name: name.to_owned(),
            header,
            directory,
            tables: Mutex::new(LruCache::new(cache)),
        })
    }

    /// The validated header (or footer) in use.
    pub fn header(&self) -> &SparseHeader {
        &self.header
    }

    /// The file, for reading the embedded descriptor.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Virtual size in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.header.capacity * SECTOR
    }

    /// Grain table `index`, from the cache or the file.
    fn table(&self, index: usize, sector: u32) -> io::Result<Arc<Vec<u32>>> {
        let mut cache = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(table) = cache.get(&index) {
            return Ok(table.clone());
        }
        drop(cache);
        let at = u64::from(sector) * SECTOR;
        let mut raw = vec![0u8; self.header.gtes_per_gt as usize * 4];
        let what = format!("vmdk {}: grain table {index}", self.name);
        read_exact_at(&self.file, &mut raw, at, &what)?;
        let table: Vec<u32> = raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some((entry, _)) = table
            .iter()
            .enumerate()
            .find(|(_, s)| u64::from(**s) * SECTOR >= self.file_len)
        {
            return Err(invalid(format!(
                "{what} at offset {at:#x}: entry {entry} points past the end of the file"
            )));
        }
        let table = Arc::new(table);
        self.tables
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .put(index, table.clone());
        Ok(table)
    }

    /// What the grain table says about grain `index`.
    pub fn grain(&self, index: u64) -> io::Result<Grain> {
        let per_table = u64::from(self.header.gtes_per_gt);
        let table_index = (index / per_table) as usize;
        let Some(&sector) = self.directory.get(table_index) else {
            return Err(invalid(format!(
                "vmdk {}: grain {index} lies past the grain directory",
                self.name
            )));
        };
        if sector == 0 {
            return Ok(Grain::Unallocated);
        }
        let table = self.table(table_index, sector)?;
        Ok(self.classify(table[(index % per_table) as usize]))
    }

    /// What grain table entry `entry` says.
    fn classify(&self, entry: u32) -> Grain {
        match entry {
            0 => Grain::Unallocated,
            1 if self.header.zero_grain => Grain::Zeroed,
            s if self.header.compressed => Grain::Compressed(u64::from(s) * SECTOR),
            s => Grain::Data(u64::from(s) * SECTOR),
        }
    }

    /// How grain `first` is stored, and how many grains from it on (at
    /// most `max_grains`, at least 1) are stored alike: unallocated, zeroed,
    /// compressed, or plain and contiguous in the file. Looks at no more
    /// than [`MAX_RUN_TABLES`] grain tables, so a crafted image cannot
    /// stall the caller; a longer run comes back in pieces.
    pub fn run(&self, first: u64, max_grains: u64) -> io::Result<(u64, Grain)> {
        let kind = self.grain(first)?;
        let per_table = u64::from(self.header.gtes_per_gt);
        let grain_bytes = self.header.grain_bytes();
        let end = first.saturating_add(max_grains.max(1));
        let mut next = first + 1;
        let mut tables = 0;
        'tables: while next < end && tables < MAX_RUN_TABLES {
            tables += 1;
            let t = (next / per_table) as usize;
            let table_end = ((t as u64 + 1) * per_table).min(end);
            let Some(&sector) = self.directory.get(t) else {
                break;
            };
            if sector == 0 {
                if kind != Grain::Unallocated {
                    break;
                }
                next = table_end;
                continue;
            }
            let table = self.table(t, sector)?;
            while next < table_end {
                let same = match (kind, self.classify(table[(next % per_table) as usize])) {
                    (Grain::Data(a), Grain::Data(b)) => b == a + (next - first) * grain_bytes,
                    (Grain::Compressed(_), Grain::Compressed(_)) => true,
                    (a, b) => a == b,
                };
                if !same {
                    break 'tables;
                }
                next += 1;
            }
        }
        Ok((next - first, kind))
    }

    /// Fills `buf` from `offset` (bytes within the extent's capacity);
    /// compressed grains go through `grains` under extent number `id`.
    pub fn read(
        &self,
        buf: &mut [u8],
        offset: u64,
        grains: &compressed::GrainCache,
        id: usize,
    ) -> io::Result<()> {
        let grain_bytes = self.header.grain_bytes();
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let index = at / grain_bytes;
            let within = at % grain_bytes;
            let n = (buf.len() - done).min((grain_bytes - within) as usize);
            let dst = &mut buf[done..done + n];
            match self.grain(index)? {
                Grain::Unallocated | Grain::Zeroed => dst.fill(0),
                Grain::Data(host) => read_exact_at(
                    &self.file,
                    dst,
                    host + within,
                    format_args!("vmdk {}: grain {index}", self.name),
                )?,
                Grain::Compressed(host) => {
                    let grain = self.inflate(index, host, grains, id)?;
                    dst.copy_from_slice(&grain[within as usize..within as usize + n]);
                }
            }
            done += n;
        }
        Ok(())
    }

    /// Grain `index` (compressed at `host`), decompressed to a full grain.
    fn inflate(
        &self,
        index: u64,
        host: u64,
        grains: &compressed::GrainCache,
        id: usize,
    ) -> io::Result<Arc<Vec<u8>>> {
        if let Some(grain) = grains.get((id, index)) {
            return Ok(grain);
        }
        let grain_bytes = self.header.grain_bytes();
        let needed = grain_bytes.min(self.capacity_bytes().saturating_sub(index * grain_bytes));
        let grain = Arc::new(compressed::read_grain(
            &compressed::GrainSource {
                file: &self.file,
                file_len: self.file_len,
                name: &self.name,
                markers: self.header.markers,
                grain_sectors: self.header.grain_sectors,
            },
            index,
            host,
            needed,
        )?);
        grains.put((id, index), grain.clone());
        Ok(grain)
    }
}
