//! Helpers of the VMDK/VHD tests: qemu-img, a raw source with a known
//! pattern, whole-disk reads and allocation maps.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use block::DiskFile;
use vm_memory::VolatileSlice;

/// Runs qemu-img with `args`; panics (with its stderr) when it fails or is missing.
pub fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img must be installed (scripts/test.sh installs qemu-utils)");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Deterministic bytes: xorshift, so runs are not compressible.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes a sparse raw file of `size` bytes whose pieces lie at `base` on:
/// noise not aligned to grains, a compressible text run, zeros written as
/// data, holes between, and data in the last (partial) grain. Returns the
/// (offset, bytes) written.
pub fn write_pattern(path: &Path, size: u64, base: u64) -> Vec<(u64, Vec<u8>)> {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    let text: Vec<u8> = b"ferrovisor reads vmdk and vhd; "
        .iter()
        .copied()
        .cycle()
        .take(300_000)
        .collect();
    let pieces = vec![
        (base + 4096 + 17 * 512, noise(1, 200_000)),
        (base + (1 << 20) + 512, vec![0u8; 300_000]),
        (base + (3 << 20) - 1024, text),
        (base + (4 << 20) + 64 * 1024 * 3, noise(2, 65536)),
        (size - 70_000, noise(3, 70_000 - 512)),
    ];
    for (at, bytes) in &pieces {
        f.write_all_at(bytes, *at).unwrap();
    }
    f.sync_all().unwrap();
    pieces
}

/// Reads `[offset, offset + len)` of `disk` with reads of odd sizes split
/// over two buffers each.
pub fn read_range(disk: &dyn DiskFile, offset: u64, len: u64) -> Vec<u8> {
    let mut out = vec![0u8; len as usize];
    let step = 100 * 1024 + 512 + 7;
    let mut at = 0usize;
    while at < out.len() {
        let n = step.min(out.len() - at);
        let (a, b) = out[at..at + n].split_at_mut(n / 3);
        let bufs = [VolatileSlice::from(a), VolatileSlice::from(b)];
        block::read_exact_vectored_at(disk, &bufs, offset + at as u64).unwrap();
        at += n;
    }
    out
}

/// Reads `[offset, offset + len)` of a plain file (zeros past its end).
pub fn file_range(path: &Path, offset: u64, len: u64) -> Vec<u8> {
    let f = File::open(path).unwrap();
    let mut out = vec![0u8; len as usize];
    let mut done = 0;
    while done < out.len() {
        match f.read_at(&mut out[done..], offset + done as u64).unwrap() {
            0 => break,
            n => done += n,
        }
    }
    out
}

/// One allocation map entry as `qemu-img map --output json` gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub length: u64,
    pub present: bool,
    pub zero: bool,
    pub data: bool,
    pub offset: Option<u64>,
}

/// Joins neighbours with the same flags (and contiguous offsets).
pub fn merge(entries: Vec<MapEntry>) -> Vec<MapEntry> {
    let mut out: Vec<MapEntry> = Vec::new();
    for e in entries {
        if let Some(last) = out.last_mut() {
            let same = (last.present, last.zero, last.data) == (e.present, e.zero, e.data);
            let contiguous = match (last.offset, e.offset) {
                (Some(a), Some(b)) => a + last.length == b,
                (None, None) => true,
                _ => false,
            };
            if same && contiguous && last.start + last.length == e.start {
                last.length += e.length;
                continue;
            }
        }
        out.push(e);
    }
    out
}

/// The map qemu-img reports for `path` in format `fmt`.
pub fn qemu_map(path: &Path, fmt: &str) -> Vec<MapEntry> {
    let json = qemu_img(&["map", "--output", "json", "-f", fmt, path.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    merge(
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| MapEntry {
                start: e["start"].as_u64().unwrap(),
                length: e["length"].as_u64().unwrap(),
                present: e["present"].as_bool().unwrap(),
                zero: e["zero"].as_bool().unwrap(),
                data: e["data"].as_bool().unwrap(),
                offset: e["offset"].as_u64(),
            })
            .collect(),
    )
}

/// The map the block crate reports for `disk`.
pub fn our_map(disk: &dyn DiskFile) -> Vec<MapEntry> {
    let mut at = 0;
    let mut entries = Vec::new();
    while at < disk.size() {
        let e = disk.extent_at(at, u64::MAX).unwrap();
        assert_eq!(e.start, at);
        assert!(e.length > 0 && at + e.length <= disk.size(), "{e:?}");
        entries.push(MapEntry {
            start: e.start,
            length: e.length,
            present: e.present,
            zero: e.zero,
            data: e.data,
            offset: e.host_offset,
        });
        at += e.length;
    }
    merge(entries)
}

/// The virtual size qemu-img reports.
pub fn qemu_size(path: &Path, fmt: &str) -> u64 {
    let json = qemu_img(&[
        "info",
        "--output",
        "json",
        "-f",
        fmt,
        path.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["virtual-size"].as_u64().unwrap()
}
