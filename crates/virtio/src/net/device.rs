//! The virtio-net device model: the features it offers (as the TAP and the
//! configuration allow), its configuration space, and activation, which
//! starts one worker per queue pair and one for the control queue.

use sandbox::seccomp::ThreadKind;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;

use super::counters::NetCounters;
use super::ctrl::{CtrlQueue, CtrlTarget};
use super::header::{TxOffloads, HEADER_LEN, MAX_FRAME};
use super::pair::QueuePair;
use super::rx::RxQueue;
use super::tap::{offload, TapQueue};
use super::tx::TxQueue;
use super::MAX_QUEUE_PAIRS;
use crate::device::{ActivateError, QueueSet, VirtioDevice};
use crate::features::{RING_EVENT_IDX, RING_INDIRECT_DESC, VERSION_1};
use crate::worker::Worker;

/// virtio device ID of a network card.
pub const DEVICE_TYPE: u16 = 1;

/// Feature bits (virtio 1.x §5.1.3).
pub mod feature {
    /// The device checksums partial frames the driver sends.
    pub const CSUM: u64 = 1 << 0;
    /// The driver takes frames with partial checksums.
    pub const GUEST_CSUM: u64 = 1 << 1;
    /// The driver may change its receive offloads over the control queue.
    pub const CTRL_GUEST_OFFLOADS: u64 = 1 << 2;
    /// `mtu` in the configuration is valid.
    pub const MTU: u64 = 1 << 3;
    /// `mac` in the configuration is valid.
    pub const MAC: u64 = 1 << 5;
    /// The driver takes TCP/IPv4 segments up to 64 KiB.
    pub const GUEST_TSO4: u64 = 1 << 7;
    /// The driver takes TCP/IPv6 segments up to 64 KiB.
    pub const GUEST_TSO6: u64 = 1 << 8;
    /// ... with ECN.
    pub const GUEST_ECN: u64 = 1 << 9;
    /// The driver takes UFO frames.
    pub const GUEST_UFO: u64 = 1 << 10;
    /// The device segments TCP/IPv4 for the driver.
    pub const HOST_TSO4: u64 = 1 << 11;
    /// The device segments TCP/IPv6 for the driver.
    pub const HOST_TSO6: u64 = 1 << 12;
    /// ... with ECN.
    pub const HOST_ECN: u64 = 1 << 13;
    /// The device fragments UDP for the driver.
    pub const HOST_UFO: u64 = 1 << 14;
    /// Receive frames may span several buffers.
    pub const MRG_RXBUF: u64 = 1 << 15;
    /// `status` in the configuration is valid.
    pub const STATUS: u64 = 1 << 16;
    /// There is a control queue.
    pub const CTRL_VQ: u64 = 1 << 17;
    /// Receive mode commands.
    pub const CTRL_RX: u64 = 1 << 18;
    /// The driver announces itself after a migration when asked.
    pub const GUEST_ANNOUNCE: u64 = 1 << 21;
    /// Several queue pairs.
    pub const MQ: u64 = 1 << 22;
}

/// `status`: the link is up.
pub const STATUS_LINK_UP: u16 = 1;
/// `status`: the driver should announce itself.
pub const STATUS_ANNOUNCE: u16 = 2;

/// How the guest sees one NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// Its MAC address.
    pub mac: [u8; 6],
    /// Queue pairs (one TAP queue each).
    pub queue_pairs: u16,
    /// Size of each queue.
    pub queue_size: u16,
    /// Offer TCP segmentation and UDP fragmentation offloads.
    pub offload_tso: bool,
    /// Offer checksum offloads (TSO needs them).
    pub offload_csum: bool,
    /// The MTU of the host side.
    pub mtu: u32,
}

/// Why a NIC could not be built.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The TAP queues do not match the queue pairs.
    #[error("{queues} TAP queues for {pairs} queue pairs")]
    QueueCount {
        /// TAP queues given.
        queues: usize,
        /// Queue pairs configured.
        pairs: u16,
    },
}

