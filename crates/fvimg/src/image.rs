//! Opening and creating images for the commands: a format given is used
//! as is, otherwise probed; qcow2 images are kept as such for the
//! commands that need their metadata.

use std::io;
use std::path::{Path, PathBuf};

use block::qcow2::{CompressionType, CreateOptions, Preallocation, Qcow2Image, Qcow2Options};
use block::{BackingPolicy, DiskFile, Format, ImageOptions, OpenOptions, RawFile};

use crate::size::parse_size;

/// An open image.
pub enum Image {
    /// A raw file or device (and a handle for plain positional writes).
    Raw(RawFile, std::fs::File),
    /// A qcow2 image.
    Qcow2(Box<Qcow2Image>),
    /// An image of a read-only format (VMDK, VHD), read through the block crate.
    ReadOnly(Format, Box<dyn DiskFile>),
}

/// What the commands open images with: where backing files may be read
/// from, for every image a command opens and its whole backing chain.
pub struct Ctx {
    /// The backing policy.
    pub backing: BackingPolicy,
}

impl Ctx {
    /// Opens `path` as `format` (probed when `None`), with its backing
    /// chain when `backing`.
    pub fn open(
        &self,
        path: &Path,
        format: Option<Format>,
        read_only: bool,
        backing: bool,
    ) -> io::Result<Image> {
        Image::open_with(path, format, read_only, backing, false, &self.backing)
    }

    /// Opens `path` for `check -r` (an image marked corrupt may be written).
    pub fn open_for_repair(&self, path: &Path, format: Option<Format>) -> io::Result<Image> {
        Image::open_with(path, format, false, false, true, &self.backing)
    }

    /// Where backing file `name` of `image` lies, checked against the
    /// policy (and for its file type): the path to open.
    pub fn backing_file(&self, image: &Path, name: &str) -> io::Result<PathBuf> {
        let resolved = block::qcow2::resolve_backing(image, name);
        Ok(block::check_backing(&self.backing, image, name, &resolved)?)
    }
}

/// The canonical directory `path` lies in (`None` when it does not exist).
pub fn directory_of(path: &Path) -> Option<PathBuf> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
    .canonicalize()
    .ok()
}

impl Image {
    fn open_with(
        path: &Path,
        format: Option<Format>,
        read_only: bool,
        backing: bool,
        for_repair: bool,
        policy: &BackingPolicy,
    ) -> io::Result<Image> {
        let format = match format {
            Some(f) => f,
            None => block::image::probe(path)?,
        };
        match format {
            Format::Raw => Ok(Image::Raw(
                RawFile::open(
                    path,
                    OpenOptions {
                        read_only,
                        direct: false,
                    },
                )?,
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(!read_only)
                    .open(path)?,
            )),
            Format::Qcow2 => Ok(Image::Qcow2(Box::new(Qcow2Image::open(
                path,
                &Qcow2Options {
                    read_only,
                    open_backing: backing,
                    l2_cache_tables: 1024,
                    for_repair,
                    backing_policy: policy.clone(),
                    ..Default::default()
                },
            )?))),
            other if read_only => Ok(Image::ReadOnly(
                other,
                block::open_image(
                    path,
                    &ImageOptions {
                        read_only: true,
                        format: Some(other),
                        qcow2: Qcow2Options {
                            backing_policy: policy.clone(),
                            ..Default::default()
                        },
                        ..Default::default()
                    },
                )?,
            )),
            other => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("{other} images are read-only here (convert them to qcow2 or raw)"),
            )),
        }
    }

    /// The format.
    pub fn format(&self) -> Format {
        match self {
            Image::Raw(..) => Format::Raw,
            Image::Qcow2(_) => Format::Qcow2,
            Image::ReadOnly(format, _) => *format,
        }
    }

    /// The image as a disk.
    pub fn disk(&self) -> &dyn DiskFile {
        match self {
            Image::Raw(r, _) => r,
            Image::Qcow2(q) => q.as_ref(),
            Image::ReadOnly(_, d) => d.as_ref(),
        }
    }

    /// Fills `buf` from guest `offset`.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match self {
            Image::Qcow2(q) => {
                if q.read_at(buf, offset)? != buf.len() {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                Ok(())
            }
            Image::Raw(r, _) => block::read_exact_at(r, buf, offset),
            Image::ReadOnly(_, d) => block::read_exact_at(d.as_ref(), buf, offset),
        }
    }

    /// Makes the writes durable.
    pub fn flush(&self) -> io::Result<()> {
        self.disk().flush()
    }

    /// Writes `buf` at guest `offset`.
    pub fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        match self {
            Image::Qcow2(q) => q.write_at(buf, offset),
            Image::Raw(_, f) => std::os::unix::fs::FileExt::write_all_at(f, buf, offset),
            Image::ReadOnly(format, _) => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{format} images are read-only"),
            )),
        }
    }
}

