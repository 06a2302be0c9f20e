//! `probe=channel`: a virtio console with multiple ports (virtio-serial,
//! `VIRTIO_CONSOLE_F_MULTIPORT`) on PCI bus 0, and a bulk transfer over one
//! named port.
//!
//! `virtio-drivers`' `VirtIOConsole` only knows port 0, so the probe drives
//! the queues itself with the crate's PCI transport and `VirtQueue`:
//! control receive/transmit (queues 2 and 3) and the target port's
//! receive/transmit (2 + 2N, 3 + 2N), with MSI-X (one entry each when the
//! table has five, else the last entry is shared). The
//! port's ID is known only after the control handshake, which needs
//! DRIVER_OK, and a device may take queue registers only before DRIVER_OK
//! (Ferrovisor freezes them). So the handshake runs twice: once with the
//! control queues only to learn the port IDs and names, then, after a
//! device reset, with the control queues and the target port's queues.
//!
//! Checksum (see README.md): the byte stream as little-endian u64 words,
//! the last partial word zero-padded,
//! `h = (h.rotate_left(5) ^ w).wrapping_mul(0x100000001b3)` from
//! `h = 0xcbf29ce484222325`.

use super::Outcome;
use crate::apic::TIMER_DIVIDE_16;
use crate::exit::Reason;
use crate::idt::{DEVICE_VECTOR_BASE, TIMER_VECTOR};
use crate::msix::Msix;
use crate::pci::Bar;
use crate::start_info::StartInfo;
use crate::virtio_hal::ProbeHal;
use crate::virtio_msix::CommonCfg;
use crate::virtio_pci;
use crate::{bail, cmdline, fail_reason, say, text, tsc};
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::pci::bus::{DeviceFunction, PciRoot};
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::{DeviceStatus, Transport};
use x86_64::instructions::interrupts;

/// Modern (virtio 1.x) and transitional console device IDs.
const CONSOLE_MODERN: u16 = 0x1043;
const CONSOLE_TRANSITIONAL: u16 = 0x1003;
const F_MULTIPORT: u64 = 1 << 1;
const F_VERSION_1: u64 = 1 << 32;
/// `virtio_console_config.max_nr_ports` (after `cols` and `rows`).
const CONFIG_MAX_NR_PORTS: usize = 4;

const CTRL_RX_QUEUE: u16 = 2;
const CTRL_TX_QUEUE: u16 = 3;

/// `virtio_console_control.event` values.
const DEVICE_READY: u16 = 0;
const DEVICE_ADD: u16 = 1;
const DEVICE_REMOVE: u16 = 2;
const PORT_READY: u16 = 3;
const PORT_OPEN: u16 = 6;
const PORT_NAME: u16 = 7;
/// `struct virtio_console_control { u32 id; u16 event; u16 value; }`.
const CTRL_HEADER: usize = 8;

/// Queue sizes. The control receive queue holds a buffer for every message
/// the device may send at once (one DEVICE_ADD per port: QEMU drops
/// control messages when no buffer is posted); QEMU's control queues have
/// 32 entries, its port queues 128.
const CTRL_RX_SIZE: usize = 32;
const CTRL_TX_SIZE: usize = 4;
const DATA_SIZE: usize = 16;
/// Control receive buffer size (header and port name).
const CTRL_BUF_BYTES: usize = 256;
/// Heap taken by the data buffers (at most [`DATA_SIZE`] of `chunk` bytes).
const DATA_POOL_BYTES: usize = 512 * 1024;
const MAX_CHUNK: usize = DATA_POOL_BYTES / 2;

const DEFAULT_NAME: &str = "org.ferrovisor.test";
const DEFAULT_BYTES: u64 = 64 << 20;
const DEFAULT_CHUNK: u64 = 64 << 10;

/// How long the device may take to complete a control message.
const CTRL_TX_TIMEOUT_US: u64 = 1_000_000;
/// How long to wait for the first DEVICE_ADD after DEVICE_READY.
const FIRST_ADD_TIMEOUT_US: u64 = 2_000_000;
/// The handshake ends once no control message came for this long.
const QUIET_US: u64 = 50_000;
/// A transfer fails after this long without progress.
const IDLE_TIMEOUT_US: u64 = 20_000_000;
/// APIC timer period while waiting (10 ms on KVM): it bounds each `hlt`.
const WAKE_TIMER_COUNT: u32 = 625_000;

/// MSI-X table entries, in this order: configuration changes, control
/// receive, control transmit, port receive, port transmit. A table with
/// fewer entries shares its last one; vector = 0x50 + entry.
const SLOT_CONFIG: u16 = 0;
const SLOT_CTRL_RX: u16 = 1;
const SLOT_CTRL_TX: u16 = 2;
const SLOT_DATA_RX: u16 = 3;
const SLOT_DATA_TX: u16 = 4;
const SLOTS: u16 = 5;

