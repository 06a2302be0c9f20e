//! What the queue handlers need of the host side (a TAP queue in the VMM,
//! a scripted fake in tests), and guest buffers turned into `iovec`s.

use std::io;

use virtio_queue::desc::split::Descriptor;
use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::tap::TapQueue;
use crate::GuestMemory;

/// Moves whole frames (each with its virtio-net header) to and from the host.
pub trait FrameIo: Send + 'static {
    /// Reads one frame into `iovecs`; its full length (which may exceed the
    /// buffers: then it was truncated) or `WouldBlock` when none is waiting.
    fn read_frame(&mut self, iovecs: &[libc::iovec]) -> io::Result<usize>;
    /// Writes one frame from `iovecs`; `WouldBlock` when the host is full.
    fn write_frame(&mut self, iovecs: &[libc::iovec]) -> io::Result<usize>;
}

impl FrameIo for TapQueue {
    fn read_frame(&mut self, iovecs: &[libc::iovec]) -> io::Result<usize> {
        self.read_vectored(iovecs)
    }

    fn write_frame(&mut self, iovecs: &[libc::iovec]) -> io::Result<usize> {
        self.write_vectored(iovecs)
    }
}

/// A host side held in memory, for tests and fuzzing: hands out queued
/// frames and records what it is sent.
#[derive(Default)]
pub struct MemoryHost {
    /// Frames (with headers) waiting for the guest.
    pub incoming: std::collections::VecDeque<Vec<u8>>,
    /// Frames (with headers) the guest sent.
    pub sent: Vec<Vec<u8>>,
    /// Writes fail with WouldBlock while set (a full TAP).
    pub full: bool,
    /// Writes fail with EINVAL while set (the kernel's own header checks).
    pub refuse: bool,
}

impl FrameIo for MemoryHost {
    fn read_frame(&mut self, iovecs: &[libc::iovec]) -> io::Result<usize> {
        let frame = self
            .incoming
            .pop_front()
            .ok_or_else(|| io::Error::from(io::ErrorKind::WouldBlock))?;
        let mut done = 0;
        for iov in iovecs {
            let n = iov.iov_len.min(frame.len() - done);
            // SAFETY: the iovecs come from `push_iovecs` over checked guest
            // memory, mapped for the call; `frame` has `n` bytes left.
            unsafe {
                std::ptr::copy_nonoverlapping(frame[done..].as_ptr(), iov.iov_base.cast(), n)
            };
            done += n;
        }
        Ok(frame.len())
    }

    fn write_frame(&mut self, iovecs: &[libc::iovec]) -> io::Result<usize> {
        if self.full {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if self.refuse {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let mut frame = Vec::new();
        for iov in iovecs {
            // SAFETY: as above; the memory is only read.
            let part =
                unsafe { std::slice::from_raw_parts(iov.iov_base.cast::<u8>(), iov.iov_len) };
            frame.extend_from_slice(part);
        }
        self.sent.push(frame);
        Ok(iovecs.iter().map(|i| i.iov_len).sum())
    }
}

/// A guest buffer: where it is and how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// The buffers of one descriptor chain in one direction.
#[derive(Debug, Default)]
pub(crate) struct Buffers {
    pub segments: Vec<Segment>,
    pub len: usize,
}

/// Why a chain cannot carry a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChainError {
    /// A buffer in the wrong direction (a device-readable one on receive,
    /// a device-writable one on transmit).
    Direction,
    /// A buffer outside guest RAM (or across a hole in it).
    Address,
    /// More buffers than a frame may use.
    TooManyBuffers,
}

/// Most buffers one chain may bring (the kernel's UIO_MAXIOV).
pub(crate) const MAX_SEGMENTS: usize = 1024;

/// Collects the buffers of `descs`, all of which must be device-writable
/// (`writable`) or all device-readable; zero-length buffers are skipped.
pub(crate) fn collect(
    mem: &GuestMemory,
    descs: impl Iterator<Item = Descriptor>,
    writable: bool,
) -> Result<Buffers, ChainError> {
    let mut out = Buffers::default();
    for d in descs {
        if d.is_write_only() != writable {
            return Err(ChainError::Direction);
        }
        if d.len() == 0 {
            continue;
        }
        if out.segments.len() == MAX_SEGMENTS {
            return Err(ChainError::TooManyBuffers);
        }
        // The whole buffer must lie in one region (so one iovec covers it).
        mem.get_slice(d.addr(), d.len() as usize)
            .map_err(|_| ChainError::Address)?;
        out.segments.push(Segment {
            addr: d.addr(),
            len: d.len(),
        });
        out.len += d.len() as usize;
    }
    Ok(out)
}

/// Appends the iovecs of `segments` (already checked by [`collect`]) to `out`.
pub(crate) fn push_iovecs(mem: &GuestMemory, segments: &[Segment], out: &mut Vec<libc::iovec>) {
    for s in segments {
        if let Ok(slice) = mem.get_slice(s.addr, s.len as usize) {
            out.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            });
        }
    }
}

/// Copies `data` into the buffers `segments` starting `offset` bytes in;
/// false if they end first.
pub(crate) fn write_at(
    mem: &GuestMemory,
    segments: &[Segment],
    offset: usize,
    data: &[u8],
) -> bool {
    use vm_memory::Bytes;
    let mut skip = offset;
    let mut done = 0;
    for s in segments {
        let len = s.len as usize;
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (len - skip).min(data.len() - done);
        let Some(addr) = s.addr.0.checked_add(skip as u64) else {
            return false;
        };
        if mem
            .write_slice(&data[done..done + n], GuestAddress(addr))
            .is_err()
        {
            return false;
        }
        done += n;
        skip = 0;
        if done == data.len() {
            return true;
        }
    }
    done == data.len()
}

/// Copies the first `out.len()` bytes of `segments` into `out`; false if
/// they are shorter.
pub(crate) fn read_front(mem: &GuestMemory, segments: &[Segment], out: &mut [u8]) -> bool {
    use vm_memory::Bytes;
    let mut done = 0;
    for s in segments {
        if done == out.len() {
            break;
        }
        let n = (s.len as usize).min(out.len() - done);
        if mem.read_slice(&mut out[done..done + n], s.addr).is_err() {
            return false;
        }
        done += n;
    }
    done == out.len()
}
