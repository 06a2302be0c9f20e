//! A read-only view of an internal snapshot: the image's read path, with
//! the snapshot's L1 table in place of the active one (what QEMU's
//! "temporary snapshot load" does for `qemu-img convert -l`).

use std::io;

use vm_memory::VolatileSlice;

use super::super::header::{MAX_L1_BYTES, MAX_VIRTUAL_SIZE};
use super::super::{corrupt, Qcow2Error, Qcow2Image};
use super::SnapshotInfo;
use crate::{DiskFile, Extent, Topology};

/// Which snapshot to view (the forms of `qemu-img convert -l`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotSelector<'a> {
    /// A bare `NAME_OR_ID`: the snapshot with that ID, else the one with that name.
    IdOrName(&'a str),
    /// `snapshot.id=` and/or `snapshot.name=`: every one given must match.
    Exact {
        /// The ID, when given.
        id: Option<&'a str>,
        /// The name, when given.
        name: Option<&'a str>,
    },
}

impl SnapshotSelector<'_> {
    /// The index in `snaps` of the snapshot selected.
    fn find(&self, snaps: &[SnapshotInfo]) -> Result<usize, Qcow2Error> {
        let found = match *self {
            SnapshotSelector::IdOrName(x) => snaps
                .iter()
                .position(|s| s.id == x)
                .or_else(|| snaps.iter().position(|s| s.name == x)),
            SnapshotSelector::Exact {
                id: None,
                name: None,
            } => {
                return Err(Qcow2Error::Invalid(
                    "a snapshot ID or name is needed".into(),
                ))
            }
            SnapshotSelector::Exact { id, name } => snaps
                .iter()
                .position(|s| id.is_none_or(|i| s.id == i) && name.is_none_or(|n| s.name == n)),
        };
        found.ok_or_else(|| Qcow2Error::Invalid(format!("snapshot {self} not found")))
    }
}

impl std::fmt::Display for SnapshotSelector<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotSelector::IdOrName(x) => write!(f, "'{x}'"),
            SnapshotSelector::Exact { id, name } => {
                let mut parts = Vec::new();
                if let Some(i) = id {
                    parts.push(format!("id '{i}'"));
                }
                if let Some(n) = name {
                    parts.push(format!("name '{n}'"));
                }
                write!(f, "{}", parts.join(" and "))
            }
        }
    }
}

/// The guest contents of one internal snapshot, read-only. Reads go
/// through the image's own lookup code (every L2 and data offset checked
/// there), unallocated clusters through the image's backing chain.
pub struct SnapshotView {
    image: Qcow2Image,
    info: SnapshotInfo,
}

impl Qcow2Image {
    /// Turns a read-only image into a view of the snapshot `which`: its
    /// size is the snapshot's disk size (the image's when the snapshot
    /// does not record one).
    pub fn into_snapshot_view(self, which: SnapshotSelector) -> io::Result<SnapshotView> {
        if !self.read_only {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "snapshots are viewed through images opened read-only",
            ));
        }
        let info = {
            let mut m = self.lock();
            let snaps = self.snapshots_locked(&m)?;
            let s = snaps[which.find(&snaps)?].clone();
            let file_len = self.file.metadata()?.len();
            let bytes = s.l1_size as u64 * 8;
            let off = s.l1_table_offset;
            let at = m.header.snapshots_offset;
            if bytes > MAX_L1_BYTES
                || (bytes > 0 && (off == 0 || off % self.cs() != 0))
                || off.checked_add(bytes).is_none_or(|end| end > file_len)
            {
                return Err(corrupt(
                    "snapshot table",
                    at,
                    format!("snapshot L1 table at {off:#x} unaligned or outside the file"),
                )
                .into());
            }
            if s.disk_size > MAX_VIRTUAL_SIZE {
                return Err(corrupt(
                    "snapshot table",
                    at,
                    format!("snapshot disk size {} too large", s.disk_size),
                )
                .into());
            }
            let mut raw = vec![0u8; bytes as usize];
            self.file
                .read_exact_at(&mut raw, off)
                .map_err(|e| Qcow2Error::io("snapshot L1 table", off, e))?;
            m.l1 = raw.chunks_exact(8).map(super::super::be64).collect();
            m.header.l1_table_offset = off;
            m.header.l1_size = s.l1_size;
            if s.disk_size != 0 {
                m.header.size = s.disk_size;
            }
            m.l2_cache.clear();
            m.compressed_cache = None;
            s
        };
        Ok(SnapshotView { image: self, info })
    }
}

impl SnapshotView {
    /// The snapshot viewed.
    pub fn info(&self) -> &SnapshotInfo {
        &self.info
    }

    /// Reads guest bytes of the snapshot at `offset` (up to its end);
    /// returns how many were read.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.image.read_at(buf, offset)
    }
}

