//! Helpers shared by the qemu-img oracle tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

mod formats;
#[allow(unused_imports)]
pub use formats::*;

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("fv-qcow2-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a qemu tool, asserting success; returns stdout.
pub fn run(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} is needed for the oracle tests: {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `qemu-img check` exit status and output.
pub fn qemu_check(path: &Path) -> (i32, String) {
    let out = Command::new("qemu-img")
        .args(["check", path.to_str().unwrap()])
        .output()
        .expect("qemu-img");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Asserts `qemu-img check` finds nothing.
pub fn assert_clean(path: &Path) {
    let (code, text) = qemu_check(path);
    assert_eq!(code, 0, "qemu-img check {}: {text}", path.display());
}

/// A deterministic pseudo-random generator (xorshift).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Writes a raw image of `size` bytes: data stretches of varied patterns
/// (some compressible, some not), holes, and a zero-filled stretch.
pub fn pattern_raw(path: &Path, size: u64, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; size as usize];
    let mut rng = Rng(seed | 1);
    let mut at = 0u64;
    while at < size {
        let len = (rng.below(300_000) + 1).min(size - at);
        match rng.below(4) {
            0 => {}
            1 => data[at as usize..(at + len) as usize].fill((rng.next() & 0xff) as u8),
            _ => {
                for b in &mut data[at as usize..(at + len) as usize] {
                    *b = (rng.next() >> 24) as u8;
                }
            }
        }
        at += len;
    }
    std::fs::write(path, &data).unwrap();
    data
}

/// Reads a whole disk through the block crate.
pub fn read_all(disk: &dyn block::DiskFile) -> Vec<u8> {
    let mut out = vec![0u8; disk.size() as usize];
    let mut at = 0;
    // Odd-sized reads cross cluster and subcluster boundaries.
    let step = 777_777;
    while at < out.len() {
        let n = step.min(out.len() - at);
        block::read_exact_at(disk, &mut out[at..at + n], at as u64).unwrap();
        at += n;
    }
    out
}

/// The guest bytes of an image as qemu-img reads them.
pub fn qemu_raw(image: &Path, scratch: &Scratch) -> Vec<u8> {
    let out = scratch.path("oracle.raw");
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            image.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
    let data = std::fs::read(&out).unwrap();
    std::fs::remove_file(out).unwrap();
    data
}

/// First differing offset, for messages.
pub fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    if a.len() != b.len() {
        return Some(a.len().min(b.len()));
    }
    a.iter().zip(b).position(|(x, y)| x != y)
}
