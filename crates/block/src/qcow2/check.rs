//! Consistency check and repair: walks every structure that references
//! clusters (header, L1/L2 tables and data of the active image and of each
//! snapshot, snapshot table, refcount table and blocks), compares the
//! references with the stored refcounts and the COPIED flags, and rebuilds
//! the refcount structures from the references when asked.

use super::header::MAX_HOST_OFFSET;
use super::refcount::{max_refcount, set_entry};
use super::{
    corrupt, snapshot, Meta, Qcow2Error, Qcow2Image, COMPRESSED, COPIED, OFFSET_MASK, ZERO,
};

/// Most clusters a check counts references for (u32 each).
const MAX_CHECK_CLUSTERS: u64 = 1 << 27;

/// What `check` may repair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckMode {
    /// Report only.
    Report,
    /// Repair leaked clusters.
    Leaks,
    /// Repair leaks and refcount and COPIED flag errors.
    All,
}

/// What a check found (qemu-img check's figures).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Refcount or flag errors.
    pub corruptions: u64,
    /// Clusters with a refcount but no reference.
    pub leaks: u64,
    /// Corruptions repaired.
    pub corruptions_fixed: u64,
    /// Leaks repaired.
    pub leaks_fixed: u64,
    /// Errors that stopped parts of the check.
    pub check_errors: u64,
    /// Host offset past the last used cluster.
    pub image_end_offset: u64,
    /// Guest clusters.
    pub total_clusters: u64,
    /// Guest clusters allocated in this image.
    pub allocated_clusters: u64,
    /// Allocated guest clusters not following their predecessor on the host.
    pub fragmented_clusters: u64,
    /// Compressed guest clusters.
    pub compressed_clusters: u64,
    /// One line per problem found.
    pub messages: Vec<String>,
}

/// References counted by walking the metadata.
struct Walk {
    counts: Vec<u32>,
    corruptions: u64,
    messages: Vec<String>,
    /// Active L2 tables and entries to check for COPIED flags:
    /// (host offset of the entry, entry, referenced cluster).
    copied: Vec<(u64, u64, u64)>,
    allocated: u64,
    fragmented: u64,
    compressed: u64,
}

impl Walk {
    fn add(&mut self, host: u64, len: u64, cs_bits: u32, what: &str) {
        if len == 0 {
            return;
        }
        let first = host >> cs_bits;
        let last = host.saturating_add(len - 1) >> cs_bits;
        if last >= self.counts.len() as u64 {
            self.corruptions += 1;
            self.messages.push(format!(
                "ERROR {what} at {host:#x} lies past the end of the image"
            ));
            return;
        }
        for c in first..=last {
            self.counts[c as usize] = self.counts[c as usize].saturating_add(1);
        }
    }
}

impl Qcow2Image {
    fn walk(&self, m: &mut Meta) -> Result<Walk, Qcow2Error> {
        let cs = self.cs();
        let cb = self.cluster_bits;
        if m.header.has_bitmaps() {
            return Err(Qcow2Error::Unsupported(
                "checking images with persistent bitmaps".into(),
            ));
        }
        let file_len = self
            .file
            .metadata()
            .map_err(|e| Qcow2Error::io("image", 0, e))?
            .len();
        let clusters = file_len.div_ceil(cs).max(m.refs.file_end >> cb);
        if clusters > MAX_CHECK_CLUSTERS {
            return Err(Qcow2Error::Invalid(format!(
                "{clusters} clusters are too many to check"
            )));
        }
        let mut w = Walk {
            counts: vec![0; clusters as usize],
            corruptions: 0,
            messages: Vec::new(),
            copied: Vec::new(),
            allocated: 0,
            fragmented: 0,
            compressed: 0,
        };
        w.add(0, cs, cb, "header");
        let l1_off = m.header.l1_table_offset;
        w.add(l1_off, m.header.l1_size as u64 * 8, cb, "L1 table");
        let l1 = m.l1.clone();
        self.walk_l1(&mut w, &l1, l1_off, true)?;
        let snaps = snapshot::read_table(&self.file, &m.header, file_len)?;
        if !snaps.is_empty() {
            let table_len = snapshot::serialize_table(&snaps).len() as u64;
            w.add(m.header.snapshots_offset, table_len, cb, "snapshot table");
        }
        for s in &snaps {
            w.add(
                s.l1_table_offset,
                s.l1_size as u64 * 8,
                cb,
                "snapshot L1 table",
            );
            let mut raw = vec![0u8; s.l1_size as usize * 8];
            self.pread(&mut raw, s.l1_table_offset, "snapshot L1 table")?;
            let sl1: Vec<u64> = raw.chunks_exact(8).map(super::be64).collect();
            self.walk_l1(&mut w, &sl1, s.l1_table_offset, false)?;
        }
        w.add(
            m.refs.table_offset,
            m.refs.table_clusters as u64 * cs,
            cb,
            "refcount table",
        );
        for (i, e) in m.refs.table.clone().iter().enumerate() {
            let off = e & !0x1ff;
            if off == 0 {
                continue;
            }
            if off % cs != 0 {
                w.corruptions += 1;
                w.messages.push(format!(
                    "ERROR refcount block {i} offset {off:#x} not cluster aligned"
                ));
                continue;
            }
            w.add(off, cs, cb, "refcount block");
        }
        Ok(w)
    }

