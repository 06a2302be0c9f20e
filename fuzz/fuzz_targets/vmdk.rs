//! Fuzzes the VMDK reader: the input is the file opened (a sparse extent
//! or a descriptor; a descriptor may name `flat.raw` and `disk.vmdk` beside
//! it). Opening, reading and mapping must succeed or fail with an error;
//! never panic, allocate without bound or stall.
#![no_main]

use std::path::PathBuf;

use block::DiskFile;
use libfuzzer_sys::fuzz_target;
use vm_memory::VolatileSlice;

/// Reads the first and last 256 KiB and walks the first map entries.
fn exercise(disk: &dyn DiskFile) {
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

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static DIR: PathBuf = {
            let dir = std::env::temp_dir().join(format!("ferrovisor-fuzz-vmdk-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("fuzz directory");
            std::fs::write(dir.join("flat.raw"), vec![0x5au8; 64 << 10]).expect("flat extent");
            dir
        };
    }
    let _ = block::vmdk::probe(data);
    DIR.with(|dir| {
        let path = dir.join("disk.vmdk");
        std::fs::write(&path, data).expect("fuzz input");
        if let Ok(disk) = block::vmdk::VmdkImage::open(&path) {
            exercise(&disk);
        }
    });
});
