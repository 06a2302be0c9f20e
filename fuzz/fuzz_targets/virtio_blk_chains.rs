//! Fuzzes virtio-blk request handling over arbitrary descriptor chains:
//! addresses, lengths, flags, next links (loops included), indirect tables,
//! request headers and payloads all come from the input. The device must
//! complete, refuse or report NEEDS_RESET; never panic or touch memory
//! outside the guest's.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

const MEM: usize = 4 << 20;
const QUEUE: u16 = 16;

fn le16(d: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([d[i], d[i + 1]])
}

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static DISK: Arc<dyn block::DiskFile> = {
            let path = std::env::temp_dir().join(format!("ferrovisor-fuzz-blk-{}", std::process::id()));
            std::fs::write(&path, vec![0x5au8; 1 << 20]).expect("disk image");
            Arc::new(block::RawFile::open(&path, block::OpenOptions::default()).expect("open"))
        };
    }
    let mem = virtio::GuestMemory::from_ranges(&[(GuestAddress(0), MEM)]).expect("guest RAM");
    // The first 256 bytes seed guest memory at 0x10000 (request headers and payloads).
    let (seed, rest) = data.split_at(data.len().min(256));
    let _ = mem.write_slice(seed, GuestAddress(0x1_0000));
    // Then 16-byte descriptors: addr (u32, scaled), len, flags, next.
    let mut descs = Vec::new();
    for d in rest.chunks_exact(16).take(usize::from(QUEUE)) {
        let addr = u64::from(u32::from_le_bytes([d[0], d[1], d[2], d[3]])) * 16;
        let len = u32::from_le_bytes([d[4], d[5], d[6], d[7]]);
        descs.push(RawDescriptor::from(Descriptor::new(addr, len, le16(d, 8) & 0x7, le16(d, 10) % QUEUE)));
    }
    if descs.is_empty() {
        return;
    }
    let mock = MockSplitQueue::new(&mem, QUEUE);
    if mock.build_desc_chain(&descs).is_err() {
        return;
    }
    let Ok(queue) = mock.create_queue() else { return };
    DISK.with(|disk| {
        let _ = virtio::block::serve_queue_once(&mem, queue, disk.clone(), false);
    });
});
