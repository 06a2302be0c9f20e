//! The host side of a port: its backend, the connected client, and the bytes
//! in flight between host and guest that must outlive a device reset.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::net::{UnixListener, UnixStream};

use super::control::RateLimit;
use super::PortBackend;

/// The most host input bytes a port holds that the guest has not taken.
pub(super) const RX_BUF_CAP: usize = 64 << 10;
/// The most `emerg_wr` bytes a port holds while nobody can take them.
pub(super) const EMERGENCY_CAP: usize = 4096;

/// What became of a write to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Out {
    /// This many bytes (at least one) were taken.
    Wrote(usize),
    /// The host side is full: retry when it is writable.
    Blocked,
    /// No host side is connected: keep the bytes for the next one.
    NoPeer,
    /// The host side failed for good: the bytes cannot be delivered.
    Failed,
}

/// What became of a read from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum In {
    /// This many bytes (at least one) arrived.
    Read(usize),
    /// Nothing yet: retry when it is readable.
    Blocked,
    /// No input (now).
    Closed,
}

/// Which of a port's fds an epoll registration is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Watch {
    /// A socket port's listener (while no client is connected).
    Listener = 0,
    /// A socket port's client.
    Client = 1,
    /// A stream port's input.
    Input = 2,
    /// A stream port's output.
    Output = 3,
}

/// An fd the worker should watch, and for what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Interest {
    /// epoll token (see [`host_token`]).
    pub token: u64,
    /// The fd.
    pub fd: RawFd,
    /// Changes when the fd is replaced (a new client).
    pub generation: u64,
    /// EPOLLIN / EPOLLOUT (HUP and ERR are always reported).
    pub events: u32,
}

const HOST_TOKEN: u64 = 1 << 40;

/// The epoll token of `port`'s `watch` fd (never a queue index or u64::MAX).
pub(super) fn host_token(port: usize, watch: Watch) -> u64 {
    HOST_TOKEN | (watch as u64) << 8 | (port as u64 & 0xff)
}

/// The port and fd an epoll token names.
pub(super) fn decode_token(token: u64) -> Option<(usize, Watch)> {
    if token & !0xffff != HOST_TOKEN {
        return None;
    }
    let watch = match (token >> 8) & 0xff {
        0 => Watch::Listener,
        1 => Watch::Client,
        2 => Watch::Input,
        3 => Watch::Output,
        _ => return None,
    };
    Some(((token & 0xff) as usize, watch))
}

/// How non-blocking I/O is done on a host fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FdKind {
    /// send/recv with MSG_DONTWAIT.
    Socket,
    /// A non-blocking description of our own; epoll tells readiness.
    Pollable,
    /// A regular file or block device: never blocks, cannot be polled.
    Plain,
}

struct HostFd {
    file: File,
    kind: FdKind,
}

impl HostFd {
    fn new(fd: OwnedFd, write: bool) -> io::Result<HostFd> {
        let file = File::from(fd);
        let kind = file.metadata()?.file_type();
        if kind.is_socket() {
            return Ok(HostFd {
                file,
                kind: FdKind::Socket,
            });
        }
        if kind.is_file() || kind.is_block_device() {
            return Ok(HostFd {
                file,
                kind: FdKind::Plain,
            });
        }
        // A tty or pipe is often shared (stdin/stdout/stderr are one
        // description): make a description of our own non-blocking.
        let path = format!("/proc/self/fd/{}", file.as_raw_fd());
        let reopened = OpenOptions::new()
            .read(!write)
            .write(write)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path);
        let file = match reopened {
            Ok(own) => own,
            Err(_) => {
                set_nonblocking(&file)?;
                file
            }
        };
        Ok(HostFd {
            file,
            kind: FdKind::Pollable,
        })
    }

    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self.kind {
            FdKind::Socket => recv(self.file.as_fd(), buf),
            _ => retry(|| (&self.file).read(buf)),
        }
    }

    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        match self.kind {
            FdKind::Socket => send(self.file.as_fd(), buf),
            _ => retry(|| (&self.file).write(buf)),
        }
    }
}

struct Client {
    stream: UnixStream,
    generation: u64,
    /// The client shut down its sending side.
    input_eof: bool,
    /// The client is gone (hangup, error, failed write).
    hup: bool,
}

enum Backend {
    Socket {
        listener: UnixListener,
        client: Option<Client>,
        accepted: u64,
    },
    File(File),
    Stream {
        input: Option<HostFd>,
        output: Option<HostFd>,
    },
}

