//! Power-cut tests for qcow2 writes.
//!
//! A workload of guest writes, zeroing, discards and flushes runs on an
//! image whose every change to its host file is journaled. The journal is
//! then cut into the states a power cut can leave: everything before an
//! fdatasync is durable; of the changes after it, any subset may be, at
//! 4 KiB page granularity. Each state must be
//! - openable, with no corruption (at most leaked clusters: refcounts on
//!   disk never fall below the references), by our check and by
//!   `qemu-img check` (exit 0 or 3);
//! - unchanged wherever the guest wrote nothing since its last completed
//!   flush (acknowledged data survives), as read by the block crate and,
//!   after `qemu-img check -r all`, by `qemu-img convert`;
//! - writable again: new writes through the block crate leave an image
//!   `qemu-img check` passes.

mod common;

use std::sync::Arc;

use block::qcow2::{
    replay, CheckMode, CreateOptions, Journal, JournalEntry, Qcow2Image, Qcow2Options,
};
use block::DiskFile;
use common::*;

const SECTOR: usize = 512;
const PAGE: u64 = 4096;
/// Marks in the journal: an acknowledged flush, or the start of guest op N.
const ACK: u64 = 1 << 63;

struct Scenario {
    name: &'static str,
    size: u64,
    cluster_size: u64,
    refcount_bits: u32,
    extended_l2: bool,
    backing: bool,
    snapshot: bool,
    lazy: bool,
    resize: bool,
    ops: usize,
    seed: u64,
}

/// What the guest did: the range each op touched, and the disk content at
/// each acknowledged flush.
struct History {
    op_ranges: Vec<(u64, u64)>,
    /// Structural operations done: grows, shrinks, snapshot operations.
    structural: [usize; 3],
    acked: Vec<Vec<u8>>,
}

fn run_workload(
    sc: &Scenario,
    image: &Qcow2Image,
    journal: &Journal,
    model: &mut Vec<u8>,
    mut snapshots: Vec<(String, Vec<u8>)>,
) -> History {
    let cs = sc.cluster_size;
    let mut rng = Rng(sc.seed);
    let mut h = History {
        op_ranges: Vec::new(),
        structural: [0; 3],
        acked: vec![model.clone()],
    };
    journal.mark(ACK);
    for n in 0..sc.ops {
        let kind = rng.below(100);
        if kind < 15 {
            image.flush().unwrap();
            journal.mark(ACK | h.acked.len() as u64);
            h.acked.push(model.clone());
            continue;
        }
        if sc.resize && kind < 17 {
            // Growing the disk (a larger L1 table now and then), or
            // shrinking it (L2 tables freed, a cluster cut in two).
            let old = model.len() as u64;
            let new = if kind == 16 && old > 2 << 20 {
                old - rng.below(200) * SECTOR as u64 - SECTOR as u64
            } else {
                old + (rng.below(64) + 1) * cs
            };
            journal.mark(h.op_ranges.len() as u64);
            if new < old {
                h.op_ranges.push((new, old));
                image.shrink(new).unwrap();
                h.structural[1] += 1;
            } else {
                h.op_ranges.push((0, 0));
                image.resize(new).unwrap();
                h.structural[0] += 1;
            }
            model.resize(new as usize, 0);
            journal.mark(ACK | h.acked.len() as u64);
            h.acked.push(model.clone());
            continue;
        }
        if sc.snapshot && kind < 19 {
            // Snapshot operations flush, rewrite tables with their own
            // syncs, and return with everything durable.
            let whole = (0, sc.size);
            h.structural[2] += 1;
            if kind < 17 || snapshots.is_empty() {
                journal.mark(h.op_ranges.len() as u64);
                h.op_ranges.push((0, 0));
                let name = format!("s{n}");
                image.create_snapshot(&name).unwrap();
                snapshots.push((name, model.clone()));
            } else {
                let pick = rng.below(snapshots.len() as u64) as usize;
                if kind < 18 {
                    journal.mark(h.op_ranges.len() as u64);
                    h.op_ranges.push((0, 0));
                    image.delete_snapshot(&snapshots.remove(pick).0).unwrap();
                } else {
                    journal.mark(h.op_ranges.len() as u64);
                    h.op_ranges.push(whole);
                    image.apply_snapshot(&snapshots[pick].0).unwrap();
                    model.clone_from(&snapshots[pick].1);
                }
            }
            journal.mark(ACK | h.acked.len() as u64);
            h.acked.push(model.clone());
            continue;
        }
        let size = model.len() as u64;
        let sectors = size / SECTOR as u64;
        let start = rng.below(sectors) * SECTOR as u64;
        let max_len = (3 * cs).min(size - start);
        let len = ((rng.below(max_len) / SECTOR as u64) + 1) * SECTOR as u64;
        let len = len.min(size - start);
        journal.mark(h.op_ranges.len() as u64);
        h.op_ranges.push((start, start + len));
        let range = start as usize..(start + len) as usize;
        if kind < 75 {
            let data = noise(rng.next(), len as usize);
            block::write_all_at(image, &data, start).unwrap();
            model[range].copy_from_slice(&data);
        } else if kind < 88 {
            image.write_zeroes(start, len, false).unwrap();
            model[range].fill(0);
        } else {
            // A discard may leave the old data or zeros: the model calls
            // the range zero, and the check treats it as written since.
            image.discard(start, len).unwrap();
            let mut now = vec![0u8; len as usize];
            block::read_exact_at(image, &mut now, start).unwrap();
            if !sc.backing {
                assert!(
                    now.iter().all(|b| *b == 0),
                    "a discarded range reads non-zero"
                );
            }
            model[range].copy_from_slice(&now);
        }
    }
    image.flush().unwrap();
    journal.mark(ACK | h.acked.len() as u64);
    h.acked.push(model.clone());
    h
}