/// `-o` options of create and convert.
#[derive(Debug, Default, Clone)]
pub struct CreateSpec {
    /// qcow2 options.
    pub qcow2: CreateOptions,
    /// Raw preallocation.
    pub raw_prealloc: Option<Preallocation>,
}

fn on_off(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("{key} must be on or off, not '{v}'")),
    }
}

/// Parses `key=value,...` (qemu-img's `-o`).
pub fn parse_options(list: &[String], spec: &mut CreateSpec) -> Result<(), String> {
    for item in list
        .iter()
        .flat_map(|l| l.split(','))
        .filter(|s| !s.is_empty())
    {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| format!("option '{item}' is not key=value"))?;
        let q = &mut spec.qcow2;
        match k {
            "cluster_size" => q.cluster_size = parse_size(v)?,
            "refcount_bits" => {
                q.refcount_bits = v.parse().map_err(|_| format!("refcount_bits '{v}'"))?
            }
            "lazy_refcounts" => q.lazy_refcounts = on_off(k, v)?,
            "extended_l2" => q.extended_l2 = on_off(k, v)?,
            "compression_type" => {
                q.compression_type = match v {
                    "zlib" => CompressionType::Zlib,
                    "zstd" => CompressionType::Zstd,
                    _ => return Err(format!("compression_type '{v}' is not zlib or zstd")),
                }
            }
            "compat" => {
                q.version = match v {
                    "0.10" | "v2" => 2,
                    "1.1" | "v3" => 3,
                    _ => return Err(format!("compat '{v}' is not 0.10 or 1.1")),
                }
            }
            "preallocation" => {
                let p = v.parse()?;
                q.preallocation = p;
                spec.raw_prealloc = Some(p);
            }
            "backing_file" => q.backing_file = Some(v.to_string()),
            "backing_fmt" => q.backing_format = Some(v.to_string()),
            "size" => q.size = parse_size(v)?,
            _ => return Err(format!("unknown option '{k}'")),
        }
    }
    Ok(())
}

/// Creates an image of `format` per `spec`.
pub fn create(ctx: &Ctx, path: &Path, format: Format, spec: &CreateSpec) -> io::Result<Image> {
    match format {
        Format::Qcow2 => Ok(Image::Qcow2(Box::new(Qcow2Image::create(
            path,
            &spec.qcow2,
        )?))),
        Format::Raw => {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(path)?;
            // Sizes round up to whole sectors, as qemu-img's do.
            let size = spec.qcow2.size.div_ceil(512) * 512;
            match spec.raw_prealloc.unwrap_or_default() {
                Preallocation::Off => file.set_len(size)?,
                Preallocation::Metadata => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "raw images have no metadata to preallocate",
                    ))
                }
                Preallocation::Falloc => {
                    file.set_len(size)?;
                    if size > 0 {
                        use std::os::fd::AsRawFd;
                        // SAFETY: fallocate on our own descriptor with integer arguments.
                        let r =
                            unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, size as libc::off_t) };
                        if r != 0 {
                            return Err(io::Error::last_os_error());
                        }
                    }
                }
                Preallocation::Full => {
                    use std::os::unix::fs::FileExt;
                    let zeros = vec![0u8; 1 << 20];
                    let mut at = 0;
                    while at < size {
                        let n = (zeros.len() as u64).min(size - at) as usize;
                        file.write_all_at(&zeros[..n], at)?;
                        at += n as u64;
                    }
                }
            }
            drop(file);
            ctx.open(path, Some(Format::Raw), false, false)
        }
        other => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("creating {other} images"),
        )),
    }
}
