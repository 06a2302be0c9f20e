//! One activation of the console: the queues the driver set up, what the
//! driver was told, and the chains the device holds, served against the
//! ports' host sides.
//!
//! Guest buffers are hostile input: chains are checked against guest memory
//! when taken, the device holds at most [`MAX_HELD_CHAINS`] per queue and
//! [`MAX_SEGMENTS`] buffers per chain, and a broken ring stops that queue and
//! puts the device in NEEDS_RESET.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::control::{event, ControlOut, Message, RateLimit, HEADER_LEN};
use super::host::{decode_token, HostPort, In, Interest, Out, Watch, RX_BUF_CAP};
use super::{lock, rx_queue, tx_queue, PortInfo, CONTROL_RX, CONTROL_TX};
use crate::device::Interrupt;
use crate::GuestMemory;

/// The most chains of one queue the device holds at a time.
pub(super) const MAX_HELD_CHAINS: usize = 64;
/// The most buffers a chain may have (more: the chain completes unused).
pub(super) const MAX_SEGMENTS: usize = 256;
/// Bytes moved per host read or write.
const CHUNK: usize = 64 << 10;

type Segment = (GuestAddress, usize);

/// A chain's buffers in one direction, and how far the device got.
struct Chain {
    head: u16,
    segs: Vec<Segment>,
    len: usize,
    done: usize,
}

struct Served {
    queue: Queue,
    broken: bool,
    /// Used buffers were added since the last interrupt check.
    used: bool,
}

/// What the driver did with a port in this activation.
#[derive(Default)]
struct GuestPort {
    /// The driver sent PORT_READY(1).
    ready: bool,
    /// A guest application has the port open (PORT_OPEN from the driver).
    open: bool,
    /// The host state last sent in PORT_OPEN.
    reported: Option<bool>,
    /// Output chains not completely written yet, oldest first.
    tx: VecDeque<Chain>,
    /// Input buffers not filled yet, oldest first.
    rx: VecDeque<Chain>,
}

/// The device state of one activation.
pub(super) struct Engine {
    mem: GuestMemory,
    interrupt: Arc<dyn Interrupt>,
    queues: Vec<Option<Served>>,
    multiport: bool,
    info: Arc<[PortInfo]>,
    guest: Vec<GuestPort>,
    control: ControlOut,
    hosts: Arc<Mutex<Vec<HostPort>>>,
    scratch: Vec<u8>,
    warn: RateLimit,
}

impl Engine {
    /// Serves `queues` (index, queue) for the ports in `info`/`hosts`.
    pub fn new(
        mem: GuestMemory,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<(u16, Queue)>,
        multiport: bool,
        info: Arc<[PortInfo]>,
        hosts: Arc<Mutex<Vec<HostPort>>>,
    ) -> Engine {
        let mut slots: Vec<Option<Served>> = (0..2 + 2 * info.len()).map(|_| None).collect();
        for (index, queue) in queues {
            if let Some(slot) = slots.get_mut(usize::from(index)) {
                *slot = Some(Served {
                    queue,
                    broken: false,
                    used: false,
                });
            }
        }
        Engine {
            mem,
            interrupt,
            queues: slots,
            multiport,
            guest: info.iter().map(|_| GuestPort::default()).collect(),
            info,
            control: ControlOut::default(),
            hosts,
            scratch: vec![0; CHUNK],
            warn: RateLimit::default(),
        }
    }

    /// Does everything that can be done without blocking: control messages,
    /// accepting clients, output, input, then interrupts.
    pub fn pump(&mut self) {
        let hosts = self.hosts.clone();
        let mut hosts = lock(&hosts);
        if self.multiport {
            self.serve_control_tx(&hosts);
        }
        for (port, host) in hosts.iter_mut().enumerate().take(self.guest.len()) {
            self.serve_port(port, host);
        }
        if self.multiport {
            self.serve_control_rx();
        }
        self.send_interrupts();
    }

    /// epoll reported `events` for host `token`.
    pub fn host_event(&mut self, token: u64, events: u32) {
        let gone = (libc::EPOLLHUP | libc::EPOLLERR) as u32;
        if let Some((port, Watch::Client)) = decode_token(token) {
            if events & gone != 0 {
                if let Some(host) = lock(&self.hosts).get_mut(port) {
                    host.mark_hangup();
                }
            }
        }
    }