    fn walk_l1(
        &self,
        w: &mut Walk,
        l1: &[u64],
        l1_off: u64,
        active: bool,
    ) -> Result<(), Qcow2Error> {
        let cs = self.cs();
        let cb = self.cluster_bits;
        let step = if self.extended { 2 } else { 1 };
        let mut prev_host = 0u64;
        let mut raw = vec![0u8; cs as usize];
        for (i, e) in l1.iter().enumerate() {
            let l2 = e & OFFSET_MASK;
            if l2 == 0 {
                continue;
            }
            if l2 % cs != 0 {
                w.corruptions += 1;
                w.messages.push(format!(
                    "ERROR L2 table offset {l2:#x} in L1 entry {i} not cluster aligned"
                ));
                continue;
            }
            w.add(l2, cs, cb, "L2 table");
            if active {
                w.copied.push((l1_off + i as u64 * 8, *e, l2 >> cb));
            }
            if l2 >= (w.counts.len() as u64) << cb {
                continue;
            }
            self.pread(&mut raw, l2, "L2 table")?;
            let entries: Vec<u64> = raw.chunks_exact(8).map(super::be64).collect();
            for j in (0..entries.len()).step_by(step) {
                let entry = entries[j];
                let at = l2 + j as u64 * 8;
                if entry & COMPRESSED != 0 {
                    let (host, len) = self.compressed_span(entry);
                    w.add(host, len, cb, "compressed cluster");
                    if active {
                        w.allocated += 1;
                        w.compressed += 1;
                        if entry & COPIED != 0 {
                            w.corruptions += 1;
                            w.messages.push(format!(
                                "ERROR compressed cluster entry at {at:#x} has COPIED set"
                            ));
                        }
                    }
                    continue;
                }
                let host = entry & OFFSET_MASK;
                if host == 0 {
                    continue;
                }
                if host % cs != 0 || host > MAX_HOST_OFFSET {
                    w.corruptions += 1;
                    w.messages.push(format!("ERROR data cluster offset {host:#x} in L2 entry at {at:#x} not cluster aligned"));
                    continue;
                }
                w.add(host, cs, cb, "data cluster");
                if active {
                    if self.extended || entry & ZERO == 0 {
                        w.allocated += 1;
                        if prev_host != 0 && host != prev_host + cs {
                            w.fragmented += 1;
                        }
                        prev_host = host;
                    }
                    w.copied.push((at, entry, host >> cb));
                }
            }
        }
        Ok(())
    }

    /// Checks the image; repairs per `mode` (needs a writable image).
    pub fn check(&self, mode: CheckMode) -> Result<CheckReport, Qcow2Error> {
        let mut m = self.lock();
        self.structural(&mut m, |m| self.check_locked(m, mode))
    }

