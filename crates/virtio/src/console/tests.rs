//! Test harness (a driver's view of the rings, a directly driven engine)
//! and tests of the control protocol and hostile control input.

use std::collections::HashMap;
use std::io::{ErrorKind, Read};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};

use super::control::{event, PENDING_CAP};
use super::engine::Engine;
use super::host::{host_token, Watch};
use super::*;
use crate::device::Interrupt;
use crate::GuestMemory;

const WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
const NEXT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
const INDIRECT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT as u16;
pub(super) const QSIZE: u16 = 64;
pub(super) const RING_BASE: u64 = 0x1_0000;
pub(super) const RING_STRIDE: u64 = 0x1000;
const DATA_BASE: u64 = 0x10_0000;
pub(super) const MEM_SIZE: u64 = 0x400_0000;

#[derive(Default)]
pub(super) struct Irq {
    pub queue: AtomicUsize,
    pub reset: AtomicUsize,
}

impl Interrupt for Irq {
    fn notify_queue(&self, _q: u16) {
        self.queue.fetch_add(1, Ordering::SeqCst);
    }
    fn notify_config(&self) {}
    fn needs_reset(&self) {
        self.reset.fetch_add(1, Ordering::SeqCst);
    }
}

pub(super) fn memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

/// A driver's view of one split queue (the ring wraps, unlike the mock's helpers).
pub(super) struct Ring {
    desc: GuestAddress,
    pub avail: GuestAddress,
    used: GuestAddress,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
    heads: HashMap<u16, u64>,
}

impl Ring {
    /// A queue of [`QSIZE`] entries at `base` (laid out here: the mock's
    /// layout puts the used ring over the end of the avail ring).
    pub fn new(mem: &GuestMemory, base: u64) -> (Ring, Queue) {
        let desc = GuestAddress(base);
        let avail = desc.unchecked_add(16 * u64::from(QSIZE));
        let used = GuestAddress((avail.0 + 6 + 2 * u64::from(QSIZE) + 3) & !3);
        assert!(used.0 + 6 + 8 * u64::from(QSIZE) <= base + RING_STRIDE);
        mem.write_slice(&[0u8; RING_STRIDE as usize], desc).unwrap();
        let mut queue = Queue::new(QSIZE).unwrap();
        queue.set_size(QSIZE);
        queue.set_desc_table_address(Some(desc.0 as u32), Some((desc.0 >> 32) as u32));
        queue.set_avail_ring_address(Some(avail.0 as u32), Some((avail.0 >> 32) as u32));
        queue.set_used_ring_address(Some(used.0 as u32), Some((used.0 >> 32) as u32));
        queue.set_ready(true);
        assert!(queue.is_valid(mem));
        let ring = Ring {
            desc,
            avail,
            used,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
            heads: HashMap::new(),
        };
        (ring, queue)
    }

