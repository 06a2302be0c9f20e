//! Fuzzes the VMDK reader: the input is the file opened (a sparse extent
//! or a descriptor; a descriptor may name `flat.raw` and `disk.vmdk` beside
//! it). Opening, reading and mapping must succeed or fail with an error;
//! never panic, allocate without bound or stall.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;

#[path = "read_only_image.rs"]
mod read_only_image;
use read_only_image::exercise;

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
