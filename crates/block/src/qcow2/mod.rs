//! qcow2 images, versions 2 and 3: read and write, zero and compressed
//! clusters, extended L2 entries, backing chains, refcount upkeep, check
//! and repair, internal snapshots. Every table offset and size read from
//! the file is checked before use; errors name the table and the offset.
//!
//! Metadata is kept behind one mutex; L2 tables and refcount blocks sit in
//! bounded LRU caches and are written back on flush in the order that keeps
//! every state a power cut can leave free of corruption (see `writeback`);
//! `tests/qcow2_crash.rs` replays the journal of every change to prove it.

pub mod check;
mod compress;
mod create;
pub mod header;
mod host_file;
mod read;
mod refcount;
pub mod snapshot;
mod subcluster;
mod write;
mod writeback;

pub use check::{CheckMode, CheckReport};
pub use create::{CreateOptions, Preallocation};
pub use header::{CompressionType, Header};
pub use host_file::{replay, HostFile, Journal, JournalEntry};
pub use snapshot::SnapshotInfo;

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use lru::LruCache;
use vm_memory::{Bytes, VolatileSlice};

use crate::{DiskFile, Extent, Topology};
use header::{INCOMPAT_DIRTY, MAX_BACKING_NAME};
use refcount::Refcounts;

/// L1 and L2 entries: bits 9..=55 hold the host offset.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Entry flag: the cluster's refcount is exactly 1 (may be written in place).
const COPIED: u64 = 1 << 63;
/// L2 entry flag: the cluster is compressed.
const COMPRESSED: u64 = 1 << 62;
/// L2 entry flag (standard entries): the cluster reads as zeros.
const ZERO: u64 = 1;
/// Subclusters per cluster with extended L2 entries.
const SUBCLUSTERS: u64 = 32;
/// Deepest backing chain opened.
pub const MAX_BACKING_DEPTH: u32 = 64;

