//! The control queue (virtio 1.x §5.1.6.5): multiqueue pair count, receive
//! mode and MAC filter commands (acknowledged: the TAP sees every frame and
//! the guest filters), receive offload changes and announcement acks.

use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};

use super::counters::{NetCounters, CTRL_COMMANDS, CTRL_ERRORS};
use super::device::{feature, guest_offloads_to_tap, rx_need, STATUS_ANNOUNCE};
use super::frames::{collect, read_front, write_at};
use super::tap::TapQueue;
use crate::device::Interrupt;
use crate::worker::QueueHandler;
use crate::GuestMemory;

const CLASS_RX: u8 = 0;
const CLASS_MAC: u8 = 1;
const CLASS_ANNOUNCE: u8 = 3;
const CLASS_MQ: u8 = 4;
const CLASS_GUEST_OFFLOADS: u8 = 5;
const OK: u8 = 0;
const ERR: u8 = 1;
/// The most payload bytes a command may carry (a MAC table of 2 × 256 entries).
const MAX_COMMAND: usize = 2 * (4 + 256 * 6);

/// The host-side state a command may change.
pub(crate) struct CtrlTarget {
    /// A handle on the TAP, for TUNSETOFFLOAD (None in tests).
    pub tap: Option<TapQueue>,
    /// Receive offload features the driver negotiated (what it may enable).
    pub acked_offloads: u64,
    /// Buffer bytes a received frame may need, per receive queue.
    pub rx_need: Vec<Arc<AtomicUsize>>,
    /// The device's status field (ANNOUNCE is cleared by an ack).
    pub status: Arc<AtomicU16>,
    /// Queue pairs the device has.
    pub max_pairs: u16,
    /// The MTU the host side uses.
    pub mtu: u32,
}

/// The control queue's handler.
pub(crate) struct CtrlQueue {
    pub mem: GuestMemory,
    pub queue: Queue,
    pub index: u16,
    pub interrupt: Arc<dyn Interrupt>,
    pub target: CtrlTarget,
    pub counters: NetCounters,
    pub broken: bool,
}

impl CtrlQueue {
    fn serve(&mut self) -> Result<usize, virtio_queue::Error> {
        let mut done = 0;
        let mem = self.mem.clone();
        loop {
            self.queue.disable_notification(&mem)?;
            while let Some(chain) = self.queue.iter(&mem)?.next() {
                let head = chain.head_index();
                let status = self.command(chain.clone(), chain);
                self.queue
                    .add_used(&mem, head, u32::from(status.is_some()))?;
                done += 1;
            }
            if !self.queue.enable_notification(&mem)? {
                return Ok(done);
            }
        }
    }

    /// Runs one command; the ack byte written, if the chain had room for it.
    fn command(
        &mut self,
        readable: virtio_queue::DescriptorChain<&GuestMemory>,
        writable: virtio_queue::DescriptorChain<&GuestMemory>,
    ) -> Option<u8> {
        let mem = self.mem.clone();
        let ack = collect(&mem, writable.writable(), true).ok()?;
        if ack.len == 0 {
            self.counters.device_add(CTRL_ERRORS, 1);
            return None;
        }
        let status = match collect(&mem, readable.readable(), false) {
            Ok(b) if b.len >= 2 && b.len - 2 <= MAX_COMMAND => {
                let mut bytes = vec![0u8; b.len];
                if read_front(&mem, &b.segments, &mut bytes) {
                    self.run(bytes[0], bytes[1], &bytes[2..])
                } else {
                    ERR
                }
            }
            _ => ERR,
        };
        self.counters.device_add(
            if status == OK {
                CTRL_COMMANDS
            } else {
                CTRL_ERRORS
            },
            1,
        );
        write_at(&mem, &ack.segments, 0, &[status]).then_some(status)
    }

    fn run(&mut self, class: u8, cmd: u8, data: &[u8]) -> u8 {
        match (class, cmd) {
            // PROMISC, ALLMULTI, ALLUNI, NOMULTI, NOUNI, NOBCAST: one on/off byte.
            (CLASS_RX, 0..=5) if data.len() == 1 => OK,
            // MAC_TABLE_SET (two tables) and MAC_ADDR_SET (six bytes).
            (CLASS_MAC, 0) if mac_tables_fit(data) => OK,
            (CLASS_MAC, 1) if data.len() == 6 => OK,
            (CLASS_ANNOUNCE, 0) if data.is_empty() => {
                self.target
                    .status
                    .fetch_and(!STATUS_ANNOUNCE, Ordering::AcqRel);
                OK
            }
            (CLASS_MQ, 0) if data.len() == 2 => {
                let pairs = u16::from_le_bytes([data[0], data[1]]);
                if (1..=self.target.max_pairs).contains(&pairs) {
                    OK
                } else {
                    ERR
                }
            }
            (CLASS_GUEST_OFFLOADS, 0) if data.len() == 8 => {
                let mut raw = [0u8; 8];
                raw.copy_from_slice(data);
                self.set_offloads(u64::from_le_bytes(raw))
            }
            _ => ERR,
        }
    }

    fn set_offloads(&mut self, wanted: u64) -> u8 {
        let settable = feature::GUEST_CSUM
            | feature::GUEST_TSO4
            | feature::GUEST_TSO6
            | feature::GUEST_ECN
            | feature::GUEST_UFO;
        if wanted & !(self.target.acked_offloads & settable) != 0 {
            return ERR;
        }
        if let Some(tap) = &self.target.tap {
            if tap.set_offload(guest_offloads_to_tap(wanted)).is_err() {
                return ERR;
            }
        }
        let need = rx_need(wanted, self.target.mtu);
        for n in &self.target.rx_need {
            n.store(need, Ordering::Relaxed);
        }
        OK
    }
}

/// A MAC_TABLE_SET payload: two (count, entries) tables filling `data` exactly.
fn mac_tables_fit(data: &[u8]) -> bool {
    let mut rest = data;
    for _ in 0..2 {
        let Some((count, tail)) = rest.split_first_chunk::<4>() else {
            return false;
        };
        let bytes = (u32::from_le_bytes(*count) as usize).saturating_mul(6);
        if bytes > tail.len() {
            return false;
        }
        rest = &tail[bytes..];
    }
    rest.is_empty()
}

impl QueueHandler for CtrlQueue {
    fn process(&mut self, _index: usize) {
        if self.broken {
            return;
        }
        let result = self.serve();
        crate::device::after_pass(
            result,
            &mut self.queue,
            &self.mem,
            self.interrupt.as_ref(),
            self.index,
            &mut self.broken,
        );
    }

    fn quiesce(&mut self) {
        // Commands complete within `process`.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_tables_must_fill_the_payload() {
        let mut ok = vec![1, 0, 0, 0];
        ok.extend([0u8; 6]);
        ok.extend([0, 0, 0, 0]);
        assert!(mac_tables_fit(&ok));
        assert!(!mac_tables_fit(&ok[..ok.len() - 1]));
        assert!(!mac_tables_fit(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]));
        assert!(!mac_tables_fit(&[]));
    }
}