/// A port's host side.
pub(super) struct HostPort {
    backend: Backend,
    /// Host input read but not yet placed in guest buffers (at most [`RX_BUF_CAP`]).
    pub rx_buf: VecDeque<u8>,
    emergency: VecDeque<u8>,
    warn: RateLimit,
}

impl HostPort {
    /// The host side for `backend`.
    pub fn new(backend: PortBackend) -> io::Result<HostPort> {
        let backend = match backend {
            PortBackend::Socket(listener) => {
                listener.set_nonblocking(true)?;
                Backend::Socket {
                    listener,
                    client: None,
                    accepted: 0,
                }
            }
            PortBackend::File(file) => Backend::File(file),
            PortBackend::Stream { input, output } => Backend::Stream {
                input: input.map(|fd| HostFd::new(fd, false)).transpose()?,
                output: Some(HostFd::new(output, true)?),
            },
        };
        Ok(HostPort {
            backend,
            rx_buf: VecDeque::new(),
            emergency: VecDeque::new(),
            warn: RateLimit::default(),
        })
    }

    /// Whether a host side is there (what PORT_OPEN tells the guest).
    pub fn connected(&self) -> bool {
        match &self.backend {
            Backend::Socket { client, .. } => client.as_ref().is_some_and(|c| !c.hup),
            Backend::File(_) => true,
            Backend::Stream { input, output } => input.is_some() || output.is_some(),
        }
    }

