//! What the image-reader fuzz targets do with an image that opened: read
//! its ends and walk its allocation map. Included by `vmdk.rs` and `vhd.rs`.

use block::DiskFile;
use vm_memory::VolatileSlice;

/// Reads the first and last 256 KiB and walks the first map entries.
pub fn exercise(disk: &dyn DiskFile) {
    let mut buf = vec![0u8; 256 << 10];
    let size = disk.size();
    for at in [0, size.saturating_sub(256 << 10)] {
        let _ = disk.read_vectored_at(&[VolatileSlice::from(&mut buf[..])], at);
    }
    let mut at = 0;
    for _ in 0..64 {
        match disk.extent_at(at, u64::MAX) {
            Ok(e) if e.length > 0 && e.start == at => at += e.length,
            Ok(e) => panic!("bad extent {e:?} at {at}"),
            Err(_) => break,
        }
        if at >= size {
            break;
        }
    }
}
