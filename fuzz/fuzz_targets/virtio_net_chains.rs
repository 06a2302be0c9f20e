//! Fuzzes virtio-net transmit and receive over arbitrary descriptor chains
//! and virtio-net headers: addresses, lengths, flags, next links, header
//! fields and the frames the host delivers all come from the input. The
//! device must send, drop and count, or report NEEDS_RESET; never panic,
//! loop forever or touch memory outside the guest's.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

const MEM: usize = 4 << 20;
const QUEUE: u16 = 16;

fn le16(d: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([d[i], d[i + 1]])
}

fn descriptors(bytes: &[u8]) -> Vec<RawDescriptor> {
    bytes
        .chunks_exact(12)
        .take(usize::from(QUEUE))
        .map(|d| {
            let addr = u64::from(le16(d, 0)) * 64 + 0x1_0000;
            let len = u32::from_le_bytes([d[2], d[3], d[4], d[5]]) % (1 << 18);
            RawDescriptor::from(Descriptor::new(addr, len, le16(d, 6) & 0x7, le16(d, 8) % QUEUE))
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let tx_len = usize::from(data[0]) * 12 % 193;
    let rx_len = usize::from(data[1]) * 12 % 193;
    let rest = &data[2..];
    let (tx_bytes, rest) = rest.split_at(rest.len().min(tx_len));
    let (rx_bytes, rest) = rest.split_at(rest.len().min(rx_len));
    let mem = virtio::GuestMemory::from_ranges(&[(GuestAddress(0), MEM)]).expect("guest RAM");
    // What is left seeds guest memory (headers, frames) and is one host frame.
    let _ = mem.write_slice(&rest[..rest.len().min(4096)], GuestAddress(0x1_0000));
    let tx_mock = MockSplitQueue::create(&mem, GuestAddress(0x8000), QUEUE);
    let rx_mock = MockSplitQueue::new(&mem, QUEUE);
    let (tx_descs, rx_descs) = (descriptors(tx_bytes), descriptors(rx_bytes));
    if !tx_descs.is_empty() && tx_mock.build_desc_chain(&tx_descs).is_err() {
        return;
    }
    if !rx_descs.is_empty() && rx_mock.build_desc_chain(&rx_descs).is_err() {
        return;
    }
    let (Ok(rx), Ok(tx)) = (rx_mock.create_queue(), tx_mock.create_queue()) else {
        return;
    };
    let mut host = virtio::net::MemoryHost::default();
    host.incoming.push_back(rest.to_vec());
    host.incoming.push_back(vec![0u8; 70_000]);
    let _ = virtio::net::serve_pair_once(&mem, rx, tx, &mut host);
});
