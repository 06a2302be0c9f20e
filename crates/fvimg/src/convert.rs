//! `convert`: copies the guest contents of an image into a new image,
//! reading only what the source's allocation map says holds data, skipping
//! zero stretches (`-S`), compressing clusters on all cores (`-c`); into an
//! existing image (`-n`), over a backing file writing only what differs
//! from it (`-B`), or from an internal snapshot (`-l`).

use std::io;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use block::qcow2::snapshot::SnapshotSelector;
use block::Format;
use indicatif::{ProgressBar, ProgressStyle};

use crate::chain::read_padded;
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
    /// Backing file of the destination (qcow2; relative to it): only what
    /// differs from it is written.
    #[arg(short = 'B')]
    backing: Option<String>,
    /// Format of the `-B` backing file (probed when not given).
    #[arg(short = 'F', value_parser = parse_format)]
    backing_format: Option<Format>,
    /// Write into an existing destination (of format `-O`) instead of creating it.
    #[arg(short = 'n')]
    no_create: bool,
    /// Convert an internal snapshot: `snapshot.name=NAME`, `snapshot.id=ID`
    /// (or both), or a bare ID or name.
    #[arg(short = 'l')]
    snapshot: Option<String>,
    /// Source image.
    src: PathBuf,
    /// Destination image.
    dst: PathBuf,
}

impl Args {
    /// The images named: source, destination, and the destination's
    /// backing file (`-B` or `-o backing_file=`, relative to it).
    pub fn images(&self) -> Vec<PathBuf> {
        let mut v = vec![self.src.clone(), self.dst.clone()];
        if let Some(b) = self.backing_name() {
            v.push(block::qcow2::resolve_backing(&self.dst, &b));
        }
        v
    }

    /// The backing file named by `-B` or `-o backing_file=`.
    fn backing_name(&self) -> Option<String> {
        let mut spec = CreateSpec::default();
        let _ = parse_options(&self.options, &mut spec);
        self.backing.clone().or(spec.qcow2.backing_file)
    }
}

/// Parses `-l`: `snapshot.id=ID,snapshot.name=NAME` (either or both), or
/// a bare ID or name.
fn snapshot_selector(param: &str) -> Result<SnapshotSelector<'_>, Failure> {
    if !param.starts_with("snapshot.") {
        return Ok(SnapshotSelector::IdOrName(param));
    }
    let (mut id, mut name) = (None, None);
    for item in param.split(',') {
        match item.split_once('=') {
            Some(("snapshot.id", v)) => id = Some(v),
            Some(("snapshot.name", v)) => name = Some(v),
            _ => {
                return Err(format!(
                    "invalid snapshot parameter '{item}' (snapshot.id=ID or snapshot.name=NAME)"
                )
                .into())
            }
        }
    }
    Ok(SnapshotSelector::Exact { id, name })
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

/// Where and how pieces read from the source are written.
struct Writer<'a> {
    dst: &'a Image,
    /// Guest size.
    size: u64,
    /// Destination cluster size (512 for raw).
    cs: usize,
    /// Zero stretches at least this long (and aligned to it) are not written (0: none).
    granularity: usize,
    /// `-S`.
    sparse: usize,
    compress: bool,
    /// The destination may hold old data (`-n`): zero stretches are zeroed.
    fill_zeros: bool,
    /// The destination's backing file (`-B`): clusters equal to it are left unallocated.
    backing: Option<&'a Image>,
}

/// Complement of `runs` (sorted, disjoint) within `0..len`.
fn gaps(runs: &[(usize, usize)], len: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    for &(o, n) in runs {
        if o > at {
            out.push((at, o - at));
        }
        at = o + n;
    }
    if at < len {
        out.push((at, len - at));
    }
    out
}

/// Adds `(at, len)` to `runs`, merging with the last run when contiguous.
fn push_run(runs: &mut Vec<(usize, usize)>, at: usize, len: usize) {
    match runs.last_mut() {
        Some(r) if r.0 + r.1 == at => r.1 += len,
        _ => runs.push((at, len)),
    }
}

