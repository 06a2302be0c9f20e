//! Compressed grains of streamOptimized extents: a grain marker (the grain's
//! first sector as u64 and the compressed length as u32, little-endian)
//! followed by a zlib (deflate with zlib header) stream of one grain.

use std::fs::File;
use std::io;
use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, PoisonError};

use flate2::{Decompress, FlushDecompress, Status};
use lru::LruCache;

use crate::readonly::invalid;

/// Bytes of a grain marker before the compressed data.
const MARKER_BYTES: u64 = 12;

/// Where compressed grains are read from.
pub struct GrainSource<'a> {
    /// The extent file.
    pub file: &'a File,
    /// Its length in bytes.
    pub file_len: u64,
    /// Its name for errors.
    pub name: &'a str,
    /// Whether grains start with a marker.
    pub markers: bool,
    /// Grain size in sectors.
    pub grain_sectors: u64,
}

/// Which grain: (extent number, grain number).
pub type GrainKey = (usize, u64);

/// Inflated grains an image keeps (at most 16 MiB each).
const CACHED_GRAINS: usize = 4;

/// The most recently inflated grains of an image (shared by its extents,
/// so memory stays bounded), so that reads smaller than a grain, from a few
/// threads at once, do not inflate it again and again.
pub struct GrainCache(Mutex<LruCache<GrainKey, Arc<Vec<u8>>>>);

impl Default for GrainCache {
    fn default() -> GrainCache {
        let n = NonZeroUsize::new(CACHED_GRAINS).unwrap_or(NonZeroUsize::MIN);
        GrainCache(Mutex::new(LruCache::new(n)))
    }
}

impl GrainCache {
    /// Grain `key`, when it is cached.
    pub fn get(&self, key: GrainKey) -> Option<Arc<Vec<u8>>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .cloned()
    }

    /// Caches grain `key`.
    pub fn put(&self, key: GrainKey, grain: Arc<Vec<u8>>) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .put(key, grain);
    }
}

/// Reads up to `len` bytes at `at` (fewer at end of file).
fn read_some(src: &GrainSource, at: u64, len: u64) -> io::Result<Vec<u8>> {
    let len = len.min(src.file_len.saturating_sub(at)) as usize;
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        match src.file.read_at(&mut buf[done..], at + done as u64)? {
            0 => break,
            n => done += n,
        }
    }
    buf.truncate(done);
    Ok(buf)
}

