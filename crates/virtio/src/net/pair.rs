//! A queue pair's worker handler: its receive and transmit queues and its
//! own TAP queue. Token 0 is the receive queue's notification, 1 the
//! transmit queue's, 2 the TAP becoming readable or writable (edge-triggered).

use std::sync::Arc;

use virtio_queue::QueueT;

use super::counters::NetCounters;
use super::frames::FrameIo;
use super::rx::{RxQueue, RxStop};
use super::tx::{TxQueue, TxStop};
use crate::device::Interrupt;
use crate::worker::QueueHandler;
use crate::GuestMemory;

/// Worker token of the receive queue's notification.
pub(crate) const RX_KICK: usize = 0;
/// Worker token of the transmit queue's notification.
pub(crate) const TX_KICK: usize = 1;
/// Worker token of the TAP's readiness.
pub(crate) const HOST_READY: usize = 2;

/// One queue pair and its host queue.
pub(crate) struct QueuePair<H: FrameIo> {
    pub mem: GuestMemory,
    pub rx: RxQueue,
    pub tx: TxQueue,
    pub host: H,
    pub interrupt: Arc<dyn Interrupt>,
    pub counters: NetCounters,
    /// Global queue index of the receive queue (transmit is the next one).
    pub rx_index: u16,
    pub broken: bool,
}

impl<H: FrameIo> QueuePair<H> {
    /// Delivers what the host has, as far as the guest's buffers go.
    /// Receive notifications stay off while buffers last: the guest's
    /// refills then cost no exits; they are turned on only when it runs dry.
    fn receive(&mut self) -> Result<usize, virtio_queue::Error> {
        let mut total = 0;
        loop {
            self.rx.queue.disable_notification(&self.mem)?;
            let (n, stop) = self.rx.fill(&self.mem, &mut self.host, &self.counters)?;
            total += n;
            match stop {
                RxStop::HostEmpty => {
                    self.suppress_rx_kicks()?;
                    return Ok(total);
                }
                RxStop::NoBuffers => {
                    if !self.rx.queue.enable_notification(&self.mem)? {
                        return Ok(total);
                    }
                }
            }
        }
    }

    /// With EVENT_IDX, moves `avail_event` a ring ahead of what the device
    /// has taken: while the guest has buffers posted, its refills need not
    /// notify (a driver kicks once it passes `avail_event`, and some, like
    /// virtio-drivers', whenever its index is beyond it). Running out of
    /// buffers sets it back to the next one (`enable_notification`).
    fn suppress_rx_kicks(&mut self) -> Result<(), virtio_queue::Error> {
        let q = &self.rx.queue;
        if !q.event_idx_enabled() {
            return Ok(());
        }
        let size = q.size();
        let ahead = q.next_avail().wrapping_add(size);
        let addr = q
            .used_ring()
            .checked_add(4 + 8 * u64::from(size))
            .map(vm_memory::GuestAddress)
            .ok_or(virtio_queue::Error::AddressOverflow)?;
        use vm_memory::Bytes;
        self.mem
            .store(ahead.to_le(), addr, std::sync::atomic::Ordering::Release)
            .map_err(virtio_queue::Error::GuestMemory)
    }

    /// Sends what the guest queued, until it is drained or the host is full.
    fn transmit(&mut self) -> Result<usize, virtio_queue::Error> {
        let mut total = 0;
        loop {
            self.tx.queue.disable_notification(&self.mem)?;
            let (n, stop) = self.tx.send(&self.mem, &mut self.host, &self.counters)?;
            total += n;
            match stop {
                // The TAP's writable edge resumes it; the guest need not kick.
                TxStop::HostFull => return Ok(total),
                TxStop::Drained => {
                    if !self.tx.queue.enable_notification(&self.mem)? {
                        return Ok(total);
                    }
                }
            }
        }
    }

    fn finish(&mut self, result: Result<usize, virtio_queue::Error>, rx: bool) {
        let (queue, index) = if rx {
            (&mut self.rx.queue, self.rx_index)
        } else {
            (&mut self.tx.queue, self.rx_index + 1)
        };
        crate::device::after_pass(
            result,
            queue,
            &self.mem,
            self.interrupt.as_ref(),
            index,
            &mut self.broken,
        );
    }
}

impl<H: FrameIo> QueueHandler for QueuePair<H> {
    fn process(&mut self, index: usize) {
        if self.broken {
            return;
        }
        if index == TX_KICK || (index == HOST_READY && self.tx.blocked()) {
            let r = self.transmit();
            self.finish(r, false);
        }
        if !self.broken && (index == RX_KICK || index == HOST_READY) {
            let r = self.receive();
            self.finish(r, true);
        }
    }

    fn quiesce(&mut self) {
        // Frames move within `process`; a chain waiting for a full TAP stays
        // popped but untouched until the worker runs again.
    }
}