/// What went wrong with a qcow2 image.
#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    /// A table or field holds an impossible value.
    #[error("corrupt qcow2 {table} at offset {offset:#x}: {reason}")]
    Corrupt {
        /// The structure at fault.
        table: &'static str,
        /// Its host offset (or the header field's offset).
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A feature this crate does not implement.
    #[error("unsupported qcow2 feature: {0}")]
    Unsupported(String),
    /// A request that cannot be met (bad option, size, name).
    #[error("{0}")]
    Invalid(String),
    /// The image names a backing file, and `max_backing_depth` is 0.
    #[error("the image names a backing file ({0}), and backing files are not allowed")]
    BackingNotAllowed(String),
    /// Reading or writing a structure failed.
    #[error("qcow2 {what} at offset {offset:#x}")]
    Io {
        /// The structure being moved.
        what: &'static str,
        /// Its host offset.
        offset: u64,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

impl Qcow2Error {
    fn io(what: &'static str, offset: u64, source: io::Error) -> Qcow2Error {
        Qcow2Error::Io {
            what,
            offset,
            source,
        }
    }
}

/// A corruption error for `table` at `offset`.
pub(crate) fn corrupt(table: &'static str, offset: u64, reason: impl Into<String>) -> Qcow2Error {
    Qcow2Error::Corrupt {
        table,
        offset,
        reason: reason.into(),
    }
}

impl From<Qcow2Error> for io::Error {
    fn from(e: Qcow2Error) -> io::Error {
        match e {
            Qcow2Error::Io {
                source,
                what,
                offset,
            } => io::Error::new(
                source.kind(),
                format!("qcow2 {what} at offset {offset:#x}: {source}"),
            ),
            Qcow2Error::Unsupported(_) => io::Error::new(io::ErrorKind::Unsupported, e.to_string()),
            Qcow2Error::Invalid(_) => io::Error::new(io::ErrorKind::InvalidInput, e.to_string()),
            // Kept whole, so callers can tell it apart (`io::Error::get_ref`).
            Qcow2Error::BackingNotAllowed(_) => io::Error::new(io::ErrorKind::PermissionDenied, e),
            Qcow2Error::Corrupt { .. } => io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
        }
    }
}

/// How to open a qcow2 image.
#[derive(Debug, Clone)]
pub struct Qcow2Options {
    /// Refuse writes (and open the file read-only).
    pub read_only: bool,
    /// L2 tables kept in the LRU cache.
    pub l2_cache_tables: usize,
    /// Refcount blocks kept in the LRU cache.
    pub refcount_cache_blocks: usize,
    /// Open the backing chain (false: unallocated clusters read as zeros,
    /// as for `rebase -u` and for `info`).
    pub open_backing: bool,
    /// Deepest backing chain accepted; 0 refuses an image that names a
    /// backing file at all.
    pub max_backing_depth: u32,
    /// Never fdatasync, not even on flush (qemu-img's cache=unsafe).
    pub no_sync: bool,
    /// Open for `check -r`: an image marked corrupt may be opened for
    /// writing (a repair that leaves nothing to fix clears the mark).
    pub for_repair: bool,
    /// Record every change made to the file (crash-consistency tests).
    pub journal: Option<Arc<Journal>>,
    /// Where backing files may be read from (the whole chain inherits it).
    pub backing_policy: crate::backing::BackingPolicy,
}

impl Default for Qcow2Options {
    fn default() -> Self {
        Qcow2Options {
            read_only: false,
            l2_cache_tables: 128,
            refcount_cache_blocks: 32,
            open_backing: true,
            max_backing_depth: MAX_BACKING_DEPTH,
            no_sync: false,
            for_repair: false,
            journal: None,
            backing_policy: crate::backing::BackingPolicy::Anywhere,
        }
    }
}

/// Mutable metadata of an open image.
struct Meta {
    header: Header,
    l1: Vec<u64>,
    l2_cache: LruCache<u64, Vec<u64>>,
    refs: Refcounts,
    /// The last decompressed cluster (host descriptor, bytes).
    compressed_cache: Option<(u64, Vec<u8>)>,
    /// Next free byte for compressed data in a partly used cluster (0: none).
    compressed_cursor: u64,
    /// Cached L2 tables changed in memory only: table offset to the range
    /// of changed words.
    dirty_l2: HashMap<u64, (usize, usize)>,
    /// L1 entries changed in memory only.
    dirty_l1: BTreeSet<usize>,
    /// References dropped in memory (first cluster, count) whose refcounts
    /// fall only once the drop is durable.
    pending_frees: Vec<(u64, u64)>,
    /// Old data was copied into a new cluster (or the file grown) since
    /// the last flush.
    copied_data: bool,
}

/// An open qcow2 image.
pub struct Qcow2Image {
    file: HostFile,
    path: PathBuf,
    read_only: bool,
    no_sync: bool,
    cluster_bits: u32,
    extended: bool,
    backing: Option<Box<dyn DiskFile>>,
    meta: Mutex<Meta>,
    topology: Topology,
}

/// Whether `first_bytes` start like a qcow2 image.
pub fn probe(first_bytes: &[u8]) -> bool {
    first_bytes.len() >= 4 && first_bytes[..4] == header::MAGIC.to_be_bytes()
}

impl Qcow2Image {
    /// Opens the image at `path`.
    pub fn open(path: &Path, options: &Qcow2Options) -> io::Result<Qcow2Image> {
        Self::open_at_depth(path, options, 0)
    }

    pub(crate) fn open_at_depth(
        path: &Path,
        options: &Qcow2Options,
        depth: u32,
    ) -> io::Result<Qcow2Image> {
        let file = HostFile::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(!options.read_only)
                .open(path)?,
            options.journal.clone(),
        )?;
        let meta = file.metadata()?;
        if !meta.file_type().is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "qcow2 image is not a regular file",
            ));
        }
        let file_len = meta.len();
        let mut first = vec![0u8; file_len.min(1 << header::MAX_CLUSTER_BITS) as usize];
        file.read_exact_at(&mut first, 0)?;
        let header = Header::parse(&first, file_len)?;
        let cluster_bits = header.cluster_bits;
        let cs = header.cluster_size();
        if !options.read_only {
            if header.corrupt() && !options.for_repair {
                return Err(Qcow2Error::Invalid(
                    "image is marked corrupt; open it read-only or repair it".into(),
                )
                .into());
            }
            if header.has_bitmaps() {
                return Err(Qcow2Error::Unsupported(
                    "writing images with persistent bitmaps".into(),
                )
                .into());
            }
        }
        let mut raw_l1 = vec![0u8; header.l1_size as usize * 8];
        file.read_exact_at(&mut raw_l1, header.l1_table_offset)
            .map_err(|e| Qcow2Error::io("L1 table", header.l1_table_offset, e))?;
        let l1 = raw_l1.chunks_exact(8).map(be64).collect();
        let mut refs = Refcounts::load(
            &file,
            header.refcount_order,
            cluster_bits,
            header.refcount_table_offset,
            header.refcount_table_clusters,
            file_len,
            options.refcount_cache_blocks,
        )?;
        refs.no_sync = options.no_sync;
        let backing = match (&header.backing_file, options.open_backing) {
            (Some(name), true) => {
                if options.max_backing_depth == 0 {
                    return Err(Qcow2Error::BackingNotAllowed(name.clone()).into());
                }
                if depth + 1 > options.max_backing_depth {
                    return Err(Qcow2Error::Invalid(format!(
                        "backing chain deeper than {}",
                        options.max_backing_depth
                    ))
                    .into());
                }
                let resolved = resolve_backing(path, name);
                let resolved =
                    crate::backing::check_backing(&options.backing_policy, path, name, &resolved)?;
                let sub = crate::image::ImageOptions {
                    read_only: true,
                    format: match header.backing_format.as_deref() {
                        Some(f) => Some(f.parse()?),
                        None => None,
                    },
                    qcow2: Qcow2Options {
                        read_only: true,
                        journal: None,
                        ..options.clone()
                    },
                    ..Default::default()
                };
                let disk =
                    crate::image::open_at_depth(&resolved, &sub, depth + 1).map_err(|e| {
                        io::Error::new(
                            e.kind(),
                            format!("backing file {}: {e}", resolved.display()),
                        )
                    })?;
                Some(disk)
            }
            _ => None,
        };
        let extended = header.extended_l2();
        let dirty = header.dirty();
        let image = Qcow2Image {
            file,
            path: path.to_path_buf(),
            read_only: options.read_only,
            no_sync: options.no_sync,
            cluster_bits,
            extended,
            backing,
            meta: Mutex::new(Meta {
                header,
                l1,
                l2_cache: LruCache::new(
                    std::num::NonZeroUsize::new(options.l2_cache_tables.max(1))
                        .unwrap_or(std::num::NonZeroUsize::MIN),
                ),
                refs,
                compressed_cache: None,
                compressed_cursor: 0,
                dirty_l2: HashMap::new(),
                dirty_l1: BTreeSet::new(),
                pending_frees: Vec::new(),
                copied_data: false,
            }),
            topology: Topology {
                logical_block_size: 512,
                physical_block_size: (meta.blksize() as u32).clamp(512, 1 << 16),
                min_io_size: 512,
                opt_io_size: cs.min(1 << 20) as u32,
                alignment_offset: 0,
            },
        };
        if !options.read_only {
            let mut m = image.lock();
            if dirty {
                // Lazy refcounts left them stale: rebuild, as QEMU does.
                image.structural(&mut m, |m| {
                    image.rebuild_refcounts(m)?;
                    m.header.incompatible_features &= !INCOMPAT_DIRTY;
                    image.write_incompatible(m)
                })?;
            }
            if m.header.version == 3 && m.header.autoclear_features != 0 {
                // Autoclear bits name features whose data we do not maintain.
                m.header.autoclear_features = 0;
                image.write_at_meta(&0u64.to_be_bytes(), 88, "header")?;
            }
        }
        Ok(image)
    }

    /// fdatasync, unless the image was opened with `no_sync`.
    fn sync(&self) -> io::Result<()> {
        if self.no_sync {
            Ok(())
        } else {
            self.file.sync_data()
        }
    }

    fn lock(&self) -> MutexGuard<'_, Meta> {
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cs(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Bytes per subcluster (the cluster size without extended L2).
    fn unit(&self) -> u64 {
        if self.extended {
            self.cs() / SUBCLUSTERS
        } else {
            self.cs()
        }
    }

    fn l2_entries(&self) -> u64 {
        self.cs() / if self.extended { 16 } else { 8 }
    }

    /// (L1 index, L2 index) of a guest offset.
    fn indices(&self, guest: u64) -> (usize, usize) {
        let cluster = guest >> self.cluster_bits;
        (
            (cluster / self.l2_entries()) as usize,
            (cluster % self.l2_entries()) as usize,
        )
    }

    /// The path the image was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A copy of the current header.
    pub fn header(&self) -> Header {
        let m = self.lock();
        let mut h = m.header.clone();
        h.refcount_table_offset = m.refs.table_offset;
        h.refcount_table_clusters = m.refs.table_clusters;
        h
    }

    /// The opened backing image, if any.
    pub fn backing(&self) -> Option<&dyn DiskFile> {
        self.backing.as_deref()
    }

    /// Bytes the image file occupies on the host (allocated blocks).
    pub fn actual_size(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.blocks() * 512)
    }

    fn write_at_meta(
        &self,
        data: &[u8],
        offset: u64,
        what: &'static str,
    ) -> Result<(), Qcow2Error> {
        self.file
            .write_all_at(data, offset)
            .map_err(|e| Qcow2Error::io(what, offset, e))
    }

    fn write_incompatible(&self, m: &Meta) -> Result<(), Qcow2Error> {
        if m.header.version < 3 {
            return Ok(());
        }
        let mut v = m.header.incompatible_features;
        if m.header.compression_type == CompressionType::Zstd {
            v |= header::INCOMPAT_COMPRESSION;
        }
        self.write_at_meta(&v.to_be_bytes(), 72, "header")
    }

    /// Reads `buf.len()` bytes at host `offset`; bytes past the end of the
    /// file read as zeros.
    fn pread(&self, buf: &mut [u8], offset: u64, what: &'static str) -> Result<(), Qcow2Error> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => {
                    buf[done..].fill(0);
                    return Ok(());
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Qcow2Error::io(what, offset, e)),
            }
        }
        Ok(())
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "read-only disk",
            ));
        }
        Ok(())
    }

    /// Guest size in bytes.
    pub fn virtual_size(&self) -> u64 {
        self.lock().header.size
    }

    /// Reads guest bytes at `offset` into `buf` (up to the end of the disk);
    /// returns how many were read.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut m = self.lock();
        let size = m.header.size;
        if offset >= size {
            return Ok(0);
        }
        let n = buf.len().min((size - offset) as usize);
        self.read_locked(&mut m, &mut buf[..n], offset)?;
        Ok(n)
    }

    /// Writes `data` at guest `offset` (within the disk).
    pub fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.check_writable()?;
        let mut m = self.lock();
        if offset
            .checked_add(data.len() as u64)
            .is_none_or(|e| e > m.header.size)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "write past the end of the disk",
            ));
        }
        self.write_locked(&mut m, data, offset)?;
        Ok(())
    }
}

