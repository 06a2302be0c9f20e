//! The internal snapshot table: parsing (every entry bounded by the file
//! and the caps) and listing.

use super::host_file::HostFile as File;

use super::header::{Header, MAX_L1_BYTES};
use super::{corrupt, Qcow2Error};

mod view;
pub use view::{SnapshotSelector, SnapshotView};

/// Largest snapshot table read (QEMU's cap on the table is 64 MiB).
const MAX_TABLE_BYTES: u64 = 64 << 20;
/// Largest extra data per entry (QEMU's cap).
const MAX_EXTRA: u32 = 1024;

/// One internal snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Host offset of its L1 table.
    pub l1_table_offset: u64,
    /// L1 entries.
    pub l1_size: u32,
    /// Unique ID string.
    pub id: String,
    /// Name.
    pub name: String,
    /// Creation time (seconds since the epoch).
    pub date_sec: u32,
    /// Creation time, nanoseconds part.
    pub date_nsec: u32,
    /// Guest clock when taken, in nanoseconds.
    pub vm_clock_nsec: u64,
    /// Size of saved VM state (0: disk only).
    pub vm_state_size: u64,
    /// Guest size when taken (0: unknown).
    pub disk_size: u64,
    /// Extra data kept verbatim.
    pub extra: Vec<u8>,
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    ((be_u32(b, at) as u64) << 32) | be_u32(b, at + 4) as u64
}

/// Reads the snapshot table of `header`.
pub fn read_table(
    file: &File,
    header: &Header,
    file_len: u64,
) -> Result<Vec<SnapshotInfo>, Qcow2Error> {
    let n = header.nb_snapshots;
    if n == 0 {
        return Ok(Vec::new());
    }
    let start = header.snapshots_offset;
    let avail = file_len.saturating_sub(start).min(MAX_TABLE_BYTES);
    let mut raw = vec![0u8; avail as usize];
    file.read_exact_at(&mut raw, start)
        .map_err(|e| Qcow2Error::io("snapshot table", start, e))?;
    let mut at = 0usize;
    let mut out = Vec::with_capacity(n.min(1024) as usize);
    for i in 0..n {
        let here = start + at as u64;
        let short = || {
            corrupt(
                "snapshot table",
                here,
                format!("entry {i} runs past the end of the table"),
            )
        };
        if at + 40 > raw.len() {
            return Err(short());
        }
        let e = &raw[at..];
        let l1_table_offset = be_u64(e, 0);
        let l1_size = be_u32(e, 8);
        let id_len = u16::from_be_bytes([e[12], e[13]]) as usize;
        let name_len = u16::from_be_bytes([e[14], e[15]]) as usize;
        let extra_len = be_u32(e, 36);
        if extra_len > MAX_EXTRA {
            return Err(corrupt(
                "snapshot table",
                here,
                format!("entry {i} has {extra_len} bytes of extra data"),
            ));
        }
        let total = 40 + extra_len as usize + id_len + name_len;
        if at + total > raw.len() {
            return Err(short());
        }
        if l1_size as u64 * 8 > MAX_L1_BYTES {
            return Err(corrupt(
                "snapshot table",
                here,
                format!("entry {i} L1 size {l1_size} above the cap"),
            ));
        }
        let cs = header.cluster_size();
        if l1_table_offset % cs != 0
            || l1_table_offset.saturating_add(l1_size as u64 * 8) > file_len
        {
            return Err(corrupt(
                "snapshot table",
                here,
                format!("entry {i} L1 table at {l1_table_offset:#x} unaligned or outside the file"),
            ));
        }
        let extra = e[40..40 + extra_len as usize].to_vec();
        let (mut vm_state_size, mut disk_size) = (be_u32(e, 32) as u64, 0);
        if extra.len() >= 8 {
            vm_state_size = be_u64(&extra, 0);
        }
        if extra.len() >= 16 {
            disk_size = be_u64(&extra, 8);
        }
        let text =
            |from: usize, len: usize| String::from_utf8_lossy(&e[from..from + len]).into_owned();
        let id = text(40 + extra_len as usize, id_len);
        let name = text(40 + extra_len as usize + id_len, name_len);
        out.push(SnapshotInfo {
            l1_table_offset,
            l1_size,
            id,
            name,
            date_sec: be_u32(e, 16),
            date_nsec: be_u32(e, 20),
            vm_clock_nsec: be_u64(e, 24),
            vm_state_size,
            disk_size,
            extra,
        });
        at += total.div_ceil(8) * 8;
    }
    Ok(out)
}

