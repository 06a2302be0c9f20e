//! What the read-only image formats (VMDK, VHD) share: positional reads
//! that name the structure they read when the file is too short, the
//! refusal of writes, and filling guest buffers from a byte-level reader.

use std::fmt::Display;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use vm_memory::VolatileSlice;

use crate::{DiskFile, Extent, Topology};

/// The block sizes a read-only image reports: plain 512-byte sectors.
pub(crate) const TOPOLOGY: Topology = Topology {
    logical_block_size: 512,
    physical_block_size: 512,
    min_io_size: 512,
    opt_io_size: 0,
    alignment_offset: 0,
};

/// The most bytes one `read_vectored_at` call stages in its scratch buffer.
const CHUNK: usize = 1 << 20;

/// An `InvalidData` error with `message`.
pub(crate) fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// The error every write, discard and write-zeroes of a read-only format gets.
pub(crate) fn refuse_write(format: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("{format} images are read-only: writing is not supported"),
    )
}

/// Fills `buf` from `offset` of `file` (pread); a file too short gives an
/// `InvalidData` error naming `what`.
pub(crate) fn read_exact_at(
    file: &File,
    buf: &mut [u8],
    offset: u64,
    what: impl Display,
) -> io::Result<()> {
    file.read_exact_at(buf, offset).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            invalid(format!(
                "{what} at offset {offset:#x} ({} bytes) lies past the end of the file",
                buf.len()
            ))
        } else {
            e
        }
    })
}

/// Reads `[offset, offset + total)` of a disk of `size` bytes into `bufs`
/// through `read` (which fills a byte buffer from a disk offset), stopping
/// at the end of the disk. Returns the bytes read (0 at or past the end).
pub(crate) fn read_into_slices(
    size: u64,
    bufs: &[VolatileSlice],
    offset: u64,
    mut read: impl FnMut(&mut [u8], u64) -> io::Result<()>,
) -> io::Result<usize> {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut scratch) => fill_slices(size, bufs, offset, &mut scratch, &mut read),
        // Re-entered (a reader reading another image): use a buffer of its own.
        Err(_) => fill_slices(size, bufs, offset, &mut Vec::new(), &mut read),
    })
}

/// [`read_into_slices`] staging through `scratch` (kept at most CHUNK long).
fn fill_slices(
    size: u64,
    bufs: &[VolatileSlice],
    offset: u64,
    scratch: &mut Vec<u8>,
    read: &mut impl FnMut(&mut [u8], u64) -> io::Result<()>,
) -> io::Result<usize> {
    let mut done = 0usize;
    for slice in bufs {
        let mut in_slice = 0usize;
        while in_slice < slice.len() {
            let at = offset + done as u64;
            if at >= size {
                return Ok(done);
            }
            let n = (slice.len() - in_slice)
                .min(CHUNK)
                .min(usize::try_from(size - at).unwrap_or(usize::MAX));
            if scratch.len() < n {
                scratch.resize(n, 0);
            }
            read(&mut scratch[..n], at)?;
            let dst = slice
                .subslice(in_slice, n)
                .map_err(|e| io::Error::other(e.to_string()))?;
            dst.copy_from(&scratch[..n]);
            in_slice += n;
            done += n;
        }
    }
    Ok(done)
}

/// What a read-only image format provides; the `DiskFile` impl below does
/// the rest (bounds, refusing writes, filling guest buffers).
pub(crate) trait ReadOnlyImage: Send + Sync {
    /// The format's name in errors ("vmdk", "vhd").
    const FORMAT: &'static str;
    /// The virtual size in bytes.
    fn virtual_size(&self) -> u64;
    /// Fills `buf` from guest `offset` (within the disk).
    fn read_exact(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// The stretch at `offset`, at most `max_len` bytes; both are within
    /// the disk and `max_len` is not 0.
    fn map(&self, offset: u64, max_len: u64) -> io::Result<Extent>;
}

impl<T: ReadOnlyImage> DiskFile for T {
    fn size(&self) -> u64 {
        self.virtual_size()
    }

    fn read_only(&self) -> bool {
        true
    }

    fn topology(&self) -> Topology {
        TOPOLOGY
    }

    fn read_vectored_at(&self, bufs: &[VolatileSlice], offset: u64) -> io::Result<usize> {
        read_into_slices(self.virtual_size(), bufs, offset, |buf, at| {
            self.read_exact(buf, at)
        })
    }

    fn write_vectored_at(&self, _bufs: &[VolatileSlice], _offset: u64) -> io::Result<usize> {
        Err(refuse_write(T::FORMAT))
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn discard(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Err(refuse_write(T::FORMAT))
    }

    fn write_zeroes(&self, _offset: u64, _len: u64, _unmap: bool) -> io::Result<()> {
        Err(refuse_write(T::FORMAT))
    }

    fn extent_at(&self, offset: u64, max_len: u64) -> io::Result<Extent> {
        let size = self.virtual_size();
        if offset >= size || max_len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("offset {offset} is past the end of the disk ({size} bytes)"),
            ));
        }
        self.map(offset, max_len.min(size - offset))
    }
}