    /// Accepts a waiting client if a socket port has none; true if one came.
    pub fn try_accept(&mut self) -> bool {
        let Backend::Socket {
            listener,
            client,
            accepted,
        } = &mut self.backend
        else {
            return false;
        };
        if client.is_some() {
            return false;
        }
        match listener.accept() {
            Ok((stream, _)) => {
                *accepted += 1;
                *client = Some(Client {
                    stream,
                    generation: *accepted,
                    input_eof: false,
                    hup: false,
                });
                true
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(e) => {
                if self.warn.allow() {
                    tracing::warn!("virtio-console: accept failed: {e}");
                }
                false
            }
        }
    }

    /// The client hung up (epoll said so).
    pub fn mark_hangup(&mut self) {
        if let Backend::Socket {
            client: Some(c), ..
        } = &mut self.backend
        {
            c.hup = true;
        }
    }

    /// Drops a client that is gone, after keeping what it sent and the
    /// guest did not take yet (up to [`RX_BUF_CAP`]); true if one was dropped.
    pub fn settle(&mut self) -> bool {
        let Backend::Socket { client, .. } = &mut self.backend else {
            return false;
        };
        let Some(c) = client.take_if(|c| c.hup) else {
            return false;
        };
        let mut buf = [0u8; 4096];
        let mut left_behind = false;
        let mut more = !c.input_eof;
        while more {
            let room = RX_BUF_CAP.saturating_sub(self.rx_buf.len()).min(buf.len());
            if room == 0 {
                left_behind = true;
                break;
            }
            match recv(c.stream.as_fd(), &mut buf[..room]) {
                Ok(n) if n > 0 => self.rx_buf.extend(&buf[..n]),
                _ => more = false,
            }
        }
        if left_behind && self.warn.allow() {
            tracing::warn!("virtio-console: a client left more input than the port can hold");
        }
        true
    }

    /// Writes some of `buf` (not empty) to the host without blocking.
    pub fn write(&mut self, buf: &[u8]) -> Out {
        match &mut self.backend {
            Backend::Socket {
                client: Some(c), ..
            } if !c.hup => match send(c.stream.as_fd(), buf) {
                Ok(0) => Out::Blocked,
                Ok(n) => Out::Wrote(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Out::Blocked,
                Err(_) => {
                    // The client is gone; the bytes wait for the next one.
                    c.hup = true;
                    Out::NoPeer
                }
            },
            Backend::Socket { .. } => Out::NoPeer,
            Backend::File(file) => match retry(|| file.write(buf)) {
                Ok(n) if n > 0 => Out::Wrote(n),
                result => {
                    if self.warn.allow() {
                        tracing::warn!("virtio-console: output file write failed: {result:?}");
                    }
                    Out::Failed
                }
            },
            Backend::Stream { output, .. } => {
                let Some(out) = output else {
                    return Out::Failed;
                };
                match out.write(buf) {
                    Ok(n) if n > 0 => Out::Wrote(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Out::Blocked,
                    result => {
                        if self.warn.allow() {
                            tracing::warn!("virtio-console: output closed: {result:?}");
                        }
                        *output = None;
                        Out::Failed
                    }
                }
            }
        }
    }

    /// Reads host input into `buf` (not empty) without blocking.
    pub fn read(&mut self, buf: &mut [u8]) -> In {
        match &mut self.backend {
            Backend::Socket {
                client: Some(c), ..
            } if !c.hup && !c.input_eof => match recv(c.stream.as_fd(), buf) {
                Ok(0) => {
                    c.input_eof = true;
                    In::Closed
                }
                Ok(n) => In::Read(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => In::Blocked,
                Err(_) => {
                    c.hup = true;
                    In::Closed
                }
            },
            Backend::Stream { input, .. } => {
                let Some(fd) = input else {
                    return In::Closed;
                };
                match fd.read(buf) {
                    Ok(n) if n > 0 => In::Read(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => In::Blocked,
                    _ => {
                        *input = None;
                        In::Closed
                    }
                }
            }
            _ => In::Closed,
        }
    }

    /// Queues an `emerg_wr` byte (dropped when [`EMERGENCY_CAP`] are waiting).
    pub fn push_emergency(&mut self, byte: u8) {
        if self.emergency.len() < EMERGENCY_CAP {
            self.emergency.push_back(byte);
        } else if self.warn.allow() {
            tracing::warn!("virtio-console: emergency output dropped: nobody reads port 0");
        }
    }

    /// Whether `emerg_wr` bytes wait.
    pub fn has_emergency(&self) -> bool {
        !self.emergency.is_empty()
    }

    /// Writes waiting `emerg_wr` bytes; true when none are left.
    pub fn flush_emergency(&mut self) -> bool {
        let mut pending = std::mem::take(&mut self.emergency);
        let flushed = loop {
            let (front, _) = pending.as_slices();
            if front.is_empty() {
                break true;
            }
            match self.write(front) {
                Out::Wrote(n) => {
                    pending.drain(..n.min(front.len()));
                }
                Out::Blocked | Out::NoPeer => break false,
                Out::Failed => {
                    pending.clear();
                    break true;
                }
            }
        };
        self.emergency = pending;
        flushed
    }

    /// Adds the fds of port `port` the worker must watch to `out`.
    pub fn interests(&self, port: usize, want_in: bool, want_out: bool, out: &mut Vec<Interest>) {
        const IN: u32 = libc::EPOLLIN as u32;
        const OUT: u32 = libc::EPOLLOUT as u32;
        let mut add = |watch, fd: RawFd, generation, events| {
            out.push(Interest {
                token: host_token(port, watch),
                fd,
                generation,
                events,
            })
        };
        match &self.backend {
            Backend::Socket {
                listener,
                client: None,
                ..
            } => add(Watch::Listener, listener.as_raw_fd(), 0, IN),
            Backend::Socket {
                client: Some(c), ..
            } => {
                let mut events = 0;
                if want_in && !c.input_eof && !c.hup {
                    events |= IN;
                }
                if want_out && !c.hup {
                    events |= OUT;
                }
                // Registered even with no events, to hear a hangup.
                add(Watch::Client, c.stream.as_raw_fd(), c.generation, events);
            }
            Backend::File(_) => {}
            Backend::Stream { input, output } => {
                if let Some(fd) = input
                    .as_ref()
                    .filter(|f| want_in && f.kind != FdKind::Plain)
                {
                    add(Watch::Input, fd.file.as_raw_fd(), 0, IN);
                }
                if let Some(fd) = output
                    .as_ref()
                    .filter(|f| want_out && f.kind != FdKind::Plain)
                {
                    add(Watch::Output, fd.file.as_raw_fd(), 0, OUT);
                }
            }
        }
    }
}

fn retry(mut op: impl FnMut() -> io::Result<usize>) -> io::Result<usize> {
    loop {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            result => return result,
        }
    }
}

/// recv(2) that never blocks.
fn recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    retry(|| {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the
        // whole call, and `fd` is open (borrowed).
        let r = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        usize::try_from(r).map_err(|_| io::Error::last_os_error())
    })
}

/// send(2) that never blocks nor raises SIGPIPE.
fn send(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    retry(|| {
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the
        // whole call, and `fd` is open (borrowed).
        let r = unsafe {
            libc::send(
                fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        usize::try_from(r).map_err(|_| io::Error::last_os_error())
    })
}

fn set_nonblocking(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL on an open fd reads its flags and touches no memory.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFL on an open fd sets its flags and touches no memory.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
