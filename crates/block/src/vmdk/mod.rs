//! VMDK images, read-only: monolithicSparse, streamOptimized, monolithicFlat,
//! twoGbMaxExtentSparse and twoGbMaxExtentFlat, opened from the descriptor
//! file or from a sparse file with an embedded descriptor.
//!
//! Modules: [`descriptor`] (the text), [`extent_path`] (where extent files
//! may lie), [`header`] (sparse header and footer), [`sparse`] (grain
//! directory and tables), [`compressed`] (streamOptimized grains), [`flat`].

pub mod compressed;
pub mod descriptor;
pub mod extent_path;
pub mod flat;
pub mod header;
pub mod sparse;

use std::fs::File;
use std::io;
use std::path::Path;

use crate::readonly::{self, invalid, read_exact_at};
use crate::Extent;
use descriptor::{Descriptor, ExtentKind, MAX_DESCRIPTOR_BYTES};
use flat::FlatExtent;
use header::SECTOR;
use sparse::{Grain, SparseExtent};

/// createType values this reader opens from a descriptor file.
const CREATE_TYPES: &[&str] = &[
    "monolithicSparse",
    "streamOptimized",
    "monolithicFlat",
    "twoGbMaxExtentSparse",
    "twoGbMaxExtentFlat",
    "vmfs",
    "custom",
];

/// Whether the first bytes of a file look like a VMDK: a sparse extent
/// (`KDMV`) or a descriptor file.
pub fn probe(first_bytes: &[u8]) -> bool {
    first_bytes.starts_with(header::MAGIC) || descriptor::looks_like_descriptor(first_bytes)
}

/// How one extent stores its bytes.
enum Store {
    Sparse(SparseExtent),
    Flat(FlatExtent),
    Zero,
}

/// One extent placed in the disk.
struct Placed {
    /// First disk byte it holds.
    start: u64,
    /// Bytes it holds.
    len: u64,
    store: Store,
}

/// A read-only VMDK image.
pub struct VmdkImage {
    size: u64,
    extents: Vec<Placed>,
    create_type: String,
    grains: compressed::GrainCache,
}

fn unsupported(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, message)
}

/// Refuses descriptors of child images (their parent is not followed).
fn refuse_parent(descriptor: &Descriptor, name: &str) -> io::Result<()> {
    match &descriptor.parent_file_name_hint {
        Some(parent) => Err(unsupported(format!(
            "vmdk {name}: child images (parentFileNameHint {parent:?}) are not supported"
        ))),
        None => Ok(()),
    }
}

/// Reads and checks the descriptor embedded in a sparse extent, if any.
fn embedded_descriptor(extent: &SparseExtent, name: &str) -> io::Result<Option<Descriptor>> {
    let h = extent.header();
    if h.descriptor_offset == 0 || h.descriptor_sectors == 0 {
        return Ok(None);
    }
    let len = h.descriptor_sectors.saturating_mul(SECTOR);
    if len > MAX_DESCRIPTOR_BYTES {
        return Err(invalid(format!(
            "vmdk {name}: embedded descriptor of {len} bytes exceeds the limit of {MAX_DESCRIPTOR_BYTES}"
        )));
    }
    let at = h.descriptor_offset.saturating_mul(SECTOR);
    let mut text = vec![0u8; len as usize];
    let what = format!("vmdk {name}: embedded descriptor");
    read_exact_at(extent.file(), &mut text, at, &what)?;
    let d = descriptor::parse(&text, &format!("{what} at offset {at:#x}"))?;
    refuse_parent(&d, name)?;
    Ok(Some(d))
}

/// Opens a sparse extent file and checks its embedded descriptor.
fn open_sparse(
    file: File,
    name: &str,
    sparse_extents: usize,
) -> io::Result<(SparseExtent, Option<Descriptor>)> {
    let extent = SparseExtent::open(file, name, sparse_extents)?;
    let embedded = embedded_descriptor(&extent, name)?;
    Ok((extent, embedded))
}