    /// The host fds to watch, given what the device holds.
    pub fn interests(&self) -> Vec<Interest> {
        let hosts = lock(&self.hosts);
        let mut out = Vec::new();
        for (port, (host, guest)) in hosts.iter().zip(&self.guest).enumerate() {
            let want_in = self.guest_open(port) && !guest.rx.is_empty() && host.rx_buf.is_empty();
            let want_out = !guest.tx.is_empty() || host.has_emergency();
            host.interests(port, want_in, want_out, &mut out);
        }
        out
    }

    fn guest_open(&self, port: usize) -> bool {
        if self.multiport {
            self.guest.get(port).is_some_and(|g| g.open)
        } else {
            port == 0
        }
    }

    fn serve_port(&mut self, port: usize, host: &mut HostPort) {
        // A second round when a client left: a waiting one takes over.
        for _ in 0..2 {
            host.settle();
            host.try_accept();
            loop {
                let room = MAX_HELD_CHAINS.saturating_sub(self.guest[port].tx.len());
                let taken = self.take_chains(tx_queue(port), room, false);
                self.guest[port].tx.extend(taken);
                if self.flush_tx(port, host) == 0 {
                    break;
                }
            }
            loop {
                let room = MAX_HELD_CHAINS.saturating_sub(self.guest[port].rx.len());
                let taken = self.take_chains(rx_queue(port), room, true);
                self.guest[port].rx.extend(taken);
                if self.feed_rx(port, host) == 0 {
                    break;
                }
            }
            if !host.settle() {
                break;
            }
        }
        self.report_open(port, host);
    }

    /// Writes held output to the host; returns how many chains completed.
    fn flush_tx(&mut self, port: usize, host: &mut HostPort) -> usize {
        let mut completed = 0;
        loop {
            let guest = &mut self.guest[port];
            // emerg_wr bytes go out between chains, never inside one.
            let between = guest.tx.front().is_none_or(|c| c.done == 0);
            if between && host.has_emergency() && !host.flush_emergency() {
                break;
            }
            let Some(chain) = guest.tx.front_mut() else {
                break;
            };
            let n = gather(&self.mem, &chain.segs, chain.done, &mut self.scratch);
            let result = match self.scratch.get(..n) {
                Some(bytes) if n > 0 => host.write(bytes),
                _ => Out::Failed,
            };
            match result {
                Out::Wrote(k) => chain.done += k,
                Out::Blocked | Out::NoPeer => break,
                // Undeliverable for good (or unreadable): complete it.
                Out::Failed => chain.done = chain.len,
            }
            if chain.done >= chain.len {
                let head = chain.head;
                guest.tx.pop_front();
                self.add_used(tx_queue(port), head, 0);
                completed += 1;
            }
        }
        completed
    }

    /// Places host input in held buffers, reading only what fits; returns
    /// how many chains completed.
    fn feed_rx(&mut self, port: usize, host: &mut HostPort) -> usize {
        if !self.guest_open(port) {
            return 0;
        }
        let mut completed = 0;
        loop {
            while !host.rx_buf.is_empty() {
                let Some(chain) = self.guest[port].rx.pop_front() else {
                    break;
                };
                let n = scatter(&self.mem, &chain.segs, &mut host.rx_buf);
                self.add_used(rx_queue(port), chain.head, n as u32);
                completed += 1;
            }
            let guest = &self.guest[port];
            if guest.rx.is_empty() || !host.rx_buf.is_empty() {
                return completed;
            }
            let room: usize = guest.rx.iter().map(|c| c.len).sum();
            let room = room.min(RX_BUF_CAP).min(self.scratch.len());
            let Some(buf) = self.scratch.get_mut(..room) else {
                return completed;
            };
            match host.read(buf) {
                In::Read(n) => host.rx_buf.extend(buf.iter().take(n)),
                In::Blocked | In::Closed => return completed,
            }
        }
    }

    fn serve_control_tx(&mut self, hosts: &[HostPort]) {
        loop {
            let chains = self.take_chains(CONTROL_TX, MAX_HELD_CHAINS, false);
            if chains.is_empty() {
                return;
            }
            for chain in chains {
                let mut header = [0u8; HEADER_LEN];
                let n = gather(&self.mem, &chain.segs, 0, &mut header);
                self.add_used(CONTROL_TX, chain.head, 0);
                if n < HEADER_LEN {
                    self.ignore("a control message shorter than its header");
                    continue;
                }
                self.handle_control(Message::decode(&header), hosts);
            }
        }
    }

