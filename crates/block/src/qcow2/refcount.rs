//! Reference counts: the refcount table, refcount blocks of 1 to 64-bit
//! entries (bounded LRU cache, written back unless `write_through`) and
//! cluster allocation. A refcount block on disk may count more references
//! than exist (a leak) but never fewer: increments may be written at any
//! time, and decrements reach it only once the reference is gone on disk.

use std::collections::HashMap;

use super::host_file::HostFile as File;

use lru::LruCache;

use super::header::MAX_REFTABLE_BYTES;
use super::{corrupt, Qcow2Error};

/// Bits 9..=63 of a refcount table entry hold the block offset.
const REFTABLE_OFFSET_MASK: u64 = !0x1ff;

/// Reads entry `i` of a refcount block whose entries are `1 << order` bits.
pub fn get_entry(block: &[u8], i: usize, order: u32) -> u64 {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per_byte = 8 / bits;
            let byte = block[i / per_byte];
            ((byte >> ((i % per_byte) * bits)) & ((1u16 << bits) - 1) as u8) as u64
        }
        3 => block[i] as u64,
        4 => u16::from_be_bytes([block[2 * i], block[2 * i + 1]]) as u64,
        5 => {
            let mut b = [0u8; 4];
            b.copy_from_slice(&block[4 * i..4 * i + 4]);
            u32::from_be_bytes(b) as u64
        }
        _ => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&block[8 * i..8 * i + 8]);
            u64::from_be_bytes(b)
        }
    }
}

/// Writes entry `i`; returns the byte range of the block it changed.
pub fn set_entry(block: &mut [u8], i: usize, order: u32, value: u64) -> std::ops::Range<usize> {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per_byte = 8 / bits;
            let shift = (i % per_byte) * bits;
            let mask = (((1u16 << bits) - 1) as u8) << shift;
            let b = &mut block[i / per_byte];
            *b = (*b & !mask) | (((value as u8) << shift) & mask);
            i / per_byte..i / per_byte + 1
        }
        3 => {
            block[i] = value as u8;
            i..i + 1
        }
        4 => {
            block[2 * i..2 * i + 2].copy_from_slice(&(value as u16).to_be_bytes());
            2 * i..2 * i + 2
        }
        5 => {
            block[4 * i..4 * i + 4].copy_from_slice(&(value as u32).to_be_bytes());
            4 * i..4 * i + 4
        }
        _ => {
            block[8 * i..8 * i + 8].copy_from_slice(&value.to_be_bytes());
            8 * i..8 * i + 8
        }
    }
}

/// The largest refcount an entry of `order` can hold.
pub fn max_refcount(order: u32) -> u64 {
    if order >= 6 {
        u64::MAX
    } else {
        (1u64 << (1 << order)) - 1
    }
}

/// Refcount table, block cache and allocator of one image.
pub struct Refcounts {
    order: u32,
    cluster_bits: u32,
    /// The refcount table (host offsets of blocks, 0: none).
    pub table: Vec<u64>,
    /// Where the table lies.
    pub table_offset: u64,
    /// Its length in clusters.
    pub table_clusters: u32,
    cache: LruCache<u64, Vec<u8>>,
    /// Host offset past every cluster that may be in use (cluster aligned).
    pub file_end: u64,
    /// Lowest cluster index that may be free.
    free_hint: u64,
    /// Skip fdatasync (qemu-img's cache=unsafe).
    pub no_sync: bool,
    /// Write every change at once (structural operations) instead of
    /// keeping it in the cache until [`write_dirty`](Self::write_dirty).
    pub write_through: bool,
    /// Cached blocks changed in memory only: block offset to byte range.
    dirty: HashMap<u64, (usize, usize)>,
    /// Host offset from which no cluster was in use since the last full
    /// flush (so none was written: the file reads zeros there). Freeing a
    /// cluster above it raises it.
    pub fresh_from: u64,
}

impl Refcounts {
    /// Loads the table (`table_clusters` clusters at `table_offset`).
    pub fn load(
        file: &File,
        order: u32,
        cluster_bits: u32,
        table_offset: u64,
        table_clusters: u32,
        file_len: u64,
        cache_blocks: usize,
    ) -> Result<Refcounts, Qcow2Error> {
        let cs = 1u64 << cluster_bits;
        let bytes = table_clusters as u64 * cs;
        let mut raw = vec![0u8; bytes as usize];
        file.read_exact_at(&mut raw, table_offset)
            .map_err(|e| Qcow2Error::io("refcount table", table_offset, e))?;
        let table = raw
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        Ok(Refcounts {
            order,
            cluster_bits,
            table,
            table_offset,
            table_clusters,
            cache: LruCache::new(
                std::num::NonZeroUsize::new(cache_blocks.max(1))
                    .unwrap_or(std::num::NonZeroUsize::MIN),
            ),
            file_end: file_len.div_ceil(cs) * cs,
            free_hint: 0,
            no_sync: false,
            write_through: false,
            dirty: HashMap::new(),
            fresh_from: file_len.div_ceil(cs) * cs,
        })
    }

