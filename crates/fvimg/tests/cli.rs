//! fvimg against qemu-img: what fvimg writes passes `qemu-img check` and
//! `qemu-img compare`; what fvimg reports matches what qemu-img reports.

use std::path::{Path, PathBuf};
use std::process::Command;

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("fvimg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    fn p(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a command; returns (exit code, stdout, stderr).
fn exec(tool: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn fvimg(args: &[&str]) -> (i32, String, String) {
    exec(env!("CARGO_BIN_EXE_fvimg"), args)
}

fn ok(tool: &str, args: &[&str]) -> String {
    let (code, out, err) = if tool == "fvimg" {
        fvimg(args)
    } else {
        exec(tool, args)
    };
    assert_eq!(code, 0, "{tool} {args:?}: {out}{err}");
    out
}

fn assert_clean(path: &str) {
    ok("qemu-img", &["check", path]);
}

fn assert_same(a: &str, b: &str) {
    let (code, out, err) = exec("qemu-img", &["compare", a, b]);
    assert_eq!(code, 0, "qemu-img compare {a} {b}: {out}{err}");
}

/// A raw image with data, holes and zero-filled stretches.
fn pattern(path: &str, size: usize, seed: u64) {
    let mut data = vec![0u8; size];
    let mut x = seed | 1;
    let mut at = 0;
    while at < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = ((x % 400_000) as usize + 1).min(size - at);
        match x % 5 {
            0 | 1 => {}
            2 => data[at..at + len].fill((x >> 8) as u8),
            _ => {
                for (i, b) in data[at..at + len].iter_mut().enumerate() {
                    *b = ((x >> 16) as u8).wrapping_add((i * 7 / 3) as u8);
                }
            }
        }
        at += len;
    }
    std::fs::write(path, data).unwrap();
}

/// `qemu-img create -q -f qcow2 -b BACKING -F FMT PATH`.
fn overlay(backing: &str, backing_fmt: &str, path: &str) {
    ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            backing,
            "-F",
            backing_fmt,
            path,
        ],
    );
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn create_matches_qemu_info() {
    let s = Scratch::new("create");
    let cases = [
        "cluster_size=512,refcount_bits=1",
        "cluster_size=4k,refcount_bits=64,lazy_refcounts=on",
        "cluster_size=2M,compression_type=zstd",
        "extended_l2=on,cluster_size=128k",
        "compat=0.10",
        "preallocation=metadata",
        "preallocation=falloc,cluster_size=256k",
        "preallocation=full,cluster_size=1M",
    ];
    for o in cases {
        let img = s.p("c.qcow2");
        ok(
            "fvimg",
            &["create", "-q", "-f", "qcow2", "-o", o, &img, "5M"],
        );
        assert_clean(&img);
        let theirs = json(&ok("qemu-img", &["info", "--output", "json", &img]));
        let ours = json(&ok("fvimg", &["info", "--output", "json", &img]));
        for key in [
            "virtual-size",
            "cluster-size",
            "format",
            "format-specific",
            "dirty-flag",
        ] {
            assert_eq!(ours[key], theirs[key], "{o}: {key}");
        }
        if o.contains("falloc") {
            // Whether ext4 reports fallocated extents as data depends on its page cache.
            continue;
        }
        let t_map = ok("qemu-img", &["map", "--output", "json", &img]);
        let o_map = ok("fvimg", &["map", "--output", "json", &img]);
        assert_eq!(json(&o_map), json(&t_map), "{o}: map");
    }
    // A backing file, relative to the new image; size taken from it.
    let base = s.p("base.raw");
    pattern(&base, 3 << 20, 9);
    let top = s.p("top.qcow2");
    ok(
        "fvimg",
        &[
            "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", &top,
        ],
    );
    assert_clean(&top);
    assert_same(&top, &base);
    let theirs = json(&ok("qemu-img", &["info", "--output", "json", &top]));
    let ours = json(&ok("fvimg", &["info", "--output", "json", &top]));
    for key in [
        "virtual-size",
        "backing-filename",
        "backing-filename-format",
        "full-backing-filename",
    ] {
        assert_eq!(ours[key], theirs[key], "backed: {key}");
    }
    let chain = json(&ok(
        "fvimg",
        &["info", "--output", "json", "--backing-chain", &top],
    ));
    assert_eq!(chain.as_array().map(|a| a.len()), Some(2));
    assert_eq!(chain[1]["format"], "raw");
    // Bad options fail cleanly.
    for o in [
        "cluster_size=3000",
        "refcount_bits=3",
        "compat=0.10,lazy_refcounts=on",
        "nonsense=1",
        "extended_l2=on,cluster_size=4k",
    ] {
        let (code, _, err) = fvimg(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            o,
            &s.p("bad.qcow2"),
            "1M",
        ]);
        assert_eq!(code, 1, "{o}: {err}");
        assert!(err.starts_with("fvimg: "), "{err}");
    }
}

