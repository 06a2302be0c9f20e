//! Device tests over vm-memory and `MockSplitQueue`: frames each way,
//! merged receive buffers, a full host, and every kind of hostile chain.

use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;

use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::QueueT;
use vm_memory::{Address, Bytes, GuestAddress};

use super::counters::*;
use super::ctrl::{CtrlQueue, CtrlTarget};
use super::device::{feature, offered_features, NetConfig};
use super::header::{TxOffloads, HEADER_LEN, MAX_FRAME};
use super::pair::{QueuePair, HOST_READY, RX_KICK, TX_KICK};
use super::rx::RxQueue;
use super::tap::offload;
use super::tx::TxQueue;
use crate::test_util::{desc, memory, Counter, NEXT, WRITE};
use crate::worker::QueueHandler;
use crate::GuestMemory;

type FakeHost = super::MemoryHost;

const ALL_TX: TxOffloads = TxOffloads {
    csum: true,
    tso4: true,
    tso6: true,
    ecn: true,
    ufo: true,
};

/// A queue pair whose rx queue is `rx_mock` and tx queue `tx_mock`.
fn pair<'a>(
    mem: &'a GuestMemory,
    rx_mock: &MockSplitQueue<'a, GuestMemory>,
    tx_mock: &MockSplitQueue<'a, GuestMemory>,
    mergeable: bool,
) -> (QueuePair<FakeHost>, Arc<Counter>, NetCounters) {
    let interrupt = Arc::new(Counter::default());
    let counters = NetCounters::new(1);
    let mut rx_queue: virtio_queue::Queue = rx_mock.create_queue().unwrap();
    rx_queue.set_event_idx(false);
    let p = QueuePair {
        mem: mem.clone(),
        rx: RxQueue::new(
            rx_queue,
            mergeable,
            Arc::new(AtomicUsize::new(HEADER_LEN + 1514)),
            0,
        ),
        tx: TxQueue::new(tx_mock.create_queue().unwrap(), ALL_TX, 0),
        host: FakeHost::default(),
        interrupt: interrupt.clone(),
        counters: counters.clone(),
        rx_index: 0,
        broken: false,
    };
    (p, interrupt, counters)
}

fn used_len(mem: &GuestMemory, mock: &MockSplitQueue<GuestMemory>, i: u64) -> u32 {
    mem.read_obj(mock.used_addr().unchecked_add(8 + 8 * i))
        .unwrap()
}

fn used_idx(mem: &GuestMemory, mock: &MockSplitQueue<GuestMemory>) -> u16 {
    mem.read_obj(mock.used_addr().unchecked_add(2)).unwrap()
}

/// A frame with a plain header and `len` payload bytes (a byte pattern).
fn tx_frame(mem: &GuestMemory, at: u64, header: [u8; HEADER_LEN], len: usize) -> u32 {
    mem.write_slice(&header, GuestAddress(at)).unwrap();
    let body: Vec<u8> = (0..len).map(|i| i as u8).collect();
    mem.write_slice(&body, GuestAddress(at + HEADER_LEN as u64))
        .unwrap();
    (HEADER_LEN + len) as u32
}

#[test]
fn a_frame_is_sent_from_two_buffers() {
    let mem = memory();
    let rx = MockSplitQueue::new(&mem, 16);
    let tx = MockSplitQueue::create(&mem, GuestAddress(0x8000), 16);
    mem.write_slice(&[0u8; HEADER_LEN], GuestAddress(0x10_0000))
        .unwrap();
    let body: Vec<u8> = (0..100u8).collect();
    mem.write_slice(&body, GuestAddress(0x20_0000)).unwrap();
    tx.add_desc_chains(
        &[
            desc(0x10_0000, HEADER_LEN as u32, NEXT, 1),
            desc(0x20_0000, 100, 0, 0),
        ],
        0,
    )
    .unwrap();
    let (mut p, irq, counters) = pair(&mem, &rx, &tx, true);
    p.process(TX_KICK);
    assert_eq!(p.host.sent.len(), 1);
    assert_eq!(&p.host.sent[0][HEADER_LEN..], &body[..]);
    assert_eq!(used_idx(&mem, &tx), 1);
    assert_eq!(counters.pair_get(0, TX_PACKETS), 1);
    assert_eq!(counters.pair_get(0, TX_BYTES), 100);
    assert_eq!(irq.queue.load(Ordering::SeqCst), 1);
}

