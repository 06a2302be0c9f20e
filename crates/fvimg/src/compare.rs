//! `compare`: guest contents of two images (exit 0 identical, 1 different,
//! 2 error), skipping stretches both images know to be zeros.

use std::path::Path;

use block::Format;

use crate::image::{Ctx, Image};
use crate::Failure;

const CHUNK: u64 = 4 << 20;

fn err2<E: std::fmt::Display>(e: E) -> Failure {
    Failure {
        message: e.to_string(),
        code: 2,
    }
}

/// Whether `[at, at + len)` of `image` surely reads as zeros; returns how far that holds.
fn zero_run(image: &Image, at: u64, len: u64) -> Result<Option<u64>, Failure> {
    let e = image.disk().extent_at(at, len).map_err(err2)?;
    Ok(e.zero.then_some(e.length))
}

/// First differing byte of `[at, at + len)` of both, if any.
fn differ(
    a: &Image,
    b: &Image,
    at: u64,
    len: u64,
    buf_a: &mut [u8],
    buf_b: &mut [u8],
) -> Result<Option<u64>, Failure> {
    let (x, y) = (&mut buf_a[..len as usize], &mut buf_b[..len as usize]);
    a.read_exact_at(x, at).map_err(err2)?;
    b.read_exact_at(y, at).map_err(err2)?;
    Ok(x.iter()
        .zip(y.iter())
        .position(|(p, q)| p != q)
        .map(|i| at + i as u64))
}

fn nonzero_in(image: &Image, from: u64, to: u64, buf: &mut [u8]) -> Result<Option<u64>, Failure> {
    let mut at = from;
    while at < to {
        let len = CHUNK.min(to - at);
        if let Some(z) = zero_run(image, at, len)? {
            at += z;
            continue;
        }
        let b = &mut buf[..len as usize];
        image.read_exact_at(b, at).map_err(err2)?;
        if let Some(i) = b.iter().position(|v| *v != 0) {
            return Ok(Some(at + i as u64));
        }
        at += len;
    }
    Ok(None)
}

/// Runs `compare`.
#[allow(clippy::too_many_arguments)]
pub fn run(
    ctx: &Ctx,
    p1: &Path,
    f1: Option<Format>,
    p2: &Path,
    f2: Option<Format>,
    strict: bool,
    _progress: bool,
    quiet: bool,
) -> Result<u8, Failure> {
    let a = ctx
        .open(p1, f1, true, true)
        .map_err(|e| err2(format!("{}: {e}", p1.display())))?;
    let b = ctx
        .open(p2, f2, true, true)
        .map_err(|e| err2(format!("{}: {e}", p2.display())))?;
    let (sa, sb) = (a.disk().size(), b.disk().size());
    let say = |s: String| {
        if !quiet {
            println!("{s}");
        }
    };
    if strict && sa != sb {
        say("Strict mode: Image size mismatch!".into());
        return Ok(1);
    }
    let common = sa.min(sb);
    let mut buf_a = vec![0u8; CHUNK as usize];
    let mut buf_b = vec![0u8; CHUNK as usize];
    let mut at = 0;
    while at < common {
        let len = CHUNK.min(common - at);
        if let (Some(za), Some(zb)) = (zero_run(&a, at, len)?, zero_run(&b, at, len)?) {
            at += za.min(zb);
            continue;
        }
        if let Some(off) = differ(&a, &b, at, len, &mut buf_a, &mut buf_b)? {
            say(format!("Content mismatch at offset {off}!"));
            return Ok(1);
        }
        at += len;
    }
    let longer = if sa > sb { &a } else { &b };
    if let Some(off) = nonzero_in(longer, common, sa.max(sb), &mut buf_a)? {
        say(format!("Content mismatch at offset {off}!"));
        return Ok(1);
    }
    if sa != sb {
        say("Warning: Image size mismatch!".into());
    }
    say("Images are identical.".into());
    Ok(0)
}