/// A network card on a TAP device.
pub struct Net {
    config: NetConfig,
    taps: Vec<TapQueue>,
    features: u64,
    queue_sizes: Vec<u16>,
    status: Arc<AtomicU16>,
    workers: Vec<Worker>,
    counters: NetCounters,
}

/// The TAP offload flags matching receive features `features`.
pub(crate) fn guest_offloads_to_tap(features: u64) -> u32 {
    let mut flags = 0;
    if features & feature::GUEST_CSUM != 0 {
        flags |= offload::CSUM;
        if features & feature::GUEST_TSO4 != 0 {
            flags |= offload::TSO4;
        }
        if features & feature::GUEST_TSO6 != 0 {
            flags |= offload::TSO6;
        }
        if features & feature::GUEST_ECN != 0 {
            flags |= offload::TSO_ECN;
        }
        if features & feature::GUEST_UFO != 0 {
            flags |= offload::UFO;
        }
    }
    flags
}

/// Buffer bytes a received frame may need when the driver takes receive
/// offloads `features` on a link of `mtu`.
pub(crate) fn rx_need(features: u64, mtu: u32) -> usize {
    let gso = feature::GUEST_TSO4 | feature::GUEST_TSO6 | feature::GUEST_UFO;
    if features & gso != 0 {
        HEADER_LEN + MAX_FRAME
    } else {
        // An Ethernet header with a VLAN tag around an MTU-sized packet.
        (HEADER_LEN + 18 + mtu as usize).min(HEADER_LEN + MAX_FRAME)
    }
}

impl Net {
    /// A NIC for `config` on `taps` (one per queue pair, configured by
    /// [`TapQueue::open_named`] or [`TapQueue::adopt_fd`]).
    pub fn new(config: NetConfig, taps: Vec<TapQueue>) -> Result<Net, NetError> {
        let pairs = config.queue_pairs;
        if taps.len() != usize::from(pairs) || pairs == 0 || usize::from(pairs) > MAX_QUEUE_PAIRS {
            return Err(NetError::QueueCount {
                queues: taps.len(),
                pairs,
            });
        }
        let tap_offloads = taps.first().map_or(0, TapQueue::supported_offloads);
        let features = offered_features(&config, tap_offloads);
        let queue_sizes = vec![config.queue_size.max(2); 2 * usize::from(pairs) + 1];
        Ok(Net {
            counters: NetCounters::new(usize::from(pairs)),
            config,
            taps,
            features,
            queue_sizes,
            status: Arc::new(AtomicU16::new(STATUS_LINK_UP)),
            workers: Vec::new(),
        })
    }

    /// Its counters, shared with its workers.
    pub fn counters(&self) -> Arc<vm_device::Counters> {
        self.counters.shared()
    }

    fn config_space(&self) -> [u8; 12] {
        let mut cs = [0u8; 12];
        cs[..6].copy_from_slice(&self.config.mac);
        cs[6..8].copy_from_slice(&self.status.load(Ordering::Acquire).to_le_bytes());
        cs[8..10].copy_from_slice(&self.config.queue_pairs.to_le_bytes());
        let mtu = self.config.mtu.min(u32::from(u16::MAX)) as u16;
        cs[10..12].copy_from_slice(&mtu.to_le_bytes());
        cs
    }
}

