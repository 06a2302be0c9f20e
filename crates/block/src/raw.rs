//! Raw images: regular files (sparse-aware discard) and block devices,
//! optionally opened with O_DIRECT.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use vm_memory::VolatileSlice;

use crate::{DiskFile, Extent, Topology};

/// How to open a raw image.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions {
    /// Refuse writes (and open the file read-only).
    pub read_only: bool,
    /// Bypass the host page cache (O_DIRECT).
    pub direct: bool,
}

/// A raw image.
pub struct RawFile {
    file: File,
    size: u64,
    read_only: bool,
    block_device: bool,
    topology: Topology,
}

/// The most iovecs one preadv/pwritev takes (UIO_MAXIOV).
const IOV_MAX: usize = 1024;

// Block device ioctls (linux/fs.h).
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKSSZGET: libc::c_ulong = 0x1268;
const BLKPBSZGET: libc::c_ulong = 0x127b;
const BLKIOMIN: libc::c_ulong = 0x1278;
const BLKIOOPT: libc::c_ulong = 0x1279;
const BLKALIGNOFF: libc::c_ulong = 0x127a;
const BLKDISCARD: libc::c_ulong = 0x1277;
const BLKZEROOUT: libc::c_ulong = 0x127f;

fn ioctl_int(file: &File, request: libc::c_ulong) -> Option<u32> {
    let mut v: libc::c_int = 0;
    // SAFETY: the request writes one int into `v`, which outlives the call.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), request, &mut v) };
    (r == 0 && v >= 0).then_some(v as u32)
}

