//! `map`: how each stretch of the guest is stored (qemu-img's layout, in
//! human and JSON form).

use std::path::{Path, PathBuf};

use block::{Extent, Format};

use crate::image::{Ctx, Image};
use crate::{Failure, Output};

/// The images of the chain from `path` down, for naming where data lies.
/// Each backing file is checked against the policy before it is looked at.
fn chain_names(ctx: &Ctx, path: &Path, image: &Image) -> Vec<PathBuf> {
    let mut names = vec![path.to_path_buf()];
    let next = |p: &Path, q: &block::Qcow2Image| {
        q.header().backing_file.map(|b| {
            let shown = block::qcow2::resolve_backing(p, &b);
            (shown, ctx.backing_file(p, &b))
        })
    };
    let mut cur = match image {
        Image::Qcow2(q) => next(path, q),
        Image::Raw(..) | Image::ReadOnly(..) => None,
    };
    while let Some((shown, checked)) = cur.take() {
        if names.len() > block::qcow2::MAX_BACKING_DEPTH as usize {
            break;
        }
        names.push(shown.clone());
        let Ok(real) = checked else { break };
        if let Ok(Image::Qcow2(q)) = ctx.open(&real, None, true, false) {
            cur = next(&shown, &q);
        }
    }
    names
}

/// The merged allocation map of `image`.
pub fn extents(image: &Image) -> Result<Vec<Extent>, Failure> {
    let disk = image.disk();
    let size = disk.size();
    let mut out: Vec<Extent> = Vec::new();
    let mut at = 0;
    while at < size {
        let e = disk.extent_at(at, size - at)?;
        if e.length == 0 {
            return Err("the allocation map returned an empty extent".into());
        }
        at = e.start + e.length;
        if let Some(last) = out.last_mut() {
            let contiguous = match (last.host_offset, e.host_offset) {
                (Some(a), Some(b)) => a + last.length == b,
                (None, None) => true,
                _ => false,
            };
            if contiguous
                && (last.depth, last.present, last.zero, last.data)
                    == (e.depth, e.present, e.zero, e.data)
            {
                last.length += e.length;
                continue;
            }
        }
        out.push(e);
    }
    Ok(out)
}

/// A number as qemu-img's map prints it: `0` or `0x...`.
fn hex(v: u64) -> String {
    if v == 0 {
        "0".into()
    } else {
        format!("{v:#x}")
    }
}

/// Runs `map`.
pub fn run(ctx: &Ctx, path: &Path, format: Option<Format>, output: Output) -> Result<u8, Failure> {
    let image = ctx.open(path, format, true, true)?;
    let map = extents(&image)?;
    match output {
        Output::Json => {
            let lines: Vec<String> = map
                .iter()
                .map(|e| {
                    let mut s = format!(
                        "{{ \"start\": {}, \"length\": {}, \"depth\": {}, \"present\": {}, \"zero\": {}, \"data\": {}",
                        e.start, e.length, e.depth, e.present, e.zero, e.data
                    );
                    if let Some(o) = e.host_offset {
                        s.push_str(&format!(", \"offset\": {o}"));
                    }
                    s.push('}');
                    s
                })
                .collect();
            println!("[{}]", lines.join(",\n"));
        }
        Output::Human => {
            let names = chain_names(ctx, path, &image);
            println!("{:<16}{:<16}{:<16}File", "Offset", "Length", "Mapped to");
            for e in map.iter().filter(|e| e.data) {
                if let Some(o) = e.host_offset {
                    let name = names
                        .get(e.depth as usize)
                        .map_or_else(String::new, |p| p.display().to_string());
                    println!(
                        "{:<16}{:<16}{:<16}{name}",
                        hex(e.start),
                        hex(e.length),
                        hex(o)
                    );
                }
            }
        }
    }
    Ok(0)
}
