//! Random 4 KiB reads through the block crate, for bench/img: prints how
//! long `COUNT` reads at xorshift-chosen 4 KiB-aligned offsets took.
//!
//!     randread IMAGE raw|qcow2 COUNT [SEED]

use std::path::Path;
use std::time::Instant;

use block::{open_image, ImageOptions};
use vm_memory::VolatileSlice;

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: randread IMAGE raw|qcow2 COUNT [SEED]");
        std::process::exit(2);
    }
    let disk = open_image(
        Path::new(&args[1]),
        &ImageOptions {
            read_only: true,
            format: Some(args[2].parse()?),
            ..Default::default()
        },
    )?;
    let count: u64 = args[3]
        .parse()
        .map_err(|_| std::io::Error::other("COUNT"))?;
    let mut x: u64 = args
        .get(4)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x2545_f491_4f6c_dd1d);
    let blocks = disk.size() / 4096;
    let mut buf = vec![0u8; 4096];
    let mut sum = 0u64;
    let t0 = Instant::now();
    for _ in 0..count {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let slice = VolatileSlice::from(&mut buf[..]);
        block::read_exact_vectored_at(disk.as_ref(), &[slice], (x % blocks) * 4096)?;
        sum = sum.wrapping_add(buf[0] as u64);
    }
    let ns = t0.elapsed().as_nanos();
    println!("{{\"reads\": {count}, \"ns\": {ns}, \"checksum\": {sum}}}");
    Ok(())
}
