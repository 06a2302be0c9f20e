//! qcow2 against qemu-img: images qemu-img writes read back byte for byte
//! through the block crate; images the block crate writes pass
//! `qemu-img check` and hold what was written.

mod common;

use block::qcow2::{CheckMode, CompressionType, CreateOptions, Qcow2Image, Qcow2Options};
use block::{open_image, DiskFile, Format, ImageOptions};
use common::*;

fn open_ro(path: &std::path::Path) -> Box<dyn DiskFile> {
    open_image(
        path,
        &ImageOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap()
}

fn assert_reads_like(path: &std::path::Path, expect: &[u8], what: &str) {
    let disk = open_ro(path);
    let got = read_all(disk.as_ref());
    assert!(
        first_diff(&got, expect).is_none(),
        "{what}: differs at {:?}",
        first_diff(&got, expect)
    );
}

#[test]
fn qemu_images_read_back_across_options() {
    let s = Scratch::new("options");
    let raw = s.path("src.raw");
    let data = pattern_raw(&raw, (5 << 20) + 4096 + 512, 7);
    let cases: &[&str] = &[
        "cluster_size=512,refcount_bits=1",
        "cluster_size=1024,refcount_bits=2",
        "cluster_size=4096,refcount_bits=4",
        "cluster_size=8192,refcount_bits=8",
        "cluster_size=65536,refcount_bits=16",
        "cluster_size=131072,refcount_bits=32",
        "cluster_size=2097152,refcount_bits=64",
        "compat=0.10",
        "compat=0.10,cluster_size=4096",
        "extended_l2=on,cluster_size=16384",
        "extended_l2=on,cluster_size=2097152",
        "lazy_refcounts=on",
        "preallocation=metadata,cluster_size=65536",
    ];
    for opts in cases {
        let img = s.path("img.qcow2");
        run(
            "qemu-img",
            &[
                "convert",
                "-O",
                "qcow2",
                "-o",
                opts,
                raw.to_str().unwrap(),
                img.to_str().unwrap(),
            ],
        );
        assert_reads_like(&img, &data, opts);
    }
}

#[test]
fn compressed_images_read_back() {
    let s = Scratch::new("compressed");
    let raw = s.path("src.raw");
    let data = pattern_raw(&raw, 6 << 20, 11);
    for kind in ["zlib", "zstd"] {
        for cs in ["512", "4096", "65536", "2097152"] {
            let img = s.path("c.qcow2");
            let o = format!("compression_type={kind},cluster_size={cs}");
            run(
                "qemu-img",
                &[
                    "convert",
                    "-c",
                    "-O",
                    "qcow2",
                    "-o",
                    &o,
                    raw.to_str().unwrap(),
                    img.to_str().unwrap(),
                ],
            );
            assert_reads_like(&img, &data, &o);
        }
    }
}

#[test]
fn backing_chains_read_back_and_resolve_relative_names() {
    let s = Scratch::new("chain");
    let base = s.path("base.raw");
    pattern_raw(&base, 4 << 20, 3);
    let mid = s.path("mid.qcow2");
    let top = s.path("top.qcow2");
    // Relative names, resolved against the image's directory.
    run(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            mid.to_str().unwrap(),
            "6M",
        ],
    );
    run(
        "qemu-io",
        &[
            "-c",
            "write -P 0x11 100k 300k",
            "-c",
            "write -z 1M 64k",
            mid.to_str().unwrap(),
        ],
    );
    run(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4096",
            "-b",
            "mid.qcow2",
            "-F",
            "qcow2",
            top.to_str().unwrap(),
            "8M",
        ],
    );
    run(
        "qemu-io",
        &[
            "-c",
            "write -P 0x22 200k 10k",
            "-c",
            "discard 2M 128k",
            "-c",
            "write -P 0x33 5M 1k",
            top.to_str().unwrap(),
        ],
    );
    let expect = qemu_raw(&top, &s);
    assert_reads_like(&top, &expect, "three-deep chain");
    // The map reports depths as qemu-img does.
    let disk = open_ro(&top);
    let e = disk.extent_at(0, 4096).unwrap();
    assert_eq!((e.depth, e.present, e.data), (2, true, true), "{e:?}");
    let e = disk.extent_at(200 << 10, 4096).unwrap();
    assert_eq!((e.depth, e.data), (0, true), "{e:?}");
    let e = disk.extent_at(7 << 20, 4096).unwrap();
    assert!(!e.present && e.zero, "{e:?}");
    // A depth cap refuses long chains.
    let err = open_image(
        &top,
        &ImageOptions {
            read_only: true,
            qcow2: Qcow2Options {
                max_backing_depth: 1,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .err()
    .expect("chain deeper than the cap");
    assert!(err.to_string().contains("deeper than 1"), "{err}");
    // A cap of 0 refuses any backing file, as an error callers can tell apart.
    let err = open_image(
        &top,
        &ImageOptions {
            read_only: true,
            qcow2: Qcow2Options {
                max_backing_depth: 0,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .err()
    .expect("no backing files allowed");
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
    assert!(
        matches!(
            err.get_ref()
                .and_then(|e| e.downcast_ref::<block::qcow2::Qcow2Error>()),
            Some(block::qcow2::Qcow2Error::BackingNotAllowed(_))
        ),
        "{err}"
    );
    // Declared raw: its bytes are never interpreted, the backing never opened.
    let raw_view = open_image(
        &top,
        &ImageOptions {
            read_only: true,
            format: Some(Format::Raw),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(raw_view.size(), std::fs::metadata(&top).unwrap().len());
}

/// Applies random writes, discards and zeroes to `disk` and to `model`.
fn random_ops(disk: &dyn DiskFile, model: &mut [u8], seed: u64, ops: usize) {
    let mut rng = Rng(seed);
    let size = model.len() as u64;
    for _ in 0..ops {
        let off = rng.below(size);
        let len = (rng.below(200_000) + 1).min(size - off);
        match rng.below(6) {
            0 => {
                disk.discard(off, len).unwrap();
                model[off as usize..(off + len) as usize].fill(0);
            }
            1 => {
                disk.write_zeroes(off, len, rng.below(2) == 0).unwrap();
                model[off as usize..(off + len) as usize].fill(0);
            }
            _ => {
                let byte = (rng.next() & 0xff) as u8;
                let buf: Vec<u8> = (0..len).map(|i| byte ^ (i as u8)).collect();
                block::write_all_at(disk, &buf, off).unwrap();
                model[off as usize..(off + len) as usize].copy_from_slice(&buf);
            }
        }
    }
    disk.flush().unwrap();
}

fn create(path: &std::path::Path, o: CreateOptions) -> Qcow2Image {
    Qcow2Image::create(path, &o).unwrap()
}

#[test]
fn block_crate_writes_pass_qemu_check() {
    let s = Scratch::new("writes");
    let cases = [
        CreateOptions {
            cluster_size: 65536,
            ..Default::default()
        },
        CreateOptions {
            cluster_size: 512,
            refcount_bits: 1,
            ..Default::default()
        },
        CreateOptions {
            cluster_size: 4096,
            refcount_bits: 64,
            ..Default::default()
        },
        CreateOptions {
            cluster_size: 2 << 20,
            refcount_bits: 8,
            ..Default::default()
        },
        CreateOptions {
            version: 2,
            cluster_size: 4096,
            ..Default::default()
        },
        CreateOptions {
            extended_l2: true,
            cluster_size: 32768,
            ..Default::default()
        },
        CreateOptions {
            lazy_refcounts: true,
            ..Default::default()
        },
    ];
    for (i, mut o) in cases.into_iter().enumerate() {
        let size = (7 << 20) + 1536;
        o.size = size;
        let path = s.path("w.qcow2");
        let what = format!("{o:?}");
        {
            let img = create(&path, o);
            let mut model = vec![0u8; size as usize];
            random_ops(&img, &mut model, 0x9e37_79b9 + i as u64, 120);
            assert!(
                first_diff(&read_all(&img), &model).is_none(),
                "{what}: own reads"
            );
            drop(img);
            assert_clean(&path);
            assert!(
                first_diff(&qemu_raw(&path, &s), &model).is_none(),
                "{what}: qemu reads"
            );
        }
        let img = Qcow2Image::open(&path, &Qcow2Options::default()).unwrap();
        let r = img.check(CheckMode::Report).unwrap();
        assert_eq!((r.corruptions, r.leaks), (0, 0), "{what}: {:?}", r.messages);
    }
}

#[test]
fn writes_over_qemu_images_with_backing_compression_and_snapshots() {
    let s = Scratch::new("overwrite");
    let raw = s.path("base.raw");
    let base = pattern_raw(&raw, 4 << 20, 5);
    // Copy-on-write from a backing file, v2 and v3.
    for compat in ["0.10", "1.1"] {
        let top = s.path("top.qcow2");
        let o = format!("compat={compat},cluster_size=8192");
        run(
            "qemu-img",
            &[
                "create",
                "-f",
                "qcow2",
                "-o",
                &o,
                "-b",
                raw.to_str().unwrap(),
                "-F",
                "raw",
                top.to_str().unwrap(),
                "4M",
            ],
        );
        let img = open_image(&top, &ImageOptions::default()).unwrap();
        let mut model = base.clone();
        random_ops(img.as_ref(), &mut model, 77, 80);
        drop(img);
        assert_clean(&top);
        assert!(
            first_diff(&qemu_raw(&top, &s), &model).is_none(),
            "backed {compat}"
        );
    }
    // Overwriting compressed clusters.
    let c = s.path("c.qcow2");
    run(
        "qemu-img",
        &[
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-o",
            "compression_type=zstd",
            raw.to_str().unwrap(),
            c.to_str().unwrap(),
        ],
    );
    let img = open_image(&c, &ImageOptions::default()).unwrap();
    let mut model = base.clone();
    random_ops(img.as_ref(), &mut model, 99, 60);
    drop(img);
    assert_clean(&c);
    assert!(
        first_diff(&qemu_raw(&c, &s), &model).is_none(),
        "compressed"
    );
    // Writes after an internal snapshot leave the snapshot intact.
    let snap = s.path("snap.qcow2");
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "qcow2",
            raw.to_str().unwrap(),
            snap.to_str().unwrap(),
        ],
    );
    run(
        "qemu-img",
        &["snapshot", "-c", "before", snap.to_str().unwrap()],
    );
    let img = open_image(&snap, &ImageOptions::default()).unwrap();
    let mut model = base.clone();
    random_ops(img.as_ref(), &mut model, 123, 60);
    drop(img);
    assert_clean(&snap);
    assert!(
        first_diff(&qemu_raw(&snap, &s), &model).is_none(),
        "after snapshot"
    );
    let old = s.path("old.raw");
    run(
        "qemu-img",
        &[
            "convert",
            "-l",
            "snapshot.name=before",
            "-O",
            "raw",
            snap.to_str().unwrap(),
            old.to_str().unwrap(),
        ],
    );
    assert!(
        first_diff(&std::fs::read(&old).unwrap(), &base).is_none(),
        "snapshot content"
    );
}

#[test]
fn qemu_writes_on_block_crate_images_and_resize() {
    let s = Scratch::new("resize");
    let path = s.path("r.qcow2");
    let img = create(
        &path,
        CreateOptions {
            size: 1 << 20,
            cluster_size: 512,
            ..Default::default()
        },
    );
    block::write_all_at(&img, &[0xabu8; 4096], 4096).unwrap();
    img.resize(64 << 20).unwrap();
    block::write_all_at(&img, &[0xcdu8; 4096], 60 << 20).unwrap();
    assert!(img.resize(1 << 20).is_err(), "shrinking is refused");
    drop(img);
    assert_clean(&path);
    let info = run(
        "qemu-img",
        &["info", "--output", "json", path.to_str().unwrap()],
    );
    assert!(info.contains("\"virtual-size\": 67108864"), "{info}");
    run(
        "qemu-io",
        &["-c", "write -P 0x5a 1M 1M", path.to_str().unwrap()],
    );
    let disk = open_ro(&path);
    let mut buf = vec![0u8; 4096];
    block::read_exact_at(disk.as_ref(), &mut buf, 1 << 20).unwrap();
    assert!(buf.iter().all(|b| *b == 0x5a));
    block::read_exact_at(disk.as_ref(), &mut buf, 60 << 20).unwrap();
    assert!(buf.iter().all(|b| *b == 0xcd));
}

#[test]
fn compressed_writes_pass_qemu_check() {
    let s = Scratch::new("cwrite");
    let raw = s.path("src.raw");
    let data = pattern_raw(&raw, 3 << 20, 21);
    for kind in [CompressionType::Zlib, CompressionType::Zstd] {
        for cs in [512u64, 65536] {
            let path = s.path("c.qcow2");
            let img = create(
                &path,
                CreateOptions {
                    size: data.len() as u64,
                    cluster_size: cs,
                    compression_type: kind,
                    ..Default::default()
                },
            );
            for (i, chunk) in data.chunks(cs as usize).enumerate() {
                let packed = img.compress_cluster(chunk).unwrap();
                img.write_compressed_cluster(i as u64 * cs, chunk, packed.as_deref())
                    .unwrap();
            }
            drop(img);
            assert_clean(&path);
            assert!(
                first_diff(&qemu_raw(&path, &s), &data).is_none(),
                "{kind:?} {cs}"
            );
            let info = run(
                "qemu-img",
                &["info", "--output", "json", path.to_str().unwrap()],
            );
            assert!(
                info.contains(&format!("\"compression-type\": \"{}\"", kind.name())),
                "{info}"
            );
        }
    }
}

#[test]
fn dirty_images_get_refcounts_rebuilt() {
    let s = Scratch::new("dirty");
    let path = s.path("d.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "lazy_refcounts=on",
            path.to_str().unwrap(),
            "4M",
        ],
    );
    // Set the dirty bit and zero the refcount of cluster 0's neighbourhood
    // as a crash with lazy refcounts would leave it: refcounts lag.
    run(
        "qemu-io",
        &["-c", "write -P 1 0 1M", path.to_str().unwrap()],
    );
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[79] |= 1; // incompatible features: dirty
                    // Refcount block (cluster 2): claim only the header cluster is in use.
    let cs = 65536usize;
    for b in &mut bytes[2 * cs + 2..3 * cs] {
        *b = 0;
    }
    std::fs::write(&path, &bytes).unwrap();
    let img = Qcow2Image::open(&path, &Qcow2Options::default()).unwrap();
    assert!(!img.header().dirty());
    drop(img);
    assert_clean(&path);
}

#[test]
fn snapshots_through_the_block_crate() {
    let s = Scratch::new("snapshots");
    let path = s.path("s.qcow2");
    let img = create(
        &path,
        CreateOptions {
            size: 4 << 20,
            cluster_size: 4096,
            ..Default::default()
        },
    );
    let mut model = vec![0u8; 4 << 20];
    random_ops(&img, &mut model, 5, 30);
    img.create_snapshot("a").unwrap();
    assert!(img.create_snapshot("a").is_err(), "names are unique");
    let at_a = model.clone();
    random_ops(&img, &mut model, 6, 30);
    assert!(first_diff(&read_all(&img), &model).is_none());
    drop(img);
    assert_clean(&path);
    let list = run("qemu-img", &["snapshot", "-l", path.to_str().unwrap()]);
    assert!(list.contains(" a "), "{list}");
    let img = Qcow2Image::open(&path, &Qcow2Options::default()).unwrap();
    img.apply_snapshot("a").unwrap();
    assert!(first_diff(&read_all(&img), &at_a).is_none(), "reverted");
    img.delete_snapshot("a").unwrap();
    assert!(img.snapshots().unwrap().is_empty());
    drop(img);
    assert_clean(&path);
    // 1-bit refcounts cannot count a shared cluster: refused up front.
    let one = s.path("one.qcow2");
    let img = create(
        &one,
        CreateOptions {
            size: 1 << 20,
            refcount_bits: 1,
            ..Default::default()
        },
    );
    block::write_all_at(&img, &[1; 4096], 0).unwrap();
    let e = img.create_snapshot("x").unwrap_err().to_string();
    assert!(e.contains("1-bit refcounts"), "{e}");
    drop(img);
    assert_clean(&one);
}

/// Guest ranges `qemu-img map` says the top image itself holds data for.
fn own_data_ranges(path: &std::path::Path) -> Vec<(u64, u64)> {
    let json = qemu_img(&["map", "--output", "json", path.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for e in v.as_array().unwrap() {
        if e["depth"].as_u64() != Some(0) || e["data"].as_bool() != Some(true) {
            continue;
        }
        let (start, len) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
        match out.last_mut() {
            Some(last) if last.1 == start => last.1 += len,
            _ => out.push((start, start + len)),
        }
    }
    out
}

#[test]
fn extended_l2_writes_allocate_only_the_subclusters_they_touch() {
    let s = Scratch::new("subclusters");
    let size = 4u64 << 20;
    let base = s.path("base.raw");
    let mut model = pattern_raw(&base, size, 0x5b);
    let top = s.path("top.qcow2");
    let img = create(
        &top,
        CreateOptions {
            size,
            cluster_size: 65536,
            extended_l2: true,
            backing_file: Some("base.raw".into()),
            backing_format: Some("raw".into()),
            ..Default::default()
        },
    );
    drop(img);
    let img = Qcow2Image::open(&top, &Qcow2Options::default()).unwrap();
    // 64 KiB clusters have 2 KiB subclusters. A write from 1000 to 6000
    // within the second cluster covers subclusters 0 to 2, two in part.
    let mut write = |at: u64, len: usize, byte: u8| {
        let data = vec![byte; len];
        block::write_all_at(&img, &data, at).unwrap();
        model[at as usize..at as usize + len].copy_from_slice(&data);
    };
    write(65536 + 1000, 5000, 0xa1);
    // Into the same (now allocated) cluster, subcluster 19 in part.
    write(65536 + 40_000, 100, 0xa2);
    // Across a cluster boundary: the end of cluster 3 and the start of 4.
    write(4 * 65536 - 3000, 4000, 0xa3);
    // A whole cluster is still written as one.
    write(8 * 65536, 65536, 0xa4);
    img.flush().unwrap();
    assert!(first_diff(&read_all(&img), &model).is_none(), "own reads");
    drop(img);
    assert_clean(&top);
    assert!(
        first_diff(&qemu_raw(&top, &s), &model).is_none(),
        "qemu reads"
    );
    assert_eq!(
        own_data_ranges(&top),
        vec![
            (65536, 65536 + 6144),
            (65536 + 38912, 65536 + 40960),
            (4 * 65536 - 4096, 4 * 65536 + 2048),
            (8 * 65536, 9 * 65536),
        ],
        "qemu-img map: the top image holds only the subclusters written"
    );
}