impl VmdkImage {
    /// Opens `path`: a descriptor file or a sparse file with an embedded descriptor.
    pub fn open(path: &Path) -> io::Result<VmdkImage> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let name = path.display().to_string();
        let mut magic = [0u8; 4];
        if len >= 4 {
            read_exact_at(&file, &mut magic, 0, "vmdk magic")?;
        }
        if &magic == header::MAGIC {
            let (extent, embedded) = open_sparse(file, &name, 1)?;
            let size = extent.capacity_bytes();
            let create_type = embedded.and_then(|d| d.create_type).unwrap_or_else(|| {
                if extent.header().compressed {
                    "streamOptimized"
                } else {
                    "monolithicSparse"
                }
                .to_owned()
            });
            return Ok(VmdkImage {
                size,
                extents: vec![Placed {
                    start: 0,
                    len: size,
                    store: Store::Sparse(extent),
                }],
                create_type,
                grains: compressed::GrainCache::default(),
            });
        }
        if &magic == header::COWD_MAGIC {
            return Err(unsupported(format!(
                "vmdk {name}: VMDK3 (COWD) sparse files are not supported"
            )));
        }
        if len > MAX_DESCRIPTOR_BYTES {
            return Err(invalid(format!(
                "vmdk {name}: no KDMV magic, and at {len} bytes too large for a descriptor (limit {MAX_DESCRIPTOR_BYTES})"
            )));
        }
        let mut text = vec![0u8; len as usize];
        read_exact_at(&file, &mut text, 0, "vmdk descriptor")?;
        let d = descriptor::parse(&text, &format!("vmdk descriptor {name}")).map_err(|e| {
            if descriptor::looks_like_descriptor(&text) {
                e
            } else {
                invalid(format!(
                    "vmdk {name}: no KDMV magic and not a descriptor file ({e})"
                ))
            }
        })?;
        Self::from_descriptor(path, d)
    }

    fn from_descriptor(path: &Path, d: Descriptor) -> io::Result<VmdkImage> {
        let name = path.display().to_string();
        refuse_parent(&d, &name)?;
        let Some(create_type) = d.create_type.clone() else {
            return Err(invalid(format!("vmdk descriptor {name}: no createType")));
        };
        if !CREATE_TYPES.contains(&create_type.as_str()) {
            return Err(unsupported(format!(
                "vmdk descriptor {name}: createType {create_type:?} is not supported"
            )));
        }
        if d.extents.is_empty() {
            return Err(invalid(format!("vmdk descriptor {name}: no extents")));
        }
        let total = d.total_sectors()?;
        if total > u64::MAX / SECTOR {
            return Err(invalid(format!(
                "vmdk descriptor {name}: the disk size overflows"
            )));
        }
        let sparse_count = d
            .extents
            .iter()
            .filter(|e| e.kind == ExtentKind::Sparse)
            .count();
        let mut extents = Vec::with_capacity(d.extents.len());
        let mut start = 0u64;
        for line in &d.extents {
            let len = line.sectors * SECTOR;
            let opened = match &line.file_name {
                Some(file_name) => Some(extent_path::open(path, file_name)?),
                None => None,
            };
            let store = match (line.kind, opened) {
                (ExtentKind::Zero, _) => Store::Zero,
                (ExtentKind::Flat, Some((file, p))) => {
                    let from = line.start_sector.checked_mul(SECTOR).ok_or_else(|| {
                        invalid(format!(
                            "vmdk descriptor {name}: flat extent offset overflows"
                        ))
                    })?;
                    Store::Flat(FlatExtent::open(&file, &p, from, len)?)
                }
                (ExtentKind::Sparse, Some((file, p))) => {
                    let extent_name = p.display().to_string();
                    let (extent, _) = open_sparse(file, &extent_name, sparse_count)?;
                    if extent.capacity_bytes() < len {
                        return Err(invalid(format!(
                            "vmdk {extent_name}: capacity of {} sectors is less than the descriptor's {}",
                            extent.header().capacity,
                            line.sectors
                        )));
                    }
                    Store::Sparse(extent)
                }
                (_, None) => {
                    return Err(invalid(format!(
                        "vmdk descriptor {name}: extent without a file"
                    )))
                }
            };
            if len > 0 {
                extents.push(Placed { start, len, store });
            }
            start += len;
        }
        Ok(VmdkImage {
            size: start,
            extents,
            create_type,
            grains: compressed::GrainCache::default(),
        })
    }

    /// The createType (from the descriptor, or implied by a sparse header).
    pub fn create_type(&self) -> &str {
        &self.create_type
    }

    /// The extent holding disk byte `offset` (which is below the size).
    fn placed(&self, offset: u64) -> io::Result<(usize, &Placed)> {
        let i = self.extents.partition_point(|e| e.start + e.len <= offset);
        self.extents
            .get(i)
            .map(|p| (i, p))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "offset past the disk"))
    }

    /// Fills `buf` from disk byte `offset` (the range lies inside the disk).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let (index, placed) = self.placed(at)?;
            let within = at - placed.start;
            let n = (buf.len() - done).min((placed.len - within) as usize);
            let dst = &mut buf[done..done + n];
            match &placed.store {
                Store::Sparse(s) => s.read(dst, within, &self.grains, index)?,
                Store::Flat(f) => f.read(dst, within)?,
                Store::Zero => dst.fill(0),
            }
            done += n;
        }
        Ok(())
    }

    /// The allocation map of a sparse extent from `within` (bytes in the
    /// extent), at most `max_len` bytes: a run of grains stored alike.
    fn sparse_extent(s: &SparseExtent, within: u64, max_len: u64) -> io::Result<Extent> {
        let grain_bytes = s.header().grain_bytes();
        let first = within / grain_bytes;
        let end = within + max_len;
        let (grains, kind) = s.run(first, end.div_ceil(grain_bytes) - first)?;
        let length = ((first + grains) * grain_bytes).min(end) - within;
        let skip = within - first * grain_bytes;
        Ok(match kind {
            Grain::Unallocated => extent(within, length, false, true, false, false, None),
            Grain::Zeroed => extent(within, length, true, true, false, false, None),
            Grain::Data(host) => {
                extent(within, length, true, false, true, false, Some(host + skip))
            }
            Grain::Compressed(_) => extent(within, length, true, false, true, true, None),
        })
    }
}

fn extent(
    start: u64,
    length: u64,
    present: bool,
    zero: bool,
    data: bool,
    compressed: bool,
    host_offset: Option<u64>,
) -> Extent {
    Extent {
        start,
        length,
        depth: 0,
        present,
        zero,
        data,
        compressed,
        host_offset,
    }
}

impl readonly::ReadOnlyImage for VmdkImage {
    const FORMAT: &'static str = "vmdk";

    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn read_exact(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read_at(buf, offset)
    }

    fn map(&self, offset: u64, max_len: u64) -> io::Result<Extent> {
        let (_, placed) = self.placed(offset)?;
        let within = offset - placed.start;
        let max_len = max_len.min(placed.len - within);
        let mut e = match &placed.store {
            Store::Sparse(s) => Self::sparse_extent(s, within, max_len)?,
            Store::Flat(f) => {
                let (length, hole, host) = f.map(within, max_len)?;
                extent(within, length, true, hole, true, false, Some(host))
            }
            Store::Zero => extent(within, max_len, true, true, false, false, None),
        };
        e.start = offset;
        Ok(e)
    }
}