/// Checksum start value and multiplier (FNV-1a 64's offset basis and prime).
pub const SUM_SEED: u64 = 0xcbf2_9ce4_8422_2325;
const SUM_PRIME: u64 = 0x0100_0000_01b3;
/// Word `i` of the send pattern is `i * PATTERN_STEP` (little-endian).
const PATTERN_STEP: u64 = 0x9e37_79b9_7f4a_7c15;

/// A buffer the device reads or writes; owned by the slot it sits in.
type Buf = &'static mut [u8];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Echo,
    Send,
    Recv,
}

struct Options<'a> {
    name: &'a str,
    mode: Mode,
    bytes: u64,
    chunk: usize,
}

impl<'a> Options<'a> {
    fn parse(cmdline: &'a str) -> Result<Self, Reason> {
        let mode = match cmdline::value(cmdline, "mode") {
            None | Some("recv") => Mode::Recv,
            Some("send") => Mode::Send,
            Some("echo") => Mode::Echo,
            Some(other) => bail!("unknown channel mode {} (echo, send or recv)", other),
        };
        let bytes = cmdline::number(cmdline, "bytes")?.unwrap_or(DEFAULT_BYTES);
        let chunk = cmdline::number(cmdline, "chunk")?.unwrap_or(DEFAULT_CHUNK);
        if chunk == 0 || chunk % 8 != 0 || chunk > MAX_CHUNK as u64 {
            bail!(
                "chunk={} must be a multiple of 8 from 8 to {}",
                chunk,
                MAX_CHUNK
            );
        }
        Ok(Options {
            name: cmdline::value(cmdline, "channel").unwrap_or(DEFAULT_NAME),
            mode,
            bytes,
            chunk: chunk as usize,
        })
    }
}

pub fn run(info: &StartInfo) -> Outcome {
    let options = Options::parse(info.cmdline())?;
    let virtio_pci::Function {
        access,
        bdf,
        device_id,
        assigned,
    } = virtio_pci::open(
        info,
        "virtio console device",
        &[CONSOLE_MODERN, CONSOLE_TRANSITIONAL],
        None,
        false,
    )?;
    let lapic = virtio_pci::interrupt_lapic()?;
    let Some(msix) = Msix::find(&access, bdf, &assigned.bars)? else {
        bail!("{} has no msi-x capability", bdf);
    };
    let entries = msix.table_size.min(SLOTS);
    for entry in 0..entries {
        msix.set_entry(entry, lapic.id(), DEVICE_VECTOR_BASE + entry as u8)?;
    }
    msix.enable(&access);
    let common = CommonCfg::find(&access, bdf, &assigned.bars)?;

    // Buffers are leaked: the device may hold them until the transport's
    // drop resets it, and the program ends right after.
    let ctrl_bufs: Vec<Buf> = alloc::vec![0u8; CTRL_RX_SIZE * CTRL_BUF_BYTES]
        .leak()
        .chunks_mut(CTRL_BUF_BYTES)
        .collect();
    let data_count = (DATA_POOL_BYTES / options.chunk).clamp(2, DATA_SIZE);
    let data_bufs = data_buffers(data_count, options.chunk);

    let mut root = PciRoot::new(access);
    let function = DeviceFunction {
        bus: bdf.bus,
        device: bdf.device,
        function: bdf.function,
    };
    let mut transport = PciTransport::new::<ProbeHal, _>(&mut root, function)
        .map_err(|e| fail_reason!("virtio pci transport: {}", e))?;
    let max_ports: u32 = transport
        .read_config_space(CONFIG_MAX_NR_PORTS)
        .map_err(|e| fail_reason!("console config space: {}", e))?;
    let placement = match &assigned.pools {
        Some(pools) => text!(" {}", pools),
        None => text!(""),
    };
    say!(
        "channel device={} id={:#06x} config={} {} assigned={}{} max_ports={} msix_entries={}",
        bdf,
        device_id,
        access.name(),
        BarList(&assigned.bars),
        assigned.count,
        placement,
        max_ports,
        msix.table_size
    );

    let device = Device {
        common,
        entries,
        max_ports,
    };
    lapic.start_periodic_timer(TIMER_VECTOR, TIMER_DIVIDE_16, WAKE_TIMER_COUNT);
    interrupts::enable();
    // The first interrupt can only come after DRIVER_OK, so the entries are
    // unmasked from the start.
    for entry in 0..entries {
        msix.unmask(entry);
    }
    let result = device.run(&mut transport, &options, ctrl_bufs, data_bufs);
    interrupts::disable();
    lapic.stop_timer();
    result
}