#[test]
fn converted_images_pass_qemu_check_and_compare() {
    let s = Scratch::new("convert");
    let raw = s.p("src.raw");
    pattern(&raw, (9 << 20) + 512, 42);
    let variants: &[&[&str]] = &[
        &["-O", "qcow2"],
        &["-O", "qcow2", "-o", "cluster_size=512,refcount_bits=2"],
        &["-O", "qcow2", "-o", "cluster_size=2M,refcount_bits=32"],
        &["-O", "qcow2", "-o", "compat=0.10"],
        &["-O", "qcow2", "-o", "extended_l2=on"],
        &["-O", "qcow2", "-c"],
        &[
            "-O",
            "qcow2",
            "-c",
            "-o",
            "compression_type=zstd,cluster_size=4k",
        ],
        &["-O", "qcow2", "-S", "0"],
        &["-O", "raw", "-p"],
    ];
    for v in variants {
        let dst = s.p("dst.img");
        let mut args = vec!["convert"];
        args.extend_from_slice(v);
        args.extend_from_slice(&[&raw, &dst]);
        ok("fvimg", &args);
        if v.contains(&"qcow2") {
            assert_clean(&dst);
        }
        assert_same(&raw, &dst);
        // And back: the qcow2 as source, to raw and to qcow2.
        let back = s.p("back.raw");
        ok("fvimg", &["convert", "-O", "raw", &dst, &back]);
        assert_same(&raw, &back);
    }
    let info = ok("qemu-img", &["info", "--output", "json", &s.p("dst.img")]);
    assert!(info.contains("\"format\": \"raw\""), "{info}");
    // A compressed source from qemu-img, and a backing chain as source.
    let c = s.p("c.qcow2");
    ok(
        "qemu-img",
        &[
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-o",
            "compression_type=zstd",
            &raw,
            &c,
        ],
    );
    let out = s.p("out.qcow2");
    ok("fvimg", &["convert", "-O", "qcow2", &c, &out]);
    assert_clean(&out);
    assert_same(&c, &out);
    let top = s.p("top.qcow2");
    ok(
        "qemu-img",
        &["create", "-f", "qcow2", "-b", &c, "-F", "qcow2", &top],
    );
    ok(
        "qemu-io",
        &["-c", "write -P 0x44 1M 100k", "-c", "write -z 4M 1M", &top],
    );
    ok(
        "fvimg",
        &[
            "convert",
            "-O",
            "qcow2",
            "-o",
            "cluster_size=16k",
            &top,
            &out,
        ],
    );
    assert_clean(&out);
    assert_same(&top, &out);
    let m = json(&ok("qemu-img", &["map", "--output", "json", &out]));
    assert!(
        m.as_array().unwrap().iter().all(|e| e["depth"] == 0),
        "flattened: {m}"
    );
    // -c to a raw destination is refused.
    let (code, _, _) = fvimg(&["convert", "-c", "-O", "raw", &raw, &s.p("x.raw")]);
    assert_eq!(code, 1);
}

/// Offset of the first refcount block of a qcow2 image.
fn refblock_offset(bytes: &[u8]) -> usize {
    let be64 = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap());
    let table = be64(48) as usize;
    be64(table) as usize
}