/// One change split into page-sized pieces (a page is the unit the page
/// cache writes back).
fn pieces(entry: &JournalEntry) -> Vec<JournalEntry> {
    match entry {
        JournalEntry::Write { offset, data } => {
            let mut out = Vec::new();
            let mut at = *offset;
            let end = offset + data.len() as u64;
            while at < end {
                let next = ((at / PAGE) + 1) * PAGE;
                let stop = next.min(end);
                out.push(JournalEntry::Write {
                    offset: at,
                    data: data[(at - offset) as usize..(stop - offset) as usize].to_vec(),
                });
                at = stop;
            }
            out
        }
        JournalEntry::Mark(_) | JournalEntry::Sync => Vec::new(),
        other => vec![other.clone()],
    }
}

/// The check messages that are neither leaks nor a missing COPIED flag.
/// Snapshot operations pass through states where a table lacks a COPIED
/// flag its refcount of 1 would allow: harmless (the next write copies the
/// cluster), though QEMU counts it as an error.
fn harmful<'a>(messages: &'a [String], sc: &Scenario) -> Vec<&'a String> {
    messages
        .iter()
        .filter(|m| !m.contains("(leak)") && !m.starts_with("Leaked"))
        .filter(|m| !(sc.snapshot && m.contains("wants COPIED=true")))
        .collect()
}

/// Whether `qemu-img check` (exit `code`, output `text`) found nothing
/// worse than leaks, a dirty lazy-refcount image, or (snapshot scenarios)
/// COPIED flags missing where the refcount is 1.
fn qemu_accepts(code: i32, text: &str, dirty: bool, sc: &Scenario) -> bool {
    let only_missing_copied = sc.snapshot
        && text
            .lines()
            .filter(|l| l.starts_with("ERROR"))
            .all(|l| l.starts_with("ERROR OFLAG_COPIED") && l.ends_with("refcount=1"));
    code == 0 || code == 3 || (code == 2 && (dirty || only_missing_copied))
}

/// A short description of a journal piece, for messages.
fn piece_name(e: &JournalEntry) -> String {
    match e {
        JournalEntry::Write { offset, data } => format!("write {offset:#x}+{}", data.len()),
        other => format!("{other:?}"),
    }
}

/// A crash state: the file's bytes, and what must hold in it.
struct CrashState {
    file: Vec<u8>,
    /// Index into `History::acked` of the content that must survive.
    acked: usize,
    /// Guest ranges written since that flush (unconstrained).
    loose: Vec<(u64, u64)>,
    label: String,
}