/// `count` zeroed, 8-byte aligned buffers of `chunk` bytes (a multiple of 8).
fn data_buffers(count: usize, chunk: usize) -> Vec<Buf> {
    let words: &'static mut [u64] = alloc::vec![0u64; count * chunk / 8].leak();
    // SAFETY: the leaked allocation is never freed and `words` is its only
    // reference; any byte pattern is a valid u64 and vice versa.
    let bytes: &'static mut [u8] =
        unsafe { core::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), count * chunk) };
    bytes.chunks_mut(chunk).collect()
}

/// `bar1=mem32:0x..+0x.. bar4=...`.
struct BarList<'a>(&'a [Bar]);

impl core::fmt::Display for BarList<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut text = String::new();
        for bar in self.0 {
            let _ = write!(text, "{}{}", if text.is_empty() { "" } else { " " }, bar);
        }
        f.write_str(if text.is_empty() { "bars=none" } else { &text })
    }
}

// ---------------------------------------------------------------------------
// Time

fn cycles(us: u64) -> u64 {
    us.saturating_mul(tsc::khz()) / 1000
}

fn ms_between(start: u64, end: u64) -> u64 {
    end.saturating_sub(start) / tsc::khz().max(1)
}

/// Sleeps in `hlt` until `ready` holds (true) or the TSC reaches
/// `deadline` (false). Device interrupts or, at the latest, the 10 ms wake
/// timer end each `hlt`.
fn wait_until(deadline: u64, mut ready: impl FnMut() -> bool) -> bool {
    loop {
        interrupts::disable();
        if ready() {
            interrupts::enable();
            return true;
        }
        if tsc::now() >= deadline {
            interrupts::enable();
            return false;
        }
        interrupts::enable_and_hlt();
    }
}

// ---------------------------------------------------------------------------
// Checksum and send pattern

#[inline(always)]
fn mix(h: u64, w: u64) -> u64 {
    (h.rotate_left(5) ^ w).wrapping_mul(SUM_PRIME)
}

/// Continues the checksum `h` over `bytes` (a multiple of 8 long, any
/// alignment) as little-endian words. Unrolled: three instructions a word.
fn sum_words(mut h: u64, bytes: &[u8]) -> u64 {
    let mut blocks = bytes.chunks_exact(64);
    for block in &mut blocks {
        for i in 0..8 {
            let word: [u8; 8] = block[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]);
            h = mix(h, u64::from_le_bytes(word));
        }
    }
    for word in blocks.remainder().chunks_exact(8) {
        h = mix(h, u64::from_le_bytes(word.try_into().unwrap_or([0; 8])));
    }
    h
}

/// The checksum of a byte stream fed in pieces of any length.
struct StreamSum {
    h: u64,
    /// Bytes of an unfinished word, little-endian, and their number.
    partial: u64,
    partial_len: usize,
}

impl StreamSum {
    fn new() -> Self {
        StreamSum {
            h: SUM_SEED,
            partial: 0,
            partial_len: 0,
        }
    }

    fn feed(&mut self, mut data: &[u8]) {
        if self.partial_len > 0 {
            while self.partial_len < 8 {
                let Some((&byte, rest)) = data.split_first() else {
                    return;
                };
                self.partial |= u64::from(byte) << (8 * self.partial_len);
                self.partial_len += 1;
                data = rest;
            }
            self.h = mix(self.h, self.partial);
            self.partial = 0;
            self.partial_len = 0;
        }
        let whole = data.len() & !7;
        self.h = sum_words(self.h, &data[..whole]);
        for &byte in &data[whole..] {
            self.partial |= u64::from(byte) << (8 * self.partial_len);
            self.partial_len += 1;
        }
    }

    /// The checksum, the last partial word zero-padded.
    fn finish(&self) -> u64 {
        if self.partial_len > 0 {
            mix(self.h, self.partial)
        } else {
            self.h
        }
    }
}

/// Writes pattern words `first..first + words.len()` into `words` and
/// continues the checksum `h` over them.
fn fill_pattern(words: &mut [u64], first: u64, mut h: u64) -> u64 {
    let mut value = first.wrapping_mul(PATTERN_STEP);
    let mut blocks = words.chunks_exact_mut(8);
    for block in &mut blocks {
        for word in block.iter_mut() {
            *word = value;
            h = mix(h, value);
            value = value.wrapping_add(PATTERN_STEP);
        }
    }
    for word in blocks.into_remainder() {
        *word = value;
        h = mix(h, value);
        value = value.wrapping_add(PATTERN_STEP);
    }
    h
}

