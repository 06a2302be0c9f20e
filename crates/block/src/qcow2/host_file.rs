//! The host file under a qcow2 image, and an optional journal of every
//! change made to it. The journal is what crash-consistency tests replay:
//! the changes before a sync are durable, and any subset of those after
//! it is a state a power cut can leave.

use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One change to an image's host file, as the journal records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalEntry {
    /// `data` was written at `offset`.
    Write {
        /// Host offset.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// fdatasync: everything before it is durable.
    Sync,
    /// The file was truncated or extended to this length.
    SetLen(u64),
    /// `[offset, offset + len)` was deallocated (reads as zeros).
    Punch {
        /// Host offset.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// `[offset, offset + len)` was allocated (the file grows to cover it).
    Allocate {
        /// Host offset.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// A marker the caller placed (for example "the guest's flush returned").
    Mark(u64),
}

/// A shared, append-only record of the changes made to one host file.
#[derive(Default)]
pub struct Journal {
    entries: Mutex<Vec<JournalEntry>>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Journal({} entries)", self.lock().len())
    }
}

impl Journal {
    /// An empty journal, ready to hand to [`Qcow2Options`](super::Qcow2Options).
    pub fn new() -> Arc<Journal> {
        Arc::new(Journal::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<JournalEntry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, entry: JournalEntry) {
        self.lock().push(entry);
    }

    /// Places a marker of the caller's own.
    pub fn mark(&self, value: u64) {
        self.push(JournalEntry::Mark(value));
    }

    /// A copy of what was recorded so far.
    pub fn entries(&self) -> Vec<JournalEntry> {
        self.lock().clone()
    }
}

/// Applies `entry` to an in-memory copy of a host file (markers and syncs
/// change nothing).
pub fn replay(file: &mut Vec<u8>, entry: &JournalEntry) {
    match entry {
        JournalEntry::Write { offset, data } => {
            let end = *offset as usize + data.len();
            if file.len() < end {
                file.resize(end, 0);
            }
            file[*offset as usize..end].copy_from_slice(data);
        }
        JournalEntry::SetLen(len) => file.resize(*len as usize, 0),
        JournalEntry::Punch { offset, len } => {
            let start = (*offset as usize).min(file.len());
            let end = (*offset as usize + *len as usize).min(file.len());
            file[start..end].fill(0);
        }
        JournalEntry::Allocate { offset, len } => {
            let end = (*offset + *len) as usize;
            if file.len() < end {
                file.resize(end, 0);
            }
        }
        JournalEntry::Sync | JournalEntry::Mark(_) => {}
    }
}

/// The image's file: reads pass straight through; changes are recorded
/// when a journal is attached. Its length is tracked in memory, so the
/// I/O path needs no fstat (nor a system call filter allowing one).
pub struct HostFile {
    file: File,
    journal: Option<Arc<Journal>>,
    len: AtomicU64,
}

impl HostFile {
    /// Wraps `file`, recording changes into `journal` when given.
    pub fn new(file: File, journal: Option<Arc<Journal>>) -> io::Result<HostFile> {
        let len = file.metadata()?.len();
        Ok(HostFile {
            file,
            journal,
            len: AtomicU64::new(len),
        })
    }

    /// The file's length, as the changes made through this handle left it.
    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn record(&self, entry: impl FnOnce() -> JournalEntry) {
        if let Some(j) = &self.journal {
            j.push(entry());
        }
    }

    /// `pread`: may return fewer bytes than asked (0 at the end of the file).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.file.read_at(buf, offset)
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    /// Writes all of `data` at `offset`.
    pub fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(data, offset)?;
        self.len
            .fetch_max(offset + data.len() as u64, Ordering::Relaxed);
        self.record(|| JournalEntry::Write {
            offset,
            data: data.to_vec(),
        });
        Ok(())
    }

    /// fdatasync.
    pub fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()?;
        self.record(|| JournalEntry::Sync);
        Ok(())
    }

    /// Truncates or extends the file.
    pub fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.len.store(len, Ordering::Relaxed);
        self.record(|| JournalEntry::SetLen(len));
        Ok(())
    }

    /// Deallocates `[offset, offset + len)`, keeping the file's length.
    /// Best effort: the caller's metadata already calls the range free.
    pub fn punch_hole(&self, offset: u64, len: u64) {
        // SAFETY: fallocate on our own descriptor with integer arguments.
        let r = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if r == 0 {
            self.record(|| JournalEntry::Punch { offset, len });
        }
    }

    /// Allocates `[offset, offset + len)` (fallocate mode 0).
    pub fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        // SAFETY: fallocate on our own descriptor with integer arguments.
        let r = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                0,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        self.len.fetch_max(offset + len, Ordering::Relaxed);
        self.record(|| JournalEntry::Allocate { offset, len });
        Ok(())
    }

    /// The file's metadata.
    pub fn metadata(&self) -> io::Result<Metadata> {
        self.file.metadata()
    }
}

impl AsRawFd for HostFile {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