    fn handle_control(&mut self, msg: Message, hosts: &[HostPort]) {
        let port = usize::try_from(msg.id)
            .ok()
            .filter(|&p| p < self.guest.len().min(hosts.len()));
        match (msg.event, port) {
            (event::DEVICE_READY, _) if msg.value == 1 => {
                for id in 0..self.guest.len() {
                    self.push(Message::new(id as u32, event::DEVICE_ADD, 1));
                }
            }
            (event::PORT_READY, Some(p)) if msg.value == 1 => {
                self.guest[p].ready = true;
                if !self.info[p].name.is_empty() {
                    let mut name = Message::new(msg.id, event::PORT_NAME, 1);
                    name.name = self.info[p].name.as_bytes().to_vec();
                    self.push(name);
                }
                if self.info[p].console {
                    self.push(Message::new(msg.id, event::CONSOLE_PORT, 1));
                }
                let connected = hosts[p].connected();
                self.guest[p].reported = Some(connected);
                self.push(Message::new(msg.id, event::PORT_OPEN, u16::from(connected)));
            }
            (event::PORT_OPEN, Some(p)) => self.guest[p].open = msg.value != 0,
            (event::DEVICE_READY, _) | (event::PORT_READY, Some(_)) => {
                if let (event::PORT_READY, Some(p)) = (msg.event, port) {
                    self.guest[p].ready = false;
                }
                if self.warn.allow() {
                    tracing::warn!(
                        "virtio-console: the driver failed to set up port {} (event {})",
                        msg.id,
                        msg.event
                    );
                }
            }
            (
                event::DEVICE_ADD
                | event::DEVICE_REMOVE
                | event::CONSOLE_PORT
                | event::RESIZE
                | event::PORT_NAME,
                _,
            ) => self.ignore("a device-to-driver control event sent by the driver"),
            _ => self.ignore("a control message with an unknown port or event"),
        }
    }

    /// Tells the driver when a port's host side came or went.
    fn report_open(&mut self, port: usize, host: &HostPort) {
        if !self.multiport || !self.guest[port].ready {
            return;
        }
        let connected = host.connected();
        if self.guest[port].reported != Some(connected) {
            self.guest[port].reported = Some(connected);
            self.push(Message::new(
                port as u32,
                event::PORT_OPEN,
                u16::from(connected),
            ));
        }
    }

    fn push(&mut self, msg: Message) {
        if !self.control.push(msg) && self.warn.allow() {
            tracing::warn!("virtio-console: too many control messages wait; dropping one");
        }
    }

    fn ignore(&mut self, what: &str) {
        if self.warn.allow() {
            tracing::debug!("virtio-console: ignoring {what}");
        }
    }

    /// Delivers waiting control messages into control receive buffers.
    fn serve_control_rx(&mut self) {
        while let Some(msg) = self.control.front() {
            let bytes = msg.encode();
            let Some(chain) = self.take_chains(CONTROL_RX, 1, true).pop() else {
                return;
            };
            if chain.len < HEADER_LEN {
                // Too small for any message: return it empty.
                self.add_used(CONTROL_RX, chain.head, 0);
                continue;
            }
            self.control.pop();
            let mut data: VecDeque<u8> = bytes.into();
            let n = scatter(&self.mem, &chain.segs, &mut data);
            self.add_used(CONTROL_RX, chain.head, n as u32);
        }
    }

    /// Takes up to `max` well-formed chains from queue `index`, with their
    /// `writable` (or readable) buffers; malformed ones complete unused.
    fn take_chains(&mut self, index: usize, max: usize, writable: bool) -> Vec<Chain> {
        let mut out = Vec::new();
        let Some(Some(served)) = self.queues.get_mut(index) else {
            return out;
        };
        if served.broken || max == 0 {
            return out;
        }
        if let Err(e) = take_from(served, &self.mem, max, writable, &mut out) {
            served.broken = true;
            tracing::warn!(
                "virtio-console: the guest broke queue {index} ({e}); device needs reset"
            );
            self.interrupt.needs_reset();
        }
        out
    }