/// Reads grain `index` stored compressed at `host` and returns it inflated
/// to a full grain; at least `needed` bytes (the part of the grain inside
/// the capacity) must come out of the stream, the rest reads as zeros.
pub fn read_grain(src: &GrainSource, index: u64, host: u64, needed: u64) -> io::Result<Vec<u8>> {
    let grain_bytes = src.grain_sectors * 512;
    let what = || {
        format!(
            "vmdk {}: compressed grain {index} at offset {host:#x}",
            src.name
        )
    };
    // Deflate can grow incompressible data a little; twice the grain is plenty.
    let max_compressed = 2 * grain_bytes + 4096;
    let data = if src.markers {
        let head = read_some(src, host, MARKER_BYTES + grain_bytes + 4096)?;
        if head.len() < MARKER_BYTES as usize {
            return Err(invalid(format!(
                "{}: the marker lies past the end of the file",
                what()
            )));
        }
        let lba = u64::from_le_bytes(head[0..8].try_into().unwrap_or_default());
        let size = u64::from(u32::from_le_bytes(
            head[8..12].try_into().unwrap_or_default(),
        ));
        if lba != index * src.grain_sectors {
            return Err(invalid(format!(
                "{}: the marker says sector {lba}, the grain table says sector {}",
                what(),
                index * src.grain_sectors
            )));
        }
        if size == 0 || size > max_compressed {
            return Err(invalid(format!(
                "{}: compressed size {size} (1 to {max_compressed} allowed)",
                what()
            )));
        }
        let mut data = head;
        data.drain(..MARKER_BYTES as usize);
        if (data.len() as u64) < size {
            data = read_some(src, host + MARKER_BYTES, size)?;
        }
        if (data.len() as u64) < size {
            return Err(invalid(format!(
                "{}: {size} compressed bytes run past the end of the file",
                what()
            )));
        }
        data.truncate(size as usize);
        data
    } else {
        read_some(src, host, max_compressed)?
    };
    let mut out = vec![0u8; grain_bytes as usize + 1];
    let mut inflater = Decompress::new(true);
    let status = inflater
        .decompress(&data, &mut out, FlushDecompress::Finish)
        .map_err(|e| invalid(format!("{}: corrupt deflate data ({e})", what())))?;
    let produced = inflater.total_out();
    if produced > grain_bytes {
        return Err(invalid(format!("{}: inflates past the grain size", what())));
    }
    if status != Status::StreamEnd {
        return Err(invalid(format!(
            "{}: the compressed stream is truncated",
            what()
        )));
    }
    if produced < needed {
        return Err(invalid(format!(
            "{}: inflates to {produced} bytes, the grain needs {needed}",
            what()
        )));
    }
    out.truncate(grain_bytes as usize);
    out[produced as usize..].fill(0);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// A file holding `bytes` at offset 512; returns it and its length.
    fn file_with(bytes: &[u8], tag: &str) -> (File, u64) {
        let path =
            std::env::temp_dir().join(format!("ferrovisor-grain-{tag}-{}", std::process::id()));
        let mut content = vec![0u8; 512];
        content.extend_from_slice(bytes);
        std::fs::write(&path, &content).unwrap();
        let f = File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        (f, content.len() as u64)
    }

    fn source(file: &File, file_len: u64, markers: bool) -> GrainSource<'_> {
        GrainSource {
            file,
            file_len,
            name: "t",
            markers,
            grain_sectors: 8,
        }
    }

    fn marked(lba: u64, data: &[u8]) -> Vec<u8> {
        let mut v = lba.to_le_bytes().to_vec();
        v.extend_from_slice(&(data.len() as u32).to_le_bytes());
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn grains_with_and_without_markers_inflate() {
        let grain: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        let (f, len) = file_with(&marked(24, &zlib(&grain)), "marked");
        assert_eq!(
            read_grain(&source(&f, len, true), 3, 512, 4096).unwrap(),
            grain
        );
        let (f, len) = file_with(&zlib(&grain), "bare");
        assert_eq!(
            read_grain(&source(&f, len, false), 3, 512, 4096).unwrap(),
            grain
        );
        // A short last grain: the rest of the grain reads as zeros.
        let (f, len) = file_with(&marked(0, &zlib(&grain[..1000])), "short");
        let got = read_grain(&source(&f, len, true), 0, 512, 1000).unwrap();
        assert_eq!(&got[..1000], &grain[..1000]);
        assert!(got[1000..].iter().all(|b| *b == 0));
    }

    #[test]
    fn bad_grains_are_refused() {
        let grain = vec![7u8; 4096];
        let cases: Vec<(&str, Vec<u8>, bool, u64)> = vec![
            (
                "past the grain size",
                marked(0, &zlib(&[1u8; 5000])),
                true,
                4096,
            ),
            ("truncated", marked(0, &zlib(&grain)[..20]), true, 4096),
            ("corrupt deflate", marked(0, &[0xffu8; 40]), true, 4096),
            (
                "the grain needs 4096",
                marked(0, &zlib(&grain[..100])),
                true,
                4096,
            ),
            ("marker says sector 8", marked(8, &zlib(&grain)), true, 4096),
            ("compressed size 0", marked(0, &[]), true, 4096),
            ("marker lies past", vec![1, 2, 3], true, 4096),
            ("truncated", zlib(&grain)[..30].to_vec(), false, 4096),
        ];
        for (i, (want, bytes, markers, needed)) in cases.into_iter().enumerate() {
            let (f, len) = file_with(&bytes, &format!("bad{i}"));
            let e = read_grain(&source(&f, len, markers), 0, 512, needed).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            assert!(e.to_string().contains(want), "{want}: {e}");
            assert!(
                e.to_string()
                    .starts_with("vmdk t: compressed grain 0 at offset 0x200"),
                "{e}"
            );
        }
        // A marker whose size runs past the end of the file.
        let mut b = marked(0, &zlib(&grain));
        b[8..12].copy_from_slice(&9000u32.to_le_bytes());
        let (f, len) = file_with(&b, "long");
        let e = read_grain(&source(&f, len, true), 0, 512, 4096).unwrap_err();
        assert!(e.to_string().contains("past the end of the file"), "{e}");
    }
}
