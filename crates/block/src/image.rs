//! Image formats and the one place that opens an image by format: a given
//! format is never second-guessed by probing, and a raw image's bytes are
//! never interpreted (so a raw-declared image never opens a backing file).

use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::qcow2::{self, Qcow2Image, Qcow2Options};
use crate::{DiskFile, OpenOptions, RawFile};

/// A disk image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Raw bytes.
    Raw,
    /// qcow2 (versions 2 and 3).
    Qcow2,
    /// VMDK (read-only).
    Vmdk,
    /// VHD, named "vpc" as in qemu-img (read-only).
    Vpc,
}

impl Format {
    /// The name qemu-img uses.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
            Format::Vpc => "vpc",
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Format {
    type Err = io::Error;
    fn from_str(s: &str) -> io::Result<Format> {
        match s {
            "raw" => Ok(Format::Raw),
            "qcow2" => Ok(Format::Qcow2),
            "vmdk" => Ok(Format::Vmdk),
            "vpc" | "vhd" => Ok(Format::Vpc),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unknown image format '{s}' (raw, qcow2, vmdk, vpc)"),
            )),
        }
    }
}

/// Guesses the format of the image at `path` from its first bytes.
pub fn probe(path: &Path) -> io::Result<Format> {
    let file = std::fs::File::open(path)?;
    let mut first = [0u8; 512];
    let mut n = 0;
    while n < first.len() {
        match file.read_at(&mut first[n..], n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    let first = &first[..n];
    let len = file.metadata()?.len();
    let mut last = [0u8; 512];
    let mut got = 0;
    if len >= 512 {
        while got < last.len() {
            match file.read_at(&mut last[got..], len - 512 + got as u64)? {
                0 => break,
                k => got += k,
            }
        }
    }
    Ok(if qcow2::probe(first) {
        Format::Qcow2
    } else if crate::vmdk::probe(first) {
        Format::Vmdk
    } else if crate::vhd::probe(first, &last[..got]) {
        Format::Vpc
    } else {
        Format::Raw
    })
}

/// How to open an image.
#[derive(Debug, Clone, Default)]
pub struct ImageOptions {
    /// Refuse writes.
    pub read_only: bool,
    /// O_DIRECT (raw only).
    pub direct: bool,
    /// The format; `None` probes it.
    pub format: Option<Format>,
    /// qcow2 settings (cache sizes, backing chain).
    pub qcow2: Qcow2Options,
}

/// Opens the image at `path` as `options.format` (probed when `None`).
pub fn open_image(path: &Path, options: &ImageOptions) -> io::Result<Box<dyn DiskFile>> {
    open_at_depth(path, options, 0)
}

pub(crate) fn open_at_depth(
    path: &Path,
    options: &ImageOptions,
    depth: u32,
) -> io::Result<Box<dyn DiskFile>> {
    let format = match options.format {
        Some(f) => f,
        None => probe(path)?,
    };
    match format {
        Format::Raw => Ok(Box::new(RawFile::open(
            path,
            OpenOptions {
                read_only: options.read_only,
                direct: options.direct,
            },
        )?)),
        Format::Qcow2 => {
            let q = Qcow2Options {
                read_only: options.read_only,
                ..options.qcow2.clone()
            };
            Ok(Box::new(Qcow2Image::open_at_depth(path, &q, depth)?))
        }
        Format::Vmdk | Format::Vpc if !options.read_only => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("{format} images are read-only here: open them read-only (readonly=on), or convert them"),
        )),
        Format::Vmdk => Ok(Box::new(crate::vmdk::VmdkImage::open(path)?)),
        Format::Vpc => Ok(Box::new(crate::vhd::VhdImage::open(path)?)),
    }
}