#[test]
fn check_finds_and_repairs_what_qemu_img_finds() {
    let s = Scratch::new("check");
    let img = s.p("k.qcow2");
    let fresh = |s: &Scratch| {
        let img = s.p("k.qcow2");
        ok(
            "qemu-img",
            &["create", "-f", "qcow2", "-o", "cluster_size=4k", &img, "4M"],
        );
        ok("qemu-io", &["-c", "write -P 3 0 64k", &img]);
        img
    };
    // Leaks: two clusters past the end, counted but unused.
    fresh(&s);
    let mut b = std::fs::read(&img).unwrap();
    let used = b.len() / 4096;
    let rb = refblock_offset(&b);
    for c in [used, used + 1] {
        b[rb + 2 * c + 1] = 1;
    }
    b.resize(b.len() + 8192, 0);
    std::fs::write(&img, &b).unwrap();
    assert_eq!(exec("qemu-img", &["check", &img]).0, 3);
    let (code, out, _) = fvimg(&["check", &img]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("2 leaked clusters"), "{out}");
    let j = json(&fvimg(&["check", "--output", "json", &img]).1);
    assert_eq!(j["leaks"], 2);
    let (code, out, _) = fvimg(&["check", "-r", "leaks", &img]);
    assert_eq!(code, 0, "{out}");
    assert_clean(&img);
    // A refcount too low for a used data cluster: a corruption.
    fresh(&s);
    let mut b = std::fs::read(&img).unwrap();
    let rb = refblock_offset(&b);
    let last = b.len() / 4096 - 1;
    b[rb + 2 * last + 1] = 0;
    std::fs::write(&img, &b).unwrap();
    assert_eq!(exec("qemu-img", &["check", &img]).0, 2);
    let (code, out, err) = fvimg(&["check", &img]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("refcount=0 reference=1"), "{err}");
    let (code, out, _) = fvimg(&["check", "-r", "all", &img]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Double checking"), "{out}");
    assert_clean(&img);
    ok("qemu-io", &["-c", "read -P 3 0 64k", &img]);
    // A raw image has nothing to check.
    let raw = s.p("r.raw");
    std::fs::write(&raw, [0u8; 4096]).unwrap();
    assert_eq!(fvimg(&["check", "-f", "raw", &raw]).0, 63);
    // Garbage is an error naming the problem, not a panic.
    std::fs::write(s.p("g.qcow2"), b"QFI\xfb\0\0\0\x03garbage").unwrap();
    let (code, _, err) = fvimg(&["check", &s.p("g.qcow2")]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("qcow2"), "{err}");
}

#[test]
fn compare_map_resize_and_snapshots() {
    let s = Scratch::new("misc");
    let raw = s.p("a.raw");
    pattern(&raw, 4 << 20, 5);
    let q = s.p("a.qcow2");
    ok("qemu-img", &["convert", "-O", "qcow2", &raw, &q]);
    let (code, out, _) = fvimg(&["compare", &raw, &q]);
    assert_eq!((code, out.trim()), (0, "Images are identical."));
    ok("qemu-io", &["-c", "write -P 0xee 1000k 1", &q]);
    let (code, out, _) = fvimg(&["compare", &raw, &q]);
    assert_eq!(
        (code, out.trim()),
        (1, "Content mismatch at offset 1024000!")
    );
    assert_eq!(fvimg(&["compare", &raw, &s.p("missing")]).0, 2);
    // Map agrees with qemu-img's, in both forms.
    let ours = json(&ok("fvimg", &["map", "--output", "json", &q]));
    let theirs = json(&ok("qemu-img", &["map", "--output", "json", &q]));
    assert_eq!(ours, theirs);
    assert_eq!(ok("fvimg", &["map", &q]), ok("qemu-img", &["map", &q]));
    // Resize, then snapshots.
    ok("fvimg", &["resize", "-q", &q, "+1M"]);
    let info = json(&ok("qemu-img", &["info", "--output", "json", &q]));
    assert_eq!(info["virtual-size"], 5 << 20);
    assert_clean(&q);
    ok("fvimg", &["snapshot", "-c", "one", &q]);
    ok("qemu-io", &["-c", "write -P 0x77 0 2M", &q]);
    ok("fvimg", &["snapshot", "-c", "two", &q]);
    assert_clean(&q);
    let list = ok("qemu-img", &["snapshot", "-l", &q]);
    assert!(list.contains("one") && list.contains("two"), "{list}");
    let ours = ok("fvimg", &["snapshot", "-l", &q]);
    assert!(ours.contains("one") && ours.contains("two"), "{ours}");
    ok("fvimg", &["snapshot", "-a", "one", &q]);
    assert_clean(&q);
    let (code, out, _) = exec("qemu-io", &["-c", "read -P 0xee 1000k 1", &q]);
    assert!(
        code == 0 && !out.contains("Pattern verification failed"),
        "{out}"
    );
    ok("fvimg", &["snapshot", "-d", "two", &q]);
    ok("fvimg", &["snapshot", "-d", "one", &q]);
    assert_clean(&q);
    assert_eq!(ok("qemu-img", &["snapshot", "-l", &q]).trim(), "");
    assert_eq!(fvimg(&["snapshot", "-d", "nope", &q]).0, 1);
    assert!(Path::new(&q).exists());
}

#[test]
fn rebase_and_commit_keep_the_guest_view() {
    let s = Scratch::new("chain");
    let base = s.p("base.raw");
    pattern(&base, 4 << 20, 17);
    let mid = s.p("mid.qcow2");
    let top = s.p("top.qcow2");
    overlay("base.raw", "raw", &mid);
    ok(
        "qemu-io",
        &[
            "-c",
            "write -P 0x61 512k 640k",
            "-c",
            "write -z 2M 64k",
            &mid,
        ],
    );
    ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=8k",
            "-b",
            "mid.qcow2",
            "-F",
            "qcow2",
            &top,
        ],
    );
    ok(
        "qemu-io",
        &[
            "-c",
            "write -P 0x62 1M 8k",
            "-c",
            "write -P 0x63 3M 100k",
            &top,
        ],
    );
    let expect = s.p("expect.raw");
    ok("qemu-img", &["convert", "-O", "raw", &top, &expect]);
    // Safe rebase onto the base: what mid held is copied into top.
    ok("fvimg", &["rebase", "-b", "base.raw", "-F", "raw", &top]);
    assert_clean(&top);
    assert_same(&top, &expect);
    let info = json(&ok("qemu-img", &["info", "--output", "json", &top]));
    assert_eq!(info["backing-filename"], "base.raw");
    assert_eq!(info["backing-filename-format"], "raw");
    // Unsafe rebase only renames.
    ok(
        "fvimg",
        &["rebase", "-u", "-b", "other.raw", "-F", "raw", &top],
    );
    let info = json(&ok("qemu-img", &["info", "--output", "json", &top]));
    assert_eq!(info["backing-filename"], "other.raw");
    ok(
        "fvimg",
        &["rebase", "-u", "-b", "base.raw", "-F", "raw", &top],
    );
    assert_clean(&top);
    // Commit into the base; the top is emptied.
    ok("fvimg", &["commit", &top]);
    assert_same(&base, &expect);
    assert_same(&top, &expect);
    assert_clean(&top);
    let map = json(&ok("qemu-img", &["map", "--output", "json", &top]));
    assert!(
        map.as_array().unwrap().iter().all(|e| e["depth"] == 1),
        "emptied: {map}"
    );
    // Rebase onto nothing: the top becomes standalone.
    ok("fvimg", &["rebase", "-b", "", &top]);
    assert_clean(&top);
    assert_same(&top, &expect);
    let info = json(&ok("qemu-img", &["info", "--output", "json", &top]));
    assert!(info.get("backing-filename").is_none(), "{info}");
}