    fn add_used(&mut self, index: usize, head: u16, len: u32) {
        let Some(Some(served)) = self.queues.get_mut(index) else {
            return;
        };
        if served.broken {
            return;
        }
        match served.queue.add_used(&self.mem, head, len) {
            Ok(()) => served.used = true,
            Err(e) => {
                served.broken = true;
                tracing::warn!(
                    "virtio-console: the guest broke queue {index} ({e}); device needs reset"
                );
                self.interrupt.needs_reset();
            }
        }
    }

    fn send_interrupts(&mut self) {
        for (index, slot) in self.queues.iter_mut().enumerate() {
            let Some(served) = slot else {
                continue;
            };
            if !std::mem::take(&mut served.used) || served.broken {
                continue;
            }
            if served.queue.needs_notification(&self.mem).unwrap_or(true) {
                self.interrupt.notify_queue(index as u16);
            }
        }
    }

    /// Control messages waiting for receive buffers (tests).
    #[cfg(test)]
    pub fn pending_control(&self) -> usize {
        self.control.len()
    }

    /// Output and input chains port `port` holds (tests).
    #[cfg(test)]
    pub fn held(&self, port: usize) -> (usize, usize) {
        self.guest
            .get(port)
            .map_or((0, 0), |g| (g.tx.len(), g.rx.len()))
    }
}

/// Takes chains as [`Engine::take_chains`] does; errors are ring errors.
fn take_from(
    served: &mut Served,
    mem: &GuestMemory,
    max: usize,
    writable: bool,
    out: &mut Vec<Chain>,
) -> Result<(), virtio_queue::Error> {
    loop {
        served.queue.disable_notification(mem)?;
        let mut malformed = Vec::new();
        {
            let mut iter = served.queue.iter(mem)?;
            while out.len() < max {
                let Some(chain) = iter.next() else {
                    break;
                };
                let c = parse(mem, chain, writable);
                if c.len > 0 {
                    out.push(c);
                } else {
                    malformed.push(c.head);
                }
            }
        }
        for head in malformed {
            served.queue.add_used(mem, head, 0)?;
            served.used = true;
        }
        // Full: the rest stays in the ring until the device has room.
        if out.len() >= max || !served.queue.enable_notification(mem)? {
            return Ok(());
        }
    }
}

/// A chain's buffers in one direction; a chain with buffers outside guest
/// memory or too many buffers comes back empty (to complete unused).
fn parse(mem: &GuestMemory, chain: DescriptorChain<&GuestMemory>, writable: bool) -> Chain {
    let head = chain.head_index();
    let mut out = Chain {
        head,
        segs: Vec::new(),
        len: 0,
        done: 0,
    };
    for desc in chain {
        if desc.is_write_only() != writable || desc.len() == 0 {
            continue;
        }
        let len = desc.len() as usize;
        if !mem.check_range(desc.addr(), len) || out.segs.len() >= MAX_SEGMENTS {
            out.segs.clear();
            out.len = 0;
            return out;
        }
        out.segs.push((desc.addr(), len));
        out.len += len;
    }
    out
}

/// Copies chain bytes from offset `skip` into `buf`; returns how many.
fn gather(mem: &GuestMemory, segs: &[Segment], mut skip: usize, buf: &mut [u8]) -> usize {
    let mut n = 0;
    for &(addr, len) in segs {
        if n == buf.len() {
            break;
        }
        if skip >= len {
            skip -= len;
            continue;
        }
        let take = (len - skip).min(buf.len() - n);
        let Some(at) = addr.checked_add(skip as u64) else {
            break;
        };
        if mem.read_slice(&mut buf[n..n + take], at).is_err() {
            break;
        }
        n += take;
        skip = 0;
    }
    n
}

/// Moves bytes from the front of `data` into the chain's buffers; returns how many.
fn scatter(mem: &GuestMemory, segs: &[Segment], data: &mut VecDeque<u8>) -> usize {
    let bytes = data.make_contiguous();
    let mut n = 0;
    for &(addr, len) in segs {
        if n == bytes.len() {
            break;
        }
        let take = len.min(bytes.len() - n);
        if mem.write_slice(&bytes[n..n + take], addr).is_err() {
            break;
        }
        n += take;
    }
    data.drain(..n);
    n
}