#[test]
fn hostile_transmit_chains_are_dropped_and_counted() {
    let mem = memory();
    let rx = MockSplitQueue::new(&mem, 16);
    let tx = MockSplitQueue::create(&mem, GuestAddress(0x8000), 16);
    let mut bad_gso = [0u8; HEADER_LEN];
    bad_gso[0] = 1;
    bad_gso[1] = 7; // no such gso_type
    bad_gso[4] = 100;
    let mut bad_csum = [0u8; HEADER_LEN];
    bad_csum[0] = 1;
    bad_csum[6] = 0xff; // csum_start 255 in a 60-byte frame
    let mut bad_hdr_len = [0u8; HEADER_LEN];
    bad_hdr_len[0] = 1;
    bad_hdr_len[1] = 1; // TCPv4
    bad_hdr_len[2] = 0xff;
    bad_hdr_len[3] = 0xff; // hdr_len 65535 in a 200-byte frame
    bad_hdr_len[4] = 100;
    bad_hdr_len[6] = 34;
    bad_hdr_len[8] = 16;
    let l1 = tx_frame(&mem, 0x10_0000, bad_gso, 60);
    let l2 = tx_frame(&mem, 0x11_0000, bad_csum, 60);
    let l3 = tx_frame(&mem, 0x12_0000, bad_hdr_len, 200);
    tx.add_desc_chains(
        &[
            desc(0x10_0000, l1, 0, 0),
            desc(0x11_0000, l2, 0, 0),
            desc(0x12_0000, l3, 0, 0),
            // Shorter than the header.
            desc(0x13_0000, 8, 0, 0),
            // Write-only where the device must read.
            desc(0x13_0000, 64, WRITE, 0),
            // Outside guest memory.
            desc(0x4000_0000, 64, 0, 0),
            // A frame beyond 64 KiB plus header, over two buffers.
            desc(0x20_0000, (MAX_FRAME + HEADER_LEN) as u32, NEXT, 7),
            desc(0x40_0000, 1, 0, 0),
            // Header only: shorter than an Ethernet header.
            desc(0x13_0000, HEADER_LEN as u32, 0, 0),
        ],
        0,
    )
    .unwrap();
    let (mut p, irq, counters) = pair(&mem, &rx, &tx, true);
    p.process(TX_KICK);
    assert!(p.host.sent.is_empty());
    assert_eq!(used_idx(&mem, &tx), 8, "every chain completed");
    assert_eq!(counters.pair_get(0, TX_MALFORMED), 8);
    assert_eq!(
        irq.reset.load(Ordering::SeqCst),
        0,
        "no reset for bad frames"
    );
    assert!(!p.broken);
}

#[test]
fn a_frame_the_kernel_refuses_is_dropped_not_retried() {
    let mem = memory();
    let rx = MockSplitQueue::new(&mem, 16);
    let tx = MockSplitQueue::create(&mem, GuestAddress(0x8000), 16);
    let l = tx_frame(&mem, 0x10_0000, [0u8; HEADER_LEN], 60);
    tx.add_desc_chains(&[desc(0x10_0000, l, 0, 0)], 0).unwrap();
    let (mut p, _, counters) = pair(&mem, &rx, &tx, true);
    p.host.refuse = true;
    p.process(TX_KICK);
    assert_eq!(counters.pair_get(0, TX_DROPS), 1);
    assert_eq!(used_idx(&mem, &tx), 1);
    assert!(!p.tx.blocked());
}

#[test]
fn a_full_host_keeps_the_chain_until_it_drains() {
    let mem = memory();
    let rx = MockSplitQueue::new(&mem, 16);
    let tx = MockSplitQueue::create(&mem, GuestAddress(0x8000), 16);
    let a = tx_frame(&mem, 0x10_0000, [0u8; HEADER_LEN], 60);
    let b = tx_frame(&mem, 0x11_0000, [0u8; HEADER_LEN], 70);
    tx.add_desc_chains(&[desc(0x10_0000, a, 0, 0), desc(0x11_0000, b, 0, 0)], 0)
        .unwrap();
    let (mut p, _, counters) = pair(&mem, &rx, &tx, true);
    p.host.full = true;
    p.process(TX_KICK);
    assert_eq!(used_idx(&mem, &tx), 0, "nothing completed while full");
    assert!(p.tx.blocked());
    assert_eq!(counters.pair_get(0, TX_RETRIES), 1);
    p.host.full = false;
    p.process(HOST_READY);
    assert_eq!(used_idx(&mem, &tx), 2);
    let lens: Vec<usize> = p.host.sent.iter().map(Vec::len).collect();
    assert_eq!(lens, [a as usize, b as usize], "in order, each once");
    assert!(!p.tx.blocked());
}