    fn cs(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Entries per refcount block.
    pub fn entries_per_block(&self) -> u64 {
        (self.cs() * 8) >> self.order
    }

    /// Refcount width order.
    pub fn order(&self) -> u32 {
        self.order
    }

    /// Loads block `bi` into the cache; `None` when the table has none.
    fn block_offset(&mut self, file: &File, bi: u64) -> Result<Option<u64>, Qcow2Error> {
        let Some(&entry) = self.table.get(bi as usize) else {
            return Ok(None);
        };
        let off = entry & REFTABLE_OFFSET_MASK;
        if off == 0 {
            return Ok(None);
        }
        if self.cache.contains(&off) {
            return Ok(Some(off));
        }
        if off % self.cs() != 0 || off.saturating_add(self.cs()) > self.file_end {
            return Err(corrupt(
                "refcount table",
                self.table_offset + bi * 8,
                format!("refcount block offset {off:#x} unaligned or outside the file"),
            ));
        }
        let mut block = vec![0u8; self.cs() as usize];
        file.read_exact_at(&mut block, off)
            .map_err(|e| Qcow2Error::io("refcount block", off, e))?;
        self.cache_put(file, off, block)?;
        Ok(Some(off))
    }

    /// The refcount of cluster `index`.
    pub fn get(&mut self, file: &File, index: u64) -> Result<u64, Qcow2Error> {
        let epb = self.entries_per_block();
        match self.block_offset(file, index / epb)? {
            None => Ok(0),
            Some(off) => {
                let order = self.order;
                let block = self.cache.get(&off).ok_or_else(|| cache_miss(off))?;
                Ok(get_entry(block, (index % epb) as usize, order))
            }
        }
    }

    /// Takes the cluster at the end of the file for new metadata.
    fn take_end_cluster(&mut self, file: &File) -> Result<u64, Qcow2Error> {
        loop {
            let off = self.file_end;
            self.file_end += self.cs();
            if self.get(file, off >> self.cluster_bits)? == 0 {
                return Ok(off);
            }
        }
    }

    /// Makes sure block `bi` exists (allocating it, and growing the table,
    /// as needed); returns its offset.
    fn ensure_block(&mut self, file: &File, bi: u64) -> Result<u64, Qcow2Error> {
        if let Some(off) = self.block_offset(file, bi)? {
            return Ok(off);
        }
        if bi >= self.table.len() as u64 {
            self.grow_table(file, bi + 1)?;
            if let Some(off) = self.block_offset(file, bi)? {
                return Ok(off);
            }
        }
        let off = self.take_end_cluster(file)?;
        let epb = self.entries_per_block();
        let own = (off >> self.cluster_bits) / epb;
        let mut block = vec![0u8; self.cs() as usize];
        if own == bi {
            set_entry(
                &mut block,
                ((off >> self.cluster_bits) % epb) as usize,
                self.order,
                1,
            );
        }
        file.write_all_at(&block, off)
            .map_err(|e| Qcow2Error::io("refcount block", off, e))?;
        self.cache_put(file, off, block)?;
        if own != bi {
            self.set_range(file, off >> self.cluster_bits, 1, 1)?;
        }
        // The block, and the count of its own cluster, are on disk before
        // the table points at it.
        self.write_dirty(file)?;
        self.sync(file)
            .map_err(|e| Qcow2Error::io("refcount block", off, e))?;
        self.table[bi as usize] = off;
        let at = self.table_offset + bi * 8;
        file.write_all_at(&off.to_be_bytes(), at)
            .map_err(|e| Qcow2Error::io("refcount table", at, e))?;
        Ok(off)
    }

    /// Replaces the table by one of at least `min_entries` entries at the
    /// end of the file, with the blocks that describe the new metadata.
    fn grow_table(&mut self, file: &File, min_entries: u64) -> Result<(), Qcow2Error> {
        let cs = self.cs();
        let epb = self.entries_per_block();
        let per_block = cs * epb;
        let mut entries = min_entries.max(self.table.len() as u64 * 2).max(cs / 8);
        let (t_off, t_clusters, new_blocks) = loop {
            let t_clusters = (entries * 8).div_ceil(cs);
            if t_clusters * cs > MAX_REFTABLE_BYTES {
                return Err(Qcow2Error::Invalid(
                    "the image outgrew the refcount table cap (8 MiB)".into(),
                ));
            }
            let t_off = self.file_end;
            let mut new_blocks = 0;
            let (blocks, end) = loop {
                let end = t_off + (t_clusters + new_blocks) * cs;
                let blocks: Vec<u64> = (t_off / per_block..=(end - 1) / per_block)
                    .filter(|bi| {
                        self.table
                            .get(*bi as usize)
                            .is_none_or(|e| e & REFTABLE_OFFSET_MASK == 0)
                    })
                    .collect();
                if blocks.len() as u64 == new_blocks {
                    break (blocks, end);
                }
                new_blocks = blocks.len() as u64;
            };
            if (end - 1) / per_block < entries {
                break (t_off, t_clusters, blocks);
            }
            entries *= 2;
        };
        let mut table = self.table.clone();
        table.resize((t_clusters * cs / 8) as usize, 0);
        let blocks_off = t_off + t_clusters * cs;
        for (k, bi) in new_blocks.iter().enumerate() {
            let off = blocks_off + k as u64 * cs;
            let block = vec![0u8; cs as usize];
            file.write_all_at(&block, off)
                .map_err(|e| Qcow2Error::io("refcount block", off, e))?;
            self.cache_put(file, off, block)?;
            table[*bi as usize] = off;
        }
        let old = (self.table_offset, self.table_clusters);
        self.table = table;
        self.table_offset = t_off;
        self.table_clusters = t_clusters as u32;
        self.file_end = blocks_off + new_blocks.len() as u64 * cs;
        self.write_table(file)?;
        let first = t_off >> self.cluster_bits;
        self.set_range(file, first, t_clusters + new_blocks.len() as u64, 1)?;
        self.write_dirty(file)?;
        self.sync(file)
            .map_err(|e| Qcow2Error::io("refcount table", t_off, e))?;
        let mut fields = [0u8; 12];
        fields[..8].copy_from_slice(&t_off.to_be_bytes());
        fields[8..].copy_from_slice(&(t_clusters as u32).to_be_bytes());
        file.write_all_at(&fields, 48)
            .map_err(|e| Qcow2Error::io("header", 48, e))?;
        self.sync(file)
            .map_err(|e| Qcow2Error::io("header", 48, e))?;
        self.set_range(file, old.0 >> self.cluster_bits, old.1 as u64, 0)
    }

    fn sync(&self, file: &File) -> std::io::Result<()> {
        if self.no_sync {
            Ok(())
        } else {
            file.sync_data()
        }
    }

    /// Writes the whole in-memory table at its offset.
    pub fn write_table(&self, file: &File) -> Result<(), Qcow2Error> {
        let raw: Vec<u8> = self.table.iter().flat_map(|e| e.to_be_bytes()).collect();
        file.write_all_at(&raw, self.table_offset)
            .map_err(|e| Qcow2Error::io("refcount table", self.table_offset, e))
    }

    /// Sets the refcount of `n` clusters from index `first` to `value`,
    /// writing each touched block once.
    pub fn set_range(
        &mut self,
        file: &File,
        first: u64,
        n: u64,
        value: u64,
    ) -> Result<(), Qcow2Error> {
        self.update_range(file, first, n, |_| Ok(value))
    }

    /// Adds `delta` (may be negative) to the refcounts of `n` clusters.
    pub fn add_range(
        &mut self,
        file: &File,
        first: u64,
        n: u64,
        delta: i64,
    ) -> Result<(), Qcow2Error> {
        let max = max_refcount(self.order);
        let self_cluster_bits = self.cluster_bits;
        self.update_range(file, first, n, |old| {
            let new = if delta < 0 {
                old.checked_sub(delta.unsigned_abs())
            } else {
                old.checked_add(delta as u64).filter(|v| *v <= max)
            };
            new.ok_or_else(|| {
                corrupt(
                    "refcount block",
                    first << self_cluster_bits,
                    format!("refcount {old} cannot change by {delta}"),
                )
            })
        })
    }

    fn update_range(
        &mut self,
        file: &File,
        first: u64,
        n: u64,
        f: impl Fn(u64) -> Result<u64, Qcow2Error>,
    ) -> Result<(), Qcow2Error> {
        let epb = self.entries_per_block();
        let mut index = first;
        let end = first + n;
        while index < end {
            let bi = index / epb;
            let stop = end.min((bi + 1) * epb);
            let off = self.ensure_block(file, bi)?;
            let order = self.order;
            let block = self.cache.get_mut(&off).ok_or_else(|| cache_miss(off))?;
            let (mut lo, mut hi) = (usize::MAX, 0);
            for i in index..stop {
                let slot = (i % epb) as usize;
                let new = f(get_entry(block, slot, order))?;
                let r = set_entry(block, slot, order, new);
                (lo, hi) = (lo.min(r.start), hi.max(r.end));
                if new == 0 {
                    self.free_hint = self.free_hint.min(i);
                    self.fresh_from = self.fresh_from.max((i + 1) << self.cluster_bits);
                }
            }
            if self.write_through {
                file.write_all_at(&block[lo..hi], off + lo as u64)
                    .map_err(|e| Qcow2Error::io("refcount block", off, e))?;
            } else {
                let r = self.dirty.entry(off).or_insert((lo, hi));
                *r = (r.0.min(lo), r.1.max(hi));
            }
            index = stop;
        }
        Ok(())
    }

    /// Allocates `n` contiguous free clusters (refcount 1); returns the host offset.
    pub fn alloc(&mut self, file: &File, n: u64) -> Result<u64, Qcow2Error> {
        let mut start = self.free_hint;
        let mut run = 0;
        let mut index = self.free_hint;
        let end_index = self.file_end >> self.cluster_bits;
        while run < n {
            if index >= end_index {
                // Past the end of the file every cluster is free.
                if run == 0 {
                    start = index;
                }
                break;
            }
            if self.get(file, index)? == 0 {
                if run == 0 {
                    start = index;
                }
                run += 1;
            } else {
                run = 0;
                if index == self.free_hint {
                    self.free_hint = index + 1;
                }
            }
            index += 1;
        }
        let off = start << self.cluster_bits;
        if off.saturating_add(n << self.cluster_bits) > super::header::MAX_HOST_OFFSET {
            return Err(Qcow2Error::Invalid("host offsets exhausted".into()));
        }
        self.file_end = self.file_end.max((start + n) << self.cluster_bits);
        self.set_range(file, start, n, 1)?;
        if start == self.free_hint {
            self.free_hint = start + n;
        }
        Ok(off)
    }

    /// Allocates `n` clusters at exactly `offset` if they are free.
    pub fn alloc_at(&mut self, file: &File, offset: u64, n: u64) -> Result<bool, Qcow2Error> {
        let first = offset >> self.cluster_bits;
        for i in first..first + n {
            if self.get(file, i)? != 0 {
                return Ok(false);
            }
        }
        self.file_end = self.file_end.max((first + n) << self.cluster_bits);
        self.set_range(file, first, n, 1)?;
        Ok(true)
    }

    /// Drops every cached block (after the table was rewritten elsewhere).
    pub fn clear_cache(&mut self) {
        self.cache.clear();
        self.dirty.clear();
        self.free_hint = 0;
    }

    /// Puts a block into the cache, writing out the changes of the block
    /// it pushes out.
    fn cache_put(&mut self, file: &File, off: u64, block: Vec<u8>) -> Result<(), Qcow2Error> {
        if let Some((old, data)) = self.cache.push(off, block) {
            if old != off {
                if let Some((lo, hi)) = self.dirty.remove(&old) {
                    file.write_all_at(&data[lo..hi], old + lo as u64)
                        .map_err(|e| Qcow2Error::io("refcount block", old, e))?;
                }
            }
        }
        Ok(())
    }

    /// Writes every change held in the cache (no sync).
    pub fn write_dirty(&mut self, file: &File) -> Result<(), Qcow2Error> {
        let mut dirty: Vec<(u64, (usize, usize))> = self.dirty.drain().collect();
        dirty.sort_unstable();
        for (off, (lo, hi)) in dirty {
            let block = self.cache.peek(&off).ok_or_else(|| cache_miss(off))?;
            file.write_all_at(&block[lo..hi], off + lo as u64)
                .map_err(|e| Qcow2Error::io("refcount block", off, e))?;
        }
        Ok(())
    }
}

fn cache_miss(off: u64) -> Qcow2Error {
    corrupt("refcount block", off, "vanished from the cache")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_of_every_width_round_trip() {
        for order in 0..=6u32 {
            let mut block = vec![0u8; 512];
            let n = (512 * 8) >> order;
            let max = max_refcount(order);
            for i in 0..n {
                set_entry(&mut block, i, order, (i as u64 * 7 + 1) & max);
            }
            for i in 0..n {
                assert_eq!(
                    get_entry(&block, i, order),
                    (i as u64 * 7 + 1) & max,
                    "order {order} entry {i}"
                );
            }
        }
        // QEMU's layout: 1-bit entries fill each byte from its low bit.
        let mut block = vec![0u8; 4];
        set_entry(&mut block, 1, 0, 1);
        assert_eq!(block[0], 2);
        set_entry(&mut block, 1, 2, 3);
        assert_eq!(block[0], 0x32);
    }
}
