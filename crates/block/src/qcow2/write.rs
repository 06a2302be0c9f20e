//! Guest writes: in-place writes to clusters this image owns alone, fresh
//! contiguous allocations (copy-on-write from the backing file, shared or
//! compressed clusters), L2 table allocation and copy-on-write, zeroing,
//! discard and compressed writes. Order: refcounts, then data, then the
//! L2 entry, then the L1 entry; old clusters are released last.

use super::read::Kind;
use super::{
    compress, corrupt, Meta, Qcow2Error, Qcow2Image, COMPRESSED, COPIED, OFFSET_MASK, ZERO,
};

/// Subcluster bitmap of a fully allocated cluster.
const ALL_ALLOCATED: u64 = 0xffff_ffff;
/// Subcluster bitmap of a cluster that reads as zeros.
const ALL_ZERO: u64 = 0xffff_ffff << 32;

impl Qcow2Image {
    /// Whether the cluster of this entry may be written in place.
    fn in_place(&self, entry: u64, bitmap: u64) -> bool {
        entry & COPIED != 0
            && entry & COMPRESSED == 0
            && entry & OFFSET_MASK != 0
            && if self.extended {
                bitmap == ALL_ALLOCATED
            } else {
                entry & ZERO == 0
            }
    }

    /// Writes entries `[first, first + entries.len())` of the L2 table of
    /// `l1_idx` (loaded for writing), in the cache and on disk.
    pub(super) fn set_l2_entries(
        &self,
        m: &mut Meta,
        l1_idx: usize,
        first: usize,
        entries: &[(u64, u64)],
    ) -> Result<(), Qcow2Error> {
        let off = self
            .load_l2(m, l1_idx)?
            .ok_or_else(|| corrupt("L1 table", m.header.l1_table_offset, "L2 table vanished"))?;
        let table = m
            .l2_cache
            .get_mut(&off)
            .ok_or_else(|| corrupt("L2 table", off, "vanished from the cache"))?;
        let words = if self.extended { 2 } else { 1 };
        let (lo, hi) = (first * words, (first + entries.len()) * words);
        if hi > table.len() {
            return Err(Qcow2Error::Invalid(format!(
                "L2 entries {first}.. past the table"
            )));
        }
        for (i, (e, b)) in entries.iter().enumerate() {
            table[(first + i) * words] = *e;
            if self.extended {
                table[(first + i) * words + 1] = *b;
            }
        }
        if m.refs.write_through {
            let raw: Vec<u8> = table[lo..hi].iter().flat_map(|e| e.to_be_bytes()).collect();
            return self.write_at_meta(&raw, off + lo as u64 * 8, "L2 table");
        }
        self.mark_l2_dirty(m, off, lo, hi);
        Ok(())
    }

    /// The L2 table of `l1_idx`, allocated (or copied, when shared with a
    /// snapshot) so that it may be written.
    pub(super) fn l2_for_write(&self, m: &mut Meta, l1_idx: usize) -> Result<u64, Qcow2Error> {
        let entry = *m
            .l1
            .get(l1_idx)
            .ok_or_else(|| Qcow2Error::Invalid(format!("L1 index {l1_idx} past the L1 table")))?;
        let old = entry & OFFSET_MASK;
        if old != 0 && entry & COPIED != 0 {
            self.load_l2(m, l1_idx)?;
            return Ok(old);
        }
        let mut table = if old == 0 {
            vec![0u64; (self.cs() / 8) as usize]
        } else {
            self.load_l2(m, l1_idx)?;
            m.l2_cache
                .get(&old)
                .cloned()
                .ok_or_else(|| corrupt("L2 table", old, "vanished from the cache"))?
        };
        if old != 0 {
            // The copy's data clusters stay shared: COPIED only where the refcount is 1.
            let step = if self.extended { 2 } else { 1 };
            for i in (0..table.len()).step_by(step) {
                let e = table[i];
                let host = e & OFFSET_MASK;
                if e & COMPRESSED != 0 || host == 0 {
                    continue;
                }
                let rc = m.refs.get(&self.file, host >> self.cluster_bits)?;
                table[i] = if rc == 1 { e | COPIED } else { e & !COPIED };
            }
        }
        let new = m.refs.alloc(&self.file, 1)?;
        let words = table.len();
        if m.refs.write_through {
            let raw: Vec<u8> = table.iter().flat_map(|e| e.to_be_bytes()).collect();
            self.write_at_meta(&raw, new, "L2 table")?;
            self.cache_l2(m, new, table)?;
            m.l1[l1_idx] = new | COPIED;
            let at = m.header.l1_table_offset + l1_idx as u64 * 8;
            self.write_at_meta(&(new | COPIED).to_be_bytes(), at, "L1 table")?;
        } else {
            self.cache_l2(m, new, table)?;
            self.mark_l2_dirty(m, new, 0, words);
            m.l1[l1_idx] = new | COPIED;
            m.dirty_l1.insert(l1_idx);
        }
        if old != 0 {
            self.drop_reference(m, old >> self.cluster_bits, 1)?;
        }
        Ok(new)
    }

