//! A polled virtio-net driver over `virtio-drivers`' `VirtQueue`: one or
//! more queue pairs (MQ through the control queue), buffers from the heap,
//! shared in place. Frames carry the 12-byte VERSION_1 header.

use crate::exit::Reason;
use crate::start_info::StartInfo;
use crate::virtio_hal::ProbeHal;
use crate::virtio_pci;
use crate::{bail, fail_reason};
use alloc::vec;
use alloc::vec::Vec;
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::pci::bus::{DeviceFunction, PciRoot};
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::Transport;

/// Modern and transitional network device IDs.
const NET_MODERN: u16 = 0x1041;
const NET_TRANSITIONAL: u16 = 0x1000;
/// Descriptors per data queue.
pub const QUEUE_SIZE: usize = 128;
const CTRL_QUEUE_SIZE: usize = 8;
/// Bytes of the virtio-net header.
pub const HEADER: usize = 12;
/// Bytes of each buffer: the header and a 1514-byte frame, rounded up.
pub const BUF: usize = 1536;
/// Transmit buffers per queue.
const TX_BUFFERS: usize = 64;

const F_MAC: u64 = 1 << 5;
const F_STATUS: u64 = 1 << 16;
const F_CTRL_VQ: u64 = 1 << 17;
const F_MQ: u64 = 1 << 22;
const F_EVENT_IDX: u64 = 1 << 29;

/// One queue pair with its buffers.
struct Pair {
    rx: VirtQueue<ProbeHal, QUEUE_SIZE>,
    tx: VirtQueue<ProbeHal, QUEUE_SIZE>,
    /// `QUEUE_SIZE` receive buffers; `rx_slot[token]` is the buffer posted with it.
    rx_bufs: Vec<u8>,
    rx_slot: [u16; QUEUE_SIZE],
    tx_bufs: Vec<u8>,
    tx_free: Vec<u16>,
    tx_slot: [u16; QUEUE_SIZE],
    tx_len: [u16; QUEUE_SIZE],
    /// Frames received on this pair.
    pub rx_frames: u64,
}

/// The device, started.
pub struct Net {
    transport: PciTransport,
    pairs: Vec<Pair>,
    /// Its MAC address.
    pub mac: [u8; 6],
    /// The status field (bit 0: link up).
    pub status: u16,
    /// Queue notifications sent to the device.
    pub kicks: u64,
}

fn slice_mut(buf: &mut [u8], slot: u16) -> &'static mut [u8] {
    let start = usize::from(slot) * BUF;
    let part = &mut buf[start..start + BUF];
    // SAFETY: the buffer lives in `Pair` as long as the device does (the
    // queues are reset in the transport's drop before the Vec is freed) and
    // each slot is handed to the device once at a time.
    unsafe { core::slice::from_raw_parts_mut(part.as_mut_ptr(), BUF) }
}

impl Net {
    /// Finds, negotiates and starts the device with `want_pairs` pairs.
    pub fn open(info: &StartInfo, want_pairs: u16) -> Result<Net, Reason> {
        let virtio_pci::Function { access, bdf, .. } = virtio_pci::open(
            info,
            "virtio network device",
            &[NET_MODERN, NET_TRANSITIONAL],
            None,
            false,
        )?;
        let mut root = PciRoot::new(access);
        let function = DeviceFunction {
            bus: bdf.bus,
            device: bdf.device,
            function: bdf.function,
        };
        let mut transport = PciTransport::new::<ProbeHal, _>(&mut root, function)
            .map_err(|e| fail_reason!("virtio pci transport: {}", e))?;
        let mut accepted = virtio_pci::F_VERSION_1 | F_MAC | F_STATUS | F_EVENT_IDX;
        if want_pairs > 1 {
            accepted |= F_MQ | F_CTRL_VQ;
        }
        let (_, features) = virtio_pci::negotiate(&mut transport, bdf, accepted)?;
        let mac: [u8; 6] = transport
            .read_config_space(0)
            .map_err(|e| fail_reason!("net config: {}", e))?;
        let status: u16 = transport.read_config_space(6).unwrap_or(0);
        let max_pairs: u16 = if features & F_MQ != 0 {
            transport.read_config_space(8).unwrap_or(1)
        } else {
            1
        };
        if want_pairs > max_pairs {
            bail!(
                "{} queue pairs wanted, the device has {}",
                want_pairs,
                max_pairs
            );
        }
        let event_idx = features & F_EVENT_IDX != 0;
        let mut pairs = Vec::new();
        for p in 0..want_pairs {
            let rx = VirtQueue::new(&mut transport, 2 * p, false, event_idx)
                .map_err(|e| fail_reason!("rx queue {}: {}", p, e))?;
            let tx = VirtQueue::new(&mut transport, 2 * p + 1, false, event_idx)
                .map_err(|e| fail_reason!("tx queue {}: {}", p, e))?;
            pairs.push(Pair {
                rx,
                tx,
                rx_bufs: vec![0u8; QUEUE_SIZE * BUF],
                rx_slot: [0; QUEUE_SIZE],
                tx_bufs: vec![0u8; TX_BUFFERS * BUF],
                tx_free: (0..TX_BUFFERS as u16).collect(),
                tx_slot: [0; QUEUE_SIZE],
                tx_len: [0; QUEUE_SIZE],
                rx_frames: 0,
            });
        }
        let mut ctrl = if features & F_MQ != 0 {
            Some(
                VirtQueue::<ProbeHal, CTRL_QUEUE_SIZE>::new(
                    &mut transport,
                    2 * max_pairs,
                    false,
                    false,
                )
                .map_err(|e| fail_reason!("control queue: {}", e))?,
            )
        } else {
            None
        };
        transport.finish_init();
        let mut net = Net {
            transport,
            pairs,
            mac,
            status,
            kicks: 0,
        };
        if let Some(ctrl) = &mut ctrl {
            let mut cmd = [4u8, 0, 0, 0];
            cmd[2..4].copy_from_slice(&want_pairs.to_le_bytes());
            let mut ack = [0xffu8];
            ctrl.add_notify_wait_pop(&[&cmd], &mut [&mut ack], &mut net.transport)
                .map_err(|e| fail_reason!("VQ_PAIRS_SET: {}", e))?;
            if ack[0] != 0 {
                bail!("VQ_PAIRS_SET {} refused (ack {})", want_pairs, ack[0]);
            }
        }
        for p in 0..net.pairs.len() {
            for slot in 0..QUEUE_SIZE as u16 {
                net.post_rx(p, slot)?;
            }
            net.kick_rx(p);
        }
        Ok(net)
    }