    /// Makes a chain of (address, length, device-writable) buffers available.
    pub fn post(&mut self, mem: &GuestMemory, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, writable)) in bufs.iter().enumerate() {
            let idx = (head + i as u16) % QSIZE;
            let mut flags = if writable { WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= NEXT;
            }
            let at = self.desc.unchecked_add(16 * u64::from(idx));
            mem.write_obj(addr, at).unwrap();
            mem.write_obj(len, at.unchecked_add(8)).unwrap();
            mem.write_obj(flags, at.unchecked_add(12)).unwrap();
            mem.write_obj((idx + 1) % QSIZE, at.unchecked_add(14))
                .unwrap();
        }
        self.next_desc = (head + bufs.len() as u16) % QSIZE;
        self.heads.insert(head, bufs.first().map_or(0, |b| b.0));
        let slot = u64::from(self.avail_idx % QSIZE);
        mem.write_obj(head, self.avail.unchecked_add(4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, self.avail.unchecked_add(2))
            .unwrap();
        head
    }

    /// Makes a one-descriptor chain pointing at an indirect table (written
    /// at `table`) of (address, length, device-writable) buffers available.
    pub fn post_indirect(&mut self, mem: &GuestMemory, table: u64, bufs: &[(u64, u32, bool)]) {
        for (i, &(addr, len, writable)) in bufs.iter().enumerate() {
            let mut flags = if writable { WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= NEXT;
            }
            let at = GuestAddress(table + 16 * i as u64);
            mem.write_obj(addr, at).unwrap();
            mem.write_obj(len, at.unchecked_add(8)).unwrap();
            mem.write_obj(flags, at.unchecked_add(12)).unwrap();
            mem.write_obj(i as u16 + 1, at.unchecked_add(14)).unwrap();
        }
        let head = self.post(mem, &[(table, 16 * bufs.len() as u32, false)]);
        let flags = self.desc.unchecked_add(16 * u64::from(head) + 12);
        mem.write_obj(INDIRECT, flags).unwrap();
    }

    /// Used entries (head, length, first buffer address) since the last call.
    pub fn used(&mut self, mem: &GuestMemory) -> Vec<(u16, u32, u64)> {
        let idx: u16 = mem.read_obj(self.used.unchecked_add(2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let at = self
                .used
                .unchecked_add(4 + 8 * u64::from(self.used_seen % QSIZE));
            let id: u32 = mem.read_obj(at).unwrap();
            let len: u32 = mem.read_obj(at.unchecked_add(4)).unwrap();
            let addr = self.heads.get(&(id as u16)).copied().unwrap_or(0);
            out.push((id as u16, len, addr));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}

/// A console's engine driven directly, with a driver's rings.
pub(super) struct Rig {
    pub mem: GuestMemory,
    pub irq: Arc<Irq>,
    pub rings: Vec<Ring>,
    pub engine: Engine,
    pub console: Console,
    next: u64,
}

impl Rig {
    pub fn new(ports: Vec<ConsolePortConfig>, multiport: bool) -> Rig {
        let console = Console::new(ports).unwrap();
        let mem = memory();
        let mut rings = Vec::new();
        let mut queues = Vec::new();
        for i in 0..console.queue_max_sizes().len() {
            let (ring, queue) = Ring::new(&mem, RING_BASE + i as u64 * RING_STRIDE);
            rings.push(ring);
            queues.push((i as u16, queue));
        }
        let irq = Arc::new(Irq::default());
        let engine = Engine::new(
            mem.clone(),
            irq.clone(),
            queues,
            multiport,
            console.info.clone(),
            console.hosts.clone(),
        );
        Rig {
            mem,
            irq,
            rings,
            engine,
            console,
            next: DATA_BASE,
        }
    }

    pub fn alloc(&mut self, len: usize) -> u64 {
        let addr = self.next;
        self.next += (len as u64 + 15) & !15;
        assert!(self.next < MEM_SIZE, "test guest memory exhausted");
        addr
    }

    pub fn pump(&mut self) {
        self.engine.pump();
    }

    /// Posts `data` as one output chain of `port`, split into `parts` buffers.
    pub fn send(&mut self, port: usize, data: &[u8], parts: usize) {
        let addr = self.alloc(data.len());
        self.mem.write_slice(data, GuestAddress(addr)).unwrap();
        let chunk = data.len().div_ceil(parts).max(1);
        let bufs: Vec<_> = data
            .chunks(chunk)
            .enumerate()
            .map(|(i, c)| (addr + (i * chunk) as u64, c.len() as u32, false))
            .collect();
        self.rings[tx_queue(port)].post(&self.mem, &bufs);
    }

    /// Posts `count` receive buffers of `len` bytes for `port`.
    pub fn post_rx(&mut self, port: usize, count: usize, len: u32) {
        for _ in 0..count {
            let addr = self.alloc(len as usize);
            self.rings[rx_queue(port)].post(&self.mem, &[(addr, len, true)]);
        }
    }

    /// What the device placed in `port`'s receive buffers since the last call.
    pub fn received(&mut self, port: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for (_, len, addr) in self.rings[rx_queue(port)].used(&self.mem) {
            let mut buf = vec![0u8; len as usize];
            self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
            out.extend(buf);
        }
        out
    }

    /// Output chains of `port` completed since the last call.
    pub fn completed(&mut self, port: usize) -> usize {
        self.rings[tx_queue(port)].used(&self.mem).len()
    }

    /// The driver sends raw control bytes.
    pub fn control_raw(&mut self, bytes: &[u8]) {
        let addr = self.alloc(bytes.len());
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
        self.rings[CONTROL_TX].post(&self.mem, &[(addr, bytes.len() as u32, false)]);
    }

    /// The driver sends a control message and the device runs.
    pub fn control(&mut self, id: u32, ev: u16, value: u16) {
        let mut bytes = id.to_le_bytes().to_vec();
        bytes.extend(ev.to_le_bytes());
        bytes.extend(value.to_le_bytes());
        self.control_raw(&bytes);
        self.pump();
    }

    /// Control messages the device sent since the last call.
    pub fn messages(&mut self) -> Vec<(u32, u16, u16, String)> {
        let mut out = Vec::new();
        for (_, len, addr) in self.rings[CONTROL_RX].used(&self.mem) {
            let mut buf = vec![0u8; len as usize];
            self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
            assert!(buf.len() >= 8, "short control message");
            out.push((
                u32::from_le_bytes(buf[0..4].try_into().unwrap()),
                u16::from_le_bytes(buf[4..6].try_into().unwrap()),
                u16::from_le_bytes(buf[6..8].try_into().unwrap()),
                String::from_utf8_lossy(&buf[8..]).into_owned(),
            ));
        }
        out
    }

    pub fn post_control_rx(&mut self, count: usize) {
        for _ in 0..count {
            let addr = self.alloc(256);
            self.rings[CONTROL_RX].post(&self.mem, &[(addr, 256, true)]);
        }
    }

    pub fn resets(&self) -> usize {
        self.irq.reset.load(Ordering::SeqCst)
    }

    /// Runs the driver's side of the handshake for every port.
    pub fn handshake(&mut self) -> Vec<(u32, u16, u16, String)> {
        self.post_control_rx(32);
        self.control(0, event::DEVICE_READY, 1);
        for id in 0..self.console.info.len() as u32 {
            self.control(id, event::PORT_READY, 1);
        }
        self.messages()
    }
}

/// A directory removed on drop.
pub(super) struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let path =
            std::env::temp_dir().join(format!("ferrovisor-console-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    /// A socket port listening at `name` in the directory.
    pub fn socket_port(&self, name: &str, console: bool) -> (ConsolePortConfig, PathBuf) {
        let path = self.0.join(name);
        let listener = UnixListener::bind(&path).unwrap();
        let port = ConsolePortConfig {
            name: name.into(),
            console,
            backend: PortBackend::Socket(listener),
        };
        (port, path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Connects a non-blocking client.
pub(super) fn connect(path: &PathBuf) -> UnixStream {
    let s = UnixStream::connect(path).unwrap();
    s.set_nonblocking(true).unwrap();
    s
}

/// Everything a non-blocking stream has right now.
pub(super) fn drain(s: &mut UnixStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return out,
            Err(e) => panic!("read: {e}"),
        }
    }
}

#[test]
fn queue_layout_and_config_space() {
    let dir = TempDir::new();
    let ports = (0..3).map(|i| dir.socket_port(&format!("p{i}"), false).0);
    let c = Console::new(ports.collect()).unwrap();
    assert_eq!(c.device_type(), 3);
    // port0 rx/tx, control rx/tx, port1 rx/tx, port2 rx/tx.
    assert_eq!(c.queue_max_sizes(), &[128, 128, 32, 32, 128, 128, 128, 128]);
    assert_eq!((rx_queue(2), tx_queue(2)), (6, 7));
    assert_ne!(c.features() & feature::MULTIPORT, 0);
    let mut cs = [0xffu8; 12];
    c.read_config(0, &mut cs);
    assert_eq!(cs, [0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0]);
    let mut past = [0xffu8; 4];
    c.read_config(10, &mut past);
    assert_eq!(past, [0; 4]);
    c.read_config(u64::MAX, &mut past);

    assert!(Console::new(Vec::new()).is_err());
    let many = (0..32).map(|i| dir.socket_port(&format!("m{i}"), false).0);
    assert!(Console::new(many.collect()).is_err());
    let (mut long, _) = dir.socket_port("long", false);
    long.name = "x".repeat(MAX_NAME_LEN + 1);
    assert!(Console::new(vec![long]).is_err());
}

#[test]
fn control_handshake_announces_ports_in_order() {
    let dir = TempDir::new();
    let (p0, _) = dir.socket_port("console", true);
    let (p1, path1) = dir.socket_port("org.ferrovisor.agent", false);
    let mut rig = Rig::new(vec![p0, p1], true);
    let _client = connect(&path1);
    let msgs = rig.handshake();
    let expect = vec![
        (0, event::DEVICE_ADD, 1, String::new()),
        (1, event::DEVICE_ADD, 1, String::new()),
        (0, event::PORT_NAME, 1, "console".to_string()),
        (0, event::CONSOLE_PORT, 1, String::new()),
        (0, event::PORT_OPEN, 0, String::new()),
        (1, event::PORT_NAME, 1, "org.ferrovisor.agent".to_string()),
        (1, event::PORT_OPEN, 1, String::new()),
    ];
    assert_eq!(msgs, expect);

    // A client comes to port 0, the one on port 1 hangs up.
    let _c0 = connect(&dir.0.join("console"));
    rig.pump();
    assert_eq!(
        rig.messages(),
        vec![(0, event::PORT_OPEN, 1, String::new())]
    );
    drop(_client);
    rig.engine
        .host_event(host_token(1, Watch::Client), libc::EPOLLHUP as u32);
    rig.pump();
    assert_eq!(
        rig.messages(),
        vec![(1, event::PORT_OPEN, 0, String::new())]
    );
    assert_eq!(rig.resets(), 0);
}

#[test]
fn control_messages_wait_for_receive_buffers() {
    let dir = TempDir::new();
    let (p0, _) = dir.socket_port("a", false);
    let mut rig = Rig::new(vec![p0], true);
    rig.control(0, event::DEVICE_READY, 1);
    rig.control(0, event::PORT_READY, 1);
    assert!(rig.messages().is_empty());
    assert_eq!(rig.engine.pending_control(), 3);
    rig.post_control_rx(2);
    rig.pump();
    assert_eq!(rig.messages().len(), 2);
    rig.post_control_rx(2);
    rig.pump();
    assert_eq!(
        rig.messages(),
        vec![(0, event::PORT_OPEN, 0, String::new())]
    );
}

#[test]
fn malformed_control_messages_are_ignored_and_bounded() {
    let dir = TempDir::new();
    let ports = (0..4).map(|i| dir.socket_port(&format!("g{i}"), i == 0).0);
    let mut rig = Rig::new(ports.collect(), true);
    // Too short, unknown port, unknown event, driver-only events from the driver.
    rig.control_raw(&[0, 0, 0]);
    rig.control(99, event::PORT_READY, 1);
    rig.control(u32::MAX, event::PORT_OPEN, 1);
    rig.control(0, 1234, 1);
    rig.control(0, event::RESIZE, 1);
    assert_eq!(rig.engine.pending_control(), 0);
    // A flood with no control receive buffers: memory stays bounded.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for i in 0..10_000u32 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let bytes = seed.to_le_bytes();
        match i % 5 {
            0 => rig.control_raw(&bytes),
            1 => rig.control_raw(&bytes[..3]),
            2 => rig.control_raw(&[0, 0, 0, 0, 0, 0, 1, 0]), // DEVICE_READY(1)
            3 => rig.control_raw(&[bytes[0] % 8, 0, 0, 0, 3, 0, 1, 0]), // PORT_READY
            _ => rig.control_raw(&[bytes[0] % 8, 0, 0, 0, 6, 0, bytes[1] % 2, 0]),
        }
        if i % 32 == 31 {
            rig.pump();
            assert!(rig.engine.pending_control() <= PENDING_CAP);
        }
    }
    rig.pump();
    assert_eq!(rig.rings[CONTROL_TX].used(&rig.mem).len(), 10_005);
    assert!(
        rig.engine.pending_control() <= 4 * 4 + 4,
        "duplicates coalesce"
    );
    assert_eq!(rig.resets(), 0);
    // The driver catches up: every waiting message is delivered.
    rig.post_control_rx(QSIZE as usize - 1);
    rig.pump();
    assert!(!rig.messages().is_empty());
    assert_eq!(rig.engine.pending_control(), 0);
}

#[test]
fn broken_rings_need_reset_without_spinning() {
    let dir = TempDir::new();
    let (p0, _) = dir.socket_port("b", false);
    let mut rig = Rig::new(vec![p0], true);
    for q in [tx_queue(0), CONTROL_TX] {
        let at = rig.rings[q].avail.unchecked_add(2);
        rig.mem.write_obj(1000u16, at).unwrap();
    }
    rig.pump();
    rig.pump();
    assert_eq!(rig.resets(), 2, "once per broken queue");
}
