//! `check`: qemu-img's consistency check, its output and exit codes
//! (0 clean, 1 check not completed, 2 corruptions, 3 leaks only).

use std::path::Path;

use block::qcow2::{CheckMode, CheckReport};
use block::Format;
use serde::Serialize;

use crate::image::{Ctx, Image};
use crate::{Failure, Output};

/// What `-r` repairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Repair {
    /// Leaked clusters only.
    Leaks,
    /// Leaks and corruptions.
    All,
}

#[derive(Serialize)]
struct Json<'a> {
    #[serde(rename = "image-end-offset")]
    image_end_offset: u64,
    #[serde(rename = "total-clusters")]
    total_clusters: u64,
    #[serde(rename = "check-errors")]
    check_errors: u64,
    #[serde(rename = "leaks", skip_serializing_if = "is_zero")]
    leaks: u64,
    #[serde(rename = "corruptions", skip_serializing_if = "is_zero")]
    corruptions: u64,
    #[serde(rename = "leaks-fixed", skip_serializing_if = "is_zero")]
    leaks_fixed: u64,
    #[serde(rename = "corruptions-fixed", skip_serializing_if = "is_zero")]
    corruptions_fixed: u64,
    #[serde(rename = "allocated-clusters", skip_serializing_if = "is_zero")]
    allocated_clusters: u64,
    #[serde(rename = "fragmented-clusters", skip_serializing_if = "is_zero")]
    fragmented_clusters: u64,
    #[serde(rename = "compressed-clusters", skip_serializing_if = "is_zero")]
    compressed_clusters: u64,
    filename: &'a str,
    format: &'static str,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn exit_code(r: &CheckReport) -> u8 {
    if r.check_errors > 0 {
        1
    } else if r.corruptions > 0 {
        2
    } else if r.leaks > 0 {
        3
    } else {
        0
    }
}

/// Runs `check`.
pub fn run(
    ctx: &Ctx,
    path: &Path,
    format: Option<Format>,
    repair: Option<Repair>,
    output: Output,
    quiet: bool,
) -> Result<u8, Failure> {
    let image = match repair {
        None => ctx.open(path, format, true, false)?,
        Some(_) => ctx.open_for_repair(path, format)?,
    };
    let Image::Qcow2(q) = &image else {
        return Err(Failure {
            message: format!(
                "{}: this image format does not support checks",
                path.display()
            ),
            code: 63,
        });
    };
    let mode = match repair {
        None => CheckMode::Report,
        Some(Repair::Leaks) => CheckMode::Leaks,
        Some(Repair::All) => CheckMode::All,
    };
    let first = q.check(mode).map_err(|e| Failure {
        message: format!("check of {} failed: {e}", path.display()),
        code: 1,
    })?;
    let fixed = first.leaks_fixed + first.corruptions_fixed;
    let mut report = first.clone();
    if fixed > 0 {
        // Double check the repaired image, as qemu-img does.
        report = q.check(CheckMode::Report).map_err(|e| Failure {
            message: format!("check of {} failed: {e}", path.display()),
            code: 1,
        })?;
        report.leaks_fixed = first.leaks_fixed;
        report.corruptions_fixed = first.corruptions_fixed;
    }
    match output {
        Output::Json => {
            let j = Json {
                image_end_offset: report.image_end_offset,
                total_clusters: report.total_clusters,
                check_errors: report.check_errors,
                leaks: report.leaks,
                corruptions: report.corruptions,
                leaks_fixed: report.leaks_fixed,
                corruptions_fixed: report.corruptions_fixed,
                allocated_clusters: report.allocated_clusters,
                fragmented_clusters: report.fragmented_clusters,
                compressed_clusters: report.compressed_clusters,
                filename: &path.to_string_lossy(),
                format: "qcow2",
            };
            println!("{}", serde_json::to_string_pretty(&j)?);
        }
        Output::Human if !quiet => print_human(&first, &report, fixed),
        Output::Human => {}
    }
    Ok(exit_code(&report))
}

fn print_human(first: &CheckReport, r: &CheckReport, fixed: u64) {
    for m in &first.messages {
        eprintln!("{m}");
    }
    if fixed > 0 {
        println!("The following inconsistencies were found and repaired:\n");
        println!("    {} leaked clusters", first.leaks_fixed);
        println!("    {} corruptions\n", first.corruptions_fixed);
        println!("Double checking the fixed image now...");
    }
    if r.corruptions == 0 && r.leaks == 0 && r.check_errors == 0 {
        println!("No errors were found on the image.");
    }
    if r.corruptions > 0 {
        println!("\n{} errors were found on the image.", r.corruptions);
        println!("Data may be corrupted, or further writes to the image may corrupt it.");
    }
    if r.leaks > 0 {
        println!("\n{} leaked clusters were found on the image.", r.leaks);
        println!("This means waste of disk space, but no harm to data.");
    }
    if r.total_clusters > 0 && r.allocated_clusters > 0 {
        let pct = |n: u64| n as f64 * 100.0 / r.total_clusters.max(1) as f64;
        println!(
            "{}/{} = {:.2}% allocated, {:.2}% fragmented, {:.2}% compressed clusters",
            r.allocated_clusters,
            r.total_clusters,
            pct(r.allocated_clusters),
            r.fragmented_clusters as f64 * 100.0 / r.allocated_clusters.max(1) as f64,
            r.compressed_clusters as f64 * 100.0 / r.allocated_clusters.max(1) as f64
        );
    }
    println!("Image end offset: {}", r.image_end_offset);
}
