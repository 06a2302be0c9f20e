//! Disk images for Ferrovisor's block devices and image tools, behind one
//! [`DiskFile`] trait: raw files and block devices, qcow2. The crate knows
//! nothing of virtio or VMs, so tools and fuzz targets can use it alone.

pub mod backing;
pub mod image;
pub mod qcow2;
pub mod raw;
mod readonly;
pub mod vhd;
pub mod vmdk;

pub use backing::{check_backing, BackingError, BackingPolicy};
pub use image::{open_image, Format, ImageOptions};
pub use qcow2::Qcow2Image;
pub use raw::{OpenOptions, RawFile};

use std::io;

use vm_memory::VolatileSlice;

/// Block sizes a disk reports (what the guest sees as logical and physical
/// block size, minimum and optimal I/O size, alignment offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    /// Logical block size in bytes (512 or 4096).
    pub logical_block_size: u32,
    /// Physical block size in bytes.
    pub physical_block_size: u32,
    /// Minimum I/O size in bytes.
    pub min_io_size: u32,
    /// Optimal I/O size in bytes (0: not reported).
    pub opt_io_size: u32,
    /// Offset of the first aligned logical block, in logical blocks.
    pub alignment_offset: u32,
}

/// How one stretch of a disk is stored: what `qemu-img map --output json`
/// reports for a range (`start`, `length`, `depth`, `present`, `zero`,
/// `data`, `compressed`, `offset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Guest-visible offset of the stretch.
    pub start: u64,
    /// Length in bytes; never 0.
    pub length: u64,
    /// Backing images between this image and the one that holds the
    /// stretch (0: this image). For an absent stretch: the chain length.
    pub depth: u32,
    /// Whether some image of the chain holds the stretch.
    pub present: bool,
    /// Whether the stretch reads as zeros.
    pub zero: bool,
    /// Whether the holding image stores data for it (false for holes and
    /// zero clusters).
    pub data: bool,
    /// Whether the data is stored compressed.
    pub compressed: bool,
    /// Where the data lies in the holding image's file, when it lies there
    /// uncompressed and contiguous.
    pub host_offset: Option<u64>,
}

/// A disk image: random access by byte offset. Implementations are shared
/// between queue workers, so every method takes `&self` and is positional.
pub trait DiskFile: Send + Sync {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Whether writes are refused.
    fn read_only(&self) -> bool;
    /// The block sizes the host file or device reports.
    fn topology(&self) -> Topology;
    /// Reads into the buffers in order from `offset` in one call (preadv);
    /// returns bytes read (0 at end).
    fn read_vectored_at(&self, bufs: &[VolatileSlice], offset: u64) -> io::Result<usize>;
    /// Writes the buffers in order at `offset` in one call (pwritev); returns bytes written.
    fn write_vectored_at(&self, bufs: &[VolatileSlice], offset: u64) -> io::Result<usize>;
    /// Makes every completed write durable (fdatasync).
    fn flush(&self) -> io::Result<()>;
    /// Deallocates `[offset, offset + len)`; it then reads as zeros.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Makes `[offset, offset + len)` read as zeros, deallocating it when `unmap`.
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()>;
    /// The allocation map: how the stretch starting at `offset` (at most
    /// `max_len` bytes, within the disk) is stored. Callers walk a disk by
    /// calling again at `start + length`.
    fn extent_at(&self, offset: u64, max_len: u64) -> io::Result<Extent>;
}

/// Drops the first `n` bytes of `bufs`.
fn advance<'a>(bufs: &mut Vec<VolatileSlice<'a>>, mut n: usize) -> io::Result<()> {
    while n > 0 {
        let Some(first) = bufs.first().copied() else {
            return Ok(());
        };
        if first.len() <= n {
            n -= first.len();
            bufs.remove(0);
        } else {
            bufs[0] = first
                .offset(n)
                .map_err(|e| io::Error::other(e.to_string()))?;
            n = 0;
        }
    }
    Ok(())
}

/// Repeats `op` (a positional vectored transfer) until every buffer was
/// moved; a transfer of 0 bytes ends with `stalled`.
fn transfer_all(
    bufs: &[VolatileSlice],
    mut offset: u64,
    stalled: io::ErrorKind,
    op: impl Fn(&[VolatileSlice], u64) -> io::Result<usize>,
) -> io::Result<()> {
    let mut left: Vec<VolatileSlice> = bufs.iter().copied().filter(|b| !b.is_empty()).collect();
    while !left.is_empty() {
        match op(&left, offset)? {
            0 => return Err(stalled.into()),
            n => {
                offset += n as u64;
                advance(&mut left, n)?;
            }
        }
    }
    Ok(())
}

/// Fills every buffer from `offset` on, failing at end of file.
pub fn read_exact_vectored_at(
    disk: &dyn DiskFile,
    bufs: &[VolatileSlice],
    offset: u64,
) -> io::Result<()> {
    transfer_all(bufs, offset, io::ErrorKind::UnexpectedEof, |b, o| {
        disk.read_vectored_at(b, o)
    })
}

/// Writes every buffer at `offset` on.
pub fn write_all_vectored_at(
    disk: &dyn DiskFile,
    bufs: &[VolatileSlice],
    offset: u64,
) -> io::Result<()> {
    transfer_all(bufs, offset, io::ErrorKind::WriteZero, |b, o| {
        disk.write_vectored_at(b, o)
    })
}

/// Fills `buf` from `offset` of `disk`, failing at the end of the disk.
pub fn read_exact_at(disk: &dyn DiskFile, buf: &mut [u8], offset: u64) -> io::Result<()> {
    read_exact_vectored_at(disk, &[VolatileSlice::from(buf)], offset)
}

/// Writes all of `buf` at `offset` of `disk`.
pub fn write_all_at(disk: &dyn DiskFile, buf: &[u8], offset: u64) -> io::Result<()> {
    let mut copy = buf.to_vec();
    write_all_vectored_at(disk, &[VolatileSlice::from(&mut copy[..])], offset)
}