// ---------------------------------------------------------------------------
// Device set-up

/// What stays the same across the two initialisations.
struct Device {
    common: CommonCfg,
    /// MSI-X entries in use (at most [`SLOTS`]).
    entries: u16,
    max_ports: u32,
}

/// The target port's queues.
struct DataQueues {
    rx: VirtQueue<ProbeHal, DATA_SIZE>,
    tx: VirtQueue<ProbeHal, DATA_SIZE>,
    rx_index: u16,
    tx_index: u16,
}

impl Device {
    fn entry(&self, slot: u16) -> u16 {
        slot.min(self.entries - 1)
    }

    /// Resets the device and negotiates VERSION_1 and MULTIPORT (the
    /// steps of the crate's `begin_init`, which cannot ask for device
    /// feature bits: its `Feature` type has none).
    fn negotiate(&self, transport: &mut PciTransport) -> Result<(), Reason> {
        transport.set_status(DeviceStatus::empty());
        let deadline = tsc::now() + cycles(CTRL_TX_TIMEOUT_US);
        while transport.get_status() != DeviceStatus::empty() {
            if tsc::now() >= deadline {
                bail!(
                    "device status stays {:?} after a reset",
                    transport.get_status()
                );
            }
        }
        transport.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
        let offered = transport.read_device_features();
        let wanted = F_VERSION_1 | F_MULTIPORT;
        if offered & wanted != wanted {
            bail!(
                "device features {:#x} lack VERSION_1 (bit 32) or MULTIPORT (bit 1)",
                offered
            );
        }
        transport.write_driver_features(wanted);
        transport.set_status(
            DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK,
        );
        if !transport.get_status().contains(DeviceStatus::FEATURES_OK) {
            bail!("device refused features {:#x}", wanted);
        }
        Ok(())
    }

    fn set_queue_vector(&self, queue: u16, slot: u16) -> Result<(), Reason> {
        let entry = self.entry(slot);
        let got = self.common.set_queue_vector(queue, entry);
        if got != entry {
            bail!(
                "device refused msi-x entry {} for queue {}: queue_msix_vector={:#x}",
                entry,
                queue,
                got
            );
        }
        Ok(())
    }

    /// Sets up the control queues and, if `port` is given, that port's
    /// queues, after [`Device::negotiate`]; ends with DRIVER_OK.
    fn configure(
        &self,
        transport: &mut PciTransport,
        ctrl_bufs: Vec<Buf>,
        port: Option<u32>,
    ) -> Result<(Control, Option<DataQueues>), Reason> {
        let entry = self.entry(SLOT_CONFIG);
        let got = self.common.set_config_vector(entry);
        if got != entry {
            bail!(
                "device refused msi-x entry {}: msix_config={:#x}",
                entry,
                got
            );
        }
        self.set_queue_vector(CTRL_RX_QUEUE, SLOT_CTRL_RX)?;
        self.set_queue_vector(CTRL_TX_QUEUE, SLOT_CTRL_TX)?;
        let rx = new_queue::<CTRL_RX_SIZE>(transport, CTRL_RX_QUEUE)?;
        let tx = new_queue::<CTRL_TX_SIZE>(transport, CTRL_TX_QUEUE)?;
        let data = match port {
            None => None,
            Some(id) => {
                let (rx_index, tx_index) = port_queues(id);
                self.set_queue_vector(rx_index, SLOT_DATA_RX)?;
                self.set_queue_vector(tx_index, SLOT_DATA_TX)?;
                Some(DataQueues {
                    rx: new_queue(transport, rx_index)?,
                    tx: new_queue(transport, tx_index)?,
                    rx_index,
                    tx_index,
                })
            }
        };
        transport.finish_init();
        Ok((Control::new(rx, tx, ctrl_bufs), data))
    }

