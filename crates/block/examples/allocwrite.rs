//! Allocating writes through the block crate, for bench/img: `COUNT`
//! writes of `SIZE` bytes of 0xa5 at offsets `0, STEP, 2 * STEP, ...`
//! into an image, a flush after every `FLUSH_INTERVAL` writes and at the
//! end; prints how long that took. The same pattern as
//! `qemu-img bench -w -d 1 -P 0xa5 -c COUNT -s SIZE -S STEP --flush-interval=N`.
//!
//!     allocwrite IMAGE raw|qcow2 COUNT SIZE STEP FLUSH_INTERVAL

use std::path::Path;
use std::time::Instant;

use block::{open_image, ImageOptions};

fn number(args: &[String], i: usize, what: &str) -> std::io::Result<u64> {
    args[i]
        .parse()
        .map_err(|_| std::io::Error::other(format!("{what} must be a number")))
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 7 {
        eprintln!("usage: allocwrite IMAGE raw|qcow2 COUNT SIZE STEP FLUSH_INTERVAL");
        std::process::exit(2);
    }
    let disk = open_image(
        Path::new(&args[1]),
        &ImageOptions {
            format: Some(args[2].parse()?),
            ..Default::default()
        },
    )?;
    let count = number(&args, 3, "COUNT")?;
    let size = number(&args, 4, "SIZE")?;
    let step = number(&args, 5, "STEP")?;
    let interval = number(&args, 6, "FLUSH_INTERVAL")?.max(1);
    let buf = vec![0xa5u8; size as usize];
    let t0 = Instant::now();
    for i in 0..count {
        let offset = (i * step) % disk.size().max(1);
        block::write_all_at(disk.as_ref(), &buf, offset)?;
        if (i + 1) % interval == 0 {
            disk.flush()?;
        }
    }
    disk.flush()?;
    let ns = t0.elapsed().as_nanos();
    drop(disk);
    println!("{{\"writes\": {count}, \"ns\": {ns}}}");
    Ok(())
}
