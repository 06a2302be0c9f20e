//! Fuzzes the VHD reader: the input is the file opened. Opening, reading
//! and mapping must succeed or fail with an error; never panic, allocate
//! without bound or stall.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;

#[path = "read_only_image.rs"]
mod read_only_image;
use read_only_image::exercise;

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static PATH: PathBuf = std::env::temp_dir().join(format!("ferrovisor-fuzz-vhd-{}", std::process::id()));
    }
    let last = &data[data.len().saturating_sub(512)..];
    let _ = block::vhd::probe(data, last);
    PATH.with(|path| {
        std::fs::write(path, data).expect("fuzz input");
        if let Ok(disk) = block::vhd::VhdImage::open(path) {
            exercise(&disk);
        }
    });
});