    fn run(
        &self,
        transport: &mut PciTransport,
        options: &Options,
        ctrl_bufs: Vec<Buf>,
        data_bufs: Vec<Buf>,
    ) -> Outcome {
        // Pass 1: learn the ports.
        self.negotiate(transport)?;
        let (mut control, _) = self.configure(transport, ctrl_bufs, None)?;
        control.handshake(transport)?;
        let Some(target) = control.find(options.name) else {
            print_ports(&control.ports, None);
            bail!("no port named {}", options.name);
        };
        if target >= self.max_ports {
            print_ports(&control.ports, Some(target));
            bail!(
                "port {} is not below max_nr_ports={}",
                target,
                self.max_ports
            );
        }
        // Pass 2. After the reset in `negotiate` the device no longer holds
        // pass 1's queues and control buffers.
        self.negotiate(transport)?;
        let ctrl_bufs = control.reclaim();
        drop(control);
        let (mut control, data) = self.configure(transport, ctrl_bufs, Some(target))?;
        control.handshake(transport)?;
        let found = control.find(options.name);
        print_ports(&control.ports, found);
        match found {
            Some(id) if id == target => {}
            Some(id) => bail!("port {} moved from id {} to {}", options.name, target, id),
            None => bail!("port {} vanished after the device reset", options.name),
        }
        control.send(transport, target, PORT_OPEN, 1)?;
        let Some(data) = data else {
            bail!("port queues missing");
        };
        let mut link = Link {
            transport,
            port: target,
            control,
            data,
            bufs: data_bufs,
            rx_posted: [const { None }; DATA_SIZE],
            tx_posted: [const { None }; DATA_SIZE],
        };
        match options.mode {
            Mode::Recv => {
                let (sum, ms) = link.recv(options.bytes)?;
                say!(
                    "channel recv bytes={} sum={:#018x} ms={}",
                    options.bytes,
                    sum,
                    ms
                );
            }
            Mode::Send => {
                let (sum, ms) = link.send(options.bytes, options.chunk)?;
                say!(
                    "channel send bytes={} sum={:#018x} ms={}",
                    options.bytes,
                    sum,
                    ms
                );
            }
            Mode::Echo => {
                let echoed = link.echo(options.bytes)?;
                say!("channel echo bytes={}", echoed);
            }
        }
        Ok(())
    }
}

/// Receive and transmit queue of port `id`.
fn port_queues(id: u32) -> (u16, u16) {
    if id == 0 {
        (0, 1)
    } else {
        let rx = 2 + 2 * id as u16;
        (rx, rx + 1)
    }
}

fn new_queue<const SIZE: usize>(
    transport: &mut PciTransport,
    index: u16,
) -> Result<VirtQueue<ProbeHal, SIZE>, Reason> {
    let max = transport.max_queue_size(index);
    VirtQueue::new(transport, index, false, false).map_err(|e| {
        fail_reason!(
            "virtqueue {} ({} entries, device max {}): {}",
            index,
            SIZE,
            max,
            e
        )
    })
}

/// `probe: channel ports=2 names=1:org.ferrovisor.test,2:other target=1`.
fn print_ports(ports: &[Port], target: Option<u32>) {
    let mut sorted: Vec<&Port> = ports.iter().collect();
    sorted.sort_by_key(|port| port.id);
    let mut names = String::new();
    for port in sorted {
        let _ = write!(
            names,
            "{}{}:{}",
            if names.is_empty() { "" } else { "," },
            port.id,
            port.name.as_deref().unwrap_or("")
        );
    }
    match target {
        Some(id) => say!(
            "channel ports={} names={} target={}",
            ports.len(),
            names,
            id
        ),
        None => say!("channel ports={} names={} target=none", ports.len(), names),
    }
}

// ---------------------------------------------------------------------------
// Control queues

struct Port {
    id: u32,
    name: Option<String>,
    /// The last PORT_OPEN value from the device (the host side is open).
    host_open: bool,
    ready_sent: bool,
}

struct Control {
    rx: VirtQueue<ProbeHal, CTRL_RX_SIZE>,
    tx: VirtQueue<ProbeHal, CTRL_TX_SIZE>,
    /// Receive buffers by token (descriptor index) while the device has
    /// them, and the ones not posted.
    rx_posted: [Option<Buf>; CTRL_RX_SIZE],
    idle: Vec<Buf>,
    /// The message being sent (one at a time).
    tx_buf: [u8; CTRL_HEADER],
    ports: Vec<Port>,
    /// TSC when the last control message arrived.
    last_message: u64,
}

impl Control {
    fn new(
        rx: VirtQueue<ProbeHal, CTRL_RX_SIZE>,
        tx: VirtQueue<ProbeHal, CTRL_TX_SIZE>,
        bufs: Vec<Buf>,
    ) -> Self {
        Control {
            rx,
            tx,
            rx_posted: [const { None }; CTRL_RX_SIZE],
            idle: bufs,
            tx_buf: [0; CTRL_HEADER],
            ports: Vec::new(),
            last_message: tsc::now(),
        }
    }

    /// All receive buffers, posted or not. Only after a device reset.
    fn reclaim(&mut self) -> Vec<Buf> {
        let mut bufs = core::mem::take(&mut self.idle);
        bufs.extend(self.rx_posted.iter_mut().filter_map(Option::take));
        bufs
    }

    fn find(&self, name: &str) -> Option<u32> {
        self.ports
            .iter()
            .find(|port| port.name.as_deref() == Some(name))
            .map(|port| port.id)
    }