    fn check_locked(&self, m: &mut Meta, mode: CheckMode) -> Result<CheckReport, Qcow2Error> {
        let mut w = self.walk(m)?;
        let mut report = CheckReport {
            total_clusters: m.header.size.div_ceil(self.cs()),
            ..Default::default()
        };
        let mut refcount_errors = 0;
        for c in 0..w.counts.len() as u64 {
            let stored = m.refs.get(&self.file, c)?;
            let counted = w.counts[c as usize] as u64;
            if stored < counted {
                refcount_errors += 1;
                report.messages.push(format!(
                    "ERROR cluster {c} refcount={stored} reference={counted}"
                ));
            } else if stored > counted {
                report.leaks += 1;
                report.messages.push(format!(
                    "{} cluster {c} refcount={stored} reference={counted}",
                    if counted == 0 {
                        "Leaked"
                    } else {
                        "ERROR (leak)"
                    }
                ));
            }
        }
        let flag_errors = self.copied_errors(m, &w.copied)?;
        for (at, entry, want) in &flag_errors {
            report.messages.push(format!(
                "ERROR OFLAG_COPIED at {at:#x}: entry {entry:#x} wants COPIED={want}"
            ));
        }
        report.corruptions = w.corruptions + refcount_errors + flag_errors.len() as u64;
        report.messages.append(&mut w.messages);
        report.allocated_clusters = w.allocated;
        report.fragmented_clusters = w.fragmented;
        report.compressed_clusters = w.compressed;
        report.image_end_offset = w
            .counts
            .iter()
            .rposition(|c| *c > 0)
            .map_or(0, |c| (c as u64 + 1) * self.cs());
        let repair_refcounts = match mode {
            CheckMode::Report => false,
            CheckMode::Leaks => report.leaks > 0 && refcount_errors == 0,
            CheckMode::All => report.leaks > 0 || refcount_errors > 0,
        };
        let repair_flags =
            mode == CheckMode::All && (refcount_errors > 0 || !flag_errors.is_empty());
        if (repair_refcounts || repair_flags) && self.read_only {
            return Err(Qcow2Error::Invalid(
                "repair needs the image opened for writing".into(),
            ));
        }
        if repair_refcounts {
            self.write_refcounts(m, w.counts)?;
            report.leaks_fixed = report.leaks;
            if mode == CheckMode::All {
                report.corruptions_fixed += refcount_errors;
            }
        }
        if repair_flags {
            // Against the refcounts as they are now (rebuilt or not).
            for (at, entry, want) in self.copied_errors(m, &w.copied)? {
                let fixed = if want {
                    entry | COPIED
                } else {
                    entry & !COPIED
                };
                self.write_at_meta(&fixed.to_be_bytes(), at, "L1/L2 table")?;
            }
            let l1_off = m.header.l1_table_offset;
            let mut raw = vec![0u8; m.l1.len() * 8];
            self.pread(&mut raw, l1_off, "L1 table")?;
            m.l1 = raw.chunks_exact(8).map(super::be64).collect();
            m.l2_cache.clear();
            report.corruptions_fixed += flag_errors.len() as u64;
        }
        let all_fixed = report.corruptions_fixed == report.corruptions && w.corruptions == 0;
        if mode == CheckMode::All && m.header.corrupt() && all_fixed {
            m.header.incompatible_features &= !super::header::INCOMPAT_CORRUPT;
            // Nothing is left to fix: the image is consistent again (as QEMU does).
            self.write_incompatible(m)?;
            self.sync().map_err(|e| Qcow2Error::io("header", 72, e))?;
        }
        if report.leaks_fixed > 0 || report.corruptions_fixed > 0 {
            self.sync().map_err(|e| Qcow2Error::io("image", 0, e))?;
        }
        Ok(report)
    }

    /// Entries whose COPIED flag disagrees with the stored refcount:
    /// (host offset of the entry, entry, whether COPIED should be set).
    fn copied_errors(
        &self,
        m: &mut Meta,
        entries: &[(u64, u64, u64)],
    ) -> Result<Vec<(u64, u64, bool)>, Qcow2Error> {
        let mut out = Vec::new();
        for (at, entry, cluster) in entries {
            let want = m.refs.get(&self.file, *cluster)? == 1;
            if (entry & COPIED != 0) != want {
                out.push((*at, *entry, want));
            }
        }
        Ok(out)
    }