#[test]
fn repair_clears_the_corrupt_mark() {
    let s = Scratch::new("corrupt-mark");
    let img = s.p("m.qcow2");
    ok("qemu-img", &["create", "-q", "-f", "qcow2", &img, "1M"]);
    let mut b = std::fs::read(&img).unwrap();
    b[79] |= 2; // incompatible features: corrupt
    std::fs::write(&img, &b).unwrap();
    // Writers refuse it; qemu-img and fvimg read it.
    assert_ne!(exec("qemu-io", &["-c", "write 0 512", &img]).0, 0);
    let info = json(&ok("fvimg", &["info", "--output", "json", &img]));
    assert_eq!(info["format-specific"]["data"]["corrupt"], true);
    ok("fvimg", &["check", "-r", "all", &img]);
    let info = json(&ok("qemu-img", &["info", "--output", "json", &img]));
    assert_eq!(info["format-specific"]["data"]["corrupt"], false);
    ok("qemu-io", &["-c", "write 0 512", &img]);
}

/// Images of other hypervisors convert to qcow2 and raw equal to their
/// source, and `info` names their format; writing to them is refused.
#[test]
fn vmdk_and_vhd_images_convert_and_report() {
    let s = Scratch::new("foreign");
    let src = s.p("src.raw");
    pattern(&src, 6 << 20, 7);
    for (format, opts, name) in [
        ("vmdk", "subformat=streamOptimized", "a.vmdk"),
        ("vmdk", "subformat=monolithicSparse", "b.vmdk"),
        ("vpc", "subformat=dynamic", "c.vhd"),
        ("vpc", "subformat=fixed", "d.vhd"),
    ] {
        let image = s.p(name);
        ok(
            "qemu-img",
            &[
                "convert", "-f", "raw", "-O", format, "-o", opts, &src, &image,
            ],
        );
        let info = json(&ok("fvimg", &["info", "--output", "json", &image]));
        assert_eq!(info["format"], format, "{name}: {info}");
        let q = s.p(&format!("{name}.qcow2"));
        ok("fvimg", &["convert", "-O", "qcow2", &image, &q]);
        assert_clean(&q);
        // Formats named: qemu-img probes a fixed VHD (footer only) as raw.
        ok(
            "qemu-img",
            &["compare", "-f", format, "-F", "qcow2", &image, &q],
        );
        let r = s.p(&format!("{name}.raw"));
        ok("fvimg", &["convert", "-f", format, "-O", "raw", &image, &r]);
        ok(
            "qemu-img",
            &["compare", "-f", format, "-F", "raw", &image, &r],
        );
        let (code, _, err) = fvimg(&["resize", &image, "+1M"]);
        assert_ne!(code, 0, "{name}: resizing a read-only format");
        assert!(err.contains("read-only"), "{name}: {err}");
    }
}

/// The cluster offset bits of an L1 or L2 entry.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

fn put_be64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

/// Damage done to an image's bytes, given the L1 and first L2 table offsets.
type Damage = dyn Fn(&mut Vec<u8>, usize, usize);

/// Bad offsets and overlapping tables, damaged on purpose: fvimg check and
/// qemu-img check give the same verdict (exit status), and neither panics.
#[test]
fn check_agrees_with_qemu_img_on_bad_offsets_and_overlaps() {
    let s = Scratch::new("check-offsets");
    let img = s.p("o.qcow2");
    let fresh = || {
        let _ = std::fs::remove_file(&img);
        ok(
            "qemu-img",
            &["create", "-f", "qcow2", "-o", "cluster_size=4k", &img, "4M"],
        );
        ok("qemu-io", &["-c", "write -P 5 0 16k", &img]);
        let b = std::fs::read(&img).unwrap();
        let l1 = be64(&b, 40) as usize;
        let l2 = (be64(&b, l1) & OFFSET_MASK) as usize;
        (b, l1, l2)
    };
    let copied = 1u64 << 63;
    let cases: Vec<(&str, Box<Damage>)> = vec![
        (
            "a data cluster past the end of the file",
            Box::new(move |b, _, l2| put_be64(b, l2, copied | 0x4000_0000)),
        ),
        (
            "an L2 table past the end of the file",
            Box::new(move |b, l1, _| put_be64(b, l1, copied | 0x4000_0000)),
        ),
        (
            "an unaligned L2 table offset",
            Box::new(move |b, l1, l2| put_be64(b, l1, copied | (l2 as u64 + 512))),
        ),
        (
            "a data cluster overlapping the L1 table",
            Box::new(move |b, l1, l2| put_be64(b, l2 + 8, copied | l1 as u64)),
        ),
        (
            "two L2 entries sharing a cluster",
            Box::new(move |b, _, l2| {
                let first = be64(b, l2);
                put_be64(b, l2 + 8, first);
            }),
        ),
    ];
    for (what, damage) in cases {
        let (mut b, l1, l2) = fresh();
        damage(&mut b, l1, l2);
        std::fs::write(&img, &b).unwrap();
        let (theirs, qout, qerr) = exec("qemu-img", &["check", &img]);
        let (ours, out, err) = fvimg(&["check", &img]);
        assert_eq!(
            ours, theirs,
            "{what}: fvimg check {ours}, qemu-img check {theirs}\nfvimg: {out}{err}\nqemu-img: {qout}{qerr}"
        );
        assert_ne!(ours, 0, "{what}: the damage is found");
    }
}

