//! Extended L2 entries: writes that allocate and fill single subclusters.
//! A small write into a cluster over a backing file copies at most the two
//! subclusters it covers in part, not the whole cluster; the rest of the
//! cluster keeps reading from the backing file (or as zeros).

use super::{Meta, Qcow2Error, Qcow2Image, COMPRESSED, COPIED, OFFSET_MASK};

impl Qcow2Image {
    /// Whether a write from `g` (up to `seg_end`) into the cluster holding
    /// `entry` goes subcluster by subcluster: an extended image, and either
    /// a cluster this image owns whose subclusters are not all allocated,
    /// or an unallocated cluster the write covers only in part.
    pub(super) fn by_subcluster(&self, entry: u64, g: u64, seg_end: u64) -> bool {
        if !self.extended || entry & COMPRESSED != 0 {
            return false;
        }
        if entry & OFFSET_MASK != 0 {
            return entry & COPIED != 0;
        }
        let cs = self.cs();
        let cluster = g & !(cs - 1);
        g != cluster || seg_end < cluster + cs
    }

    /// Writes the part of `data` (which starts at guest `offset`) that
    /// falls in the cluster holding `g`, allocating the cluster if needed
    /// and only the subclusters written; returns where it stopped.
    pub(super) fn write_subclusters(
        &self,
        m: &mut Meta,
        data: &[u8],
        offset: u64,
        g: u64,
        seg_end: u64,
    ) -> Result<u64, Qcow2Error> {
        let cs = self.cs();
        let unit = self.unit();
        let size = m.header.size;
        let cluster = g & !(cs - 1);
        let stop = (cluster + cs).min(seg_end);
        let (entry, bitmap) = self.l2_entry(m, g)?;
        let (mut host, mut new_entry) = (entry & OFFSET_MASK, entry);
        if host == 0 {
            host = m.refs.alloc(&self.file, 1)?;
            new_entry = host | COPIED;
            if self.file.len() < host + cs {
                // The file grows with this write: durable before the L2 entry.
                m.copied_data = true;
            }
        }
        let first = (g - cluster) / unit;
        let last = (stop - 1 - cluster) / unit;
        let allocated = |i: u64| (bitmap >> i) & 1 != 0;
        // A subcluster covered in part and not allocated yet is filled
        // with what it reads as now (backing data or zeros).
        let head_fill = g > cluster + first * unit && !allocated(first);
        let tail_fill = stop < cluster + (last + 1) * unit && !allocated(last);
        let span_start = if head_fill { cluster + first * unit } else { g };
        let span_end = if tail_fill {
            cluster + (last + 1) * unit
        } else {
            stop
        };
        let mut buf = vec![0u8; (span_end - span_start) as usize];
        let fill = |m: &mut Meta, sc: u64, buf: &mut [u8]| -> Result<(), Qcow2Error> {
            let at = (sc - span_start) as usize;
            let len = unit.min(size.saturating_sub(sc)) as usize;
            self.read_locked(m, &mut buf[at..at + len], sc)
        };
        if head_fill {
            fill(m, cluster + first * unit, &mut buf)?;
        }
        if tail_fill && !(head_fill && first == last) {
            fill(m, cluster + last * unit, &mut buf)?;
        }
        if head_fill || tail_fill {
            m.copied_data = true;
        }
        let at = (g - span_start) as usize;
        buf[at..at + (stop - g) as usize]
            .copy_from_slice(&data[(g - offset) as usize..(stop - offset) as usize]);
        let dst = host + (span_start - cluster);
        self.file
            .write_all_at(&buf, dst)
            .map_err(|e| Qcow2Error::io("data subcluster", dst, e))?;
        let written = ((1u64 << (last - first + 1)) - 1) << first;
        let new_bitmap = (bitmap | written) & !(written << 32);
        if (new_entry, new_bitmap) != (entry, bitmap) {
            let (l1_idx, l2_idx) = self.indices(cluster);
            self.set_l2_entries(m, l1_idx, l2_idx, &[(new_entry, new_bitmap)])?;
        }
        Ok(stop)
    }
}