    /// Rebuilds the refcount structures from the references (for images
    /// left dirty with lazy refcounts).
    pub(super) fn rebuild_refcounts(&self, m: &mut Meta) -> Result<(), Qcow2Error> {
        let w = self.walk(m)?;
        if w.corruptions > 0 {
            return Err(corrupt(
                "image",
                0,
                format!(
                    "dirty image has corrupt metadata: {}",
                    w.messages.join("; ")
                ),
            ));
        }
        self.write_refcounts(m, w.counts)
    }

    /// Writes a new refcount table and blocks (after the last used cluster)
    /// that hold exactly `counts`, and points the header at them.
    fn write_refcounts(&self, m: &mut Meta, mut counts: Vec<u32>) -> Result<(), Qcow2Error> {
        let cs = self.cs();
        let cb = self.cluster_bits;
        let order = m.refs.order();
        let epb = m.refs.entries_per_block();
        let max = max_refcount(order);
        // The old table and blocks the walk counted are replaced.
        let mut old: Vec<u64> = m
            .refs
            .table
            .iter()
            .map(|e| e & !0x1ff)
            .filter(|o| *o != 0 && o % cs == 0)
            .collect();
        old.extend((0..m.refs.table_clusters as u64).map(|i| m.refs.table_offset + (i << cb)));
        for o in old {
            if let Some(c) = counts.get_mut((o >> cb) as usize) {
                *c = c.saturating_sub(1);
            }
        }
        if let Some(c) = counts.iter().position(|c| *c as u64 > max) {
            return Err(Qcow2Error::Invalid(format!(
                "cluster {c} has {} references, more than {}-bit refcounts hold",
                counts[c],
                1 << order
            )));
        }
        let used = counts.iter().rposition(|c| *c > 0).map_or(1, |c| c + 1) as u64;
        let (mut blocks, mut table_clusters) = (0u64, 0u64);
        loop {
            let total = used + blocks + table_clusters;
            let nb = total.div_ceil(epb);
            let nt = (nb * 8).div_ceil(cs);
            if nb == blocks && nt == table_clusters {
                break;
            }
            (blocks, table_clusters) = (nb, nt);
        }
        if table_clusters * cs > super::header::MAX_REFTABLE_BYTES {
            return Err(Qcow2Error::Invalid(
                "refcount table would exceed its cap".into(),
            ));
        }
        let total = used + blocks + table_clusters;
        counts.resize(total as usize, 0);
        for c in used..total {
            counts[c as usize] = 1;
        }
        let table_off = used << cb;
        let blocks_off = table_off + (table_clusters << cb);
        let mut table = vec![0u8; (table_clusters * cs) as usize];
        let mut block = vec![0u8; cs as usize];
        for b in 0..blocks {
            block.fill(0);
            let first = b * epb;
            for i in 0..epb.min(total - first) {
                set_entry(
                    &mut block,
                    i as usize,
                    order,
                    counts[(first + i) as usize] as u64,
                );
            }
            let off = blocks_off + (b << cb);
            self.file
                .write_all_at(&block, off)
                .map_err(|e| Qcow2Error::io("refcount block", off, e))?;
            table[(b * 8) as usize..(b * 8 + 8) as usize].copy_from_slice(&off.to_be_bytes());
        }
        self.write_at_meta(&table, table_off, "refcount table")?;
        self.sync()
            .map_err(|e| Qcow2Error::io("refcount table", table_off, e))?;
        let mut fields = [0u8; 12];
        fields[..8].copy_from_slice(&table_off.to_be_bytes());
        fields[8..].copy_from_slice(&(table_clusters as u32).to_be_bytes());
        self.write_at_meta(&fields, 48, "header")?;
        self.sync().map_err(|e| Qcow2Error::io("header", 48, e))?;
        m.refs.table = table.chunks_exact(8).map(super::be64).collect();
        m.refs.table_offset = table_off;
        m.refs.table_clusters = table_clusters as u32;
        m.refs.clear_cache();
        m.refs.file_end = total << cb;
        m.header.refcount_table_offset = table_off;
        m.header.refcount_table_clusters = table_clusters as u32;
        // Everything after the new structures is free; the file may end there.
        self.file
            .set_len(total << cb)
            .map_err(|e| Qcow2Error::io("image", total << cb, e))?;
        Ok(())
    }
}
