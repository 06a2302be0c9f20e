//! Creating images (with preallocation) and growing them.

use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::header::{
    feature_name_table, CompressionType, Header, COMPAT_LAZY_REFCOUNTS, INCOMPAT_EXTENDED_L2,
    MAX_CLUSTER_BITS, MAX_L1_BYTES, MAX_VIRTUAL_SIZE, MIN_CLUSTER_BITS, V2_HEADER_LEN,
    V3_HEADER_LEN,
};
use super::{Meta, Qcow2Error, Qcow2Image, Qcow2Options, COPIED, OFFSET_MASK};

/// How much of a new image to allocate up front.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preallocation {
    /// Nothing.
    #[default]
    Off,
    /// L2 tables and cluster mappings (the file stays sparse).
    Metadata,
    /// Mappings plus fallocate'd data.
    Falloc,
    /// Mappings plus data written as zeros.
    Full,
}

impl std::str::FromStr for Preallocation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(Preallocation::Off),
            "metadata" => Ok(Preallocation::Metadata),
            "falloc" => Ok(Preallocation::Falloc),
            "full" => Ok(Preallocation::Full),
            _ => Err(format!(
                "preallocation '{s}' is not off, metadata, falloc or full"
            )),
        }
    }
}

/// Options of a new qcow2 image (qemu-img's `-o` names).
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Guest size in bytes (rounded up to 512).
    pub size: u64,
    /// Cluster size: a power of two from 512 to 2 MiB.
    pub cluster_size: u64,
    /// 2 (compat=0.10) or 3 (compat=1.1).
    pub version: u32,
    /// Refcount width: 1, 2, 4, 8, 16, 32 or 64.
    pub refcount_bits: u32,
    /// Set the lazy refcounts compatible feature.
    pub lazy_refcounts: bool,
    /// Use extended L2 entries (subclusters).
    pub extended_l2: bool,
    /// How compressed clusters are compressed.
    pub compression_type: CompressionType,
    /// What to allocate up front.
    pub preallocation: Preallocation,
    /// Backing file name, stored as given.
    pub backing_file: Option<String>,
    /// Backing file format.
    pub backing_format: Option<String>,
    /// Never fdatasync the new image (qemu-img's cache=unsafe: for tools
    /// that write a whole image and would redo it after a crash).
    pub no_sync: bool,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            size: 0,
            cluster_size: 65536,
            version: 3,
            refcount_bits: 16,
            lazy_refcounts: false,
            extended_l2: false,
            compression_type: CompressionType::Zlib,
            preallocation: Preallocation::Off,
            backing_file: None,
            backing_format: None,
            no_sync: false,
        }
    }
}

impl CreateOptions {
    fn validate(&self) -> Result<(u32, u32), Qcow2Error> {
        let bad = |s: String| Err(Qcow2Error::Invalid(s));
        if !self.cluster_size.is_power_of_two() {
            return bad(format!(
                "cluster size {} is not a power of two",
                self.cluster_size
            ));
        }
        let cluster_bits = self.cluster_size.trailing_zeros();
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return bad(format!(
                "cluster size {} outside 512..2M",
                self.cluster_size
            ));
        }
        if !self.refcount_bits.is_power_of_two() || self.refcount_bits > 64 {
            return bad(format!(
                "refcount_bits {} is not a power of two up to 64",
                self.refcount_bits
            ));
        }
        if self.version != 2 && self.version != 3 {
            return bad(format!("compat version {} (2 or 3)", self.version));
        }
        if self.version == 2
            && (self.refcount_bits != 16
                || self.lazy_refcounts
                || self.extended_l2
                || self.compression_type != CompressionType::Zlib)
        {
            return bad(
                "compat=0.10 needs refcount_bits=16, zlib and no lazy refcounts or extended L2"
                    .into(),
            );
        }
        if self.extended_l2 && self.cluster_size < 16384 {
            return bad("extended_l2 needs a cluster size of at least 16k".into());
        }
        if self.size > MAX_VIRTUAL_SIZE {
            return bad(format!("size {} too large", self.size));
        }
        if self.backing_file.is_none() && self.backing_format.is_some() {
            return bad("a backing format without a backing file".into());
        }
        Ok((cluster_bits, self.refcount_bits.trailing_zeros()))
    }
}