/// Serialises snapshot table entries.
pub fn serialize_table(snaps: &[SnapshotInfo]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in snaps {
        let mut extra = s.extra.clone();
        if extra.len() < 16 {
            extra.resize(16, 0);
        }
        extra[0..8].copy_from_slice(&s.vm_state_size.to_be_bytes());
        extra[8..16].copy_from_slice(&s.disk_size.to_be_bytes());
        out.extend_from_slice(&s.l1_table_offset.to_be_bytes());
        out.extend_from_slice(&s.l1_size.to_be_bytes());
        out.extend_from_slice(&(s.id.len() as u16).to_be_bytes());
        out.extend_from_slice(&(s.name.len() as u16).to_be_bytes());
        out.extend_from_slice(&s.date_sec.to_be_bytes());
        out.extend_from_slice(&s.date_nsec.to_be_bytes());
        out.extend_from_slice(&s.vm_clock_nsec.to_be_bytes());
        out.extend_from_slice(&(s.vm_state_size.min(u32::MAX as u64) as u32).to_be_bytes());
        out.extend_from_slice(&(extra.len() as u32).to_be_bytes());
        out.extend_from_slice(&extra);
        out.extend_from_slice(s.id.as_bytes());
        out.extend_from_slice(s.name.as_bytes());
        out.resize(out.len().div_ceil(8) * 8, 0);
    }
    out
}

impl super::Qcow2Image {
    /// The internal snapshots.
    pub fn snapshots(&self) -> std::io::Result<Vec<SnapshotInfo>> {
        let m = self.lock();
        let len = self.file.metadata()?.len();
        Ok(read_table(&self.file, &m.header, len)?)
    }
}

use super::{Meta, Qcow2Image, COMPRESSED, COPIED, OFFSET_MASK};

impl Qcow2Image {
    /// Adds `delta` to the refcount of every L2 table and data cluster the
    /// L1 table `l1` references (one walk's worth, as check counts them).
    fn tree_refs(&self, m: &mut Meta, l1: &[u64], delta: i64) -> Result<(), Qcow2Error> {
        let cs = self.cs();
        let step = if self.extended { 2 } else { 1 };
        let mut raw = vec![0u8; cs as usize];
        for e in l1 {
            let l2 = e & OFFSET_MASK;
            if l2 == 0 {
                continue;
            }
            if l2 % cs != 0 {
                return Err(corrupt(
                    "L1 table",
                    l2,
                    "L2 table offset not cluster aligned",
                ));
            }
            self.pread(&mut raw, l2, "L2 table")?;
            for i in (0..raw.len() / 8).step_by(step) {
                let entry = super::be64(&raw[i * 8..]);
                if entry & COMPRESSED != 0 {
                    let (host, len) = self.compressed_span(entry);
                    let first = host >> self.cluster_bits;
                    let last = (host + len - 1) >> self.cluster_bits;
                    m.refs
                        .add_range(&self.file, first, last - first + 1, delta)?;
                } else if entry & OFFSET_MASK != 0 {
                    m.refs.add_range(
                        &self.file,
                        (entry & OFFSET_MASK) >> self.cluster_bits,
                        1,
                        delta,
                    )?;
                }
            }
            m.refs
                .add_range(&self.file, l2 >> self.cluster_bits, 1, delta)?;
        }
        Ok(())
    }