/// Cuts the journal into crash states.
fn crash_states(
    initial: &[u8],
    entries: &[JournalEntry],
    h: &History,
    seed: u64,
) -> Vec<CrashState> {
    let mut rng = Rng(seed ^ 0x5eed);
    let mut states = Vec::new();
    let mut durable = initial.to_vec();
    let mut acked = 0usize;
    let mut ack_pos = 0usize;
    let mut pending: Vec<JournalEntry> = Vec::new();
    let mut ops_since_ack: Vec<usize> = Vec::new();
    let mut epoch = 0;
    for (pos, e) in entries.iter().enumerate() {
        match e {
            JournalEntry::Mark(v) if v & ACK != 0 => {
                assert!(pending.is_empty(), "a flush returned with unsynced changes");
                acked = (v & !ACK) as usize;
                ack_pos = pos;
                ops_since_ack.clear();
            }
            JournalEntry::Mark(op) => ops_since_ack.push(*op as usize),
            JournalEntry::Sync => {
                // States a cut before this sync can leave.
                let loose: Vec<(u64, u64)> =
                    ops_since_ack.iter().map(|i| h.op_ranges[*i]).collect();
                let n = pending.len();
                let mut subsets: Vec<(String, Vec<bool>)> = vec![
                    ("none".into(), vec![false; n]),
                    ("all".into(), vec![true; n]),
                ];
                for _ in 1..n.min(4) {
                    let cut = rng.below(n as u64) as usize;
                    subsets.push((format!("prefix {cut}"), (0..n).map(|i| i < cut).collect()));
                }
                if n <= 24 {
                    for skip in 0..n {
                        subsets.push((
                            format!("all but {skip}"),
                            (0..n).map(|i| i != skip).collect(),
                        ));
                    }
                }
                for r in 0..6 {
                    subsets.push((
                        format!("random {r}"),
                        (0..n).map(|_| rng.below(2) == 0).collect(),
                    ));
                }
                for (label, keep) in subsets {
                    let mut file = durable.clone();
                    for (p, k) in pending.iter().zip(&keep) {
                        if *k {
                            replay(&mut file, p);
                        }
                    }
                    states.push(CrashState {
                        file,
                        acked,
                        loose: loose.clone(),
                        label: format!(
                            "epoch {epoch} (journal {ack_pos}..{pos}, {n} pieces{}): {label}",
                            if n <= 8 {
                                format!(" {:?}", pending.iter().map(piece_name).collect::<Vec<_>>())
                            } else {
                                String::new()
                            }
                        ),
                    });
                }
                for p in pending.drain(..) {
                    replay(&mut durable, &p);
                }
                epoch += 1;
            }
            other => pending.extend(pieces(other)),
        }
    }
    assert!(pending.is_empty(), "changes after the last sync");
    states
}

/// Checks that every sector outside `loose` equals `want`.
fn assert_acked(got: &[u8], want: &[u8], loose: &[(u64, u64)], who: &str, label: &str) {
    // A resize under way may have grown the disk (the new space reads
    // zeros) or shrunk it (only over a range the shrink made loose).
    let shrunk = (got.len() as u64, want.len() as u64);
    assert!(
        got.len() >= want.len() || loose.iter().any(|(x, y)| *x <= shrunk.0 && shrunk.1 <= *y),
        "{who}: the disk shrank, {label}"
    );
    if got.len() > want.len() {
        assert!(
            got[want.len()..].iter().all(|b| *b == 0),
            "{who}: space from an unfinished resize is not zero, {label}"
        );
    }
    for s in 0..want.len().min(got.len()) / SECTOR {
        let (a, b) = ((s * SECTOR) as u64, ((s + 1) * SECTOR) as u64);
        if loose.iter().any(|(x, y)| a < *y && *x < b) {
            continue;
        }
        let r = s * SECTOR..(s + 1) * SECTOR;
        assert!(
            got[r.clone()] == want[r],
            "{who}: acknowledged sector {s} (offset {a:#x}) lost after a power cut, {label}"
        );
    }
}

fn open_options(journal: Option<Arc<Journal>>, read_only: bool) -> Qcow2Options {
    Qcow2Options {
        read_only,
        // Small caches: tables and blocks leave them mid-workload.
        l2_cache_tables: 3,
        refcount_cache_blocks: 2,
        journal,
        ..Default::default()
    }
}