impl Qcow2Image {
    /// Creates a qcow2 image at `path` (replacing any file there) and opens it.
    pub fn create(path: &Path, options: &CreateOptions) -> io::Result<Qcow2Image> {
        let (cluster_bits, refcount_order) = options.validate()?;
        let cs = 1u64 << cluster_bits;
        let mut incompat = 0;
        if options.extended_l2 {
            incompat |= INCOMPAT_EXTENDED_L2;
        }
        let header = Header {
            version: options.version,
            cluster_bits,
            size: 0,
            l1_size: 0,
            l1_table_offset: 0,
            refcount_table_offset: cs,
            refcount_table_clusters: 1,
            nb_snapshots: 0,
            snapshots_offset: 0,
            incompatible_features: incompat,
            compatible_features: if options.lazy_refcounts {
                COMPAT_LAZY_REFCOUNTS
            } else {
                0
            },
            autoclear_features: 0,
            refcount_order,
            header_length: if options.version == 2 {
                V2_HEADER_LEN
            } else {
                V3_HEADER_LEN
            },
            compression_type: options.compression_type,
            backing_file: options.backing_file.clone(),
            backing_format: options.backing_format.clone(),
            other_extensions: if options.version == 3 {
                vec![feature_name_table()]
            } else {
                Vec::new()
            },
        };
        let mut first = header.serialize()?;
        first.resize(cs as usize, 0);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        file.write_all_at(&first, 0)?;
        let mut table = vec![0u8; cs as usize];
        table[..8].copy_from_slice(&(2 * cs).to_be_bytes());
        file.write_all_at(&table, cs)?;
        let mut block = vec![0u8; cs as usize];
        for i in 0..3 {
            super::refcount::set_entry(&mut block, i, refcount_order, 1);
        }
        file.write_all_at(&block, 2 * cs)?;
        if !options.no_sync {
            file.sync_data()?;
        }
        drop(file);
        let image = Qcow2Image::open(
            path,
            &Qcow2Options {
                open_backing: false,
                no_sync: options.no_sync,
                ..Default::default()
            },
        )?;
        image.resize(options.size.div_ceil(512) * 512)?;
        image.preallocate(options.preallocation)?;
        image.flush_all()?;
        Ok(image)
    }

    fn flush_all(&self) -> io::Result<()> {
        let mut m = self.lock();
        Ok(self.flush_metadata(&mut m)?)
    }

    /// Grows the guest size to `new_size` bytes (smaller sizes are refused:
    /// see [`shrink`](Self::shrink)).
    pub fn resize(&self, new_size: u64) -> io::Result<()> {
        self.check_writable()?;
        let mut m = self.lock();
        if new_size < m.header.size {
            return Err(Qcow2Error::Unsupported("shrinking images".into()).into());
        }
        if new_size > MAX_VIRTUAL_SIZE {
            return Err(Qcow2Error::Invalid(format!("size {new_size} too large")).into());
        }
        self.structural(&mut m, |m| {
            self.grow_l1(m, new_size)?;
            self.write_at_meta(&new_size.to_be_bytes(), 24, "header")?;
            m.header.size = new_size;
            self.sync_meta("header")
        })?;
        Ok(())
    }

    /// Shrinks the guest size to `new_size` bytes (rounded up to 512),
    /// as `qemu-img resize --shrink`: the data past the new end is
    /// dropped (L2 tables wholly past it are freed; the L1 table keeps its
    /// size), and the rest of the last cluster is zeroed so that growing
    /// again reads zeros there. Internal snapshots keep their own data.
    pub fn shrink(&self, new_size: u64) -> io::Result<()> {
        self.check_writable()?;
        let mut m = self.lock();
        let old = m.header.size;
        if new_size > old {
            return Err(Qcow2Error::Invalid(format!(
                "shrinking to {new_size} bytes would grow the image ({old} bytes)"
            ))
            .into());
        }
        // At most `old`, itself a multiple of 512.
        let new_size = new_size.div_ceil(512) * 512;
        // Whole clusters past the new end are deallocated; the rest of the
        // cut cluster is written with zeros.
        self.zero_locked(&mut m, new_size, old - new_size, true)?;
        // L2 tables that cover nothing below the new end go.
        let per_table = self.cs() * self.l2_entries();
        let keep = new_size.div_ceil(per_table) as usize;
        for i in keep..m.l1.len() {
            let l2 = m.l1[i] & OFFSET_MASK;
            if l2 == 0 {
                continue;
            }
            m.l1[i] = 0;
            m.dirty_l1.insert(i);
            m.dirty_l2.remove(&l2);
            m.l2_cache.pop(&l2);
            self.drop_reference(&mut m, l2 >> self.cluster_bits, 1)?;
        }
        // Crash-safe order: the dropped data is gone on disk before the
        // header says the disk is smaller.
        self.structural(&mut m, |m| {
            self.write_at_meta(&new_size.to_be_bytes(), 24, "header")?;
            m.header.size = new_size;
            self.sync_meta("header")
        })?;
        Ok(())
    }

