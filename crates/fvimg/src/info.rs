//! `info`: what an image is, as qemu-img prints it (human or JSON).

use std::path::{Path, PathBuf};

use block::qcow2::{snapshot::SnapshotInfo, Qcow2Image};
use block::Format;
use serde::Serialize;

use crate::image::{Ctx, Image};
use crate::size::human;
use crate::{Failure, Output};

#[derive(Serialize)]
struct Qcow2Data {
    compat: &'static str,
    #[serde(rename = "compression-type")]
    compression_type: &'static str,
    #[serde(rename = "lazy-refcounts", skip_serializing_if = "Option::is_none")]
    lazy_refcounts: Option<bool>,
    #[serde(rename = "refcount-bits")]
    refcount_bits: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    corrupt: Option<bool>,
    #[serde(rename = "extended-l2", skip_serializing_if = "Option::is_none")]
    extended_l2: Option<bool>,
}

#[derive(Serialize)]
struct FormatSpecific {
    #[serde(rename = "type")]
    kind: &'static str,
    data: Qcow2Data,
}

#[derive(Serialize)]
struct Snapshot {
    id: String,
    name: String,
    #[serde(rename = "vm-state-size")]
    vm_state_size: u64,
    #[serde(rename = "date-sec")]
    date_sec: u32,
    #[serde(rename = "date-nsec")]
    date_nsec: u32,
    #[serde(rename = "vm-clock-sec")]
    vm_clock_sec: u64,
    #[serde(rename = "vm-clock-nsec")]
    vm_clock_nsec: u64,
}

#[derive(Serialize)]
struct Info {
    #[serde(
        rename = "backing-filename-format",
        skip_serializing_if = "Option::is_none"
    )]
    backing_filename_format: Option<String>,
    #[serde(rename = "virtual-size")]
    virtual_size: u64,
    filename: String,
    #[serde(rename = "cluster-size", skip_serializing_if = "Option::is_none")]
    cluster_size: Option<u64>,
    format: &'static str,
    #[serde(rename = "actual-size")]
    actual_size: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    snapshots: Vec<Snapshot>,
    #[serde(rename = "format-specific", skip_serializing_if = "Option::is_none")]
    format_specific: Option<FormatSpecific>,
    #[serde(
        rename = "full-backing-filename",
        skip_serializing_if = "Option::is_none"
    )]
    full_backing_filename: Option<String>,
    #[serde(rename = "backing-filename", skip_serializing_if = "Option::is_none")]
    backing_filename: Option<String>,
    #[serde(rename = "dirty-flag")]
    dirty_flag: bool,
}

fn snapshot_json(s: &SnapshotInfo) -> Snapshot {
    Snapshot {
        id: s.id.clone(),
        name: s.name.clone(),
        vm_state_size: s.vm_state_size,
        date_sec: s.date_sec,
        date_nsec: s.date_nsec,
        vm_clock_sec: s.vm_clock_nsec / 1_000_000_000,
        vm_clock_nsec: s.vm_clock_nsec % 1_000_000_000,
    }
}

/// A backing file: its name as written, where it points (as shown), and
/// its format if recorded.
type BackingRef = (String, PathBuf, Option<Format>);

/// Info of one image, opened at `open` and shown as `path`, and its backing
/// file if any.
fn gather(
    ctx: &Ctx,
    path: &Path,
    open: &Path,
    format: Option<Format>,
) -> Result<(Info, Option<BackingRef>), Failure> {
    let image = ctx.open(open, format, true, false)?;
    let actual =
        std::fs::metadata(open).map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)?;
    let mut info = Info {
        backing_filename_format: None,
        virtual_size: image.disk().size(),
        filename: path.display().to_string(),
        cluster_size: None,
        format: image.format().name(),
        actual_size: actual,
        snapshots: Vec::new(),
        format_specific: None,
        full_backing_filename: None,
        backing_filename: None,
        dirty_flag: false,
    };
    let mut backing = None;
    if let Image::Qcow2(q) = &image {
        let h = q.header();
        info.cluster_size = Some(h.cluster_size());
        let v3 = h.version >= 3;
        info.dirty_flag = h.dirty();
        info.format_specific = Some(FormatSpecific {
            kind: "qcow2",
            data: Qcow2Data {
                compat: if h.version == 2 { "0.10" } else { "1.1" },
                compression_type: h.compression_type.name(),
                lazy_refcounts: v3.then(|| h.lazy_refcounts()),
                refcount_bits: h.refcount_bits(),
                corrupt: v3.then(|| h.corrupt()),
                extended_l2: v3.then(|| h.extended_l2()),
            },
        });
        info.snapshots = snapshots(q)?.iter().map(snapshot_json).collect();
        if let Some(name) = &h.backing_file {
            let full = block::qcow2::resolve_backing(path, name);
            info.backing_filename = Some(name.clone());
            info.full_backing_filename = Some(full.display().to_string());
            info.backing_filename_format = h.backing_format.clone();
            let fmt = h
                .backing_format
                .as_deref()
                .map(str::parse::<Format>)
                .transpose()?;
            backing = Some((name.clone(), full, fmt));
        }
    }
    Ok((info, backing))
}