fn read_only() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "snapshot views are read-only",
    )
}

impl DiskFile for SnapshotView {
    fn size(&self) -> u64 {
        self.image.virtual_size()
    }

    fn read_only(&self) -> bool {
        true
    }

    fn topology(&self) -> Topology {
        self.image.topology()
    }

    fn read_vectored_at(&self, bufs: &[VolatileSlice], offset: u64) -> io::Result<usize> {
        self.image.read_vectored_at(bufs, offset)
    }

    fn write_vectored_at(&self, _bufs: &[VolatileSlice], _offset: u64) -> io::Result<usize> {
        Err(read_only())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn discard(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Err(read_only())
    }

    fn write_zeroes(&self, _offset: u64, _len: u64, _unmap: bool) -> io::Result<()> {
        Err(read_only())
    }

    fn extent_at(&self, offset: u64, max_len: u64) -> io::Result<Extent> {
        self.image.extent_at(offset, max_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qcow2::{CreateOptions, Qcow2Options};
    use std::os::unix::fs::FileExt;
    use std::path::PathBuf;

    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn be64(b: &[u8]) -> u64 {
        u64::from_be_bytes(b[..8].try_into().unwrap_or([0; 8]))
    }

    /// An image with a snapshot `s1` of 0x41 bytes, then 0x42 written over it.
    fn image(tag: &str) -> (Dir, PathBuf) {
        let dir = std::env::temp_dir().join(format!("snapview-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.qcow2");
        let q = Qcow2Image::create(
            &path,
            &CreateOptions {
                size: 1 << 20,
                ..Default::default()
            },
        )
        .unwrap();
        q.write_at(&[0x41; 4096], 8192).unwrap();
        q.create_snapshot("s1").unwrap();
        q.write_at(&[0x42; 4096], 8192).unwrap();
        q.flush().unwrap();
        drop(q);
        (Dir(dir), path)
    }

    fn open(path: &std::path::Path) -> Qcow2Image {
        Qcow2Image::open(
            path,
            &Qcow2Options {
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap()
    }

    /// Host offset of the first snapshot table entry.
    fn entry(path: &std::path::Path) -> u64 {
        open(path).header().snapshots_offset
    }

    #[test]
    fn reads_the_snapshot_not_the_active_state() {
        let (_d, path) = image("ok");
        let v = open(&path)
            .into_snapshot_view(SnapshotSelector::IdOrName("s1"))
            .unwrap();
        let mut buf = [0u8; 4096];
        assert_eq!(v.read_at(&mut buf, 8192).unwrap(), 4096);
        assert!(buf.iter().all(|b| *b == 0x41));
        assert_eq!(v.size(), 1 << 20);
        assert!(v.write_zeroes(0, 512, false).is_err());
        let by_id = open(&path).into_snapshot_view(SnapshotSelector::Exact {
            id: Some("1"),
            name: Some("s1"),
        });
        assert!(by_id.is_ok());
        let err = open(&path)
            .into_snapshot_view(SnapshotSelector::Exact {
                id: Some("2"),
                name: Some("s1"),
            })
            .err()
            .unwrap();
        assert!(err.to_string().contains("not found"), "{err}");
    }

    #[test]
    fn corrupt_snapshot_l1_offsets_are_errors() {
        let (_d, path) = image("bad");
        let at = entry(&path);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut raw = [0u8; 8];
        f.read_exact_at(&mut raw, at).unwrap();
        let good = be64(&raw);
        let len = f.metadata().unwrap().len();
        // The snapshot's L1 table unaligned, past the end of the file, at 0.
        for bad in [good + 8, len + 65536, !0xffffu64, 0] {
            f.write_all_at(&bad.to_be_bytes(), at).unwrap();
            let r = Qcow2Image::open(
                &path,
                &Qcow2Options {
                    read_only: true,
                    ..Default::default()
                },
            )
            .and_then(|q| q.into_snapshot_view(SnapshotSelector::IdOrName("s1")));
            assert!(r.is_err(), "L1 at {bad:#x} accepted");
        }
        // A sound L1 table whose L2 entry is unaligned, or past the end.
        f.write_all_at(&good.to_be_bytes(), at).unwrap();
        for l2 in [0x200u64, len << 4] {
            f.write_all_at(&l2.to_be_bytes(), good).unwrap();
            let v = open(&path)
                .into_snapshot_view(SnapshotSelector::IdOrName("s1"))
                .unwrap();
            let mut buf = [0u8; 512];
            assert!(v.read_at(&mut buf, 0).is_err(), "L2 at {l2:#x} read");
            assert!(v.extent_at(0, 512).is_err(), "L2 at {l2:#x} mapped");
        }
    }
}