    /// Drops the references an old L2 entry held; punches out clusters
    /// that become free.
    pub(super) fn release(&self, m: &mut Meta, entry: u64) -> Result<(), Qcow2Error> {
        let (first, last) = if entry & COMPRESSED != 0 {
            let (host, len) = self.compressed_span(entry);
            (
                host >> self.cluster_bits,
                (host + len - 1) >> self.cluster_bits,
            )
        } else {
            let host = entry & OFFSET_MASK;
            if host == 0 {
                return Ok(());
            }
            (host >> self.cluster_bits, host >> self.cluster_bits)
        };
        self.drop_reference(m, first, last - first + 1)
    }

    /// Whether a cluster with this L2 entry reads as zeros, whatever the
    /// backing file holds.
    fn reads_zero(&self, entry: u64, bitmap: u64) -> bool {
        if entry & (OFFSET_MASK | COMPRESSED) != 0 {
            return false;
        }
        if self.extended {
            bitmap == ALL_ZERO || (bitmap == 0 && self.backing.is_none())
        } else {
            entry & ZERO != 0 || self.backing.is_none()
        }
    }

    /// Writes `data` at guest `offset` (within the disk).
    pub(super) fn write_locked(
        &self,
        m: &mut Meta,
        data: &[u8],
        offset: u64,
    ) -> Result<(), Qcow2Error> {
        let cs = self.cs();
        let end = offset + data.len() as u64;
        let mut g = offset;
        while g < end {
            let (l1_idx, _) = self.indices(g);
            let table_end = ((l1_idx as u64 + 1) * self.l2_entries()) << self.cluster_bits;
            let seg_end = end.min(table_end);
            self.l2_for_write(m, l1_idx)?;
            while g < seg_end {
                let (entry, bitmap) = self.l2_entry(m, g)?;
                let cluster = g & !(cs - 1);
                if self.in_place(entry, bitmap) {
                    let host = (entry & OFFSET_MASK) + (g - cluster);
                    let mut run_end = (cluster + cs).min(seg_end);
                    while run_end < seg_end {
                        let (e, b) = self.l2_entry(m, run_end)?;
                        if !self.in_place(e, b) || (e & OFFSET_MASK) != host + (run_end - g) {
                            break;
                        }
                        run_end = (run_end + cs).min(seg_end);
                    }
                    let src = &data[(g - offset) as usize..(run_end - offset) as usize];
                    self.file
                        .write_all_at(src, host)
                        .map_err(|e| Qcow2Error::io("data cluster", host, e))?;
                    g = run_end;
                } else if self.by_subcluster(entry, g, seg_end) {
                    g = self.write_subclusters(m, data, offset, g, seg_end)?;
                } else {
                    g = self.write_fresh(m, data, offset, g, seg_end)?;
                }
            }
        }
        self.bound_pending(m)
    }

