//! Converts a VMDK or VHD image to a sparse raw file through the block
//! crate, the way `qemu-img convert -O raw` does, and prints the time and
//! throughput: the figure bench/formats compares with qemu-img.
//!
//!   cargo run --release -p block --example image_to_raw -- IMAGE OUT.raw [THREADS]
//!
//! OUT `-` only reads (read throughput without the writes).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use block::vhd::VhdImage;
use block::vmdk::VmdkImage;
use block::DiskFile;
use vm_memory::VolatileSlice;

/// Bytes each worker converts at a time.
const CHUNK: u64 = 8 << 20;

fn open(path: &Path) -> std::io::Result<Box<dyn DiskFile>> {
    let mut head = vec![0u8; 512];
    let file = File::open(path)?;
    let n = file.read_at(&mut head, 0)?;
    head.truncate(n);
    let len = file.metadata()?.len();
    let mut tail = vec![0u8; 512.min(len as usize)];
    let tail_at = len - tail.len() as u64;
    file.read_exact_at(&mut tail, tail_at)?;
    if block::vmdk::probe(&head) {
        Ok(Box::new(VmdkImage::open(path)?))
    } else if block::vhd::probe(&head, &tail) {
        Ok(Box::new(VhdImage::open(path)?))
    } else {
        Err(std::io::Error::other("neither VMDK nor VHD"))
    }
}

/// Whether `buf` holds only zeros (64 bytes at a time, which vectorizes).
fn is_zero(buf: &[u8]) -> bool {
    let chunks = buf.chunks_exact(64);
    let tail = chunks.remainder();
    chunks
        .map(|c| c.iter().fold(0u8, |a, b| a | b))
        .all(|v| v == 0)
        && tail.iter().all(|b| *b == 0)
}

/// Converts `[start, end)`: data extents are read and written unless they
/// read as zeros; the rest stays a hole.
fn convert(
    disk: &dyn DiskFile,
    out: Option<&File>,
    start: u64,
    end: u64,
    buf: &mut [u8],
) -> std::io::Result<u64> {
    let mut written = 0;
    let mut at = start;
    while at < end {
        let e = disk.extent_at(at, end - at)?;
        let stop = e.start + e.length;
        if e.data && !e.zero {
            let mut pos = at;
            while pos < stop {
                let n = (stop - pos).min(buf.len() as u64) as usize;
                block::read_exact_vectored_at(disk, &[VolatileSlice::from(&mut buf[..n])], pos)?;
                if !is_zero(&buf[..n]) {
                    if let Some(out) = out {
                        out.write_all_at(&buf[..n], pos)?;
                    }
                    written += n as u64;
                }
                pos += n as u64;
            }
        }
        at = stop;
    }
    Ok(written)
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: image_to_raw IMAGE OUT.raw [THREADS]");
        std::process::exit(2);
    }
    let threads: u64 = match args.get(3) {
        Some(t) => t.parse().map_err(std::io::Error::other)?,
        None => std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
    };
    let began = Instant::now();
    let disk = open(Path::new(&args[1]))?;
    let out = match args[2].as_str() {
        "-" => None,
        path => {
            let out = File::create(path)?;
            out.set_len(disk.size())?;
            Some(out)
        }
    };
    let size = disk.size();
    let chunks = size.div_ceil(CHUNK);
    let disk = &*disk;
    let out = out.as_ref();
    let written = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|w| {
                s.spawn(move || -> std::io::Result<u64> {
                    let mut buf = vec![0u8; 1 << 20];
                    let mut total = 0;
                    let mut c = w;
                    while c < chunks {
                        let start = c * CHUNK;
                        total += convert(disk, out, start, (start + CHUNK).min(size), &mut buf)?;
                        c += threads.max(1);
                    }
                    Ok(total)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("worker panicked")))
            })
            .sum::<std::io::Result<u64>>()
    })?;
    let secs = began.elapsed().as_secs_f64();
    println!(
        "{} bytes ({} of data) in {secs:.3} s: {:.1} MiB/s of disk",
        size,
        written,
        size as f64 / secs / (1 << 20) as f64
    );
    Ok(())
}
