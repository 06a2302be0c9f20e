//! `convert`: copies the guest contents of an image into a new image,
//! reading only what the source's allocation map says holds data, skipping
//! zero stretches (`-S`), compressing clusters on all cores (`-c`).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use block::Format;
use indicatif::{ProgressBar, ProgressStyle};

use crate::image::{create, parse_options, CreateSpec, Ctx, Image};
use crate::map::extents;
use crate::size::parse_size;
use crate::{parse_format, Failure};

/// Bytes moved per read.
const CHUNK: u64 = 2 << 20;

/// Arguments of `convert`.
#[derive(clap::Args)]
pub struct Args {
    /// Source format (probed when not given).
    #[arg(short = 'f', value_parser = parse_format)]
    format: Option<Format>,
    /// Destination format.
    #[arg(short = 'O', value_parser = parse_format, default_value = "raw")]
    out_format: Format,
    /// Compress the destination's clusters (qcow2).
    #[arg(short = 'c')]
    compress: bool,
    /// Progress bar.
    #[arg(short = 'p')]
    progress: bool,
    /// Stretches of zeros at least this long are left unallocated (0: write everything).
    #[arg(short = 'S', default_value = "4k")]
    sparse: String,
    /// Allow out-of-order writes (accepted; writes are in order anyway).
    #[arg(short = 'W')]
    out_of_order: bool,
    /// Destination format options.
    #[arg(short = 'o')]
    options: Vec<String>,
    /// Parallel requests (accepted for compatibility; compression uses every core).
    #[arg(short = 'm')]
    coroutines: Option<usize>,
    /// Destination cache mode: unsafe (no final flush, qemu-img's default) or writeback/none/directsync/writethrough (flush at the end).
    #[arg(short = 't', default_value = "unsafe")]
    cache: String,
    /// Quiet.
    #[arg(short = 'q')]
    quiet: bool,
    /// Source image.
    src: PathBuf,
    /// Destination image.
    dst: PathBuf,
}

impl Args {
    /// The images named: source and destination.
    pub fn images(&self) -> [&Path; 2] {
        [&self.src, &self.dst]
    }
}

/// A buffer whose bytes start on a page boundary: the kernel copies
/// to and from page-aligned user memory much faster on some CPUs (and
/// qemu-img aligns its buffers the same way).
struct PageBuf {
    bytes: Vec<u8>,
    start: usize,
    /// Bytes in use.
    len: usize,
}

impl PageBuf {
    fn new(capacity: usize) -> PageBuf {
        let bytes = vec![0u8; capacity + 4096];
        let start = bytes.as_ptr().align_offset(4096).min(4096);
        PageBuf {
            bytes,
            start,
            len: capacity,
        }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[self.start..self.start + self.len]
    }

    fn as_ref(&self) -> &[u8] {
        &self.bytes[self.start..self.start + self.len]
    }
}

/// Nonzero stretches of `buf` at granularity `g` (all of it when `g` is 0).
fn nonzero_runs(buf: &[u8], g: usize) -> Vec<(usize, usize)> {
    if g == 0 {
        return vec![(0, buf.len())];
    }
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (i, piece) in buf.chunks(g).enumerate() {
        if piece.iter().all(|b| *b == 0) {
            continue;
        }
        let start = i * g;
        match runs.last_mut() {
            Some(r) if r.0 + r.1 == start => r.1 += piece.len(),
            _ => runs.push((start, piece.len())),
        }
    }
    runs
}

/// Compresses and writes one chunk's clusters, compressing on every core.
fn write_compressed(q: &block::Qcow2Image, buf: &[u8], at: u64, cs: usize) -> Result<(), Failure> {
    let clusters: Vec<(usize, &[u8])> = buf
        .chunks(cs)
        .enumerate()
        .filter(|(_, c)| c.iter().any(|b| *b != 0))
        .collect();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(clusters.len().max(1));
    let per = clusters.len().div_ceil(threads).max(1);
    let packed: Vec<Vec<Option<Vec<u8>>>> = std::thread::scope(|s| {
        let handles: Vec<_> = clusters
            .chunks(per)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|(_, c)| q.compress_cluster(c))
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| Failure::from("compression thread panicked"))?
                    .map_err(Failure::from)
            })
            .collect::<Result<Vec<_>, Failure>>()
    })?;
    for ((i, c), p) in clusters.iter().zip(packed.into_iter().flatten()) {
        q.write_compressed_cluster(at + (i * cs) as u64, c, p.as_deref())?;
    }
    Ok(())
}