fn run_scenario(sc: &Scenario) {
    let scratch = Scratch::new(&format!("crash-{}", sc.name));
    let path = scratch.path("disk.qcow2");
    let mut model = if sc.backing {
        pattern_raw(&scratch.path("base.raw"), sc.size, sc.seed)
    } else {
        vec![0u8; sc.size as usize]
    };
    let image = Qcow2Image::create(
        &path,
        &CreateOptions {
            size: sc.size,
            cluster_size: sc.cluster_size,
            refcount_bits: sc.refcount_bits,
            extended_l2: sc.extended_l2,
            lazy_refcounts: sc.lazy,
            backing_file: sc.backing.then(|| "base.raw".to_string()),
            backing_format: sc.backing.then(|| "raw".to_string()),
            ..Default::default()
        },
    )
    .unwrap();
    drop(image);
    let mut snapshots = Vec::new();
    if sc.snapshot {
        // Data shared with a snapshot: overwrites copy clusters and L2 tables.
        let image = Qcow2Image::open(&path, &Qcow2Options::default()).unwrap();
        let data = noise(sc.seed ^ 7, (sc.size / 2) as usize);
        block::write_all_at(&image, &data, sc.size / 4).unwrap();
        model[(sc.size / 4) as usize..(sc.size / 4 * 3) as usize].copy_from_slice(&data);
        image.create_snapshot("before").unwrap();
        snapshots.push(("before".to_string(), model.clone()));
        drop(image);
    }
    assert_clean(&path);
    let initial = std::fs::read(&path).unwrap();

    let journal = Journal::new();
    let image = Qcow2Image::open(&path, &open_options(Some(journal.clone()), false)).unwrap();
    let history = run_workload(sc, &image, &journal, &mut model, snapshots);
    drop(image);
    assert_clean(&path);
    let reopened = Qcow2Image::open(&path, &open_options(None, true)).unwrap();
    assert!(
        read_all(&reopened) == model,
        "the image does not hold what was written"
    );
    drop(reopened);
    let entries = journal.entries();
    let syncs = entries.iter().filter(|e| **e == JournalEntry::Sync).count();
    let states = crash_states(&initial, &entries, &history, sc.seed);

    let crash = scratch.path("crash.qcow2");
    let mut qemu_checked = 0;
    let mut leaky = 0;
    let mut dirty_states = 0;
    for (i, st) in states.iter().enumerate() {
        std::fs::write(&crash, &st.file).unwrap();
        let want = &history.acked[st.acked];
        // Lazy refcounts: the dirty bit says refcounts on disk may lag and
        // the next open rebuilds them; without it, they must be safe as is.
        let dirty = st.file[79] & 1 != 0;
        assert!(
            sc.lazy || !dirty,
            "{}: dirty bit without lazy refcounts",
            st.label
        );
        dirty_states += dirty as usize;
        // Our reader and check, without repair.
        let image = Qcow2Image::open(&crash, &open_options(None, true))
            .unwrap_or_else(|e| panic!("{}: crash state does not open: {e}", st.label));
        let report = image.check(CheckMode::Report).unwrap();
        if !dirty {
            let errors = harmful(&report.messages, sc);
            assert!(
                errors.is_empty(),
                "{}: corruption after a power cut: {errors:?}",
                st.label
            );
        }
        if report.leaks > 0 {
            leaky += 1;
        }
        assert_acked(&read_all(&image), want, &st.loose, "block crate", &st.label);
        drop(image);
        let sampled = i % 16 == 0;
        // QEMU's view, on a sample (a few processes per state).
        if sampled {
            qemu_checked += 1;
            let (code, text) = qemu_check(&crash);
            assert!(
                qemu_accepts(code, &text, dirty, sc),
                "{}: qemu-img check exit {code} (corruption): {text}",
                st.label
            );
            run("qemu-img", &["check", "-r", "all", crash.to_str().unwrap()]);
            assert_acked(
                &qemu_raw(&crash, &scratch),
                want,
                &st.loose,
                "qemu-img",
                &st.label,
            );
            std::fs::write(&crash, &st.file).unwrap();
        }
        if sampled || dirty {
            // Opened for writing by us (which rebuilds a dirty image's
            // refcounts), the image is consistent and keeps its data.
            let image = Qcow2Image::open(&crash, &open_options(None, false)).unwrap();
            let report = image.check(CheckMode::Report).unwrap();
            let errors = harmful(&report.messages, sc);
            assert!(
                errors.is_empty(),
                "{}: corrupt after opening for writing: {errors:?}",
                st.label
            );
            if dirty {
                assert_eq!(report.leaks, 0, "{}: leaks after the rebuild", st.label);
            }
            assert_acked(&read_all(&image), want, &st.loose, "reopened", &st.label);
            // New writes keep it consistent.
            let mut rng = Rng(sc.seed + i as u64);
            for _ in 0..4 {
                let at = rng.below(image.size() / SECTOR as u64 - 16) * SECTOR as u64;
                block::write_all_at(&image, &noise(rng.next(), 8 * SECTOR), at).unwrap();
            }
            image.flush().unwrap();
            drop(image);
            if sampled {
                let (code, text) = qemu_check(&crash);
                assert!(
                    qemu_accepts(code, &text, false, sc),
                    "{}: after new writes, qemu-img check exit {code}: {text}",
                    st.label
                );
            }
        }
    }
    eprintln!(
        "{}: {} journal entries, {} syncs, {} acknowledged flushes ({} grows, {} shrinks, \
         {} snapshot operations), {} crash states checked ({} with leaks, {} dirty with lazy \
         refcounts, none corrupt otherwise), {} also through qemu-img",
        sc.name,
        entries.len(),
        syncs,
        history.acked.len() - 1,
        history.structural[0],
        history.structural[1],
        history.structural[2],
        states.len(),
        leaky,
        dirty_states,
        qemu_checked
    );
    if sc.lazy {
        assert!(
            dirty_states > 0,
            "lazy refcounts never marked the image dirty"
        );
    }
    assert!(states.len() > 50, "too few crash states to mean anything");
}