    /// Writes the clusters from `g` on that need new host clusters (up to
    /// `seg_end` or the first in-place cluster) into one fresh contiguous
    /// allocation; returns where it stopped.
    fn write_fresh(
        &self,
        m: &mut Meta,
        data: &[u8],
        offset: u64,
        g: u64,
        seg_end: u64,
    ) -> Result<u64, Qcow2Error> {
        let cs = self.cs();
        let cluster = g & !(cs - 1);
        let mut olds = vec![self.l2_entry(m, g)?];
        let mut run_end = (cluster + cs).min(seg_end);
        while run_end < seg_end && olds.len() < 4096 {
            let (e, b) = self.l2_entry(m, run_end)?;
            if self.in_place(e, b) || self.by_subcluster(e, run_end, seg_end) {
                break;
            }
            olds.push((e, b));
            run_end = (run_end + cs).min(seg_end);
        }
        let k = olds.len() as u64;
        let last_cluster = cluster + (k - 1) * cs;
        let src = &data[(g - offset) as usize..(run_end - offset) as usize];
        let head = g - cluster;
        let tail_partial = run_end < last_cluster + cs;
        let host = m.refs.alloc(&self.file, k)?;
        if head == 0 && !tail_partial {
            self.file
                .write_all_at(src, host)
                .map_err(|e| Qcow2Error::io("data cluster", host, e))?;
        } else if host >= m.refs.fresh_from && olds.iter().all(|&(e, b)| self.reads_zero(e, b)) {
            // Clusters never written since the last sync read as zeros
            // already, and so did the old ones: write the data alone.
            self.file
                .write_all_at(src, host + head)
                .map_err(|e| Qcow2Error::io("data cluster", host, e))?;
            let end = host + k * cs;
            if self.file.len() < end {
                // The file must cover the clusters before an L2 entry
                // points at them: a zero byte at their end extends it.
                self.file
                    .write_all_at(&[0], end - 1)
                    .map_err(|e| Qcow2Error::io("data cluster", end - 1, e))?;
                m.copied_data = true;
            }
        } else {
            let mut buf = vec![0u8; (k * cs) as usize];
            m.copied_data = true;
            if head != 0 {
                self.read_locked(m, &mut buf[..cs as usize], cluster)?;
            }
            if tail_partial && (k > 1 || head == 0) {
                let at = ((k - 1) * cs) as usize;
                self.read_locked(m, &mut buf[at..at + cs as usize], last_cluster)?;
            } else if tail_partial && head != 0 {
                // One cluster, partial at both ends: already read above.
            }
            buf[head as usize..head as usize + src.len()].copy_from_slice(src);
            self.file
                .write_all_at(&buf, host)
                .map_err(|e| Qcow2Error::io("data cluster", host, e))?;
        }
        let bitmap = if self.extended { ALL_ALLOCATED } else { 0 };
        let entries: Vec<(u64, u64)> = (0..k).map(|i| ((host + i * cs) | COPIED, bitmap)).collect();
        let (l1_idx, l2_idx) = self.indices(cluster);
        self.set_l2_entries(m, l1_idx, l2_idx, &entries)?;
        for (e, _) in olds {
            self.release(m, e)?;
        }
        Ok(run_end)
    }

    /// Makes `[offset, offset + len)` read as zeros, deallocating whole clusters.
    pub(super) fn zero_locked(
        &self,
        m: &mut Meta,
        offset: u64,
        len: u64,
        deallocate: bool,
    ) -> Result<(), Qcow2Error> {
        let cs = self.cs();
        let size = m.header.size;
        let end = offset + len;
        let mut g = offset;
        while g < end {
            let cluster = g & !(cs - 1);
            let cl_end = (cluster + cs).min(end);
            let full = g == cluster && (cl_end == cluster + cs || cl_end == size);
            if !full {
                let (kind, l) = self.lookup(m, g)?;
                let reads_zero =
                    kind == Kind::Zero || (kind == Kind::Unallocated && self.backing.is_none());
                if !(reads_zero && g + l >= cl_end) {
                    let zeros = vec![0u8; (cl_end - g) as usize];
                    self.write_locked(m, &zeros, g)?;
                }
                g = cl_end;
                continue;
            }
            let (l1_idx, first) = self.indices(cluster);
            let table_end = ((l1_idx as u64 + 1) * self.l2_entries()) << self.cluster_bits;
            let mut run_end = cl_end;
            while run_end < end.min(table_end) {
                let next = (run_end + cs).min(end);
                if !(next == run_end + cs || next == size) {
                    break;
                }
                run_end = next;
            }
            let v2_backed =
                !deallocate && m.header.version < 3 && !self.extended && self.backing.is_some();
            if v2_backed {
                // Version 2 has no zero flag: store zeros over the backing data.
                let zeros = vec![0u8; (run_end - cluster) as usize];
                self.write_locked(m, &zeros, cluster)?;
                g = run_end;
                continue;
            }
            let new = match (self.extended, self.backing.is_some() && !deallocate) {
                (true, true) => (0, ALL_ZERO),
                (false, true) => (ZERO, 0),
                (_, false) => (0, 0),
            };
            let n = (run_end - cluster).div_ceil(cs) as usize;
            let mut olds = Vec::with_capacity(n);
            for i in 0..n {
                olds.push(self.l2_entry(m, cluster + i as u64 * cs)?);
            }
            if olds.iter().any(|o| *o != new) {
                let unallocated_table = m.l1.get(l1_idx).is_none_or(|e| e & OFFSET_MASK == 0);
                if !(unallocated_table && new == (0, 0)) {
                    self.l2_for_write(m, l1_idx)?;
                    self.set_l2_entries(m, l1_idx, first, &vec![new; n])?;
                    for (e, _) in olds {
                        self.release(m, e)?;
                    }
                }
            }
            g = run_end;
        }
        self.bound_pending(m)
    }