/// Writes one piece read from the source at guest `at`.
#[allow(clippy::too_many_arguments)]
fn write_piece(
    dst: &Image,
    b: &[u8],
    at: u64,
    size: u64,
    cs: usize,
    granularity: usize,
    sparse: usize,
    compress: bool,
) -> Result<(), Failure> {
    let len = b.len() as u64;
    match dst {
        Image::Qcow2(q) if compress => {
            let head = (at % cs as u64) as usize;
            if head != 0 || (len as usize % cs != 0 && at + len != size) {
                // A partial cluster (source map finer than our clusters): plain write.
                let g = if sparse == 0 { 0 } else { 512 };
                for (o, n) in nonzero_runs(b, g) {
                    dst.write_all_at(&b[o..o + n], at + o as u64)?;
                }
            } else {
                write_compressed(q, b, at, cs)?;
            }
        }
        _ => {
            for (o, n) in nonzero_runs(b, granularity) {
                dst.write_all_at(&b[o..o + n], at + o as u64)?;
            }
        }
    }
    Ok(())
}

/// Runs `convert`.
pub fn run(ctx: &Ctx, args: Args) -> Result<u8, Failure> {
    let src = ctx
        .open(&args.src, args.format, true, true)
        .map_err(|e| format!("{}: {e}", args.src.display()))?;
    let size = src.disk().size();
    let mut spec = CreateSpec::default();
    parse_options(&args.options, &mut spec)?;
    spec.qcow2.size = size;
    spec.qcow2.no_sync = args.cache == "unsafe";
    if args.compress && args.out_format != Format::Qcow2 {
        return Err(format!("{} images cannot be compressed", args.out_format).into());
    }
    let sparse = parse_size(&args.sparse)? as usize;
    if sparse % 512 != 0 {
        return Err("-S must be a multiple of 512".into());
    }
    let dst = create(ctx, &args.dst, args.out_format, &spec)
        .map_err(|e| format!("{}: {e}", args.dst.display()))?;
    let (cs, granularity) = match &dst {
        Image::Qcow2(q) => {
            let cs = q.header().cluster_size() as usize;
            (cs, if sparse == 0 { 0 } else { sparse.max(cs) })
        }
        Image::Raw(..) | Image::ReadOnly(..) => (512, sparse),
    };
    let map = extents(&src)?;
    let total: u64 = map.iter().filter(|e| !e.zero).map(|e| e.length).sum();
    let bar = if args.progress && !args.quiet {
        let b = ProgressBar::new(total);
        b.set_style(
            ProgressStyle::with_template(
                "    ({percent}.00/100%) {bar:40} {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b.enable_steady_tick(Duration::from_millis(200));
        b
    } else {
        ProgressBar::hidden()
    };
    // The pieces to copy: data stretches cut at CHUNK boundaries, so that
    // compressed clusters stay whole.
    let mut plan = Vec::new();
    for e in map.iter().filter(|e| !e.zero) {
        let mut at = e.start;
        while at < e.start + e.length {
            let len = (CHUNK - at % CHUNK).min(e.start + e.length - at);
            plan.push((at, len));
            at += len;
        }
    }
    // A reader thread fills buffers while this thread writes (two cores
    // copy into and out of the page cache at once).
    let (full_tx, full_rx) = mpsc::sync_channel::<io::Result<(u64, PageBuf)>>(2);
    let (empty_tx, empty_rx) = mpsc::channel::<PageBuf>();
    std::thread::scope(|s| -> Result<(), Failure> {
        let src = &src;
        let plan = &plan;
        s.spawn(move || {
            for &(at, len) in plan {
                let mut buf = empty_rx
                    .try_recv()
                    .unwrap_or_else(|_| PageBuf::new(CHUNK as usize));
                buf.len = len as usize;
                let msg = src.read_exact_at(buf.as_mut(), at).map(|()| (at, buf));
                if full_tx.send(msg).is_err() {
                    return;
                }
            }
        });
        for msg in full_rx {
            let (at, b) = msg?;
            let len = b.len as u64;
            write_piece(
                &dst,
                b.as_ref(),
                at,
                size,
                cs,
                granularity,
                sparse,
                args.compress,
            )?;
            bar.inc(len);
            let _ = empty_tx.send(b);
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    if args.cache != "unsafe" {
        dst.flush()?;
    }
    let _ = (args.out_of_order, args.coroutines);
    Ok(0)
}
