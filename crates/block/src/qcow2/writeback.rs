//! Write-back metadata and the order it reaches the disk in.
//!
//! Guest writes change L2 tables, L1 entries and refcount blocks in memory
//! only; data goes to the file at once. [`Qcow2Image::flush_metadata`]
//! (the guest's flush, a dirty table leaving the cache, close) then writes
//! them in the order that keeps every state a power cut can leave safe to
//! open, with no more than leaked clusters to repair:
//!
//! 1. refcount blocks (new references are counted before they exist),
//!    then fdatasync, which also makes the data and copy-on-write clusters
//!    durable before anything points at them;
//! 2. L2 tables; when an L1 entry changed, fdatasync before writing it, so
//!    a new L2 table is complete before the L1 table points at it;
//! 3. fdatasync, then the refcounts of clusters whose last reference was
//!    dropped (a cluster is never free on disk while an old table on disk
//!    still points at it), then fdatasync.
//!
//! With lazy refcounts (version 3), the first flush sets the dirty bit
//! and makes it durable; refcounts then need no ordering of their own (the
//! next open rebuilds them if the image was not closed cleanly), so step 1
//! syncs only when data was copied into a new cluster (copy-on-write must
//! be durable before the L2 entry), step 3 needs no sync, and a clean
//! close clears the bit.
//!
//! This is the order QEMU keeps with its cache dependencies. Operations
//! that rewrite whole structures (snapshots, resize, check, refcount
//! rebuild) first flush, then run write-through with their own syncs
//! ([`Qcow2Image::structural`]).

use super::header::INCOMPAT_DIRTY;
use super::{corrupt, Meta, Qcow2Error, Qcow2Image};

/// Dropped references held back before a flush is forced.
const MAX_PENDING_FREES: usize = 1 << 16;

impl Qcow2Image {
    /// Writes every change held in memory, in the crash-safe order, and
    /// makes it durable.
    pub(super) fn flush_metadata(&self, m: &mut Meta) -> Result<(), Qcow2Error> {
        if self.read_only {
            return Ok(());
        }
        let tables_dirty = !m.dirty_l2.is_empty() || !m.dirty_l1.is_empty();
        let lazy = m.header.version >= 3 && m.header.lazy_refcounts();
        if lazy && !m.header.dirty() && (tables_dirty || !m.pending_frees.is_empty()) {
            // From here until a clean close, refcounts on disk may lag:
            // the dirty bit makes the next open rebuild them.
            m.header.incompatible_features |= INCOMPAT_DIRTY;
            self.write_incompatible(m)?;
            self.sync_meta("header")?;
        }
        m.refs.write_dirty(&self.file)?;
        if tables_dirty {
            if !lazy || m.copied_data {
                self.sync_meta("refcount block")?;
            }
            m.copied_data = false;
            self.write_dirty_l2(m)?;
            if !m.dirty_l1.is_empty() {
                self.sync_meta("L2 table")?;
                self.write_dirty_l1(m)?;
            }
        }
        if !m.pending_frees.is_empty() {
            if !lazy {
                self.sync_meta("L2 table")?;
            }
            self.apply_pending_frees(m)?;
            m.refs.write_dirty(&self.file)?;
        }
        self.sync_meta("image")?;
        m.refs.fresh_from = m.refs.file_end;
        Ok(())
    }

    /// Flushes and, when lazy refcounts marked the image dirty, marks it
    /// clean again (its refcounts are exact on disk now).
    pub(super) fn close_metadata(&self, m: &mut Meta) -> Result<(), Qcow2Error> {
        self.flush_metadata(m)?;
        if !self.read_only && m.header.dirty() {
            m.header.incompatible_features &= !INCOMPAT_DIRTY;
            self.write_incompatible(m)?;
            self.sync_meta("header")?;
        }
        Ok(())
    }

    pub(super) fn sync_meta(&self, what: &'static str) -> Result<(), Qcow2Error> {
        self.sync().map_err(|e| Qcow2Error::io(what, 0, e))
    }