    /// Sets the COPIED flags of the active L1 and L2 tables from the
    /// refcounts (`clear_all`: clears every one, before sharing them).
    fn fix_copied(&self, m: &mut Meta, clear_all: bool) -> Result<(), Qcow2Error> {
        let cs = self.cs();
        let step = if self.extended { 2 } else { 1 };
        let mut raw = vec![0u8; cs as usize];
        for i in 0..m.l1.len() {
            let e = m.l1[i];
            let l2 = e & OFFSET_MASK;
            if l2 == 0 {
                continue;
            }
            let sole = !clear_all && m.refs.get(&self.file, l2 >> self.cluster_bits)? == 1;
            let fixed = if sole { e | COPIED } else { e & !COPIED };
            if fixed != e {
                m.l1[i] = fixed;
                let at = m.header.l1_table_offset + i as u64 * 8;
                self.write_at_meta(&fixed.to_be_bytes(), at, "L1 table")?;
            }
            self.pread(&mut raw, l2, "L2 table")?;
            let mut changed = false;
            for j in (0..raw.len() / 8).step_by(step) {
                let entry = super::be64(&raw[j * 8..]);
                if entry & COMPRESSED != 0 || entry & OFFSET_MASK == 0 {
                    continue;
                }
                let rc = if sole {
                    m.refs
                        .get(&self.file, (entry & OFFSET_MASK) >> self.cluster_bits)?
                } else {
                    0
                };
                let want = if sole && rc == 1 {
                    entry | COPIED
                } else {
                    entry & !COPIED
                };
                if want != entry {
                    raw[j * 8..j * 8 + 8].copy_from_slice(&want.to_be_bytes());
                    changed = true;
                }
            }
            if changed {
                self.write_at_meta(&raw, l2, "L2 table")?;
            }
        }
        m.l2_cache.clear();
        Ok(())
    }

    /// Writes `snaps` as the new snapshot table and frees the old one.
    fn replace_table(&self, m: &mut Meta, snaps: &[SnapshotInfo]) -> Result<(), Qcow2Error> {
        let cs = self.cs();
        let old = (
            m.header.snapshots_offset,
            serialize_table(&self.snapshots_locked(m)?).len() as u64,
        );
        let raw = serialize_table(snaps);
        let off = if raw.is_empty() {
            0
        } else {
            let off = m.refs.alloc(&self.file, (raw.len() as u64).div_ceil(cs))?;
            self.write_at_meta(&raw, off, "snapshot table")?;
            off
        };
        self.sync()
            .map_err(|e| Qcow2Error::io("snapshot table", off, e))?;
        let mut fields = [0u8; 12];
        fields[..4].copy_from_slice(&(snaps.len() as u32).to_be_bytes());
        fields[4..].copy_from_slice(&off.to_be_bytes());
        self.write_at_meta(&fields, 60, "header")?;
        // The header no longer points at the old table before it is freed.
        self.sync_meta("header")?;
        m.header.nb_snapshots = snaps.len() as u32;
        m.header.snapshots_offset = off;
        if old.0 != 0 && old.1 > 0 {
            m.refs.add_range(
                &self.file,
                old.0 >> self.cluster_bits,
                old.1.div_ceil(cs),
                -1,
            )?;
        }
        Ok(())
    }

    fn snapshots_locked(&self, m: &Meta) -> Result<Vec<SnapshotInfo>, Qcow2Error> {
        let len = self
            .file
            .metadata()
            .map_err(|e| Qcow2Error::io("image", 0, e))?
            .len();
        read_table(&self.file, &m.header, len)
    }

    fn find(snaps: &[SnapshotInfo], name: &str) -> Result<usize, Qcow2Error> {
        snaps
            .iter()
            .position(|s| s.name == name)
            .or_else(|| snaps.iter().position(|s| s.id == name))
            .ok_or_else(|| Qcow2Error::Invalid(format!("snapshot '{name}' not found")))
    }

    /// Takes an internal snapshot of the disk (no VM state) named `name`.
    pub fn create_snapshot(&self, name: &str) -> std::io::Result<()> {
        self.check_writable()?;
        let mut m = self.lock();
        Ok(self.structural(&mut m, |m| self.create_snapshot_locked(m, name))?)
    }

