//! Guest reads and the allocation map: L2 lookups through the cache,
//! subclusters, compressed clusters, zero clusters and the backing chain.

use super::{
    compress, corrupt, Meta, Qcow2Error, Qcow2Image, COMPRESSED, OFFSET_MASK, SUBCLUSTERS, ZERO,
};
use crate::Extent;

/// How a stretch of guest bytes within one cluster is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// Not allocated here: read from the backing file (or zeros).
    Unallocated,
    /// Reads as zeros.
    Zero,
    /// Stored at this host offset (of the first byte).
    Data(u64),
    /// Stored compressed (the raw L2 entry).
    Compressed(u64),
}

impl Qcow2Image {
    /// Loads the L2 table of L1 entry `l1_idx` into the cache; `None` when
    /// the L1 entry is empty.
    pub(super) fn load_l2(&self, m: &mut Meta, l1_idx: usize) -> Result<Option<u64>, Qcow2Error> {
        let Some(&entry) = m.l1.get(l1_idx) else {
            return Ok(None);
        };
        let off = entry & OFFSET_MASK;
        if off == 0 {
            return Ok(None);
        }
        if m.l2_cache.contains(&off) {
            return Ok(Some(off));
        }
        let at = m.header.l1_table_offset + l1_idx as u64 * 8;
        if off % self.cs() != 0 {
            return Err(corrupt(
                "L1 table",
                at,
                format!("L2 table offset {off:#x} not cluster aligned"),
            ));
        }
        if off + self.cs() > m.refs.file_end {
            return Err(corrupt(
                "L1 table",
                at,
                format!("L2 table offset {off:#x} past the end of the file"),
            ));
        }
        let mut raw = vec![0u8; self.cs() as usize];
        self.pread(&mut raw, off, "L2 table")?;
        let table = raw.chunks_exact(8).map(super::be64).collect();
        self.cache_l2(m, off, table)?;
        Ok(Some(off))
    }

    /// The L2 entry (and subcluster bitmap) of guest cluster `guest >> cluster_bits`.
    pub(super) fn l2_entry(&self, m: &mut Meta, guest: u64) -> Result<(u64, u64), Qcow2Error> {
        let (l1_idx, l2_idx) = self.indices(guest);
        let Some(off) = self.load_l2(m, l1_idx)? else {
            return Ok((0, 0));
        };
        let table = m
            .l2_cache
            .get(&off)
            .ok_or_else(|| corrupt("L2 table", off, "vanished from the cache"))?;
        if self.extended {
            Ok((table[2 * l2_idx], table[2 * l2_idx + 1]))
        } else {
            Ok((table[l2_idx], 0))
        }
    }

    /// How the bytes at `guest` are stored, and for how many bytes (within
    /// its cluster) that holds.
    pub(super) fn lookup(&self, m: &mut Meta, guest: u64) -> Result<(Kind, u64), Qcow2Error> {
        let cs = self.cs();
        let in_cluster = guest & (cs - 1);
        let (l1_idx, _) = self.indices(guest);
        if m.l1.get(l1_idx).is_none_or(|e| e & OFFSET_MASK == 0) {
            // No L2 table: the whole stretch it would cover is unallocated.
            let table_end = ((l1_idx as u64 + 1) * self.l2_entries()) << self.cluster_bits;
            return Ok((Kind::Unallocated, table_end - guest));
        }
        let (entry, bitmap) = self.l2_entry(m, guest)?;
        let whole = cs - in_cluster;
        let (l1_idx, l2_idx) = self.indices(guest);
        let where_ = || {
            m.l1.get(l1_idx)
                .map(|e| (e & OFFSET_MASK) + l2_idx as u64 * if self.extended { 16 } else { 8 })
                .unwrap_or(0)
        };
        if entry & COMPRESSED != 0 {
            return Ok((Kind::Compressed(entry), whole));
        }
        let host = entry & OFFSET_MASK;
        if host != 0 && host % cs != 0 {
            return Err(corrupt(
                "L2 table",
                where_(),
                format!("data cluster offset {host:#x} not cluster aligned"),
            ));
        }
        if !self.extended {
            let kind = if entry & ZERO != 0 {
                Kind::Zero
            } else if host == 0 {
                Kind::Unallocated
            } else {
                Kind::Data(host + in_cluster)
            };
            return Ok((kind, whole));
        }
        let alloc = bitmap & 0xffff_ffff;
        let zero = bitmap >> 32;
        if alloc & zero != 0 {
            return Err(corrupt(
                "L2 table",
                where_(),
                "subcluster both allocated and zero",
            ));
        }
        if alloc != 0 && host == 0 {
            return Err(corrupt(
                "L2 table",
                where_(),
                "allocated subclusters without a data cluster",
            ));
        }
        let unit = self.unit();
        let first = in_cluster / unit;
        let state = |i: u64| (alloc >> i & 1, zero >> i & 1);
        let s = state(first);
        let mut last = first + 1;
        while last < SUBCLUSTERS && state(last) == s {
            last += 1;
        }
        let len = last * unit - in_cluster;
        let kind = match s {
            (1, _) => Kind::Data(host + in_cluster),
            (_, 1) => Kind::Zero,
            _ => Kind::Unallocated,
        };
        Ok((kind, len))
    }

