//! Tests of the data path: guest output to host clients, host input to
//! guest buffers, disconnects and reconnects, and hostile data chains.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};

use vm_memory::{Bytes, GuestAddress};

use super::control::event;
use super::engine::{MAX_HELD_CHAINS, MAX_SEGMENTS};
use super::tests::{connect, drain, Rig, TempDir, MEM_SIZE, QSIZE};
use super::*;

fn pipe() -> (std::fs::File, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe(2) returns.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: pipe(2) just returned these fds and nothing else owns them.
    unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            OwnedFd::from_raw_fd(fds[1]),
        )
    }
}

#[test]
fn guest_output_reaches_a_connected_client() {
    let dir = TempDir::new();
    let (p0, path0) = dir.socket_port("zero", true);
    let (p1, path1) = dir.socket_port("one", false);
    let mut rig = Rig::new(vec![p0, p1], true);
    let mut c0 = connect(&path0);
    let mut c1 = connect(&path1);
    rig.handshake();
    rig.send(0, b"to port zero", 1);
    rig.send(1, b"to port one, ", 3);
    rig.send(1, b"in two chains", 2);
    let table = rig.alloc(64);
    let text = rig.alloc(16);
    rig.mem
        .write_slice(b" (indirect)", GuestAddress(text))
        .unwrap();
    rig.rings[tx_queue(1)].post_indirect(
        &rig.mem,
        table,
        &[(text, 2, false), (text + 2, 9, false)],
    );
    rig.pump();
    assert_eq!(drain(&mut c0), b"to port zero");
    assert_eq!(drain(&mut c1), b"to port one, in two chains (indirect)");
    assert_eq!((rig.completed(0), rig.completed(1)), (1, 3));
    assert!(rig.irq.queue.load(std::sync::atomic::Ordering::SeqCst) > 0);
}

#[test]
fn output_waits_for_a_client_and_is_delivered_once() {
    let dir = TempDir::new();
    let (p0, path) = dir.socket_port("late", false);
    let mut rig = Rig::new(vec![p0], false);
    rig.send(0, b"early ", 1);
    rig.send(0, b"bytes", 1);
    rig.pump();
    rig.pump();
    assert_eq!(rig.completed(0), 0, "no client: the chains stay pending");
    assert_eq!(rig.engine.held(0).0, 2);
    let mut c = connect(&path);
    rig.pump();
    assert_eq!(drain(&mut c), b"early bytes");
    assert_eq!(rig.completed(0), 2);
    rig.pump();
    assert!(drain(&mut c).is_empty(), "nothing is sent twice");
    assert_eq!(rig.completed(0), 0);
}

#[test]
fn reconnect_mid_stream_loses_and_repeats_nothing() {
    let dir = TempDir::new();
    let (p0, path) = dir.socket_port("bulk", false);
    let mut rig = Rig::new(vec![p0], false);
    let data: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for (i, chunk) in data.chunks(64 << 10).enumerate() {
        rig.send(0, chunk, 1 + i % 4);
    }
    let mut first = connect(&path);
    let mut got = Vec::new();
    for _ in 0..1000 {
        rig.pump();
        got.extend(drain(&mut first));
        if got.len() >= 300_000 {
            break;
        }
    }
    assert!(got.len() >= 300_000 && got.len() < data.len(), "mid-stream");
    drop(first);
    let done_before = rig.completed(0);
    // Nobody connected: the device notices on its next write and keeps the rest.
    rig.pump();
    rig.pump();
    assert!(rig.engine.held(0).0 > 0);
    let mut second = connect(&path);
    for _ in 0..1000 {
        rig.pump();
        got.extend(drain(&mut second));
        if got.len() >= data.len() {
            break;
        }
    }
    rig.pump();
    got.extend(drain(&mut second));
    assert_eq!(got.len(), data.len());
    assert!(got == data, "bytes lost, repeated or reordered");
    assert_eq!(
        done_before + rig.completed(0),
        16,
        "every chain completed once"
    );
    assert_eq!(rig.resets(), 0);
}

#[test]
fn input_waits_for_guest_buffers_and_fills_them_in_order() {
    let dir = TempDir::new();
    let (p0, path) = dir.socket_port("in", false);
    let mut rig = Rig::new(vec![p0], false);
    let mut c = connect(&path);
    c.write_all(b"hello world").unwrap();
    rig.pump();
    rig.pump();
    assert!(rig.received(0).is_empty());
    assert!(
        lock(&rig.console.hosts)[0].rx_buf.is_empty(),
        "nothing is read without guest buffers"
    );
    rig.post_rx(0, 1, 4);
    rig.pump();
    assert_eq!(rig.received(0), b"hell");
    rig.post_rx(0, 3, 4);
    rig.pump();
    assert_eq!(rig.received(0), b"o world");
    assert_eq!(rig.engine.held(0).1, 1, "one buffer left for later input");
    c.write_all(b"!").unwrap();
    rig.pump();
    assert_eq!(rig.received(0), b"!");
}

#[test]
fn input_waits_until_the_guest_opens_the_port() {
    let dir = TempDir::new();
    let (p0, _) = dir.socket_port("c", true);
    let (p1, path1) = dir.socket_port("app", false);
    let mut rig = Rig::new(vec![p0, p1], true);
    let mut c = connect(&path1);
    rig.handshake();
    rig.post_rx(1, 4, 64);
    c.write_all(b"for the app").unwrap();
    rig.pump();
    assert!(rig.received(1).is_empty(), "no guest application yet");
    rig.control(1, event::PORT_OPEN, 1);
    assert_eq!(rig.received(1), b"for the app");
}

