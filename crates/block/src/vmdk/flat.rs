//! Flat extents (`FLAT`, `VMFS`): a stretch of a plain file, from a sector
//! offset on. Holes in the file show in the allocation map as zeros.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use vm_memory::VolatileSlice;

use crate::raw::{OpenOptions, RawFile};
use crate::readonly::invalid;
use crate::DiskFile;

/// An open flat extent.
pub struct FlatExtent {
    file: RawFile,
    /// Where the extent starts in the file, in bytes.
    start: u64,
}

impl FlatExtent {
    /// Opens the flat extent in `file` (found at `path`), which must hold
    /// `len` bytes from byte `start` on.
    pub fn open(file: &File, path: &Path, start: u64, len: u64) -> io::Result<FlatExtent> {
        // Reopen the very file that was checked (not the path, which could
        // have changed since) as a raw image.
        let file = RawFile::open(
            Path::new(&format!("/proc/self/fd/{}", file.as_raw_fd())),
            OpenOptions {
                read_only: true,
                direct: false,
            },
        )?;
        let end = start.checked_add(len);
        if end.is_none_or(|end| end > file.size()) {
            return Err(invalid(format!(
                "vmdk flat extent {}: {len} bytes from offset {start:#x} run past the end of the file ({} bytes)",
                path.display(),
                file.size()
            )));
        }
        Ok(FlatExtent { file, start })
    }

    /// Fills `buf` from `offset` within the extent.
    pub fn read(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let slice = VolatileSlice::from(buf);
        crate::read_exact_vectored_at(&self.file, &[slice], self.start + offset)
    }

    /// The stretch at `offset` within the extent (at most `max_len` bytes):
    /// (length, whether it is a hole of the file, its file offset).
    pub fn map(&self, offset: u64, max_len: u64) -> io::Result<(u64, bool, u64)> {
        let at = self.start + offset;
        let e = self.file.extent_at(at, max_len)?;
        Ok((e.length, !e.data, at))
    }
}
