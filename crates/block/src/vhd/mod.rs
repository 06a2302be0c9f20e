//! VHD (Virtual PC, QEMU's "vpc") images, read-only: fixed and dynamic
//! disks. Differencing disks are refused.
//!
//! Modules: [`footer`] (the footer and the size rule), [`dynamic`] (dynamic
//! header, BAT, blocks and sector bitmaps).

pub mod dynamic;
pub mod footer;

use std::fs::File;
use std::io;
use std::path::Path;

use vm_memory::VolatileSlice;

use crate::raw::{OpenOptions, RawFile};
use crate::readonly::{self, invalid, read_exact_at};
use crate::{DiskFile, Extent};
use dynamic::{DynamicDisk, Run};
use footer::{DiskType, Footer, COOKIE, FOOTER_BYTES};

/// Whether a file looks like a VHD: the footer cookie at its start (dynamic
/// disks) or in its last 512 bytes (every disk).
pub fn probe(first_bytes: &[u8], last_512: &[u8]) -> bool {
    first_bytes.starts_with(COOKIE) || last_512.starts_with(COOKIE)
}

/// The most unallocated blocks one `extent_at` call merges; a longer run
/// is reported in pieces.
const MAX_MAP_STEPS: u32 = 1 << 16;

enum Layout {
    /// The data lies at the start of the file.
    Fixed(RawFile),
    Dynamic(DynamicDisk),
}

/// A read-only VHD image.
pub struct VhdImage {
    size: u64,
    layout: Layout,
}

impl VhdImage {
    /// Opens `path`.
    pub fn open(path: &Path) -> io::Result<VhdImage> {
        let name = path.display().to_string();
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        if len < FOOTER_BYTES {
            return Err(invalid(format!(
                "vhd {name}: a file of {len} bytes is too short for a footer"
            )));
        }
        let mut raw = [0u8; FOOTER_BYTES as usize];
        read_exact_at(&file, &mut raw, 0, "vhd footer copy")?;
        let mut at = 0;
        if &raw[0..8] != COOKIE {
            at = len - FOOTER_BYTES;
            read_exact_at(&file, &mut raw, at, "vhd footer")?;
        }
        let footer = Footer::parse(&raw, &format!("vhd {name}: footer at offset {at:#x}"))?;
        let layout = match footer.disk_type {
            DiskType::Fixed => {
                if footer.size > len - FOOTER_BYTES {
                    return Err(invalid(format!(
                        "vhd {name}: a fixed disk of {} bytes does not fit in a file of {len} bytes",
                        footer.size
                    )));
                }
                let options = OpenOptions {
                    read_only: true,
                    direct: false,
                };
                Layout::Fixed(RawFile::open(path, options)?)
            }
            DiskType::Dynamic => Layout::Dynamic(DynamicDisk::open(
                file,
                &name,
                footer.data_offset,
                footer.size,
            )?),
        };
        Ok(VhdImage {
            size: footer.size,
            layout,
        })
    }

    /// Whether the disk is dynamic (rather than fixed).
    pub fn is_dynamic(&self) -> bool {
        matches!(self.layout, Layout::Dynamic(_))
    }

    /// Fills `buf` from disk byte `offset` (the range lies inside the disk).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match &self.layout {
            Layout::Fixed(raw) => {
                crate::read_exact_vectored_at(raw, &[VolatileSlice::from(buf)], offset)
            }
            Layout::Dynamic(d) => d.read(buf, offset),
        }
    }
}

impl readonly::ReadOnlyImage for VhdImage {
    const FORMAT: &'static str = "vhd";

    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn read_exact(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read_at(buf, offset)
    }

    fn map(&self, offset: u64, max_len: u64) -> io::Result<Extent> {
        let mut e = Extent {
            start: offset,
            length: max_len,
            depth: 0,
            present: true,
            zero: false,
            data: true,
            compressed: false,
            host_offset: None,
        };
        match &self.layout {
            Layout::Fixed(raw) => {
                let r = raw.extent_at(offset, max_len)?;
                e.length = r.length;
                // As qemu-img reports it: data throughout, holes of the
                // file also zero.
                e.zero = !r.data;
                e.host_offset = Some(offset);
            }
            Layout::Dynamic(d) => {
                let (mut length, run) = d.run(offset, max_len)?;
                // Merge following unallocated blocks into one stretch.
                let mut steps = 0;
                while let Run::Zero { in_block: false } = run {
                    steps += 1;
                    if length >= max_len || steps > MAX_MAP_STEPS {
                        break;
                    }
                    match d.run(offset + length, max_len - length)? {
                        (more, Run::Zero { in_block: false }) => length += more,
                        _ => break,
                    }
                }
                e.length = length;
                match run {
                    Run::Zero { in_block } => {
                        e.present = in_block;
                        e.zero = true;
                        e.data = false;
                    }
                    Run::Data(host) => e.host_offset = Some(host),
                }
            }
        }
        Ok(e)
    }
}