    /// Host offset and byte length of a compressed cluster's data.
    pub(super) fn compressed_span(&self, entry: u64) -> (u64, u64) {
        let x = 62 - (self.cluster_bits - 8);
        let host = entry & ((1u64 << x) - 1);
        let sectors = ((entry & !(super::COPIED | COMPRESSED)) >> x
            & ((1u64 << (self.cluster_bits - 8)) - 1))
            + 1;
        (host, sectors * 512 - (host & 511))
    }

    fn read_compressed(
        &self,
        m: &mut Meta,
        entry: u64,
        out: &mut [u8],
        in_cluster: u64,
    ) -> Result<(), Qcow2Error> {
        if let Some((key, data)) = &m.compressed_cache {
            if *key == entry {
                out.copy_from_slice(&data[in_cluster as usize..in_cluster as usize + out.len()]);
                return Ok(());
            }
        }
        let (host, len) = self.compressed_span(entry);
        let mut packed = vec![0u8; len as usize];
        self.pread(&mut packed, host, "compressed cluster")?;
        let mut cluster = match m.compressed_cache.take() {
            Some((_, v)) => v,
            None => vec![0u8; self.cs() as usize],
        };
        compress::decompress(m.header.compression_type, &packed, &mut cluster, host)?;
        out.copy_from_slice(&cluster[in_cluster as usize..in_cluster as usize + out.len()]);
        m.compressed_cache = Some((entry, cluster));
        Ok(())
    }

    /// Reads from the backing chain (zeros past its end or without one).
    pub(super) fn read_backing(&self, buf: &mut [u8], guest: u64) -> Result<(), Qcow2Error> {
        let Some(backing) = &self.backing else {
            buf.fill(0);
            return Ok(());
        };
        let bsize = backing.size();
        let avail = if guest >= bsize {
            0
        } else {
            ((bsize - guest) as usize).min(buf.len())
        };
        if avail > 0 {
            crate::read_exact_at(backing.as_ref(), &mut buf[..avail], guest)
                .map_err(|e| Qcow2Error::io("backing file", guest, e))?;
        }
        buf[avail..].fill(0);
        Ok(())
    }

    /// Reads `buf.len()` guest bytes at `offset` (within the disk).
    pub(super) fn read_locked(
        &self,
        m: &mut Meta,
        buf: &mut [u8],
        offset: u64,
    ) -> Result<(), Qcow2Error> {
        let mut done = 0usize;
        while done < buf.len() {
            let guest = offset + done as u64;
            let (kind, len) = self.lookup(m, guest)?;
            let mut n = (len as usize).min(buf.len() - done);
            // Coalesce contiguous data clusters into one read.
            if let Kind::Data(host) = kind {
                while done + n < buf.len() {
                    match self.lookup(m, guest + n as u64)? {
                        (Kind::Data(h), l) if h == host + n as u64 => {
                            n = (n + l as usize).min(buf.len() - done)
                        }
                        _ => break,
                    }
                }
            }
            let out = &mut buf[done..done + n];
            match kind {
                Kind::Zero => out.fill(0),
                Kind::Unallocated => self.read_backing(out, guest)?,
                Kind::Data(host) => self.pread(out, host, "data cluster")?,
                Kind::Compressed(entry) => {
                    self.read_compressed(m, entry, out, guest & (self.cs() - 1))?
                }
            }
            done += n;
        }
        Ok(())
    }