#[test]
fn input_left_by_a_departing_client_is_kept() {
    let dir = TempDir::new();
    let (p0, path) = dir.socket_port("gone", false);
    let mut rig = Rig::new(vec![p0], false);
    let mut c = connect(&path);
    rig.pump();
    c.write_all(b"last words").unwrap();
    drop(c);
    rig.send(0, b"reply", 1); // the write fails: the client is gone
    rig.pump();
    assert_eq!(rig.completed(0), 0);
    rig.post_rx(0, 1, 64);
    rig.pump();
    assert_eq!(rig.received(0), b"last words");
    let mut next = connect(&path);
    rig.pump();
    assert_eq!(drain(&mut next), b"reply");
}

#[test]
fn malformed_data_chains_complete_without_output() {
    let dir = TempDir::new();
    let (p0, path) = dir.socket_port("bad", false);
    let mut rig = Rig::new(vec![p0], false);
    let mut c = connect(&path);
    let a = rig.alloc(64);
    rig.mem.write_slice(b"secret", GuestAddress(a)).unwrap();
    let tx = tx_queue(0);
    // Write-only output, output outside guest memory, too many buffers, empty.
    rig.rings[tx].post(&rig.mem, &[(a, 6, true)]);
    rig.rings[tx].post(&rig.mem, &[(MEM_SIZE - 2, 6, false)]);
    rig.rings[tx].post(&rig.mem, &[(u64::MAX - 2, 6, false)]);
    let many: Vec<_> = (0..=MAX_SEGMENTS).map(|_| (a, 1, false)).collect();
    let table = rig.alloc(16 * many.len());
    rig.rings[tx].post_indirect(&rig.mem, table, &many);
    rig.rings[tx].post(&rig.mem, &[(a, 0, false)]);
    // Read-only input buffers, input outside guest memory.
    rig.rings[0].post(&rig.mem, &[(a, 16, false)]);
    rig.rings[0].post(&rig.mem, &[(MEM_SIZE, 16, true)]);
    rig.pump();
    assert_eq!(rig.completed(0), 5);
    assert_eq!(rig.received(0), b"");
    assert!(drain(&mut c).is_empty());
    assert_eq!(rig.engine.held(0), (0, 0));
    assert_eq!(rig.resets(), 0);
}

#[test]
fn held_chains_are_bounded() {
    let dir = TempDir::new();
    let (p0, _) = dir.socket_port("full", false);
    let mut rig = Rig::new(vec![p0], false);
    for i in 0..QSIZE {
        rig.send(0, &[i as u8], 1);
    }
    rig.pump();
    assert_eq!(rig.engine.held(0).0, MAX_HELD_CHAINS.min(QSIZE as usize));
}

#[test]
fn file_backend_appends_output() {
    let dir = TempDir::new();
    let path = dir.0.join("log");
    std::fs::write(&path, b"old\n").unwrap();
    let file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    let mut rig = Rig::new(
        vec![ConsolePortConfig {
            name: "log".into(),
            console: false,
            backend: PortBackend::File(file),
        }],
        true,
    );
    let msgs = rig.handshake();
    assert!(msgs.contains(&(0, event::PORT_OPEN, 1, String::new())));
    rig.send(0, b"guest says hi\n", 2);
    rig.pump();
    assert_eq!(rig.completed(0), 1);
    assert_eq!(std::fs::read(&path).unwrap(), b"old\nguest says hi\n");
}

#[test]
fn stream_backend_moves_both_ways() {
    let (in_read, in_write) = pipe();
    let (mut out_read, out_write) = pipe();
    let mut host_in = std::fs::File::from(in_write);
    let mut rig = Rig::new(
        vec![ConsolePortConfig {
            name: String::new(),
            console: true,
            backend: PortBackend::Stream {
                input: Some(OwnedFd::from(in_read)),
                output: out_write,
            },
        }],
        false,
    );
    rig.send(0, b"boot log", 1);
    rig.pump();
    let mut buf = [0u8; 8];
    out_read.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"boot log");
    host_in.write_all(b"typed").unwrap();
    rig.pump();
    assert!(rig.received(0).is_empty());
    rig.post_rx(0, 1, 64);
    rig.pump();
    assert_eq!(rig.received(0), b"typed");
    // The host closes its input: the port keeps working for output.
    drop(host_in);
    rig.post_rx(0, 1, 64);
    rig.send(0, b"!", 1);
    rig.pump();
    let mut one = [0u8; 1];
    out_read.read_exact(&mut one).unwrap();
    assert_eq!(&one, b"!");
}

#[test]
fn emergency_bytes_go_between_chains() {
    let dir = TempDir::new();
    let (p0, path) = dir.socket_port("emerg", true);
    let mut rig = Rig::new(vec![p0], false);
    rig.send(0, b"abc", 1);
    rig.pump();
    lock(&rig.console.hosts)[0].push_emergency(b'!');
    rig.send(0, b"def", 1);
    let mut c = connect(&path);
    rig.pump();
    assert_eq!(drain(&mut c), b"!abcdef");
}