impl Qcow2Image {
    /// Makes every cluster of the image unallocated again (reads then come
    /// from the backing file), as `commit` leaves the top image.
    pub fn make_empty(&self) -> io::Result<()> {
        self.check_writable()?;
        let mut m = self.lock();
        let size = m.header.size;
        self.zero_locked(&mut m, 0, size, true)?;
        Ok(())
    }

    /// Records a new backing file name and format in the header (`None`:
    /// no backing file). The opened backing chain is not changed; the next
    /// open follows the new name.
    pub fn set_backing(&self, name: Option<&str>, format: Option<&str>) -> io::Result<()> {
        self.check_writable()?;
        let mut m = self.lock();
        let mut h = m.header.clone();
        h.backing_file = name.map(str::to_string);
        h.backing_format = format.map(str::to_string);
        h.refcount_table_offset = m.refs.table_offset;
        h.refcount_table_clusters = m.refs.table_clusters;
        let bytes = h.serialize()?;
        self.structural(&mut m, |m| {
            self.write_at_meta(&bytes, 0, "header")?;
            self.sync_meta("header")?;
            m.header = h;
            Ok(())
        })?;
        Ok(())
    }
}

/// Where a backing file name points, relative to the image's directory.
pub fn resolve_backing(image: &Path, name: &str) -> PathBuf {
    let p = Path::new(name);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        image.parent().unwrap_or(Path::new(".")).join(p)
    }
}

