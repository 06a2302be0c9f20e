//! The contract between the PCI transport and a device model.

use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::GuestMemory;

/// How a device interrupts the guest.
pub trait Interrupt: Send + Sync {
    /// Queue `queue` has new used buffers.
    fn notify_queue(&self, queue: u16);
    /// The device configuration changed.
    fn notify_config(&self);
    /// The guest broke the queue protocol: set NEEDS_RESET and tell the driver.
    fn needs_reset(&self);
}

/// The queues a driver set up, with the eventfds its notifications arrive on.
pub struct QueueSet {
    /// Guest memory the queues live in.
    pub mem: GuestMemory,
    /// Queues in index order (only the ones the driver enabled).
    pub queues: Vec<(u16, Queue, EventFd)>,
    /// Interrupt delivery.
    pub interrupt: Arc<dyn Interrupt>,
    /// Features the driver accepted.
    pub acked_features: u64,
}

/// Why a device refused to start.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver did not set up a queue the device needs.
    #[error("queue {0} is not ready")]
    QueueNotReady(u16),
    /// A host resource failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A virtio device model.
pub trait VirtioDevice: Send {
    /// The virtio device ID (4 = entropy, 2 = block, 3 = console...).
    fn device_type(&self) -> u16;
    /// The largest size of each of its queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features it offers (including `VERSION_1`).
    fn features(&self) -> u64;
    /// Reads its configuration space (out of range: zeros).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes its configuration space.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts processing the queues.
    fn activate(&mut self, queues: QueueSet) -> Result<(), ActivateError>;
    /// Stops processing and forgets the queues (a driver reset).
    fn reset(&mut self);
    /// Stops touching guest memory and queues: requests in flight complete,
    /// workers park. `false` if a worker could not be parked in time.
    fn pause(&mut self) -> bool;
    /// Continues after [`VirtioDevice::pause`].
    fn resume(&mut self);
}

/// A device whose host side outlives one VM instance (sockets, clients):
/// each instance's transport gets a handle, and dropping the transport
/// resets the device instead of destroying it.
pub struct SharedDevice<D> {
    inner: std::sync::Arc<std::sync::Mutex<D>>,
    queue_sizes: Vec<u16>,
}

impl<D: VirtioDevice> SharedDevice<D> {
    /// A handle on `inner`.
    pub fn new(inner: std::sync::Arc<std::sync::Mutex<D>>) -> SharedDevice<D> {
        let queue_sizes = inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .queue_max_sizes()
            .to_vec();
        SharedDevice { inner, queue_sizes }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, D> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<D: VirtioDevice> VirtioDevice for SharedDevice<D> {
    fn device_type(&self) -> u16 {
        self.lock().device_type()
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }
    fn features(&self) -> u64 {
        self.lock().features()
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.lock().read_config(offset, data)
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.lock().write_config(offset, data)
    }
    fn activate(&mut self, queues: QueueSet) -> Result<(), ActivateError> {
        self.lock().activate(queues)
    }
    fn reset(&mut self) {
        self.lock().reset()
    }
    fn pause(&mut self) -> bool {
        self.lock().pause()
    }
    fn resume(&mut self) {
        self.lock().resume()
    }
}

/// Copies the bytes of configuration space `space` at `offset` into `data`;
/// bytes past its end (or an offset that overflows) read as zero.
pub(crate) fn read_config_bytes(space: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = offset
            .checked_add(i as u64)
            .and_then(|o| usize::try_from(o).ok())
            .and_then(|o| space.get(o))
            .copied()
            .unwrap_or(0);
    }
}

/// What a queue worker does after a pass over its queue: interrupt the guest
/// if it completed buffers and the ring asks for it, or, when the guest broke
/// the ring, mark the queue `broken` and report NEEDS_RESET (once; the log
/// line is at debug level so a guest cannot flood the host log).
pub(crate) fn after_pass(
    result: Result<usize, virtio_queue::Error>,
    queue: &mut virtio_queue::Queue,
    mem: &GuestMemory,
    interrupt: &dyn Interrupt,
    index: u16,
    broken: &mut bool,
) {
    use virtio_queue::QueueT;
    match result {
        Ok(0) => {}
        Ok(_) => {
            if queue.needs_notification(mem).unwrap_or(true) {
                interrupt.notify_queue(index);
            }
        }
        Err(e) => {
            tracing::debug!("virtio: the guest broke queue {index} ({e}); device needs reset");
            *broken = true;
            interrupt.needs_reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::read_config_bytes;

    #[test]
    fn config_reads_past_the_end_or_overflowing_read_zero() {
        let space = [1u8, 2, 3, 4];
        let mut data = [0xffu8; 4];
        read_config_bytes(&space, 2, &mut data);
        assert_eq!(data, [3, 4, 0, 0]);
        let mut data = [0xffu8; 2];
        read_config_bytes(&space, u64::MAX, &mut data);
        assert_eq!(data, [0, 0]);
    }
}