impl Writer<'_> {
    /// Writes one piece read from the source at guest `at`.
    fn write(&self, b: &[u8], at: u64) -> Result<(), Failure> {
        if let Some(backing) = self.backing {
            return self.write_over_backing(backing, b, at);
        }
        let (dst, cs, len) = (self.dst, self.cs, b.len() as u64);
        match dst {
            Image::Qcow2(q) if self.compress => {
                let head = (at % cs as u64) as usize;
                if head != 0 || (len as usize % cs != 0 && at + len != self.size) {
                    // A partial cluster (source map finer than our clusters): plain write.
                    let g = if self.sparse == 0 { 0 } else { 512 };
                    for (o, n) in nonzero_runs(b, g) {
                        dst.write_all_at(&b[o..o + n], at + o as u64)?;
                    }
                } else {
                    write_compressed(q, b, at, cs)?;
                }
            }
            _ => {
                let runs = nonzero_runs(b, self.granularity);
                for &(o, n) in &runs {
                    dst.write_all_at(&b[o..o + n], at + o as u64)?;
                }
                if self.fill_zeros {
                    for (o, n) in gaps(&runs, b.len()) {
                        dst.disk().write_zeroes(at + o as u64, n as u64, true)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes the clusters of a piece (cluster aligned) that differ from
    /// the backing file: as zero clusters where the source reads zeros,
    /// as data elsewhere.
    fn write_over_backing(&self, backing: &Image, b: &[u8], at: u64) -> Result<(), Failure> {
        let cs = self.cs;
        let mut base = vec![0u8; b.len()];
        read_padded(backing.disk(), &mut base, at)?;
        let (mut data, mut zeros) = (Vec::new(), Vec::new());
        for (i, (s, old)) in b.chunks(cs).zip(base.chunks(cs)).enumerate() {
            if s == old {
                continue;
            }
            if self.sparse != 0 && s.iter().all(|x| *x == 0) {
                push_run(&mut zeros, i * cs, s.len());
            } else {
                push_run(&mut data, i * cs, s.len());
            }
        }
        for (o, n) in zeros {
            self.dst
                .disk()
                .write_zeroes(at + o as u64, n as u64, false)?;
        }
        for (o, n) in data {
            let piece = &b[o..o + n];
            match self.dst {
                Image::Qcow2(q) if self.compress => {
                    write_compressed(q, piece, at + o as u64, cs)?;
                }
                _ => self.dst.write_all_at(piece, at + o as u64)?,
            }
        }
        Ok(())
    }
}

/// The CHUNK-aligned pieces of `0..size` that hold data in any of `maps`.
fn chunks_with_data(size: u64, maps: &[&[block::Extent]]) -> Vec<(u64, u64)> {
    let mut chunks = std::collections::BTreeSet::new();
    for e in maps.iter().flat_map(|m| m.iter()).filter(|e| !e.zero) {
        let end = (e.start + e.length).min(size);
        if e.start >= end {
            continue;
        }
        chunks.extend(e.start / CHUNK..=(end - 1) / CHUNK);
    }
    chunks
        .into_iter()
        .map(|c| (c * CHUNK, CHUNK.min(size - c * CHUNK)))
        .collect()
}

/// Opens the source: its active state, or with `-l` one of its snapshots.
fn open_source(ctx: &Ctx, args: &Args) -> Result<Image, Failure> {
    let src = ctx
        .open(&args.src, args.format, true, true)
        .map_err(|e| format!("{}: {e}", args.src.display()))?;
    let Some(param) = &args.snapshot else {
        return Ok(src);
    };
    let which = snapshot_selector(param)?;
    match src {
        Image::Qcow2(q) => {
            let view = q
                .into_snapshot_view(which)
                .map_err(|e| format!("{}: failed to load snapshot: {e}", args.src.display()))?;
            Ok(Image::ReadOnly(Format::Qcow2, Box::new(view)))
        }
        other => Err(format!(
            "failed to load snapshot: {} images have no internal snapshots",
            other.format()
        )
        .into()),
    }
}

/// Opens the destination's backing file (`-B`), checked against the
/// policy, and records its name and format in `spec`.
fn open_backing(ctx: &Ctx, args: &Args, spec: &mut CreateSpec) -> Result<Option<Image>, Failure> {
    let Some(name) = args.backing_name() else {
        if args.backing_format.is_some() || spec.qcow2.backing_format.is_some() {
            return Err("backing format cannot be used without backing file".into());
        }
        return Ok(None);
    };
    if args.out_format != Format::Qcow2 {
        return Err(format!(
            "backing file not supported for file format '{}'",
            args.out_format
        )
        .into());
    }
    if args.no_create {
        return Err("-B cannot be used with -n (the destination exists already)".into());
    }
    let path = ctx.backing_file(&args.dst, &name)?;
    if path.canonicalize().ok() == args.dst.canonicalize().ok() {
        return Err(format!("{name}: the destination cannot be its own backing file").into());
    }
    let format = match (args.backing_format, &spec.qcow2.backing_format) {
        (Some(f), _) => f,
        (None, Some(f)) => parse_format(f)?,
        (None, None) => block::image::probe(&path).map_err(|e| format!("{name}: {e}"))?,
    };
    let image = ctx
        .open(&path, Some(format), true, true)
        .map_err(|e| format!("backing file {name}: {e}"))?;
    spec.qcow2.backing_file = Some(name);
    spec.qcow2.backing_format = Some(format.name().to_string());
    Ok(Some(image))
}

/// Opens (`-n`) or creates the destination.
fn open_destination(ctx: &Ctx, args: &Args, spec: &CreateSpec) -> Result<Image, Failure> {
    let dst = &args.dst;
    let named = |e: std::io::Error| format!("{}: {e}", dst.display());
    if args.no_create {
        let image = ctx
            .open(dst, Some(args.out_format), false, true)
            .map_err(|e| format!("could not open '{}': {e}", dst.display()))?;
        if image.disk().size() < spec.qcow2.size {
            return Err("output file is smaller than input file".into());
        }
        return Ok(image);
    }
    let image = create(ctx, dst, args.out_format, spec).map_err(named)?;
    if spec.qcow2.backing_file.is_none() {
        return Ok(image);
    }
    // Opened again with its backing file, so that zeros written over
    // backing data become zero clusters.
    drop(image);
    Ok(ctx
        .open(dst, Some(Format::Qcow2), false, true)
        .map_err(named)?)
}

/// Runs `convert`.
pub fn run(ctx: &Ctx, args: Args) -> Result<u8, Failure> {
    let mut spec = CreateSpec::default();
    parse_options(&args.options, &mut spec)?;
    spec.qcow2.no_sync = args.cache == "unsafe";
    if args.compress && args.out_format != Format::Qcow2 {
        return Err(format!("{} images cannot be compressed", args.out_format).into());
    }
    if args.compress && args.no_create {
        return Err(
            "-c cannot be used with -n (compressed clusters are written into new images only)"
                .into(),
        );
    }
    let sparse = parse_size(&args.sparse)? as usize;
    if sparse % 512 != 0 {
        return Err("-S must be a multiple of 512".into());
    }
    let backing = open_backing(ctx, &args, &mut spec)?;
    let src = open_source(ctx, &args)?;
    let size = src.disk().size();
    spec.qcow2.size = size;
    let dst = open_destination(ctx, &args, &spec)?;
    let (cs, granularity) = match &dst {
        Image::Qcow2(q) => {
            let cs = q.header().cluster_size() as usize;
            (cs, if sparse == 0 { 0 } else { sparse.max(cs) })
        }
        Image::Raw(..) | Image::ReadOnly(..) => (512, sparse),
    };
    let map = extents(&src)?;
    // The pieces to copy, cut at CHUNK boundaries so that compressed
    // clusters stay whole: the source's data stretches, or over a backing
    // file every chunk where either holds data.
    let mut plan = Vec::new();
    match &backing {
        Some(b) => plan = chunks_with_data(size, &[&map, &extents(b)?]),
        None => {
            for e in map.iter().filter(|e| !e.zero) {
                let mut at = e.start;
                while at < e.start + e.length {
                    let len = (CHUNK - at % CHUNK).min(e.start + e.length - at);
                    plan.push((at, len));
                    at += len;
                }
            }
        }
    }
    if args.no_create {
        // The destination may hold old data where the source reads zeros.
        for e in map.iter().filter(|e| e.zero) {
            dst.disk().write_zeroes(e.start, e.length, true)?;
        }
    }
    let writer = Writer {
        dst: &dst,
        size,
        cs,
        granularity,
        sparse,
        compress: args.compress,
        fill_zeros: args.no_create,
        backing: backing.as_ref(),
    };
    let total: u64 = plan.iter().map(|p| p.1).sum();
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
            writer.write(b.as_ref(), at)?;
            bar.inc(b.len as u64);
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