fn be64(c: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&c[..8]);
    u64::from_be_bytes(b)
}

/// Total length of `bufs`.
fn total_len(bufs: &[VolatileSlice]) -> usize {
    bufs.iter().map(|b| b.len()).sum()
}

impl DiskFile for Qcow2Image {
    fn size(&self) -> u64 {
        self.virtual_size()
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn topology(&self) -> Topology {
        self.topology
    }

    fn read_vectored_at(&self, bufs: &[VolatileSlice], offset: u64) -> io::Result<usize> {
        let mut tmp = vec![0u8; total_len(bufs)];
        let n = self.read_at(&mut tmp, offset)?;
        let mut at = 0;
        for b in bufs {
            if at >= n {
                break;
            }
            let k = b.len().min(n - at);
            b.write_slice(&tmp[at..at + k], 0)
                .map_err(|e| io::Error::other(e.to_string()))?;
            at += k;
        }
        Ok(n)
    }

    fn write_vectored_at(&self, bufs: &[VolatileSlice], offset: u64) -> io::Result<usize> {
        let mut tmp = vec![0u8; total_len(bufs)];
        let mut at = 0;
        for b in bufs {
            b.read_slice(&mut tmp[at..at + b.len()], 0)
                .map_err(|e| io::Error::other(e.to_string()))?;
            at += b.len();
        }
        self.write_at(&tmp, offset)?;
        Ok(tmp.len())
    }

    fn flush(&self) -> io::Result<()> {
        let mut m = self.lock();
        Ok(self.flush_metadata(&mut m)?)
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(offset, len, true)
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        self.check_writable()?;
        let mut m = self.lock();
        if offset.checked_add(len).is_none_or(|e| e > m.header.size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "zeroing past the end of the disk",
            ));
        }
        let _ = unmap; // whole clusters are always deallocated
        self.zero_locked(&mut m, offset, len, false)?;
        Ok(())
    }

    fn extent_at(&self, offset: u64, max_len: u64) -> io::Result<Extent> {
        let mut m = self.lock();
        Ok(self.extent_locked(&mut m, offset, max_len)?)
    }
}

/// Longest backing name a created image may carry.
pub const MAX_BACKING_NAME_LEN: usize = MAX_BACKING_NAME as usize;