    fn post(&mut self, buf: Buf) -> Result<(), Reason> {
        let mut outputs = [buf];
        // SAFETY: the buffer is leaked ('static) and kept in `rx_posted`
        // untouched until `pop_used` returns it (or a reset stopped the
        // device).
        let token = unsafe { self.rx.add(&[], &mut outputs) }
            .map_err(|e| fail_reason!("control rx add: {}", e))?;
        let [buf] = outputs;
        self.rx_posted[usize::from(token)] = Some(buf);
        Ok(())
    }

    /// Posts every idle receive buffer.
    fn post_idle(&mut self, transport: &mut PciTransport) -> Result<(), Reason> {
        while let Some(buf) = self.idle.pop() {
            self.post(buf)?;
        }
        if self.rx.should_notify() {
            transport.notify(CTRL_RX_QUEUE);
        }
        Ok(())
    }

    /// Handles every received control message and posts its buffer again.
    fn drain(&mut self, transport: &mut PciTransport) -> Result<(), Reason> {
        let mut reposted = false;
        while let Some(token) = self.rx.peek_used() {
            let Some(buf) = self
                .rx_posted
                .get_mut(usize::from(token))
                .and_then(Option::take)
            else {
                bail!("control rx: device used unknown descriptor {}", token);
            };
            // SAFETY: the buffer posted with this token.
            let len = unsafe { self.rx.pop_used(token, &[], &mut [&mut *buf]) }
                .map_err(|e| fail_reason!("control rx pop: {}", e))? as usize;
            let len = len.min(buf.len());
            self.handle(&buf[..len]);
            self.post(buf)?;
            reposted = true;
        }
        if reposted && self.rx.should_notify() {
            transport.notify(CTRL_RX_QUEUE);
        }
        Ok(())
    }

    fn port(&mut self, id: u32) -> Option<&mut Port> {
        self.ports.iter_mut().find(|port| port.id == id)
    }

    fn handle(&mut self, message: &[u8]) {
        self.last_message = tsc::now();
        if message.len() < CTRL_HEADER {
            return;
        }
        let id = u32::from_le_bytes([message[0], message[1], message[2], message[3]]);
        let event = u16::from_le_bytes([message[4], message[5]]);
        let value = u16::from_le_bytes([message[6], message[7]]);
        match event {
            DEVICE_ADD if self.port(id).is_none() => self.ports.push(Port {
                id,
                name: None,
                host_open: false,
                ready_sent: false,
            }),
            DEVICE_REMOVE => self.ports.retain(|port| port.id != id),
            PORT_OPEN => {
                if let Some(port) = self.port(id) {
                    port.host_open = value != 0;
                }
            }
            PORT_NAME => {
                let mut name = &message[CTRL_HEADER..];
                while let Some((&0, rest)) = name.split_last() {
                    name = rest;
                }
                let name = String::from_utf8_lossy(name).into_owned();
                if let Some(port) = self.port(id) {
                    port.name = Some(name);
                }
            }
            _ => {}
        }
    }

    /// Sends one control message and waits until the device took it,
    /// handling received messages meanwhile.
    fn send(
        &mut self,
        transport: &mut PciTransport,
        id: u32,
        event: u16,
        value: u16,
    ) -> Result<(), Reason> {
        self.tx_buf[..4].copy_from_slice(&id.to_le_bytes());
        self.tx_buf[4..6].copy_from_slice(&event.to_le_bytes());
        self.tx_buf[6..8].copy_from_slice(&value.to_le_bytes());
        // SAFETY: `tx_buf` is not written again before `pop_used` below; on
        // a timeout the program fails and the transport's drop resets the
        // device.
        let token = unsafe { self.tx.add(&[&self.tx_buf[..]], &mut []) }
            .map_err(|e| fail_reason!("control tx add: {}", e))?;
        if self.tx.should_notify() {
            transport.notify(CTRL_TX_QUEUE);
        }
        let deadline = tsc::now() + cycles(CTRL_TX_TIMEOUT_US);
        loop {
            if !wait_until(deadline, || self.tx.can_pop() || self.rx.can_pop()) {
                bail!(
                    "control message event={} id={} not taken within {} ms",
                    event,
                    id,
                    CTRL_TX_TIMEOUT_US / 1000
                );
            }
            self.drain(transport)?;
            if self.tx.can_pop() {
                // SAFETY: the buffer added above with this token.
                unsafe { self.tx.pop_used(token, &[&self.tx_buf[..]], &mut []) }
                    .map_err(|e| fail_reason!("control tx pop: {}", e))?;
                return Ok(());
            }
        }
    }

