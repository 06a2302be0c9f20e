//! Tests of the whole device: `emerg_wr`, and `activate` with the real
//! worker thread, across a device reset.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::tests::{memory, Irq, Ring, TempDir, RING_BASE, RING_STRIDE};
use super::*;
use crate::GuestMemory;

#[test]
fn emergency_write_reaches_port_zero() {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe(2) returns.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: pipe(2) just returned these fds and nothing else owns them.
    let (read_end, write_end) = unsafe {
        use std::os::fd::FromRawFd;
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    };
    let mut c = Console::new(vec![ConsolePortConfig {
        name: String::new(),
        console: true,
        backend: PortBackend::Stream {
            input: None,
            output: write_end,
        },
    }])
    .unwrap();
    c.write_config(8, b"!\0\0\0");
    c.write_config(8, b"?");
    c.write_config(4, b"x"); // max_nr_ports is read-only
    let mut buf = [0u8; 2];
    (&read_end).read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"!?");
}

fn wait_used(ring: &mut Ring, mem: &GuestMemory) -> Vec<(u16, u32, u64)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let used = ring.used(mem);
        if !used.is_empty() {
            return used;
        }
        assert!(
            Instant::now() < deadline,
            "the device never used the buffer"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn activate(c: &mut Console, mem: &GuestMemory, base: u64) -> (Vec<Ring>, Vec<EventFd>) {
    let mut rings = Vec::new();
    let mut events = Vec::new();
    let mut queues = Vec::new();
    for i in 0..c.queue_max_sizes().len() {
        let (ring, queue) = Ring::new(mem, base + i as u64 * RING_STRIDE);
        let e = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        queues.push((i as u16, queue, e.try_clone().unwrap()));
        rings.push(ring);
        events.push(e);
    }
    c.activate(QueueSet {
        mem: mem.clone(),
        queues,
        interrupt: Arc::new(Irq::default()),
        acked_features: crate::features::VERSION_1,
    })
    .unwrap();
    (rings, events)
}

#[test]
fn worker_thread_serves_ports_and_keeps_clients_across_reset() {
    let dir = TempDir::new();
    let (p0, path) = dir.socket_port("hvc", true);
    let mut c = Console::new(vec![p0]).unwrap();
    let mem = memory();
    let mut client = UnixStream::connect(&path).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (mut rings, events) = activate(&mut c, &mem, RING_BASE);
    let out = |rings: &mut Vec<Ring>, events: &[EventFd], addr: u64, data: &[u8]| {
        mem.write_slice(data, GuestAddress(addr)).unwrap();
        rings[1].post(&mem, &[(addr, data.len() as u32, false)]);
        events[1].write(1).unwrap();
    };
    let input = |rings: &mut Vec<Ring>, events: &[EventFd], addr: u64| {
        rings[0].post(&mem, &[(addr, 64, true)]);
        events[0].write(1).unwrap();
        let used = wait_used(&mut rings[0], &mem);
        let mut buf = vec![0u8; used[0].1 as usize];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    };

    out(&mut rings, &events, 0x20_0000, b"hello");
    let mut buf = [0u8; 5];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    client.write_all(b"ping").unwrap();
    assert_eq!(input(&mut rings, &events, 0x21_0000), b"ping");

    // A guest reboot: the client stays; what it sends meanwhile waits.
    c.reset();
    client.write_all(b"kept").unwrap();
    c.write_config(8, b"!");
    let mut bang = [0u8; 1];
    client.read_exact(&mut bang).unwrap();
    assert_eq!(&bang, b"!");
    let (mut rings, events) = activate(&mut c, &mem, 0x8_0000);
    assert_eq!(input(&mut rings, &events, 0x22_0000), b"kept");
    out(&mut rings, &events, 0x23_0000, b"again");
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"again");
    c.write_config(8, b"#");
    client.read_exact(&mut bang).unwrap();
    assert_eq!(&bang, b"#");

    // The client leaves and another takes its place.
    drop(client);
    let mut second = UnixStream::connect(&path).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    out(&mut rings, &events, 0x24_0000, b"second");
    let mut buf = [0u8; 6];
    second.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"second");
    c.reset();
}

#[test]
fn worker_thread_moves_a_mebibyte_both_ways_with_a_reconnect() {
    let dir = TempDir::new();
    let (p0, path) = dir.socket_port("bulk", false);
    let mut c = Console::new(vec![p0]).unwrap();
    let mem = memory();
    let (mut rings, events) = activate(&mut c, &mem, RING_BASE);
    let data: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    mem.write_slice(&data, GuestAddress(0x100_0000)).unwrap();
    for i in 0..16u64 {
        let at = 0x100_0000 + (i << 16);
        rings[1].post(
            &mem,
            &[(at, 1 << 15, false), (at + (1 << 15), 1 << 15, false)],
        );
    }
    events[1].write(1).unwrap();

    // A slow first client takes part of it, then leaves; a second takes the rest.
    let mut got = Vec::new();
    let mut first = UnixStream::connect(&path).unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = vec![0u8; 4096];
    while got.len() < 200_000 {
        let n = first.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
        std::thread::sleep(Duration::from_micros(200));
    }
    // A clean handoff: refuse further bytes (the device's next send fails
    // and it keeps the rest), take what was already sent, then go.
    first.shutdown(std::net::Shutdown::Read).unwrap();
    loop {
        let n = first.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.len() < data.len(), "the first client left mid-stream");
    drop(first);
    let mut second = UnixStream::connect(&path).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    while got.len() < data.len() {
        let n = second.read(&mut buf).unwrap();
        assert!(n > 0, "stream ended early at {}", got.len());
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got == data, "bytes lost, repeated or reordered");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut completed = 0;
    while completed < 16 {
        completed += rings[1].used(&mem).len();
        assert!(Instant::now() < deadline, "chains not completed");
        std::thread::sleep(Duration::from_millis(1));
    }

    // Host to guest: 256 KiB through 4 KiB buffers posted a few at a time.
    let input: Vec<u8> = data[..256 << 10].iter().rev().copied().collect();
    let writer = {
        let mut s = second.try_clone().unwrap();
        let input = input.clone();
        std::thread::spawn(move || s.write_all(&input).unwrap())
    };
    let mut placed = Vec::new();
    let mut next = 0u64;
    let mut posted = 0usize;
    let deadline = Instant::now() + Duration::from_secs(20);
    while placed.len() < input.len() {
        while posted < 8 {
            rings[0].post(&mem, &[(0x200_0000 + (next % 64) * 4096, 4096, true)]);
            next += 1;
            posted += 1;
        }
        events[0].write(1).unwrap();
        for (_, len, addr) in rings[0].used(&mem) {
            let mut b = vec![0u8; len as usize];
            mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
            placed.extend(b);
            posted -= 1;
        }
        assert!(
            Instant::now() < deadline,
            "input stalled at {} posted {posted} rx_buf {}",
            placed.len(),
            lock(&c.hosts)[0].rx_buf.len()
        );
        std::thread::sleep(Duration::from_micros(100));
    }
    writer.join().unwrap();
    assert!(placed == input, "input lost, repeated or reordered");
    c.reset();
}
