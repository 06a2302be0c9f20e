//! `map`: how each stretch of the guest is stored (qemu-img's layout, in
//! human and JSON form).

use std::path::{Path, PathBuf};

use block::{Extent, Format};

use crate::image::Image;
use crate::{Failure, Output};

/// The images of the chain from `path` down, for naming where data lies.
fn chain_names(path: &Path, image: &Image) -> Vec<PathBuf> {
    let mut names = vec![path.to_path_buf()];
    let mut cur = match image {
        Image::Qcow2(q) => q
            .header()
            .backing_file
            .map(|b| block::qcow2::resolve_backing(path, &b)),
        Image::Raw(..) | Image::ReadOnly(..) => None,
    };
    while let Some(p) = cur.take() {
        if names.len() > block::qcow2::MAX_BACKING_DEPTH as usize {
            break;
        }
        names.push(p.clone());
        if let Ok(Image::Qcow2(q)) = Image::open(&p, None, true, false) {
            cur = q
                .header()
                .backing_file
                .map(|b| block::qcow2::resolve_backing(&p, &b));
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
pub fn run(path: &Path, format: Option<Format>, output: Output) -> Result<u8, Failure> {
    let image = Image::open(path, format, true, true)?;
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
            let names = chain_names(path, &image);
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
