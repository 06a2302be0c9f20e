//! Compressed clusters: raw deflate (qcow2's "zlib", 4 KiB window) and
//! zstd frames, both ways.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::header::CompressionType;
use super::{corrupt, Qcow2Error};

/// Decompresses one cluster from `input` (which may carry trailing
/// padding) into `out`, which must be filled exactly.
pub fn decompress(
    kind: CompressionType,
    input: &[u8],
    out: &mut [u8],
    host_offset: u64,
) -> Result<(), Qcow2Error> {
    let bad = |why: String| corrupt("compressed cluster", host_offset, why);
    match kind {
        CompressionType::Zlib => {
            let mut d = Decompress::new(false);
            let status = d
                .decompress(input, out, FlushDecompress::Finish)
                .map_err(|e| bad(format!("deflate: {e}")))?;
            if d.total_out() != out.len() as u64 {
                return Err(bad(format!(
                    "deflate gave {} bytes of {} ({status:?})",
                    d.total_out(),
                    out.len()
                )));
            }
            Ok(())
        }
        CompressionType::Zstd => {
            let frame = zstd::zstd_safe::find_frame_compressed_size(input).map_err(|e| {
                bad(format!(
                    "zstd frame: {}",
                    zstd::zstd_safe::get_error_name(e)
                ))
            })?;
            let mut d = zstd::bulk::Decompressor::new().map_err(|e| bad(format!("zstd: {e}")))?;
            let n = d
                .decompress_to_buffer(&input[..frame], out)
                .map_err(|e| bad(format!("zstd: {e}")))?;
            if n != out.len() {
                return Err(bad(format!("zstd gave {n} bytes of {}", out.len())));
            }
            Ok(())
        }
    }
}

/// Compresses one cluster; `None` when the result would not be smaller
/// than `limit` bytes (the cluster is then stored uncompressed).
pub fn compress(
    kind: CompressionType,
    input: &[u8],
    limit: usize,
) -> Result<Option<Vec<u8>>, Qcow2Error> {
    match kind {
        CompressionType::Zlib => {
            // QEMU's parameters: default level, raw deflate, 4 KiB window.
            let mut c = Compress::new_with_window_bits(Compression::default(), false, 12);
            let mut out = Vec::with_capacity(limit);
            match c.compress_vec(input, &mut out, FlushCompress::Finish) {
                Ok(Status::StreamEnd) if out.len() < limit => Ok(Some(out)),
                Ok(_) => Ok(None),
                Err(e) => Err(Qcow2Error::Invalid(format!("deflate: {e}"))),
            }
        }
        CompressionType::Zstd => {
            let mut out = vec![0u8; limit];
            match zstd::bulk::Compressor::new(zstd::DEFAULT_COMPRESSION_LEVEL)
                .and_then(|mut c| c.compress_to_buffer(input, &mut out))
            {
                Ok(n) if n < limit => {
                    out.truncate(n);
                    Ok(Some(out))
                }
                _ => Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_kinds_round_trip_and_reject_garbage() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i / 100) as u8).collect();
        for kind in [CompressionType::Zlib, CompressionType::Zstd] {
            let mut packed = compress(kind, &data, data.len()).unwrap().unwrap();
            packed.extend_from_slice(&[0xAA; 300]); // sector padding
            let mut out = vec![0u8; data.len()];
            decompress(kind, &packed, &mut out, 0).unwrap();
            assert_eq!(out, data);
            let mut out = vec![0u8; data.len()];
            let err = decompress(kind, &[1, 2, 3, 4, 5, 6, 7, 8], &mut out, 4096).unwrap_err();
            assert!(err.to_string().contains("compressed cluster"), "{err}");
            let mut x = 0x2545_f491_4f6c_dd1du64;
            let random: Vec<u8> = (0..4096)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 32) as u8
                })
                .collect();
            assert!(compress(kind, &random, 4096).unwrap().is_none());
        }
    }
}
