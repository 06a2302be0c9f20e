//! Backing chain commands: `rebase` (safe or `-u`) and `commit`.

use std::path::{Path, PathBuf};

use block::{DiskFile, Format};

use crate::image::{Ctx, Image};
use crate::{parse_format, Failure};

/// Bytes compared or copied per step.
const CHUNK: u64 = 1 << 20;

/// Arguments of `rebase`.
#[derive(clap::Args)]
pub struct RebaseArgs {
    /// Image format (qcow2).
    #[arg(short = 'f', value_parser = parse_format)]
    format: Option<Format>,
    /// New backing file ("" for none).
    #[arg(short = 'b')]
    backing: String,
    /// New backing file format (probed when not given).
    #[arg(short = 'F', value_parser = parse_format)]
    backing_format: Option<Format>,
    /// Unsafe: only change the name, copy nothing.
    #[arg(short = 'u')]
    unsafe_mode: bool,
    /// Progress (accepted).
    #[arg(short = 'p')]
    progress: bool,
    /// Quiet.
    #[arg(short = 'q')]
    quiet: bool,
    /// The image.
    file: PathBuf,
}

impl RebaseArgs {
    /// The image, and where the new backing file points (relative to it).
    pub fn images(&self) -> Vec<PathBuf> {
        let mut v = vec![self.file.clone()];
        if !self.backing.is_empty() {
            v.push(block::qcow2::resolve_backing(&self.file, &self.backing));
        }
        v
    }
}

/// Arguments of `commit`.
#[derive(clap::Args)]
pub struct CommitArgs {
    /// Image format (qcow2).
    #[arg(short = 'f', value_parser = parse_format)]
    format: Option<Format>,
    /// Keep the image's contents (do not empty it).
    #[arg(short = 'd')]
    keep: bool,
    /// Progress (accepted).
    #[arg(short = 'p')]
    progress: bool,
    /// Quiet.
    #[arg(short = 'q')]
    quiet: bool,
    /// The image.
    file: PathBuf,
}

impl CommitArgs {
    /// The image.
    pub fn image(&self) -> &Path {
        &self.file
    }
}

fn qcow2(image: &Image) -> Result<&block::Qcow2Image, Failure> {
    match image {
        Image::Qcow2(q) => Ok(q),
        Image::Raw(..) | Image::ReadOnly(..) => Err("the image must be qcow2".into()),
    }
}

/// Reads `buf` from `disk` at `at`, with zeros past its end.
pub fn read_padded(disk: &dyn DiskFile, buf: &mut [u8], at: u64) -> Result<(), Failure> {
    let size = disk.size();
    let n = if at >= size {
        0
    } else {
        ((size - at) as usize).min(buf.len())
    };
    if n > 0 {
        block::read_exact_at(disk, &mut buf[..n], at)?;
    }
    buf[n..].fill(0);
    Ok(())
}

/// Runs `rebase`.
pub fn rebase(ctx: &Ctx, args: RebaseArgs) -> Result<u8, Failure> {
    let new_name = (!args.backing.is_empty()).then_some(args.backing.as_str());
    // The new backing file is read (probed, copied from) only in safe mode,
    // and only once checked against the policy.
    let new_path = match new_name {
        Some(n) if !args.unsafe_mode => Some(ctx.backing_file(&args.file, n)?),
        _ => None,
    };
    let new_format = match (new_name, args.backing_format, &new_path) {
        (None, _, _) => None,
        (Some(_), Some(f), _) => Some(f),
        (Some(_), None, Some(p)) => Some(block::image::probe(p)?),
        (Some(_), None, None) => None,
    };
    let image = ctx.open(&args.file, args.format, false, !args.unsafe_mode)?;
    let q = qcow2(&image)?;
    if !args.unsafe_mode {
        let new_backing = match &new_path {
            Some(p) => Some(ctx.open(p, new_format, true, true)?),
            None => None,
        };
        let size = q.virtual_size();
        let cs = q.header().cluster_size().max(512);
        let (mut old_buf, mut new_buf) = (vec![0u8; CHUNK as usize], vec![0u8; CHUNK as usize]);
        let mut at = 0;
        while at < size {
            let e = q.extent_at(at, CHUNK.min(size - at))?;
            let len = e.length;
            if e.depth == 0 && e.present {
                at += len;
                continue;
            }
            // Unallocated here: keep what the old chain showed where the new one differs.
            let old = &mut old_buf[..len as usize];
            let new = &mut new_buf[..len as usize];
            q.read_at(old, at)?;
            match &new_backing {
                Some(b) => read_padded(b.disk(), new, at)?,
                None => new.fill(0),
            }
            for (i, (a, b)) in old
                .chunks(cs as usize)
                .zip(new.chunks(cs as usize))
                .enumerate()
            {
                if a != b {
                    q.write_at(a, at + i as u64 * cs)?;
                }
            }
            at += len;
        }
    }
    q.set_backing(new_name, new_format.map(|f| f.name()))?;
    let _ = (args.progress, args.quiet);
    Ok(0)
}

/// Runs `commit`: copies the image's own clusters into its backing file.
pub fn commit(ctx: &Ctx, args: CommitArgs) -> Result<u8, Failure> {
    let image = ctx.open(&args.file, args.format, false, false)?;
    let q = qcow2(&image)?;
    let h = q.header();
    let Some(name) = &h.backing_file else {
        return Err("the image has no backing file".into());
    };
    // Written to, so checked against the policy first.
    let backing_path = ctx.backing_file(&args.file, name)?;
    let format = h.backing_format.as_deref().map(parse_format).transpose()?;
    let base = ctx.open(&backing_path, format, false, true)?;
    let size = q.virtual_size().min(base.disk().size());
    let mut buf = vec![0u8; CHUNK as usize];
    let mut at = 0;
    while at < size {
        let e = q.extent_at(at, CHUNK.min(size - at))?;
        if e.depth == 0 && e.present {
            if e.zero && !e.data {
                base.disk().write_zeroes(at, e.length, false)?;
            } else {
                let b = &mut buf[..e.length as usize];
                q.read_at(b, at)?;
                base.write_all_at(b, at)?;
            }
        }
        at += e.length;
    }
    base.flush()?;
    if !args.keep {
        q.make_empty()?;
    }
    q.flush()?;
    if !args.quiet {
        println!("Image committed.");
    }
    let _ = args.progress;
    Ok(0)
}