    /// Compresses one cluster's worth of guest data (`data.len()` at most
    /// the cluster size) without holding the image lock; `None` when it
    /// does not shrink.
    pub fn compress_cluster(&self, data: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let kind = self.lock().header.compression_type;
        let mut full;
        let input = if (data.len() as u64) < self.cs() {
            full = data.to_vec();
            full.resize(self.cs() as usize, 0);
            &full[..]
        } else {
            data
        };
        Ok(compress::compress(kind, input, self.cs() as usize - 1)?)
    }

    /// Writes one cluster at cluster-aligned guest `offset` compressed
    /// (`packed` from [`compress_cluster`](Self::compress_cluster)), or
    /// plainly when `packed` is `None`.
    pub fn write_compressed_cluster(
        &self,
        offset: u64,
        data: &[u8],
        packed: Option<&[u8]>,
    ) -> io::Result<()> {
        self.check_writable()?;
        let cs = self.cs();
        let mut m = self.lock();
        if offset % cs != 0 || data.len() as u64 > cs || offset + data.len() as u64 > m.header.size
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "compressed write not one cluster within the disk",
            ));
        }
        let Some(packed) = packed else {
            self.write_locked(&mut m, data, offset)?;
            return Ok(());
        };
        let (l1_idx, l2_idx) = self.indices(offset);
        self.l2_for_write(&mut m, l1_idx)?;
        let (old, _) = self.l2_entry(&mut m, offset)?;
        let host = self.alloc_bytes(&mut m, packed.len() as u64)?;
        self.file
            .write_all_at(packed, host)
            .map_err(|e| Qcow2Error::io("compressed cluster", host, e))?;
        let x = 62 - (self.cluster_bits - 8);
        let extra = ((host + packed.len() as u64 - 1) >> 9) - (host >> 9);
        let entry = COMPRESSED | (extra << x) | host;
        self.set_l2_entries(&mut m, l1_idx, l2_idx, &[(entry, 0)])?;
        self.release(&mut m, old)?;
        Ok(())
    }

    /// Room for `len` bytes of compressed data, packed after the previous
    /// compressed cluster where it fits.
    fn alloc_bytes(&self, m: &mut Meta, len: u64) -> Result<u64, Qcow2Error> {
        let cs = self.cs();
        let cur = m.compressed_cursor;
        if cur % cs != 0 {
            let room = cs - cur % cs;
            let extra = if len > room {
                (len - room).div_ceil(cs)
            } else {
                0
            };
            let next = (cur & !(cs - 1)) + cs;
            if extra == 0 || m.refs.alloc_at(&self.file, next, extra)? {
                m.refs
                    .add_range(&self.file, cur >> self.cluster_bits, 1, 1)?;
                m.compressed_cursor = cur + len;
                return Ok(cur);
            }
        }
        let host = m.refs.alloc(&self.file, len.div_ceil(cs))?;
        m.compressed_cursor = host + len;
        Ok(host)
    }
}

use std::io;