    fn write_dirty_l2(&self, m: &mut Meta) -> Result<(), Qcow2Error> {
        let mut dirty: Vec<(u64, (usize, usize))> = m.dirty_l2.drain().collect();
        dirty.sort_unstable();
        for (off, (lo, hi)) in dirty {
            let table = m
                .l2_cache
                .peek(&off)
                .ok_or_else(|| corrupt("L2 table", off, "dirty table left the cache"))?;
            let raw: Vec<u8> = table[lo..hi].iter().flat_map(|e| e.to_be_bytes()).collect();
            self.write_at_meta(&raw, off + lo as u64 * 8, "L2 table")?;
        }
        Ok(())
    }

    fn write_dirty_l1(&self, m: &mut Meta) -> Result<(), Qcow2Error> {
        let dirty = std::mem::take(&mut m.dirty_l1);
        for i in dirty {
            let Some(e) = m.l1.get(i) else { continue };
            let at = m.header.l1_table_offset + i as u64 * 8;
            self.write_at_meta(&e.to_be_bytes(), at, "L1 table")?;
        }
        Ok(())
    }

    fn apply_pending_frees(&self, m: &mut Meta) -> Result<(), Qcow2Error> {
        let frees = std::mem::take(&mut m.pending_frees);
        for (first, n) in frees {
            self.release_now(m, first, n)?;
        }
        Ok(())
    }

    /// Drops one reference to `n` clusters from `first` at once; punches
    /// out those that become free.
    fn release_now(&self, m: &mut Meta, first: u64, n: u64) -> Result<(), Qcow2Error> {
        m.refs.add_range(&self.file, first, n, -1)?;
        for c in first..first + n {
            if m.refs.get(&self.file, c)? == 0 {
                self.file.punch_hole(c << self.cluster_bits, self.cs());
                if m.compressed_cursor >> self.cluster_bits == c {
                    m.compressed_cursor = 0;
                }
            }
        }
        Ok(())
    }

    /// Drops one reference to `n` clusters from `first`: at once when
    /// running write-through, else once the change that dropped it is
    /// durable.
    pub(super) fn drop_reference(
        &self,
        m: &mut Meta,
        first: u64,
        n: u64,
    ) -> Result<(), Qcow2Error> {
        if m.refs.write_through {
            return self.release_now(m, first, n);
        }
        m.pending_frees.push((first, n));
        Ok(())
    }

    /// Flushes when too many dropped references wait (memory stays bounded).
    pub(super) fn bound_pending(&self, m: &mut Meta) -> Result<(), Qcow2Error> {
        if m.pending_frees.len() > MAX_PENDING_FREES {
            self.flush_metadata(m)?;
        }
        Ok(())
    }

    /// Records that words `[lo, hi)` of the cached L2 table at `off` changed.
    pub(super) fn mark_l2_dirty(&self, m: &mut Meta, off: u64, lo: usize, hi: usize) {
        let r = m.dirty_l2.entry(off).or_insert((lo, hi));
        *r = (r.0.min(lo), r.1.max(hi));
    }

    /// Puts an L2 table into the cache; when that would push out a table
    /// with unwritten changes, flushes first.
    pub(super) fn cache_l2(
        &self,
        m: &mut Meta,
        off: u64,
        table: Vec<u64>,
    ) -> Result<(), Qcow2Error> {
        if !m.l2_cache.contains(&off) && m.l2_cache.len() >= m.l2_cache.cap().get() {
            let victim_dirty = m
                .l2_cache
                .peek_lru()
                .is_some_and(|(k, _)| m.dirty_l2.contains_key(k));
            if victim_dirty {
                self.flush_metadata(m)?;
            }
        }
        m.l2_cache.put(off, table);
        Ok(())
    }

    /// Runs `f`, which rewrites whole structures with its own syncs, after
    /// flushing and with every change written through.
    pub(super) fn structural<T>(
        &self,
        m: &mut Meta,
        f: impl FnOnce(&mut Meta) -> Result<T, Qcow2Error>,
    ) -> Result<T, Qcow2Error> {
        self.flush_metadata(m)?;
        m.refs.write_through = true;
        let r = f(m);
        m.refs.write_through = false;
        r
    }
}

impl Drop for Qcow2Image {
    fn drop(&mut self) {
        if self.read_only {
            return;
        }
        let mut m = self.lock();
        if let Err(e) = self.close_metadata(&mut m) {
            eprintln!(
                "qcow2 {}: metadata not written at close: {e}",
                self.path.display()
            );
        }
    }
}