    /// The allocation map at `offset`: one stretch of equal state.
    pub(super) fn extent_locked(
        &self,
        m: &mut Meta,
        offset: u64,
        max_len: u64,
    ) -> Result<Extent, Qcow2Error> {
        let size = m.header.size;
        let end = size.min(offset.saturating_add(max_len));
        if offset >= end {
            return Err(Qcow2Error::Invalid(format!(
                "offset {offset} is past the end of the disk ({size} bytes)"
            )));
        }
        let (kind, len) = self.lookup(m, offset)?;
        let mut length = len.min(end - offset);
        while offset + length < end {
            let (k, l) = self.lookup(m, offset + length)?;
            let same = match (kind, k) {
                (Kind::Data(a), Kind::Data(b)) => b == a + length,
                (Kind::Compressed(_), Kind::Compressed(_)) => true,
                (a, b) => a == b,
            };
            if !same {
                break;
            }
            length = (length + l).min(end - offset);
        }
        let own = |zero: bool, data: bool, compressed: bool, host: Option<u64>| Extent {
            start: offset,
            length,
            depth: 0,
            present: true,
            zero,
            data,
            compressed,
            host_offset: host,
        };
        if let Kind::Data(h) = kind {
            // Like QEMU, look through to the host file: a hole there reads as zeros.
            let (zero, n) = self.host_state(h, length);
            length = n;
            return Ok(Extent {
                start: offset,
                length,
                depth: 0,
                present: true,
                zero,
                data: true,
                compressed: false,
                host_offset: Some(h),
            });
        }
        Ok(match kind {
            Kind::Zero => own(true, false, false, None),
            Kind::Data(h) => own(false, true, false, Some(h)),
            Kind::Compressed(_) => own(false, true, true, None),
            Kind::Unallocated => match &self.backing {
                None => Extent {
                    start: offset,
                    length,
                    depth: 0,
                    present: false,
                    zero: true,
                    data: false,
                    compressed: false,
                    host_offset: None,
                },
                Some(b) if offset < b.size() => {
                    let inner = b
                        .extent_at(offset, length.min(b.size() - offset))
                        .map_err(|e| Qcow2Error::io("backing file", offset, e))?;
                    Extent {
                        depth: inner.depth + 1,
                        ..inner
                    }
                }
                Some(b) => Extent {
                    start: offset,
                    length,
                    depth: chain_depth(b.as_ref()),
                    present: false,
                    zero: true,
                    data: false,
                    compressed: false,
                    host_offset: None,
                },
            },
        })
    }
}

impl Qcow2Image {
    /// Whether host bytes `[host, host + len)` start in a hole of the image
    /// file, and for how long that state lasts (at most `len`).
    fn host_state(&self, host: u64, len: u64) -> (bool, u64) {
        use std::os::fd::AsRawFd;
        let seek = |whence| {
            // SAFETY: lseek on our own descriptor with integer arguments.
            let r = unsafe { libc::lseek(self.file.as_raw_fd(), host as libc::off_t, whence) };
            (r >= 0).then_some(r as u64)
        };
        match seek(libc::SEEK_DATA) {
            Some(d) if d <= host => match seek(libc::SEEK_HOLE) {
                Some(h) if h > host => (false, len.min(h - host)),
                _ => (false, len),
            },
            Some(d) => (true, len.min(d - host)),
            // ENXIO: no data past `host` (EINVAL: no SEEK_DATA; call it data).
            None => (
                std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO),
                len,
            ),
        }
    }
}

/// Length of the backing chain below and including `disk`, as the depth
/// of a stretch no image holds.
fn chain_depth(disk: &dyn crate::DiskFile) -> u32 {
    match disk.extent_at(disk.size().saturating_sub(1), 1) {
        Ok(e) if !e.present => e.depth + 1,
        _ => 1,
    }
}