    /// DEVICE_READY, then PORT_READY for every DEVICE_ADD, until no message
    /// came for [`QUIET_US`].
    fn handshake(&mut self, transport: &mut PciTransport) -> Result<(), Reason> {
        self.post_idle(transport)?;
        self.send(transport, 0, DEVICE_READY, 1)?;
        let start = tsc::now();
        self.last_message = start;
        loop {
            self.drain(transport)?;
            while let Some(port) = self.ports.iter_mut().find(|port| !port.ready_sent) {
                port.ready_sent = true;
                let id = port.id;
                self.send(transport, id, PORT_READY, 1)?;
            }
            let now = tsc::now();
            if self.ports.is_empty() {
                if now - start >= cycles(FIRST_ADD_TIMEOUT_US) {
                    bail!(
                        "no DEVICE_ADD within {} ms of DEVICE_READY",
                        FIRST_ADD_TIMEOUT_US / 1000
                    );
                }
            } else if now - self.last_message >= cycles(QUIET_US) {
                return Ok(());
            }
            wait_until(now + cycles(10_000), || self.rx.can_pop());
        }
    }
}

// ---------------------------------------------------------------------------
// Data transfer

struct Link<'t> {
    transport: &'t mut PciTransport,
    /// The port's ID.
    port: u32,
    control: Control,
    data: DataQueues,
    /// Data buffers not posted.
    bufs: Vec<Buf>,
    /// Posted buffers by token: receive buffers whole, transmit buffers
    /// with the length queued.
    rx_posted: [Option<Buf>; DATA_SIZE],
    tx_posted: [Option<(Buf, usize)>; DATA_SIZE],
}