    fn create_snapshot_locked(&self, m: &mut Meta, name: &str) -> Result<(), Qcow2Error> {
        let mut snaps = self.snapshots_locked(m)?;
        if name.is_empty()
            || name.len() > 65535
            || snaps.iter().any(|s| s.name == name || s.id == name)
        {
            return Err(Qcow2Error::Invalid(format!(
                "snapshot name '{name}' is empty, too long or taken"
            )));
        }
        if m.refs.order() == 0 {
            // Every shared cluster needs a refcount of 2.
            return Err(Qcow2Error::Unsupported(
                "snapshots of images with 1-bit refcounts".into(),
            ));
        }
        let cs = self.cs();
        let l1 = m.l1.clone();
        let bytes = l1.len() as u64 * 8;
        let l1_off = if bytes == 0 {
            0
        } else {
            let off = m.refs.alloc(&self.file, bytes.div_ceil(cs))?;
            let raw: Vec<u8> = l1
                .iter()
                .flat_map(|e| (e & !COPIED).to_be_bytes())
                .collect();
            self.write_at_meta(&raw, off, "snapshot L1 table")?;
            off
        };
        // Crash-safe order: no table may claim sole ownership (COPIED) of
        // a cluster whose refcount on disk is already shared.
        self.fix_copied(m, true)?;
        self.sync_meta("L2 table")?;
        self.tree_refs(m, &l1, 1)?;
        self.sync_meta("refcount block")?;
        let id = snaps
            .iter()
            .filter_map(|s| s.id.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
            + 1;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        snaps.push(SnapshotInfo {
            l1_table_offset: l1_off,
            l1_size: l1.len() as u32,
            id: id.to_string(),
            name: name.to_string(),
            date_sec: now.as_secs() as u32,
            date_nsec: now.subsec_nanos(),
            vm_clock_nsec: 0,
            vm_state_size: 0,
            disk_size: m.header.size,
            extra: Vec::new(),
        });
        self.replace_table(m, &snaps)?;
        self.sync_meta("image")?;
        Ok(())
    }

    /// Reverts the disk to snapshot `name` (its name or ID).
    pub fn apply_snapshot(&self, name: &str) -> std::io::Result<()> {
        self.check_writable()?;
        let mut m = self.lock();
        Ok(self.structural(&mut m, |m| self.apply_snapshot_locked(m, name))?)
    }

    fn apply_snapshot_locked(&self, m: &mut Meta, name: &str) -> Result<(), Qcow2Error> {
        let snaps = self.snapshots_locked(m)?;
        let s = &snaps[Self::find(&snaps, name)?];
        let mut raw = vec![0u8; s.l1_size as usize * 8];
        self.pread(&mut raw, s.l1_table_offset, "snapshot L1 table")?;
        let snap_l1: Vec<u64> = raw.chunks_exact(8).map(super::be64).collect();
        if snap_l1.len() > m.l1.len() {
            return Err(Qcow2Error::Unsupported(
                "applying a snapshot larger than the current L1 table".into(),
            ));
        }
        self.tree_refs(m, &snap_l1, 1)?;
        // The snapshot's clusters are counted before the L1 table points at them.
        self.sync_meta("refcount block")?;
        let old = m.l1.clone();
        let mut new = snap_l1.clone();
        new.resize(old.len(), 0);
        let bytes: Vec<u8> = new
            .iter()
            .flat_map(|e| (e & !COPIED).to_be_bytes())
            .collect();
        self.write_at_meta(&bytes, m.header.l1_table_offset, "L1 table")?;
        self.sync_meta("image")?;
        m.l1 = new.iter().map(|e| e & !COPIED).collect();
        self.tree_refs(m, &old, -1)?;
        if s.disk_size != 0 && s.disk_size != m.header.size {
            self.write_at_meta(&s.disk_size.to_be_bytes(), 24, "header")?;
            m.header.size = s.disk_size;
        }
        self.fix_copied(m, false)?;
        m.compressed_cache = None;
        m.compressed_cursor = 0;
        self.sync_meta("image")?;
        Ok(())
    }

    /// Deletes snapshot `name` (its name or ID).
    pub fn delete_snapshot(&self, name: &str) -> std::io::Result<()> {
        self.check_writable()?;
        let mut m = self.lock();
        Ok(self.structural(&mut m, |m| self.delete_snapshot_locked(m, name))?)
    }

    fn delete_snapshot_locked(&self, m: &mut Meta, name: &str) -> Result<(), Qcow2Error> {
        let mut snaps = self.snapshots_locked(m)?;
        let s = snaps.remove(Self::find(&snaps, name)?);
        let mut raw = vec![0u8; s.l1_size as usize * 8];
        self.pread(&mut raw, s.l1_table_offset, "snapshot L1 table")?;
        let snap_l1: Vec<u64> = raw.chunks_exact(8).map(super::be64).collect();
        self.replace_table(m, &snaps)?;
        self.sync_meta("image")?;
        self.tree_refs(m, &snap_l1, -1)?;
        if s.l1_size > 0 {
            let n = (s.l1_size as u64 * 8).div_ceil(self.cs());
            m.refs
                .add_range(&self.file, s.l1_table_offset >> self.cluster_bits, n, -1)?;
        }
        self.fix_copied(m, false)?;
        self.sync_meta("image")?;
        Ok(())
    }
}
