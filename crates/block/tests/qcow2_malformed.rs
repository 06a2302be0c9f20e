//! Hostile qcow2 images: every malformed table gives an error naming the
//! table, never a panic, a hang or a huge allocation.

mod common;

use std::path::Path;

use block::qcow2::{CheckMode, CreateOptions, Qcow2Image, Qcow2Options};
use block::DiskFile;
use common::{Rng, Scratch};

const CS: usize = 4096;

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

/// A small image with data in its first clusters; returns its bytes.
fn good_image(path: &Path, extended: bool) -> Vec<u8> {
    let img = Qcow2Image::create(
        path,
        &CreateOptions {
            size: 1 << 20,
            cluster_size: if extended { 16384 } else { CS as u64 },
            extended_l2: extended,
            ..Default::default()
        },
    )
    .unwrap();
    block::write_all_at(&img, &[0x5a; 3 * CS], 0).unwrap();
    drop(img);
    std::fs::read(path).unwrap()
}

fn open_ro(path: &Path) -> std::io::Result<Qcow2Image> {
    Qcow2Image::open(
        path,
        &Qcow2Options {
            read_only: true,
            ..Default::default()
        },
    )
}

/// Opens and reads the whole disk; the first error.
fn read_error(path: &Path) -> String {
    let img = match open_ro(path) {
        Ok(i) => i,
        Err(e) => return e.to_string(),
    };
    let mut buf = vec![0u8; img.size() as usize];
    match img.read_at(&mut buf, 0) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

fn patch(path: &Path, bytes: &[u8], at: usize, value: &[u8]) {
    let mut b = bytes.to_vec();
    b[at..at + value.len()].copy_from_slice(value);
    std::fs::write(path, b).unwrap();
}

#[test]
fn bad_tables_are_named() {
    let s = Scratch::new("malformed");
    let path = s.path("m.qcow2");
    let good = good_image(&path, false);
    let l1 = be64(&good, 40) as usize;
    let l2 = (be64(&good, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    let reftable = be64(&good, 48) as usize;

    patch(
        &path,
        &good,
        l1,
        &(0x8000_0000_0000_0000u64 | (1 << 40)).to_be_bytes(),
    );
    let e = read_error(&path);
    assert!(e.contains("L1 table") && e.contains("past the end"), "{e}");

    patch(
        &path,
        &good,
        l1,
        &(0x8000_0000_0000_0000u64 | (l2 as u64 + 512)).to_be_bytes(),
    );
    let e = read_error(&path);
    assert!(
        e.contains("L1 table") && e.contains("not cluster aligned"),
        "{e}"
    );

    let data = be64(&good, l2);
    patch(&path, &good, l2, &(data + 512).to_be_bytes());
    let e = read_error(&path);
    assert!(
        e.contains("L2 table") && e.contains("not cluster aligned"),
        "{e}"
    );

    // A compressed entry over garbage.
    patch(
        &path,
        &good,
        l2,
        &((1u64 << 62) | (l2 as u64 + 8)).to_be_bytes(),
    );
    let e = read_error(&path);
    assert!(e.contains("compressed cluster"), "{e}");

    // A refcount block outside the file: writes fail, naming the table.
    patch(&path, &good, reftable, &(1u64 << 45).to_be_bytes());
    let img = Qcow2Image::open(&path, &Qcow2Options::default()).unwrap();
    let e = block::write_all_at(&img, &[1; 512], 512 << 10)
        .unwrap_err()
        .to_string();
    assert!(e.contains("refcount table"), "{e}");
    drop(img);

    // The L1 table beyond the end of a truncated file.
    std::fs::write(&path, &good[..l1]).unwrap();
    let e = read_error(&path);
    assert!(
        e.contains("L1 table") && e.contains("outside the file"),
        "{e}"
    );

    // Snapshot table outside the file.
    let mut b = good.clone();
    b[60..64].copy_from_slice(&3u32.to_be_bytes());
    b[64..72].copy_from_slice(&(1u64 << 50).to_be_bytes());
    std::fs::write(&path, &b).unwrap();
    let e = read_error(&path);
    assert!(e.contains("snapshot table"), "{e}");
    // Snapshot entries running past the table.
    let table = b.len();
    b[64..72].copy_from_slice(&(table as u64).to_be_bytes());
    b.resize(table + CS, 0);
    b[table + 12..table + 14].copy_from_slice(&60000u16.to_be_bytes()); // ID length
    std::fs::write(&path, &b).unwrap();
    let img = open_ro(&path).unwrap();
    let e = img.snapshots().unwrap_err().to_string();
    assert!(e.contains("snapshot table"), "{e}");
    let e = img.check(CheckMode::Report).unwrap_err().to_string();
    assert!(e.contains("snapshot table"), "{e}");
}

#[test]
fn bad_subcluster_bitmaps_are_named() {
    let s = Scratch::new("subclusters");
    let path = s.path("x.qcow2");
    let good = good_image(&path, true);
    let l1 = be64(&good, 40) as usize;
    let l2 = (be64(&good, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    patch(
        &path,
        &good,
        l2 + 8,
        &0x0000_0001_0000_0001u64.to_be_bytes(),
    );
    let e = read_error(&path);
    assert!(
        e.contains("L2 table") && e.contains("both allocated and zero"),
        "{e}"
    );
    let mut b = good.clone();
    b[l2..l2 + 8].copy_from_slice(&0u64.to_be_bytes());
    std::fs::write(&path, &b).unwrap();
    let e = read_error(&path);
    assert!(e.contains("without a data cluster"), "{e}");
}

#[test]
fn backing_loops_stop_at_the_depth_cap() {
    let s = Scratch::new("loop");
    let path = s.path("self.qcow2");
    Qcow2Image::create(
        &path,
        &CreateOptions {
            size: 1 << 20,
            backing_file: Some("self.qcow2".into()),
            backing_format: Some("qcow2".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let e = open_ro(&path).err().expect("a loop").to_string();
    assert!(e.contains("deeper than"), "{e}");
}

#[test]
fn random_corruption_never_panics() {
    let s = Scratch::new("mutate");
    let path = s.path("f.qcow2");
    let good = good_image(&path, false);
    let meta_end = 8 * CS; // header, refcounts, L1, L2 live in the first clusters
    let mut rng = Rng(0x1234_5678);
    for round in 0..300 {
        let mut b = good.clone();
        for _ in 0..1 + rng.below(8) {
            let at = rng.below(meta_end as u64) as usize;
            b[at] = (rng.next() & 0xff) as u8;
        }
        std::fs::write(&path, &b).unwrap();
        if let Ok(img) = Qcow2Image::open(&path, &Qcow2Options::default()) {
            let mut buf = vec![0u8; 64 << 10];
            let _ = img.read_at(&mut buf, rng.below(1 << 20));
            let _ = block::write_all_at(&img, &[round as u8; 5000], rng.below(1 << 19));
            let _ = img.extent_at(0, u64::MAX);
            let _ = img.write_zeroes(0, 64 << 10, true);
            let _ = img.check(CheckMode::Report);
        }
    }
}