    /// Queue pairs in use.
    pub fn pairs(&self) -> usize {
        self.pairs.len()
    }

    /// Frames received on pair `p`.
    pub fn rx_frames(&self, p: usize) -> u64 {
        self.pairs.get(p).map_or(0, |x| x.rx_frames)
    }

    fn post_rx(&mut self, p: usize, slot: u16) -> Result<(), Reason> {
        let pair = &mut self.pairs[p];
        let buf = slice_mut(&mut pair.rx_bufs, slot);
        // SAFETY: the slot's buffer stays allocated and untouched until
        // `pop_used` returns it in `poll_rx`.
        let token =
            unsafe { pair.rx.add(&[], &mut [buf]) }.map_err(|e| fail_reason!("rx add: {}", e))?;
        pair.rx_slot[usize::from(token)] = slot;
        Ok(())
    }

    fn kick_rx(&mut self, p: usize) {
        if self.pairs[p].rx.should_notify() {
            self.transport.notify(2 * p as u16);
            self.kicks += 1;
        }
    }

    /// The next received frame of pair `p` (without its header) and the
    /// slot to give back with [`Net::rx_done`] once it is handled.
    pub fn rx_next(&mut self, p: usize) -> Result<Option<(u16, &'static [u8])>, Reason> {
        let pair = &mut self.pairs[p];
        let Some(token) = pair.rx.peek_used() else {
            return Ok(None);
        };
        let slot = pair.rx_slot[usize::from(token)];
        let buf = slice_mut(&mut pair.rx_bufs, slot);
        // SAFETY: `token` was returned by `add` with this very buffer.
        let len = unsafe { pair.rx.pop_used(token, &[], &mut [buf]) }
            .map_err(|e| fail_reason!("rx pop: {}", e))? as usize;
        pair.rx_frames += 1;
        let frame = &slice_mut(&mut pair.rx_bufs, slot)[HEADER.min(len)..len.min(BUF)];
        Ok(Some((slot, frame)))
    }

    /// Posts the buffer of `slot` (from [`Net::rx_next`]) again; the frame
    /// it held must no longer be used.
    pub fn rx_done(&mut self, p: usize, slot: u16) -> Result<(), Reason> {
        self.post_rx(p, slot)?;
        self.kick_rx(p);
        Ok(())
    }

    /// Reclaims the transmit buffers the device finished with on pair `p`.
    fn reclaim_tx(&mut self, p: usize) -> Result<(), Reason> {
        let pair = &mut self.pairs[p];
        while let Some(token) = pair.tx.peek_used() {
            let slot = pair.tx_slot[usize::from(token)];
            let len = usize::from(pair.tx_len[usize::from(token)]);
            let buf = &slice_mut(&mut pair.tx_bufs, slot)[..len];
            // SAFETY: `token` was returned by `add` with this very buffer.
            unsafe { pair.tx.pop_used(token, &[buf], &mut []) }
                .map_err(|e| fail_reason!("tx pop: {}", e))?;
            pair.tx_free.push(slot);
        }
        Ok(())
    }

    /// Sends one frame built by `build` (given the frame area after the
    /// header, returning the frame's length) on pair `p`; false when every
    /// transmit buffer is in flight.
    pub fn send(
        &mut self,
        p: usize,
        build: impl FnOnce(&mut [u8]) -> usize,
    ) -> Result<bool, Reason> {
        self.send_raw(p, |buf| {
            buf[..HEADER].fill(0);
            HEADER + build(&mut buf[HEADER..]).min(BUF - HEADER)
        })
    }

    /// Sends the buffer `build` fills (header included; it returns the
    /// bytes to send) on pair `p`: how the `HOSTILE` command sends bad headers.
    pub fn send_raw(
        &mut self,
        p: usize,
        build: impl FnOnce(&mut [u8]) -> usize,
    ) -> Result<bool, Reason> {
        self.reclaim_tx(p)?;
        let pair = &mut self.pairs[p];
        let Some(slot) = pair.tx_free.pop() else {
            return Ok(false);
        };
        let buf = slice_mut(&mut pair.tx_bufs, slot);
        let len = build(buf).clamp(1, BUF);
        let frame = &buf[..len];
        // SAFETY: the slot's buffer stays allocated and untouched until
        // `reclaim_tx` pops it.
        let token =
            unsafe { pair.tx.add(&[frame], &mut []) }.map_err(|e| fail_reason!("tx add: {}", e))?;
        pair.tx_slot[usize::from(token)] = slot;
        pair.tx_len[usize::from(token)] = len as u16;
        if pair.tx.should_notify() {
            self.transport.notify(2 * p as u16 + 1);
            self.kicks += 1;
        }
        Ok(true)
    }
}
