//! virtio-console (device type 3) with the multiport extension
//! (virtio-serial): up to 31 ports, each backed by a Unix socket, a file or
//! a pair of host fds, all served by one worker thread.
//!
//! Guest output is written to the host straight from guest memory and a
//! chain is completed only once every byte was taken, so a socket client
//! that disconnects and reconnects neither loses nor repeats what the device
//! still held; host input is read only when the guest has posted buffers
//! for it. The host sides (listeners, clients, unread input) belong to the
//! device, not to the worker, so they survive a device reset.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::device::{ActivateError, QueueSet, VirtioDevice};
use crate::features::{RING_EVENT_IDX, RING_INDIRECT_DESC, VERSION_1};

mod control;
mod engine;
mod host;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_data;
#[cfg(test)]
mod tests_device;
mod thread;

use engine::Engine;
use host::HostPort;
use thread::ConsoleWorker;

/// virtio device ID of a console.
pub const DEVICE_TYPE: u16 = 3;
/// The most ports a console has (port IDs 0..=30).
pub const MAX_PORTS: usize = 31;
/// The longest port name, in bytes.
pub const MAX_NAME_LEN: usize = 1024;

/// Feature bits (virtio 1.x §5.3.3).
pub mod feature {
    /// `cols` and `rows` are valid (not offered: the size is unknown).
    pub const SIZE: u64 = 1 << 0;
    /// Several ports and the control queues.
    pub const MULTIPORT: u64 = 1 << 1;
    /// `emerg_wr` writes a byte to port 0.
    pub const EMERG_WRITE: u64 = 1 << 2;
}

const DATA_QUEUE_SIZE: u16 = 128;
const CONTROL_QUEUE_SIZE: u16 = 32;
const CONTROL_RX: usize = 2;
const CONTROL_TX: usize = 3;
const CONFIG_SIZE: usize = 12;
const EMERG_WR: u64 = 8;

/// One port of a console.
pub struct ConsolePortConfig {
    /// Name the guest sees (`/sys/class/virtio-ports/vportNpM/name`); may be empty.
    pub name: String,
    /// Whether the guest should use the port as a console (hvcN).
    pub console: bool,
    /// Where the port's bytes go and come from.
    pub backend: PortBackend,
}

/// The host side of a port.
pub enum PortBackend {
    /// Listen on a Unix socket; one client at a time; reconnects allowed.
    /// The listener is made non-blocking; a second client waits in the
    /// backlog until the first one leaves. Guest output nobody took stays
    /// in the device for the next client. Bytes already in a client's socket
    /// buffer when it closes are discarded by the kernel; a client that must
    /// not lose any shuts down its reading side, reads to EOF, then closes.
    Socket(UnixListener),
    /// Append guest output to a file; no input.
    File(File),
    /// Host stdin/stdout-like pair of fds (for a console port as hvc0): any
    /// Read + Write fds. Sockets are used with per-call non-blocking flags;
    /// ttys, pipes and other pollable fds are reopened through
    /// `/proc/self/fd` to get a non-blocking description of their own (or,
    /// failing that, set non-blocking); regular files are used as they are.
    Stream {
        /// Host input, if any.
        input: Option<OwnedFd>,
        /// Host output.
        output: OwnedFd,
    },
}

/// What the guest is told about a port.
#[derive(Debug, Clone)]
struct PortInfo {
    name: String,
    console: bool,
}

/// The console device.
pub struct Console {
    info: Arc<[PortInfo]>,
    hosts: Arc<Mutex<Vec<HostPort>>>,
    queue_sizes: Vec<u16>,
    worker: Option<ConsoleWorker>,
}

/// Queue index of port `port`'s receiveq (device → driver).
fn rx_queue(port: usize) -> usize {
    if port == 0 {
        0
    } else {
        2 + 2 * port
    }
}

/// Queue index of port `port`'s transmitq (driver → device).
fn tx_queue(port: usize) -> usize {
    rx_queue(port) + 1
}

/// Locks `m`, ignoring poisoning (the state stays consistent between calls).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Console {
    /// A console with `ports` (port N is `ports[N]`; 1 to [`MAX_PORTS`]).
    pub fn new(ports: Vec<ConsolePortConfig>) -> io::Result<Console> {
        if ports.is_empty() || ports.len() > MAX_PORTS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a console has 1 to {MAX_PORTS} ports, not {}", ports.len()),
            ));
        }
        let mut info = Vec::with_capacity(ports.len());
        let mut hosts = Vec::with_capacity(ports.len());
        for port in ports {
            if port.name.len() > MAX_NAME_LEN {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("port name longer than {MAX_NAME_LEN} bytes"),
                ));
            }
            hosts.push(HostPort::new(port.backend)?);
            info.push(PortInfo {
                name: port.name,
                console: port.console,
            });
        }
        let mut queue_sizes = vec![DATA_QUEUE_SIZE; 2 + 2 * info.len()];
        queue_sizes[CONTROL_RX] = CONTROL_QUEUE_SIZE;
        queue_sizes[CONTROL_TX] = CONTROL_QUEUE_SIZE;
        Ok(Console {
            info: info.into(),
            hosts: Arc::new(Mutex::new(hosts)),
            queue_sizes,
            worker: None,
        })
    }

    fn config_space(&self) -> [u8; CONFIG_SIZE] {
        let mut cs = [0u8; CONFIG_SIZE];
        // cols and rows stay 0: SIZE is not offered.
        cs[4..8].copy_from_slice(&(self.info.len() as u32).to_le_bytes());
        cs
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        VERSION_1 | RING_INDIRECT_DESC | RING_EVENT_IDX | feature::MULTIPORT | feature::EMERG_WRITE
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::device::read_config_bytes(&self.config_space(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only emerg_wr is writable; its low byte is the character.
        let Some(&byte) = data.first() else {
            return;
        };
        if offset != EMERG_WR {
            return;
        }
        let mut hosts = lock(&self.hosts);
        let Some(port) = hosts.first_mut() else {
            return;
        };
        port.push_emergency(byte);
        match &self.worker {
            // The worker orders it between guest output chains.
            Some(worker) => worker.wake(),
            None => {
                port.try_accept();
                port.flush_emergency();
            }
        }
    }

    fn activate(&mut self, set: QueueSet) -> Result<(), ActivateError> {
        self.worker = None;
        let multiport = set.acked_features & feature::MULTIPORT != 0;
        let mut queues = Vec::with_capacity(set.queues.len());
        let mut events = Vec::with_capacity(set.queues.len());
        for (index, queue, event) in set.queues {
            queues.push((index, queue));
            events.push((index, event));
        }
        let engine = Engine::new(
            set.mem,
            set.interrupt,
            queues,
            multiport,
            self.info.clone(),
            self.hosts.clone(),
        );
        self.worker = Some(ConsoleWorker::spawn(engine, events)?);
        Ok(())
    }

    fn reset(&mut self) {
        // Joins the thread; listeners, clients and unread input stay in `hosts`.
        self.worker = None;
    }

    fn pause(&mut self) -> bool {
        self.worker.as_ref().is_none_or(ConsoleWorker::pause)
    }

    fn resume(&mut self) {
        if let Some(w) = &self.worker {
            w.resume();
        }
    }
}