#[test]
fn small_clusters_with_wide_refcounts_survive_power_cuts() {
    // 512-byte clusters and 64-bit refcounts: L2 tables, refcount blocks
    // and a refcount table that grows, all within a few hundred writes;
    // the disk grows too (new L1 tables).
    run_scenario(&Scenario {
        name: "small",
        size: 3 << 20,
        cluster_size: 512,
        refcount_bits: 64,
        extended_l2: false,
        backing: false,
        snapshot: false,
        lazy: false,
        resize: true,
        ops: 260,
        seed: 0x1234_5678_9abc_def1,
    });
}

#[test]
fn copy_on_write_from_a_backing_file_survives_power_cuts() {
    // Partial-cluster writes copy the rest from the backing file: that copy
    // must be durable before the L2 entry points at it.
    run_scenario(&Scenario {
        name: "backing",
        size: 8 << 20,
        cluster_size: 65536,
        refcount_bits: 16,
        extended_l2: false,
        backing: true,
        snapshot: false,
        lazy: false,
        resize: false,
        ops: 200,
        seed: 0x0fed_cba9_8765_4321,
    });
}

#[test]
fn clusters_shared_with_a_snapshot_survive_power_cuts() {
    // Overwrites copy clusters and L2 tables away from a snapshot, and drop
    // references: refcounts may fall only after the new tables are durable.
    // Snapshots are also created, deleted and applied during the workload.
    run_scenario(&Scenario {
        name: "snapshot",
        size: 4 << 20,
        cluster_size: 4096,
        refcount_bits: 16,
        extended_l2: false,
        backing: false,
        snapshot: true,
        lazy: false,
        resize: false,
        ops: 220,
        seed: 0x2468_ace0_1357_9bdf,
    });
}

#[test]
fn extended_l2_entries_survive_power_cuts() {
    run_scenario(&Scenario {
        name: "extended",
        size: 8 << 20,
        cluster_size: 65536,
        refcount_bits: 16,
        extended_l2: true,
        backing: true,
        snapshot: false,
        lazy: false,
        resize: false,
        ops: 160,
        seed: 0x1357_2468_9bdf_ace0,
    });
}

#[test]
fn lazy_refcounts_survive_power_cuts_through_the_dirty_bit() {
    // Refcounts may lag on disk while the dirty bit is set: every crash
    // state is either clean or dirty and rebuilt at open, data intact.
    run_scenario(&Scenario {
        name: "lazy",
        size: 4 << 20,
        cluster_size: 4096,
        refcount_bits: 16,
        extended_l2: false,
        backing: true,
        snapshot: true,
        lazy: true,
        resize: false,
        ops: 200,
        seed: 0x7777_1111_3333_5555,
    });
}