/// The snapshot table of `q`.
pub fn snapshots(q: &Qcow2Image) -> Result<Vec<SnapshotInfo>, Failure> {
    Ok(q.snapshots()?)
}

fn print_human(i: &Info) {
    println!("image: {}", i.filename);
    println!("file format: {}", i.format);
    println!(
        "virtual size: {} ({} bytes)",
        human(i.virtual_size),
        i.virtual_size
    );
    println!("disk size: {}", human(i.actual_size));
    if let Some(cs) = i.cluster_size {
        println!("cluster_size: {cs}");
    }
    if let Some(b) = &i.backing_filename {
        println!("backing file: {b}");
        if let Some(f) = &i.backing_filename_format {
            println!("backing file format: {f}");
        }
    }
    if !i.snapshots.is_empty() {
        println!("Snapshot list:");
        println!(
            "{:<4} {:<20} {:>10} {:>19} {:>15}",
            "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK"
        );
        for s in &i.snapshots {
            println!(
                "{:<4} {:<20} {:>10} {:>19} {:>15}",
                s.id,
                s.name,
                human(s.vm_state_size),
                s.date_sec,
                format!(
                    "{:02}:{:02}:{:02}.{:03}",
                    s.vm_clock_sec / 3600,
                    s.vm_clock_sec / 60 % 60,
                    s.vm_clock_sec % 60,
                    s.vm_clock_nsec / 1_000_000
                )
            );
        }
    }
    if let Some(fs) = &i.format_specific {
        let d = &fs.data;
        println!("Format specific information:");
        println!("    compat: {}", d.compat);
        println!("    compression type: {}", d.compression_type);
        if let Some(v) = d.lazy_refcounts {
            println!("    lazy refcounts: {v}");
        }
        println!("    refcount bits: {}", d.refcount_bits);
        if let (Some(c), Some(e)) = (d.corrupt, d.extended_l2) {
            println!("    corrupt: {c}");
            println!("    extended l2: {e}");
        }
    }
}

/// Runs `info`.
pub fn run(
    ctx: &Ctx,
    path: &Path,
    format: Option<Format>,
    output: Output,
    chain: bool,
) -> Result<u8, Failure> {
    let mut infos = Vec::new();
    let (info, backing) = gather(ctx, path, path, format)?;
    infos.push(info);
    let mut shown = path.to_path_buf();
    let mut backing = if chain { backing } else { None };
    while let Some((name, full, f)) = backing.take() {
        if infos.len() as u32 > block::qcow2::MAX_BACKING_DEPTH {
            return Err("backing chain too deep".into());
        }
        // Checked against the policy before it is opened.
        let open = ctx.backing_file(&shown, &name)?;
        let (info, next) = gather(ctx, &full, &open, f)?;
        infos.push(info);
        (shown, backing) = (full, next);
    }
    match output {
        Output::Json if chain => println!("{}", serde_json::to_string_pretty(&infos)?),
        Output::Json => println!("{}", serde_json::to_string_pretty(&infos[0])?),
        Output::Human => {
            for (k, i) in infos.iter().enumerate() {
                if k > 0 {
                    println!();
                }
                print_human(i);
            }
        }
    }
    Ok(0)
}
