//! Fuzzes the qcow2 reader and writer with arbitrary bytes as the image
//! (in a memfd): header, extensions, L1/L2 tables, refcounts, snapshot
//! table, compressed and extended entries all come from the input. Opening,
//! reading, mapping, writing, zeroing and checking must return errors for
//! what is malformed; never panic, hang or allocate without bound. Backing
//! files are never opened (the input names them).
#![no_main]

use std::io::Write;
use std::os::fd::FromRawFd;

use block::qcow2::{CheckMode, Qcow2Image, Qcow2Options};
use block::DiskFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // SAFETY: memfd_create with a static NUL-terminated name; we own the
    // returned descriptor and hand it to File at once.
    let fd = unsafe { libc::memfd_create(c"qcow2-fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return;
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    if file.write_all(data).is_err() {
        return;
    }
    let path = std::path::PathBuf::from(format!("/proc/self/fd/{fd}"));
    let options = Qcow2Options {
        open_backing: false,
        l2_cache_tables: 4,
        refcount_cache_blocks: 2,
        ..Default::default()
    };
    let Ok(img) = Qcow2Image::open(&path, &options) else {
        return;
    };
    let size = img.size();
    let mut buf = vec![0u8; 256 << 10];
    let _ = img.read_at(&mut buf, 0);
    let _ = img.read_at(&mut buf, size.saturating_sub(4096));
    // Walk the map, bounded.
    let mut at = 0;
    for _ in 0..256 {
        match img.extent_at(at, u64::MAX) {
            Ok(e) if e.length > 0 => at = e.start + e.length,
            _ => break,
        }
        if at >= size {
            break;
        }
    }
    let _ = img.snapshots();
    let _ = img.check(CheckMode::Report);
    if size > 0 {
        let _ = img.write_at(&[0xa5; 3000], (size / 3).min(size.saturating_sub(3000)));
        let _ = img.write_zeroes(0, size.min(1 << 20), true);
    }
    let _ = img.check(CheckMode::All);
});