impl Link<'_> {
    fn post_rx(&mut self, buf: Buf) -> Result<(), Reason> {
        let mut outputs = [buf];
        // SAFETY: the buffer is leaked and kept in `rx_posted` untouched
        // until `pop_used` returns it.
        let token = unsafe { self.data.rx.add(&[], &mut outputs) }
            .map_err(|e| fail_reason!("port rx add: {}", e))?;
        let [buf] = outputs;
        self.rx_posted[usize::from(token)] = Some(buf);
        Ok(())
    }

    fn post_tx(&mut self, buf: Buf, len: usize) -> Result<(), Reason> {
        // SAFETY: the buffer is leaked and kept in `tx_posted` untouched
        // until `pop_used` returns it.
        let token = unsafe { self.data.tx.add(&[&buf[..len]], &mut []) }
            .map_err(|e| fail_reason!("port tx add: {}", e))?;
        self.tx_posted[usize::from(token)] = Some((buf, len));
        Ok(())
    }

    fn notify_rx(&mut self) {
        if self.data.rx.should_notify() {
            self.transport.notify(self.data.rx_index);
        }
    }

    fn notify_tx(&mut self) {
        if self.data.tx.should_notify() {
            self.transport.notify(self.data.tx_index);
        }
    }

    /// The next completed receive buffer and the bytes in it.
    fn pop_rx(&mut self) -> Result<Option<(Buf, usize)>, Reason> {
        let Some(token) = self.data.rx.peek_used() else {
            return Ok(None);
        };
        let Some(buf) = self
            .rx_posted
            .get_mut(usize::from(token))
            .and_then(Option::take)
        else {
            bail!("port rx: device used unknown descriptor {}", token);
        };
        // SAFETY: the buffer posted with this token.
        let len = unsafe { self.data.rx.pop_used(token, &[], &mut [&mut *buf]) }
            .map_err(|e| fail_reason!("port rx pop: {}", e))? as usize;
        if len > buf.len() {
            bail!(
                "port rx: device wrote {} bytes into a {}-byte buffer",
                len,
                buf.len()
            );
        }
        Ok(Some((buf, len)))
    }

    /// The next completed transmit buffer and the bytes it carried.
    fn pop_tx(&mut self) -> Result<Option<(Buf, usize)>, Reason> {
        let Some(token) = self.data.tx.peek_used() else {
            return Ok(None);
        };
        let Some((buf, len)) = self
            .tx_posted
            .get_mut(usize::from(token))
            .and_then(Option::take)
        else {
            bail!("port tx: device used unknown descriptor {}", token);
        };
        // SAFETY: the buffer posted with this token.
        unsafe { self.data.tx.pop_used(token, &[&buf[..len]], &mut []) }
            .map_err(|e| fail_reason!("port tx pop: {}", e))?;
        Ok(Some((buf, len)))
    }

    /// Sleeps until a data or control queue has a used buffer; fails if
    /// nothing moved for [`IDLE_TIMEOUT_US`] since `progress`.
    fn wait(&mut self, progress: u64, what: &str, done: u64, total: u64) -> Result<(), Reason> {
        let deadline = progress + cycles(IDLE_TIMEOUT_US);
        let (data, control) = (&self.data, &self.control);
        if !wait_until(deadline, || {
            data.rx.can_pop() || data.tx.can_pop() || control.rx.can_pop()
        }) {
            let host_open = control
                .ports
                .iter()
                .any(|port| port.id == self.port && port.host_open);
            bail!(
                "{} stalled: {} of {} bytes, nothing for {} ms (host_open={})",
                what,
                done,
                total,
                IDLE_TIMEOUT_US / 1000,
                u8::from(host_open)
            );
        }
        self.control.drain(self.transport)
    }

    /// Receives `total` bytes; returns their checksum and the time from
    /// the first byte to the last.
    fn recv(&mut self, total: u64) -> Result<(u64, u64), Reason> {
        while let Some(buf) = self.bufs.pop() {
            self.post_rx(buf)?;
        }
        self.notify_rx();
        let mut sum = StreamSum::new();
        let mut received = 0u64;
        let mut first = None;
        let mut progress = tsc::now();
        while received < total {
            let mut reposted = false;
            while let Some((buf, len)) = self.pop_rx()? {
                if len > 0 {
                    progress = tsc::now();
                    first.get_or_insert(progress);
                }
                let take = (len as u64).min(total - received) as usize;
                sum.feed(&buf[..take]);
                received += take as u64;
                if received < total {
                    self.post_rx(buf)?;
                    reposted = true;
                } else {
                    self.bufs.push(buf);
                }
            }
            if reposted {
                self.notify_rx();
            }
            if received < total {
                self.wait(progress, "recv", received, total)?;
            }
        }
        let end = tsc::now();
        Ok((sum.finish(), ms_between(first.unwrap_or(end), end)))
    }

    /// Sends `total` bytes of the pattern in `chunk`-byte buffers; returns
    /// their checksum and the time from the first fill to the last
    /// completion.
    fn send(&mut self, total: u64, chunk: usize) -> Result<(u64, u64), Reason> {
        let start = tsc::now();
        let mut h = SUM_SEED;
        let mut queued = 0u64;
        let mut completed = 0u64;
        let mut progress = start;
        loop {
            while let Some((buf, len)) = self.pop_tx()? {
                completed += len as u64;
                progress = tsc::now();
                self.bufs.push(buf);
            }
            let mut added = false;
            while queued < total {
                let Some(buf) = self.bufs.pop() else {
                    break;
                };
                let len = (total - queued).min(chunk as u64) as usize;
                // SAFETY: every u64 is valid as bytes and vice versa; data
                // buffers are 8-byte aligned (carved from a `Vec<u64>`).
                let (head, words, _) = unsafe { buf.align_to_mut::<u64>() };
                if !head.is_empty() {
                    bail!("data buffer not 8-byte aligned");
                }
                let first_word = queued / 8;
                let whole = len / 8;
                h = fill_pattern(&mut words[..whole], first_word, h);
                let tail = len % 8;
                if tail != 0 {
                    let word = (first_word + whole as u64).wrapping_mul(PATTERN_STEP);
                    words[whole] = word;
                    h = mix(h, word & ((1u64 << (8 * tail)) - 1));
                }
                self.post_tx(buf, len)?;
                queued += len as u64;
                added = true;
            }
            if added {
                self.notify_tx();
            }
            if completed >= total {
                break;
            }
            self.wait(progress, "send", completed, total)?;
        }
        Ok((h, ms_between(start, tsc::now())))
    }

    /// Sends every received buffer back until `total` bytes were echoed
    /// (and the device took them); returns the bytes echoed.
    fn echo(&mut self, total: u64) -> Result<u64, Reason> {
        while let Some(buf) = self.bufs.pop() {
            self.post_rx(buf)?;
        }
        self.notify_rx();
        let mut received = 0u64;
        let mut echoed = 0u64;
        let mut progress = tsc::now();
        loop {
            let (mut rx_added, mut tx_added) = (false, false);
            while let Some((buf, len)) = self.pop_rx()? {
                if len == 0 {
                    self.post_rx(buf)?;
                    rx_added = true;
                    continue;
                }
                received += len as u64;
                progress = tsc::now();
                self.post_tx(buf, len)?;
                tx_added = true;
            }
            if tx_added {
                self.notify_tx();
            }
            while let Some((buf, len)) = self.pop_tx()? {
                echoed += len as u64;
                progress = tsc::now();
                if received < total {
                    self.post_rx(buf)?;
                    rx_added = true;
                } else {
                    self.bufs.push(buf);
                }
            }
            if rx_added {
                self.notify_rx();
            }
            if received >= total && echoed == received {
                return Ok(echoed);
            }
            self.wait(progress, "echo", echoed, total)?;
        }
    }
}