#[test]
fn a_received_frame_fills_one_chain_with_num_buffers_one() {
    let mem = memory();
    let rx = MockSplitQueue::new(&mem, 16);
    let tx = MockSplitQueue::create(&mem, GuestAddress(0x8000), 16);
    rx.add_desc_chains(&[desc(0x10_0000, 2048, WRITE, 0)], 0)
        .unwrap();
    let (mut p, irq, counters) = pair(&mem, &rx, &tx, true);
    let mut frame = vec![0u8; HEADER_LEN];
    frame.extend((0..500).map(|i| (i * 7) as u8));
    p.host.incoming.push_back(frame.clone());
    p.process(HOST_READY);
    assert_eq!(used_idx(&mem, &rx), 1);
    assert_eq!(used_len(&mem, &rx, 0), frame.len() as u32);
    let num_buffers: u16 = mem.read_obj(GuestAddress(0x10_000a)).unwrap();
    assert_eq!(num_buffers, 1);
    let mut got = vec![0u8; 500];
    mem.read_slice(&mut got, GuestAddress(0x10_000c)).unwrap();
    assert_eq!(got, frame[HEADER_LEN..]);
    assert_eq!(counters.pair_get(0, RX_PACKETS), 1);
    assert_eq!(counters.pair_get(0, RX_BYTES), 500);
    assert_eq!(irq.queue.load(Ordering::SeqCst), 1);
}

#[test]
fn merged_buffers_carry_a_large_frame_and_spare_chains_go_back() {
    let mem = memory();
    let rx = MockSplitQueue::new(&mem, 16);
    let tx = MockSplitQueue::create(&mem, GuestAddress(0x8000), 16);
    rx.add_desc_chains(
        &[
            desc(0x10_0000, 1024, WRITE, 0),
            desc(0x11_0000, 1024, WRITE, 0),
            desc(0x12_0000, 1024, WRITE, 0),
        ],
        0,
    )
    .unwrap();
    let (mut p, _, _) = pair(&mem, &rx, &tx, true);
    p.rx.need.store(3000, Ordering::Relaxed);
    p.host.incoming.push_back(vec![0xab; 1500]);
    p.host.incoming.push_back(vec![0xcd; 500]);
    p.process(RX_KICK);
    // 1500 bytes: two chains; 500: the third one.
    assert_eq!(
        used_idx(&mem, &rx),
        2,
        "the second frame waits for more buffers"
    );
    assert_eq!(used_len(&mem, &rx, 0), 1024);
    assert_eq!(used_len(&mem, &rx, 1), 476);
    let num_buffers: u16 = mem.read_obj(GuestAddress(0x10_000a)).unwrap();
    assert_eq!(num_buffers, 2);
    assert_eq!(p.rx.queue.next_avail(), 3, "the third chain is held");
    rx.add_desc_chains(&[desc(0x13_0000, 4096, WRITE, 0)], 3)
        .unwrap();
    p.process(RX_KICK);
    assert_eq!(used_idx(&mem, &rx), 3);
    assert_eq!(
        used_len(&mem, &rx, 2),
        500,
        "the held chain took the next frame"
    );
    let num_buffers: u16 = mem.read_obj(GuestAddress(0x12_000a)).unwrap();
    assert_eq!(num_buffers, 1);
    assert!(p.host.incoming.is_empty());
}

#[test]
fn truncated_frames_are_dropped_and_the_buffer_reused() {
    let mem = memory();
    let rx = MockSplitQueue::new(&mem, 16);
    let tx = MockSplitQueue::create(&mem, GuestAddress(0x8000), 16);
    rx.add_desc_chains(&[desc(0x10_0000, 256, WRITE, 0)], 0)
        .unwrap();
    let (mut p, _, counters) = pair(&mem, &rx, &tx, false);
    p.host.incoming.push_back(vec![1; 1000]);
    p.host.incoming.push_back(vec![2; 100]);
    p.process(HOST_READY);
    assert_eq!(counters.pair_get(0, RX_DROPS), 1);
    assert_eq!(used_idx(&mem, &rx), 1);
    assert_eq!(used_len(&mem, &rx, 0), 100);
}

#[test]
fn hostile_receive_chains_complete_empty_and_nothing_stalls() {
    let mem = memory();
    let rx = MockSplitQueue::new(&mem, 16);
    let tx = MockSplitQueue::create(&mem, GuestAddress(0x8000), 16);
    rx.add_desc_chains(
        &[
            // Device-readable where it must write.
            desc(0x10_0000, 2048, 0, 0),
            // Outside memory.
            desc(0x4000_0000, 2048, WRITE, 0),
            // Too short for the header.
            desc(0x10_0000, 4, WRITE, 0),
            // A good one.
            desc(0x11_0000, 2048, WRITE, 0),
        ],
        0,
    )
    .unwrap();
    let (mut p, irq, counters) = pair(&mem, &rx, &tx, true);
    p.host.incoming.push_back(vec![3; 200]);
    p.process(HOST_READY);
    assert_eq!(counters.pair_get(0, RX_MALFORMED), 3);
    assert_eq!(counters.pair_get(0, RX_PACKETS), 1);
    assert_eq!(used_idx(&mem, &rx), 4);
    assert_eq!(used_len(&mem, &rx, 3), 200);
    assert_eq!(irq.reset.load(Ordering::SeqCst), 0);
}