impl RawFile {
    /// Opens `path`.
    pub fn open(path: &Path, options: OpenOptions) -> io::Result<RawFile> {
        let mut flags = libc::O_CLOEXEC;
        if options.direct {
            flags |= libc::O_DIRECT;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!options.read_only)
            .custom_flags(flags)
            .open(path)?;
        let meta = file.metadata()?;
        let block_device = meta.file_type().is_block_device();
        let (size, topology) = if block_device {
            let mut size: u64 = 0;
            // SAFETY: BLKGETSIZE64 writes one u64 into `size`.
            if unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size) } != 0 {
                return Err(io::Error::last_os_error());
            }
            let logical = ioctl_int(&file, BLKSSZGET).unwrap_or(512);
            let topology = Topology {
                logical_block_size: logical,
                physical_block_size: ioctl_int(&file, BLKPBSZGET).unwrap_or(logical),
                min_io_size: ioctl_int(&file, BLKIOMIN).unwrap_or(logical),
                opt_io_size: ioctl_int(&file, BLKIOOPT).unwrap_or(0),
                alignment_offset: ioctl_int(&file, BLKALIGNOFF).unwrap_or(0) / logical.max(1),
            };
            (size, topology)
        } else if meta.file_type().is_file() {
            let physical = (meta.blksize() as u32).clamp(512, 1 << 16);
            let topology = Topology {
                logical_block_size: 512,
                physical_block_size: physical,
                min_io_size: physical,
                opt_io_size: 0,
                alignment_offset: 0,
            };
            (meta.len(), topology)
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file or block device",
            ));
        };
        Ok(RawFile {
            file,
            size,
            read_only: options.read_only,
            block_device,
            topology,
        })
    }

    fn punch(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        // SAFETY: fallocate on our own descriptor with plain integer arguments.
        let r = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                mode,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn range_ioctl(&self, request: libc::c_ulong, offset: u64, len: u64) -> io::Result<()> {
        let range = [offset, len];
        // SAFETY: the request reads two u64s from `range`, which outlives the call.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), request, range.as_ptr()) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// One preadv/pwritev (`call`) over up to IOV_MAX guest memory slices.
    fn transfer(
        &self,
        bufs: &[VolatileSlice],
        offset: u64,
        call: unsafe extern "C" fn(
            libc::c_int,
            *const libc::iovec,
            libc::c_int,
            libc::off_t,
        ) -> libc::ssize_t,
    ) -> io::Result<usize> {
        let guards: Vec<_> = bufs
            .iter()
            .take(IOV_MAX)
            .map(|b| b.ptr_guard_mut())
            .collect();
        let iovs: Vec<libc::iovec> = guards
            .iter()
            .zip(bufs)
            .map(|(g, b)| libc::iovec {
                iov_base: g.as_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        // SAFETY: `call` is preadv or pwritev on our descriptor; each iovec
        // covers a guest memory slice that its guard keeps mapped for the call.
        let r = unsafe {
            call(
                self.file.as_raw_fd(),
                iovs.as_ptr(),
                iovs.len() as libc::c_int,
                offset as libc::off_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as usize)
    }

    /// `lseek(fd, offset, whence)`; `None` when no data/hole lies past `offset` (ENXIO).
    fn seek(&self, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
        // SAFETY: lseek on our own descriptor with integer arguments.
        let r = unsafe { libc::lseek(self.file.as_raw_fd(), offset as libc::off_t, whence) };
        if r >= 0 {
            return Ok(Some(r as u64));
        }
        match io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
            e => Err(e),
        }
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
}

impl DiskFile for RawFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn topology(&self) -> Topology {
        self.topology
    }

    fn read_vectored_at(&self, bufs: &[VolatileSlice], offset: u64) -> io::Result<usize> {
        self.transfer(bufs, offset, libc::preadv)
    }

    fn write_vectored_at(&self, bufs: &[VolatileSlice], offset: u64) -> io::Result<usize> {
        self.check_writable()?;
        self.transfer(bufs, offset, libc::pwritev)
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check_writable()?;
        if self.block_device {
            self.range_ioctl(BLKDISCARD, offset, len)
        } else {
            self.punch(
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
        }
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        self.check_writable()?;
        if self.block_device {
            return self.range_ioctl(BLKZEROOUT, offset, len);
        }
        if unmap {
            if let Ok(()) = self.punch(
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            ) {
                return Ok(());
            }
        }
        self.punch(
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
        .or_else(|_| {
            self.punch(
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
        })
    }

    fn extent_at(&self, offset: u64, max_len: u64) -> io::Result<Extent> {
        self.raw_extent(offset, max_len)
    }
}

impl RawFile {
    /// The stretch at `offset` as SEEK_DATA/SEEK_HOLE see it: data up to the
    /// next hole, or a hole (reading as zeros) up to the next data.
    fn raw_extent(&self, offset: u64, max_len: u64) -> io::Result<Extent> {
        let end = self.size.min(offset.saturating_add(max_len));
        if offset >= end {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "offset {offset} is past the end of the disk ({} bytes)",
                    self.size
                ),
            ));
        }
        let whole = |data: bool, stop: u64| Extent {
            start: offset,
            length: stop.clamp(offset + 1, end) - offset,
            depth: 0,
            present: data,
            zero: !data,
            data,
            compressed: false,
            host_offset: data.then_some(offset),
        };
        if self.block_device {
            return Ok(whole(true, end));
        }
        match self.seek(offset, libc::SEEK_DATA) {
            Ok(Some(next_data)) if next_data <= offset => {
                let hole = self.seek(offset, libc::SEEK_HOLE)?.unwrap_or(end);
                Ok(whole(true, hole))
            }
            Ok(Some(next_data)) => Ok(whole(false, next_data)),
            Ok(None) => Ok(whole(false, end)),
            // Filesystems without SEEK_DATA: everything is data.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(whole(true, end)),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};

    fn temp_file(len: u64) -> (std::path::PathBuf, File) {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("ferrovisor-raw-{}-{n}", std::process::id()));
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.set_len(len).unwrap();
        (path, f)
    }

    #[test]
    fn read_write_discard_zeroes() {
        let (path, mut f) = temp_file(1 << 20);
        f.write_all(&[7u8; 8192]).unwrap();
        let disk = RawFile::open(&path, OpenOptions::default()).unwrap();
        assert_eq!(disk.size(), 1 << 20);
        assert_eq!(disk.topology().logical_block_size, 512);
        let mut mem = vec![0u8; 4096];
        let slice = VolatileSlice::from(&mut mem[..]);
        assert_eq!(
            disk.read_vectored_at(std::slice::from_ref(&slice), 0)
                .unwrap(),
            4096
        );
        assert!(mem.iter().all(|b| *b == 7));
        let mut data = vec![9u8; 512];
        disk.write_vectored_at(&[VolatileSlice::from(&mut data[..])], 4096)
            .unwrap();
        disk.flush().unwrap();
        disk.discard(0, 4096).unwrap();
        disk.write_zeroes(8192 - 512, 512, false).unwrap();
        let mut back = vec![0u8; 8192];
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_exact(&mut back).unwrap();
        assert!(
            back[..4096].iter().all(|b| *b == 0),
            "discarded range reads zeros"
        );
        assert!(back[4096..4608].iter().all(|b| *b == 9));
        assert!(back[4608..7680].iter().all(|b| *b == 7));
        assert!(back[7680..].iter().all(|b| *b == 0));
        let slice = VolatileSlice::from(&mut mem[..]);
        assert_eq!(
            disk.read_vectored_at(&[slice.subslice(0, 16).unwrap()], 1 << 20)
                .unwrap(),
            0,
            "end of file"
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn vectored_transfers_cross_slices() {
        let (path, _f) = temp_file(1 << 16);
        let disk = RawFile::open(&path, OpenOptions::default()).unwrap();
        let (mut a, mut b) = (vec![1u8; 700], vec![2u8; 324]);
        let bufs = [
            VolatileSlice::from(&mut a[..]),
            VolatileSlice::from(&mut b[..]),
        ];
        crate::write_all_vectored_at(&disk, &bufs, 512).unwrap();
        let (mut x, mut y) = (vec![0u8; 100], vec![0u8; 924]);
        let back = [
            VolatileSlice::from(&mut x[..]),
            VolatileSlice::from(&mut y[..]),
        ];
        crate::read_exact_vectored_at(&disk, &back, 512).unwrap();
        assert!(x.iter().all(|v| *v == 1));
        assert!(y[..600].iter().all(|v| *v == 1) && y[600..].iter().all(|v| *v == 2));
        let mut tail = [0u8; 16];
        let past = [VolatileSlice::from(&mut tail[..])];
        assert!(
            crate::read_exact_vectored_at(&disk, &past, (1 << 16) - 8).is_err(),
            "end of file"
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn allocation_map_follows_holes() {
        let (path, mut f) = temp_file(1 << 20);
        f.seek(SeekFrom::Start(256 << 10)).unwrap();
        f.write_all(&[3u8; 64 << 10]).unwrap();
        f.sync_all().unwrap();
        let disk = RawFile::open(&path, OpenOptions::default()).unwrap();
        let mut at = 0;
        let mut map = Vec::new();
        while at < disk.size() {
            let e = disk.extent_at(at, u64::MAX).unwrap();
            assert_eq!(e.start, at);
            map.push((e.start, e.length, e.data));
            at += e.length;
        }
        assert!(
            map.contains(&(256 << 10, 64 << 10, true)),
            "written range is data: {map:?}"
        );
        assert_eq!(map.first().map(|m| m.2), Some(false), "{map:?}");
        assert!(disk.extent_at(1 << 20, 1).is_err());
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn read_only_refuses_writes() {
        let (path, _f) = temp_file(4096);
        let disk = RawFile::open(
            &path,
            OpenOptions {
                read_only: true,
                direct: false,
            },
        )
        .unwrap();
        let mut data = vec![1u8; 512];
        assert!(disk
            .write_vectored_at(&[VolatileSlice::from(&mut data[..])], 0)
            .is_err());
        assert!(disk.discard(0, 512).is_err());
        assert!(disk.write_zeroes(0, 512, true).is_err());
        assert!(disk.read_only());
        std::fs::remove_file(path).unwrap();
        assert!(RawFile::open(std::path::Path::new("/dev/null"), OpenOptions::default()).is_err());
    }
}