    fn grow_l1(&self, m: &mut Meta, new_size: u64) -> Result<(), Qcow2Error> {
        let cs = self.cs();
        let needed = new_size.div_ceil(cs * self.l2_entries());
        if needed <= m.l1.len() as u64 {
            return Ok(());
        }
        if needed * 8 > MAX_L1_BYTES {
            return Err(Qcow2Error::Invalid(format!(
                "size {new_size} needs an L1 table above the cap"
            )));
        }
        let clusters = (needed * 8).div_ceil(cs);
        let new_off = m.refs.alloc(&self.file, clusters)?;
        let mut l1 = m.l1.clone();
        l1.resize(needed as usize, 0);
        let mut raw: Vec<u8> = l1.iter().flat_map(|e| e.to_be_bytes()).collect();
        raw.resize((clusters * cs) as usize, 0);
        self.write_at_meta(&raw, new_off, "L1 table")?;
        self.sync()
            .map_err(|e| Qcow2Error::io("L1 table", new_off, e))?;
        let mut fields = [0u8; 12];
        fields[..4].copy_from_slice(&(needed as u32).to_be_bytes());
        fields[4..].copy_from_slice(&new_off.to_be_bytes());
        self.write_at_meta(&fields, 36, "header")?;
        self.sync().map_err(|e| Qcow2Error::io("header", 36, e))?;
        let (old_off, old_len) = (m.header.l1_table_offset, m.l1.len() as u64);
        m.l1 = l1;
        m.header.l1_size = needed as u32;
        m.header.l1_table_offset = new_off;
        if old_off != 0 && old_len > 0 {
            m.refs.add_range(
                &self.file,
                old_off >> self.cluster_bits,
                (old_len * 8).div_ceil(cs),
                -1,
            )?;
        }
        Ok(())
    }

    /// Maps every guest cluster to a host cluster (and allocates or writes
    /// the data for `falloc` and `full`).
    fn preallocate(&self, mode: Preallocation) -> io::Result<()> {
        if mode == Preallocation::Off {
            return Ok(());
        }
        let mut m = self.lock();
        Ok(self.structural(&mut m, |m| self.preallocate_locked(m, mode))?)
    }

    fn preallocate_locked(&self, m: &mut Meta, mode: Preallocation) -> Result<(), Qcow2Error> {
        let cs = self.cs();
        let clusters = m.header.size.div_ceil(cs);
        let per_table = self.l2_entries();
        let bitmap = if self.extended { 0xffff_ffff } else { 0 };
        let mut done = 0;
        while done < clusters {
            let l1_idx = (done / per_table) as usize;
            let n = per_table.min(clusters - done);
            self.l2_for_write(m, l1_idx)?;
            let host = m.refs.alloc(&self.file, n)?;
            let entries: Vec<(u64, u64)> =
                (0..n).map(|i| ((host + i * cs) | COPIED, bitmap)).collect();
            self.set_l2_entries(m, l1_idx, 0, &entries)?;
            match mode {
                Preallocation::Falloc => {
                    self.file
                        .allocate(host, n * cs)
                        .map_err(|e| Qcow2Error::io("data cluster", host, e))?;
                }
                Preallocation::Full => {
                    let zeros = vec![0u8; (n * cs).min(8 << 20) as usize];
                    let mut at = 0;
                    while at < n * cs {
                        let k = (zeros.len() as u64).min(n * cs - at);
                        self.write_at_meta(&zeros[..k as usize], host + at, "data cluster")?;
                        at += k;
                    }
                }
                _ => {
                    // Make the file cover the mapped clusters.
                    let io = |e| Qcow2Error::io("image", host, e);
                    let len = self.file.metadata().map_err(io)?.len();
                    if len < host + n * cs {
                        self.file.set_len(host + n * cs).map_err(io)?;
                    }
                }
            }
            done += n;
        }
        Ok(())
    }
}