#[test]
fn without_buffers_frames_wait_in_the_host() {
    let mem = memory();
    let rx = MockSplitQueue::new(&mem, 16);
    let tx = MockSplitQueue::create(&mem, GuestAddress(0x8000), 16);
    let (mut p, irq, _) = pair(&mem, &rx, &tx, true);
    p.host.incoming.push_back(vec![3; 200]);
    p.process(HOST_READY);
    assert_eq!(p.host.incoming.len(), 1);
    assert_eq!(irq.queue.load(Ordering::SeqCst), 0);
    rx.add_desc_chains(&[desc(0x11_0000, 2048, WRITE, 0)], 0)
        .unwrap();
    p.process(RX_KICK);
    assert!(p.host.incoming.is_empty());
    assert_eq!(used_idx(&mem, &rx), 1);
}

#[test]
fn a_broken_avail_index_needs_reset_once() {
    let mem = memory();
    let rx = MockSplitQueue::new(&mem, 16);
    let tx = MockSplitQueue::create(&mem, GuestAddress(0x8000), 16);
    mem.write_obj(1000u16, tx.avail_addr().unchecked_add(2))
        .unwrap();
    let (mut p, irq, _) = pair(&mem, &rx, &tx, true);
    p.process(TX_KICK);
    p.process(TX_KICK);
    p.process(HOST_READY);
    assert_eq!(irq.reset.load(Ordering::SeqCst), 1);
}

fn ctrl<'a>(mem: &'a GuestMemory, mock: &MockSplitQueue<'a, GuestMemory>) -> CtrlQueue {
    CtrlQueue {
        mem: mem.clone(),
        queue: mock.create_queue().unwrap(),
        index: 4,
        interrupt: Arc::new(Counter::default()),
        target: CtrlTarget {
            tap: None,
            acked_offloads: feature::GUEST_CSUM | feature::GUEST_TSO4,
            rx_need: vec![Arc::new(AtomicUsize::new(0))],
            status: Arc::new(AtomicU16::new(3)),
            max_pairs: 2,
            mtu: 1500,
        },
        counters: NetCounters::new(2),
        broken: false,
    }
}

#[test]
fn control_commands_are_acked_or_refused() {
    let mem = memory();
    let mock = MockSplitQueue::new(&mem, 16);
    let commands: Vec<Vec<u8>> = vec![
        vec![4, 0, 2, 0],                      // MQ pairs 2: ok
        vec![4, 0, 3, 0],                      // MQ pairs 3 > max: err
        vec![4, 0, 0, 0],                      // MQ pairs 0: err
        vec![0, 0, 1],                         // PROMISC on: ok
        vec![9, 9],                            // unknown class: err
        vec![5, 0, 3, 0, 0, 0, 0, 0, 0, 0], // GUEST_CSUM|CTRL bit 1? bits 0,1: err (bit 0 not settable)
        vec![5, 0, 0x82, 0, 0, 0, 0, 0, 0, 0], // GUEST_CSUM | GUEST_TSO4: ok
        vec![3, 0],                         // ANNOUNCE ack: ok
    ];
    let mut descs = Vec::new();
    for (i, c) in commands.iter().enumerate() {
        let at = 0x10_0000 + 0x1000 * i as u64;
        mem.write_slice(c, GuestAddress(at)).unwrap();
        let n = descs.len() as u16;
        descs.push(desc(at, c.len() as u32, NEXT, n + 1));
        descs.push(desc(at + 0x800, 1, WRITE, 0));
    }
    mock.add_desc_chains(&descs, 0).unwrap();
    let mut q = ctrl(&mem, &mock);
    q.process(0);
    let acks: Vec<u8> = (0..commands.len())
        .map(|i| {
            mem.read_obj(GuestAddress(0x10_0800 + 0x1000 * i as u64))
                .unwrap()
        })
        .collect();
    assert_eq!(acks, [0, 1, 1, 0, 1, 1, 0, 0]);
    assert_eq!(q.counters.device_get(CTRL_COMMANDS), 4);
    assert_eq!(q.counters.device_get(CTRL_ERRORS), 4);
    assert_eq!(
        q.target.rx_need[0].load(Ordering::Relaxed),
        HEADER_LEN + MAX_FRAME,
        "TSO on: a receive frame may be 64 KiB"
    );
    assert_eq!(
        q.target.status.load(Ordering::Relaxed),
        1,
        "ANNOUNCE cleared"
    );
}