/// The features a NIC offers given its configuration and what the TAP
/// accepts (`offload::*` flags).
pub(crate) fn offered_features(config: &NetConfig, tap_offloads: u32) -> u64 {
    let mut f = VERSION_1
        | RING_EVENT_IDX
        | RING_INDIRECT_DESC
        | feature::MAC
        | feature::MTU
        | feature::STATUS
        | feature::MRG_RXBUF
        | feature::CTRL_VQ
        | feature::CTRL_RX
        | feature::GUEST_ANNOUNCE;
    if config.queue_pairs > 1 {
        f |= feature::MQ;
    }
    if config.offload_csum && tap_offloads & offload::CSUM != 0 {
        f |= feature::CSUM | feature::GUEST_CSUM | feature::CTRL_GUEST_OFFLOADS;
        if config.offload_tso {
            if tap_offloads & offload::TSO4 != 0 {
                f |= feature::GUEST_TSO4 | feature::HOST_TSO4;
            }
            if tap_offloads & offload::TSO6 != 0 {
                f |= feature::GUEST_TSO6 | feature::HOST_TSO6;
            }
            if tap_offloads & offload::TSO_ECN != 0 {
                f |= feature::GUEST_ECN | feature::HOST_ECN;
            }
            if tap_offloads & offload::UFO != 0 {
                f |= feature::GUEST_UFO | feature::HOST_UFO;
            }
        }
    }
    f
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::device::read_config_bytes(&self.config_space(), offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Every field is read-only for a VERSION_1 driver.
    }

    fn activate(&mut self, set: QueueSet) -> Result<(), ActivateError> {
        self.workers.clear();
        let acked = set.acked_features;
        let pairs = usize::from(self.config.queue_pairs);
        let receive_offloads = guest_offloads_to_tap(acked);
        if let Some(tap) = self.taps.first() {
            tap.set_offload(receive_offloads)?;
        }
        let tx_offloads = TxOffloads {
            csum: acked & feature::CSUM != 0,
            tso4: acked & feature::HOST_TSO4 != 0,
            tso6: acked & feature::HOST_TSO6 != 0,
            ecn: acked & feature::HOST_ECN != 0,
            ufo: acked & feature::HOST_UFO != 0,
        };
        let need = rx_need(acked, self.config.mtu);
        let mut queues: Vec<Option<(virtio_queue::Queue, vmm_sys_util::eventfd::EventFd)>> =
            (0..2 * pairs + 1).map(|_| None).collect();
        for (index, queue, event) in set.queues {
            if let Some(slot) = queues.get_mut(usize::from(index)) {
                *slot = Some((queue, event));
            }
        }
        let mut needs = Vec::new();
        for pair in 0..pairs {
            let (Some((rxq, rxe)), Some((txq, txe))) =
                (queues[2 * pair].take(), queues[2 * pair + 1].take())
            else {
                continue;
            };
            let host = self.taps[pair].try_clone()?;
            let host_fd = host.as_raw_fd();
            let rx_need = Arc::new(AtomicUsize::new(need));
            needs.push(rx_need.clone());
            let handler = QueuePair {
                mem: set.mem.clone(),
                rx: RxQueue::new(rxq, acked & feature::MRG_RXBUF != 0, rx_need, pair),
                tx: TxQueue::new(txq, tx_offloads, pair),
                host,
                interrupt: set.interrupt.clone(),
                counters: self.counters.clone(),
                rx_index: (2 * pair) as u16,
                broken: false,
            };
            self.workers.push(Worker::spawn_with_fds(
                format!("virtio-net-q{pair}"),
                ThreadKind::VirtioNet,
                vec![rxe, txe],
                vec![host_fd],
                handler,
            )?);
        }
        if let (Some((queue, event)), true) =
            (queues[2 * pairs].take(), acked & feature::CTRL_VQ != 0)
        {
            let tap = match self.taps.first() {
                Some(t) => Some(t.try_clone()?),
                None => None,
            };
            let handler = CtrlQueue {
                mem: set.mem.clone(),
                queue,
                index: (2 * pairs) as u16,
                interrupt: set.interrupt.clone(),
                target: CtrlTarget {
                    tap,
                    acked_offloads: acked,
                    rx_need: needs,
                    status: self.status.clone(),
                    max_pairs: self.config.queue_pairs,
                    mtu: self.config.mtu,
                },
                counters: self.counters.clone(),
                broken: false,
            };
            self.workers.push(Worker::spawn(
                "virtio-net-ctrl".into(),
                ThreadKind::VirtioNet,
                vec![event],
                handler,
            )?);
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.workers.clear();
    }

    fn pause(&mut self) -> bool {
        crate::worker::pause_all(&self.workers)
    }

    fn resume(&mut self) {
        crate::worker::resume_all(&self.workers);
    }
}
