//! `snapshot`: internal snapshots of qcow2 images.

use std::path::PathBuf;

use crate::image::{Ctx, Image};
use crate::size::human;
use crate::Failure;

/// Arguments of `snapshot`.
#[derive(clap::Args)]
pub struct Args {
    /// List the snapshots.
    #[arg(short = 'l', group = "op")]
    list: bool,
    /// Create a snapshot with this name.
    #[arg(short = 'c', group = "op")]
    create: Option<String>,
    /// Revert the image to this snapshot.
    #[arg(short = 'a', group = "op")]
    apply: Option<String>,
    /// Delete this snapshot.
    #[arg(short = 'd', group = "op")]
    delete: Option<String>,
    /// Quiet.
    #[arg(short = 'q')]
    quiet: bool,
    /// The image.
    pub file: PathBuf,
}

/// Runs `snapshot`.
pub fn run(ctx: &Ctx, args: Args) -> Result<u8, Failure> {
    let read_only = args.list;
    let image = ctx.open(&args.file, Some(block::Format::Qcow2), read_only, false)?;
    let Image::Qcow2(q) = &image else {
        return Err("snapshots need a qcow2 image".into());
    };
    if args.list {
        let snaps = q.snapshots()?;
        if snaps.is_empty() {
            return Ok(0);
        }
        println!("Snapshot list:");
        println!(
            "{:<4} {:<20} {:>10} {:>19} {:>15}",
            "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK"
        );
        for s in snaps {
            println!(
                "{:<4} {:<20} {:>10} {:>19} {:>15}",
                s.id,
                s.name,
                human(s.vm_state_size),
                s.date_sec,
                s.vm_clock_nsec
            );
        }
        return Ok(0);
    }
    if let Some(name) = &args.create {
        q.create_snapshot(name)?;
    } else if let Some(name) = &args.apply {
        q.apply_snapshot(name)?;
    } else if let Some(name) = &args.delete {
        q.delete_snapshot(name)?;
    } else {
        return Err("one of -l, -c, -a or -d is needed".into());
    }
    let _ = args.quiet;
    Ok(0)
}