#[test]
fn control_chains_without_an_ack_byte_or_header_are_survived() {
    let mem = memory();
    let mock = MockSplitQueue::new(&mem, 16);
    let descs: Vec<RawDescriptor> = vec![
        desc(0x10_0000, 2, 0, 0),    // no ack buffer
        desc(0x10_0000, 1, NEXT, 2), // one byte: no command
        desc(0x10_0800, 1, WRITE, 0),
        desc(0x10_0000, 0x10000, NEXT, 4), // a payload too large
        desc(0x11_0800, 1, WRITE, 0),
    ];
    mock.add_desc_chains(&descs, 0).unwrap();
    let mut q = ctrl(&mem, &mock);
    q.process(0);
    assert_eq!(q.queue.next_used(), 3);
    assert_eq!(q.counters.device_get(CTRL_ERRORS), 3);
    assert!(!q.broken);
}

#[test]
fn offloads_follow_the_tap_and_the_switches() {
    let mut config = NetConfig {
        mac: [2, 0, 0, 0, 0, 1],
        queue_pairs: 2,
        queue_size: 256,
        offload_tso: true,
        offload_csum: true,
        mtu: 1500,
    };
    let all = offload::CSUM | offload::TSO4 | offload::TSO6 | offload::TSO_ECN | offload::UFO;
    let f = offered_features(&config, all);
    for bit in [
        feature::CSUM,
        feature::GUEST_TSO4,
        feature::HOST_TSO6,
        feature::HOST_UFO,
        feature::MQ,
        feature::MRG_RXBUF,
        feature::CTRL_VQ,
        feature::STATUS,
    ] {
        assert_ne!(f & bit, 0, "{bit:#x}");
    }
    assert_eq!(
        offered_features(&config, offload::CSUM) & feature::HOST_TSO4,
        0
    );
    config.offload_tso = false;
    let f = offered_features(&config, all);
    assert_eq!(
        f & (feature::GUEST_TSO4 | feature::HOST_TSO4 | feature::HOST_UFO),
        0
    );
    assert_ne!(f & feature::CSUM, 0);
    config.offload_tso = true;
    config.offload_csum = false;
    let f = offered_features(&config, all);
    assert_eq!(
        f & (feature::CSUM | feature::GUEST_CSUM | feature::HOST_TSO4),
        0
    );
    config.queue_pairs = 1;
    assert_eq!(offered_features(&config, all) & feature::MQ, 0);
}

#[test]
fn derived_macs_are_stable_local_unicast() {
    let a = super::derive_mac("tap0", "net0");
    assert_eq!(a, super::derive_mac("tap0", "net0"));
    assert_ne!(a, super::derive_mac("tap0", "net1"));
    assert_eq!(a[0] & 1, 0, "unicast");
    assert_eq!(a[0] & 2, 2, "locally administered");
}

#[test]
fn with_event_idx_receive_refills_do_not_notify_until_the_ring_runs_dry() {
    let mem = memory();
    let rx = MockSplitQueue::new(&mem, 16);
    let tx = MockSplitQueue::create(&mem, GuestAddress(0x8000), 16);
    rx.add_desc_chains(
        &[
            desc(0x10_0000, 2048, WRITE, 0),
            desc(0x11_0000, 2048, WRITE, 0),
        ],
        0,
    )
    .unwrap();
    let (mut p, _, _) = pair(&mem, &rx, &tx, true);
    p.rx.queue.set_event_idx(true);
    let avail_event = |mem: &GuestMemory| -> u16 {
        mem.read_obj(rx.used_addr().unchecked_add(4 + 8 * 16))
            .unwrap()
    };
    p.host.incoming.push_back(vec![1; 100]);
    p.process(HOST_READY);
    // The second chain is taken and held for the next frame.
    assert_eq!(p.rx.queue.next_avail(), 2);
    assert_eq!(
        avail_event(&mem),
        2 + 16,
        "a ring ahead: refills need no kick"
    );
    p.host.incoming.push_back(vec![2; 100]);
    p.host.incoming.push_back(vec![3; 100]);
    p.process(HOST_READY);
    assert_eq!(avail_event(&mem), 2, "dry: the next refill kicks");
    assert_eq!(p.host.incoming.len(), 1);
}
