//! The internal snapshot table: parsing (every entry bounded by the file
//! and the caps) and listing.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::header::{Header, MAX_L1_BYTES};
use super::{corrupt, Qcow2Error};

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