/// Bytes no image in these tests holds by chance.
const SECRET: &[u8] = b"TOP-SECRET-host-file ";

/// A host file an image must not make fvimg read: `dir/secret`.
fn secret_file(dir: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("secret");
    std::fs::write(
        &path,
        &SECRET.repeat((1 << 20) / SECRET.len() + 1)[..1 << 20],
    )
    .unwrap();
    path.canonicalize().unwrap().to_str().unwrap().to_string()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every reading command refuses `evil` (whose backing file leads to
/// `secret`), naming the secret's path and `--backing-dir`.
fn assert_refused(s: &Scratch, evil: &str, secret: &str) {
    let out = s.p("images/out.raw");
    let _ = std::fs::remove_file(&out);
    let expect = |what: &str, (code, stdout, err): (i32, String, String), want: i32| {
        assert_eq!(code, want, "{what}: {stdout}{err}");
        assert!(
            err.contains(secret) && err.contains("--backing-dir"),
            "{what}: {err}"
        );
        assert!(!contains(stdout.as_bytes(), SECRET), "{what}: {stdout}");
    };
    expect("convert", fvimg(&["convert", "-O", "raw", evil, &out]), 1);
    if let Ok(bytes) = std::fs::read(&out) {
        assert!(!contains(&bytes, SECRET), "convert copied the secret");
    }
    assert!(!Path::new(&out).exists(), "convert left {out}");
    // compare reports errors as 2 (1 means "different"), as qemu-img does.
    expect("compare", fvimg(&["compare", evil, evil]), 2);
    expect("map", fvimg(&["map", evil]), 1);
    expect("map json", fvimg(&["map", "--output", "json", evil]), 1);
    expect(
        "info --backing-chain",
        fvimg(&["info", "--backing-chain", evil]),
        1,
    );
    // commit would write into the backing file.
    let before = std::fs::read(secret).unwrap();
    expect("commit", fvimg(&["commit", evil]), 1);
    assert_eq!(std::fs::read(secret).unwrap(), before, "commit wrote");
    // Plain info only reports the name; it reads nothing behind it.
    ok("fvimg", &["info", evil]);
}

#[test]
fn backing_files_outside_the_image_directory_are_refused() {
    let s = Scratch::new("confine");
    let secret = secret_file(&s.0.join("other"));
    std::fs::create_dir_all(s.0.join("images")).unwrap();
    // An absolute name.
    let evil = s.p("images/evil.qcow2");
    overlay(&secret, "raw", &evil);
    assert_refused(&s, &evil, &secret);
    // A relative name climbing out.
    let evil = s.p("images/evil-rel.qcow2");
    overlay("../other/secret", "raw", &evil);
    assert_refused(&s, &evil, &secret);
    // A symlink in the image's directory, pointing out of it.
    std::os::unix::fs::symlink(&secret, s.0.join("images/link.raw")).unwrap();
    let evil = s.p("images/evil-link.qcow2");
    overlay("link.raw", "raw", &evil);
    assert_refused(&s, &evil, &secret);
    // Relative image paths: the directory is the working directory's.
    let out = Command::new(env!("CARGO_BIN_EXE_fvimg"))
        .args(["convert", "-O", "raw", "evil-rel.qcow2", "rel.raw"])
        .current_dir(s.0.join("images"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!s.0.join("images/rel.raw").exists());
    // Allowed explicitly, it is read.
    let out = s.p("images/allowed.raw");
    ok(
        "fvimg",
        &[
            "--backing-dir",
            &s.p("other"),
            "convert",
            "-O",
            "raw",
            &s.p("images/evil-rel.qcow2"),
            &out,
        ],
    );
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&secret).unwrap()
    );
}

#[test]
fn backing_chains_in_allowed_directories_work() {
    let s = Scratch::new("allowed");
    let images = s.0.join("images");
    let bases = s.0.join("bases");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::create_dir_all(&bases).unwrap();
    // One directory: base.raw <- mid.qcow2 <- top.qcow2.
    let base = s.p("images/base.raw");
    pattern(&base, 3 << 20, 23);
    let mid = s.p("images/mid.qcow2");
    let top = s.p("images/top.qcow2");
    overlay("base.raw", "raw", &mid);
    ok("qemu-io", &["-c", "write -P 0x41 1M 300k", &mid]);
    overlay("mid.qcow2", "qcow2", &top);
    ok("qemu-io", &["-c", "write -P 0x42 2M 64k", &top]);
    // Outputs beside the images: a destination's directory is allowed too.
    let theirs = s.p("images/theirs.raw");
    let ours = s.p("images/ours.raw");
    ok("qemu-img", &["convert", "-O", "raw", &top, &theirs]);
    ok("fvimg", &["convert", "-O", "raw", &top, &ours]);
    assert_eq!(
        std::fs::read(&ours).unwrap(),
        std::fs::read(&theirs).unwrap()
    );
    ok("fvimg", &["info", "--backing-chain", &top]);
    ok("fvimg", &["map", &top]);
    // The base in a sibling directory: refused until allowed.
    let sbase = s.p("bases/base.qcow2");
    ok("qemu-img", &["convert", "-O", "qcow2", &base, &sbase]);
    let stop = s.p("images/stop.qcow2");
    overlay("../bases/base.qcow2", "qcow2", &stop);
    ok("qemu-io", &["-c", "write -P 0x43 512k 4k", &stop]);
    let theirs = s.p("images/stheirs.raw");
    ok("qemu-img", &["convert", "-O", "raw", &stop, &theirs]);
    let (code, _, err) = fvimg(&["convert", "-O", "raw", &stop, &ours]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--backing-dir"), "{err}");
    let bases_dir = s.p("bases");
    for args in [
        // The flag before the subcommand, after it, and `/` for anywhere.
        vec![
            "--backing-dir",
            &bases_dir,
            "convert",
            "-O",
            "raw",
            &stop,
            &ours,
        ],
        vec![
            "convert",
            "-O",
            "raw",
            "--backing-dir",
            &bases_dir,
            &stop,
            &ours,
        ],
        vec!["convert", "-O", "raw", &stop, &ours, "--backing-dir", "/"],
    ] {
        let _ = std::fs::remove_file(&ours);
        ok("fvimg", &args);
        assert_eq!(
            std::fs::read(&ours).unwrap(),
            std::fs::read(&theirs).unwrap(),
            "{args:?}"
        );
    }
    let (code, out, err) = fvimg(&["--backing-dir", &bases_dir, "compare", &stop, &theirs]);
    assert_eq!((code, out.trim()), (0, "Images are identical."), "{err}");
    ok("fvimg", &["--backing-dir", &bases_dir, "map", &stop]);
    let chain = json(&ok(
        "fvimg",
        &[
            "--backing-dir",
            "/",
            "info",
            "--output",
            "json",
            "--backing-chain",
            &stop,
        ],
    ));
    assert_eq!(chain.as_array().map(|a| a.len()), Some(2));
    // create and rebase: the backing file given is allowed.
    let fresh = s.p("images/fresh.qcow2");
    ok(
        "fvimg",
        &["create", "-q", "-f", "qcow2", "-b", &sbase, &fresh],
    );
    ok(
        "fvimg",
        &["rebase", "-b", "../bases/base.qcow2", "-F", "qcow2", &top],
    );
    // Afterwards the new base needs allowing, as any other.
    assert_eq!(fvimg(&["convert", "-O", "raw", &top, &ours]).0, 1);
    ok(
        "fvimg",
        &[
            "convert",
            "--backing-dir",
            &bases_dir,
            "-O",
            "raw",
            &top,
            &ours,
        ],
    );
    // A missing --backing-dir is an error, not silently ignored.
    let (code, _, err) = fvimg(&["--backing-dir", &s.p("nope"), "info", &top]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--backing-dir"), "{err}");
}

#[test]
fn device_backing_files_are_refused_even_with_backing_dir_root() {
    let s = Scratch::new("device");
    let zero = s.p("zero.qcow2");
    ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-b",
            "/dev/zero",
            "-F",
            "raw",
            &zero,
            "1M",
        ],
    );
    for args in [
        vec![
            "--backing-dir",
            "/",
            "convert",
            "-O",
            "raw",
            &zero,
            &s.p("o.raw"),
        ],
        vec!["--backing-dir", "/", "map", &zero],
        vec!["--backing-dir", "/", "info", "--backing-chain", &zero],
    ] {
        let (code, _, err) = fvimg(&args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(
            err.contains("/dev/zero") && err.contains("character device"),
            "{args:?}: {err}"
        );
    }
    // Nor can create take a device as backing file.
    let (code, _, err) = fvimg(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "/dev/zero",
        "-F",
        "raw",
        &s.p("z2.qcow2"),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("character device"), "{err}");
}

#[test]
fn resize_shrink_drops_the_tail_like_qemu_img() {
    let s = Scratch::new("shrink");
    let raw = s.p("a.raw");
    pattern(&raw, 8 << 20, 11);
    let ours = s.p("ours.qcow2");
    // 4 KiB clusters: 512 entries per L2 table, 2 MiB each; some wholly
    // past the new end, one cut in the middle of a cluster.
    ok(
        "qemu-img",
        &[
            "convert",
            "-O",
            "qcow2",
            "-o",
            "cluster_size=4096",
            &raw,
            &ours,
        ],
    );
    ok("fvimg", &["snapshot", "-c", "full", &ours]);
    let theirs = s.p("theirs.qcow2");
    std::fs::copy(&ours, &theirs).unwrap();
    let new = (3 << 20) + 1536;
    let (code, _, err) = fvimg(&["resize", &ours, &new.to_string()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--shrink"), "{err}");
    // Sizes no image can have are errors, not crashes.
    for huge in ["18446744073709551615", "+18446744073709551000"] {
        let (code, _, err) = fvimg(&["resize", &ours, huge]);
        assert_eq!(code, 1, "{huge}: {err}");
    }
    let info = json(&ok("qemu-img", &["info", "--output", "json", &ours]));
    assert_eq!(
        info["virtual-size"],
        8 << 20,
        "refused shrink changed nothing"
    );
    ok(
        "fvimg",
        &["resize", "-q", "--shrink", &ours, &new.to_string()],
    );
    ok(
        "qemu-img",
        &["resize", "-q", "--shrink", &theirs, &new.to_string()],
    );
    assert_clean(&ours);
    let info = json(&ok("qemu-img", &["info", "--output", "json", &ours]));
    assert_eq!(info["virtual-size"], new);
    assert_same(&ours, &theirs);
    let prefix = s.p("prefix.raw");
    let mut head = std::fs::read(&raw).unwrap();
    head.truncate(new as usize);
    std::fs::write(&prefix, &head).unwrap();
    assert_same(&prefix, &ours);
    // Growing again reads zeros past the cut. (qemu-img 7.2 shows the old
    // bytes of the cut cluster again here; fvimg zeroed them at the cut.)
    ok("fvimg", &["resize", "-q", &ours, "8M"]);
    assert_clean(&ours);
    head.resize(8 << 20, 0);
    std::fs::write(&prefix, &head).unwrap();
    assert_same(&prefix, &ours);
    // The snapshot kept its data.
    ok("fvimg", &["snapshot", "-a", "full", &ours]);
    assert_clean(&ours);
    assert_same(&raw, &ours);
    // Raw images shrink by truncation.
    let r = s.p("r.raw");
    std::fs::copy(&raw, &r).unwrap();
    assert_eq!(fvimg(&["resize", "-f", "raw", &r, "1M"]).0, 1);
    ok(
        "fvimg",
        &["resize", "-q", "-f", "raw", "--shrink", &r, "1M"],
    );
    assert_eq!(std::fs::metadata(&r).unwrap().len(), 1 << 20);
}

/// Bytes of data a qcow2 image itself holds (depth 0), per `qemu-img map`.
fn own_data(path: &str) -> u64 {
    let map = json(&ok("qemu-img", &["map", "--output", "json", path]));
    map.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["depth"] == 0 && e["data"] == true)
        .map(|e| e["length"].as_u64().unwrap())
        .sum()
}

/// The `qemu-img map` entry covering guest `offset`.
fn map_at(path: &str, offset: u64) -> serde_json::Value {
    let map = json(&ok("qemu-img", &["map", "--output", "json", path]));
    map.as_array()
        .unwrap()
        .iter()
        .find(|e| {
            let start = e["start"].as_u64().unwrap();
            start <= offset && offset < start + e["length"].as_u64().unwrap()
        })
        .cloned()
        .unwrap_or_else(|| panic!("{path}: nothing maps {offset}"))
}

#[test]
fn convert_over_a_backing_file_writes_only_what_differs() {
    let s = Scratch::new("convert-b");
    // The base: a pattern, 128k of 0x5a at 1M, zeros at 2M..2.25M.
    let base = s.p("base.raw");
    pattern(&base, 4 << 20, 31);
    let mut bytes = std::fs::read(&base).unwrap();
    bytes[1 << 20..(1 << 20) + (128 << 10)].fill(0x5a);
    bytes[2 << 20..(2 << 20) + (256 << 10)].fill(0);
    bytes[3 << 20..(3 << 20) + (64 << 10)].fill(0x77);
    std::fs::write(&base, &bytes).unwrap();
    let src = s.p("src.qcow2");
    overlay("base.raw", "raw", &src);
    ok(
        "qemu-io",
        &[
            "-c",
            "write -P 0x33 64k 192k",
            // The same bytes as the base: nothing to write.
            "-c",
            "write -P 0x5a 1M 64k",
            // Zeros over zeros: nothing to write.
            "-c",
            "write -z 2M 128k",
            // Zeros over data: zero clusters.
            "-c",
            "write -z 3M 64k",
            "-c",
            "write -P 0x44 3584k 100k",
            &src,
        ],
    );
    let ours = s.p("ours.qcow2");
    let theirs = s.p("theirs.qcow2");
    let args = ["convert", "-O", "qcow2", "-B", "base.raw", "-F", "raw"];
    let mut a = args.to_vec();
    a.extend_from_slice(&[&src, &ours]);
    ok("fvimg", &a);
    let mut a = args.to_vec();
    a.extend_from_slice(&[&src, &theirs]);
    ok("qemu-img", &a);
    for img in [&ours, &theirs] {
        assert_clean(img);
        assert_same(&src, img);
    }
    let info = json(&ok("qemu-img", &["info", "--output", "json", &ours]));
    assert_eq!(info["backing-filename"], "base.raw");
    assert_eq!(info["backing-filename-format"], "raw");
    let (o, t) = (own_data(&ours), own_data(&theirs));
    assert!(o > 0 && o <= t, "fvimg allocates {o} bytes, qemu-img {t}");
    // Equal to the base: unallocated; zeros over data: a zero cluster.
    for at in [1 << 20, 2 << 20, 0] {
        assert_ne!(map_at(&ours, at)["depth"], 0, "at {at}");
    }
    let z = map_at(&ours, 3 << 20);
    assert_eq!((&z["depth"], &z["zero"]), (&0.into(), &true.into()), "{z}");
    assert_eq!(map_at(&ours, 64 << 10)["depth"], 0);
    // Without a qcow2 destination, or -F alone: errors.
    let (code, _, err) = fvimg(&[
        "convert",
        "-O",
        "raw",
        "-B",
        "base.raw",
        &src,
        &s.p("x.raw"),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("backing file not supported"), "{err}");
    let (code, _, err) = fvimg(&["convert", "-O", "qcow2", "-F", "raw", &src, &s.p("x")]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("without backing file"), "{err}");
}

#[test]
fn convert_n_writes_into_existing_images() {
    let s = Scratch::new("convert-n");
    let raw = s.p("src.raw");
    pattern(&raw, 4 << 20, 77);
    // The same contents as qcow2: zero stretches are holes in its map.
    let q = s.p("src.qcow2");
    ok("qemu-img", &["convert", "-O", "qcow2", &raw, &q]);
    for src in [&raw, &q] {
        // A raw target full of junk.
        let junk = s.p("junk.raw");
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let bytes: Vec<u8> = (0..4 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x as u8) | 1
            })
            .collect();
        std::fs::write(&junk, &bytes).unwrap();
        ok("fvimg", &["convert", "-n", "-O", "raw", src, &junk]);
        assert_same(src, &junk);
        // A qcow2 target full of data.
        let t = s.p("target.qcow2");
        ok("qemu-img", &["create", "-q", "-f", "qcow2", &t, "5M"]);
        ok("qemu-io", &["-c", "write -P 0x55 0 5M", &t]);
        ok("fvimg", &["convert", "-n", "-O", "qcow2", src, &t]);
        assert_clean(&t);
        let (code, out, _) = exec("qemu-img", &["compare", src, &t]);
        // The target's last megabyte still holds 0x55.
        assert_eq!(
            (code, out.trim()),
            (
                1,
                "Warning: Image size mismatch!\nContent mismatch at offset 4194304!"
            )
        );
        let head = s.p("head.raw");
        ok(
            "qemu-img",
            &[
                "dd",
                "-f",
                "qcow2",
                "-O",
                "raw",
                "bs=1M",
                "count=4",
                &format!("if={t}"),
                &format!("of={head}"),
            ],
        );
        assert_same(src, &head);
    }
    // A missing target, a target too small: errors, nothing created.
    let missing = s.p("missing.raw");
    let (code, _, err) = fvimg(&["convert", "-n", &raw, &missing]);
    assert_eq!(code, 1, "{err}");
    assert!(!Path::new(&missing).exists());
    let small = s.p("small.qcow2");
    ok("qemu-img", &["create", "-q", "-f", "qcow2", &small, "3M"]);
    let (code, _, err) = fvimg(&["convert", "-n", "-O", "qcow2", &raw, &small]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("smaller"), "{err}");
}

#[test]
fn convert_l_reads_an_internal_snapshot() {
    let s = Scratch::new("convert-l");
    let raw = s.p("src.raw");
    pattern(&raw, 4 << 20, 91);
    let q = s.p("s.qcow2");
    ok("qemu-img", &["convert", "-O", "qcow2", &raw, &q]);
    ok("qemu-img", &["snapshot", "-c", "s1", &q]);
    ok(
        "qemu-io",
        &["-c", "write -P 0x77 0 1M", "-c", "write -z 2M 512k", &q],
    );
    ok("qemu-img", &["snapshot", "-c", "s2", &q]);
    ok("qemu-io", &["-c", "write -P 0x78 3M 64k", &q]);
    for (param, expect_raw) in [
        ("snapshot.name=s1", true),
        ("snapshot.id=1", true),
        ("s1", true),
        ("snapshot.id=2,snapshot.name=s2", false),
        ("2", false),
    ] {
        for fmt in ["raw", "qcow2"] {
            let ours = s.p("ours.img");
            let theirs = s.p("theirs.img");
            ok("fvimg", &["convert", "-l", param, "-O", fmt, &q, &ours]);
            ok(
                "qemu-img",
                &["convert", "-l", param, "-O", fmt, &q, &theirs],
            );
            if fmt == "qcow2" {
                assert_clean(&ours);
            }
            assert_same(&ours, &theirs);
            let (code, _, _) = exec("qemu-img", &["compare", &ours, &q]);
            assert_eq!(code, 1, "{param}: the active state was converted");
            assert_eq!(
                exec("qemu-img", &["compare", &ours, &raw]).0 == 0,
                expect_raw,
                "{param}"
            );
        }
    }
    for bad in [
        "snapshot.name=nope",
        "nope",
        "snapshot.id=1,snapshot.name=s2",
    ] {
        let (code, _, err) = fvimg(&["convert", "-l", bad, "-O", "raw", &q, &s.p("x.raw")]);
        assert_eq!(code, 1, "{bad}: {err}");
        assert!(
            err.contains("not found") && err.contains("s2") == bad.contains("s2"),
            "{bad}: {err}"
        );
    }
    let (_, _, err) = fvimg(&["convert", "-l", "nope", "-O", "raw", &q, &s.p("x.raw")]);
    assert!(err.contains("'nope'"), "{err}");
    let (code, _, _) = fvimg(&["convert", "-l", "s1", "-O", "raw", &raw, &s.p("x.raw")]);
    assert_eq!(code, 1);
}
