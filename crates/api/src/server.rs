//! The API server: HTTP/1.1 over a Unix socket.
//!
//! One accept thread (`api`) and one thread per connection (`api-conn`), at
//! most [`MAX_CONNECTIONS`] of them. Every connection has read and write
//! timeouts, so a slow or dead client only ever blocks its own thread. The
//! socket file is created with mode 0600 in a directory that must not be
//! world-writable, and removed when the server stops.

use sandbox::seccomp::ThreadKind;
use std::fs;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tracing::debug;

use crate::http::{self, Limits, Request, Response};

/// Default maximum number of connections served at the same time.
pub const MAX_CONNECTIONS: usize = 64;

/// Answers requests. Called concurrently from connection threads.
pub trait Handler: Send + Sync + 'static {
    /// Produces the response to `request`.
    fn handle(&self, request: &Request) -> Response;

    /// Called once the response to `request` has been written (or writing
    /// it failed), e.g. to act on a request only after answering it. Does
    /// nothing by default.
    fn responded(&self, request: &Request, response: &Response) {
        let _ = (request, response);
    }
}

impl<F> Handler for F
where
    F: Fn(&Request) -> Response + Send + Sync + 'static,
{
    fn handle(&self, request: &Request) -> Response {
        self(request)
    }
}

/// Tuning for [`Server::serve_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerOptions {
    /// Longest wait for a read: an idle keep-alive connection is closed, a
    /// request stalled mid-way gets 408. Must be non-zero.
    pub read_timeout: Duration,
    /// Longest wait for a write to a client that does not read. Must be
    /// non-zero.
    pub write_timeout: Duration,
    /// Connections served at the same time. Past it, new connections wait
    /// in the listen queue up to `queue_timeout` for a free slot (a burst of
    /// short requests is absorbed); then they are answered 503.
    pub max_connections: usize,
    /// How long a connection over the limit waits for a slot.
    pub queue_timeout: Duration,
    /// Request size limits.
    pub limits: Limits,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_connections: MAX_CONNECTIONS,
            queue_timeout: Duration::from_secs(2),
            limits: Limits::default(),
        }
    }
}

/// Why the API socket could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The socket's directory is world-writable.
    #[error(
        "refusing to create the API socket in {}: the directory is world-writable; \
         use a private directory (e.g. $XDG_RUNTIME_DIR or a directory with mode 0700)",
        .dir.display()
    )]
    InsecureDirectory {
        /// The directory.
        dir: PathBuf,
    },
    /// Another process answers on the socket.
    #[error("API socket {} is already in use by another process", .path.display())]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// The path exists and is not a socket.
    #[error("{} exists and is not a socket; refusing to replace it", .path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A system call failed.
    #[error("cannot {action} {}: {source}", .path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// The socket file we created; removed on drop if it is still ours.
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        // Leave alone a file that replaced ours in the meantime.
        if let Ok(meta) = fs::symlink_metadata(&self.path) {
            if meta.dev() == self.dev && meta.ino() == self.ino {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

/// A bound, not yet serving, API socket. Dropping it removes the socket file.
#[derive(Debug)]
pub struct Server {
    listener: UnixListener,
    file: SocketFile,
}

impl Server {
    /// Creates the API socket at `path` with mode 0600.
    ///
    /// Refuses a world-writable parent directory; replaces a stale socket
    /// that nobody answers; refuses a live socket or a non-socket file.
    ///
    /// The process umask is set to 0177 around the `bind` and then restored.
    /// The umask is process-wide, so call this before other threads create
    /// files (they would otherwise get mode 0600 or less meanwhile).
    pub fn bind(path: &Path) -> Result<Server, ServerError> {
        let io_err = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| ServerError::Io {
                action,
                path,
                source,
            }
        };
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let dir_meta = fs::metadata(dir).map_err(io_err("access directory", dir))?;
        if dir_meta.mode() & 0o002 != 0 {
            return Err(ServerError::InsecureDirectory {
                dir: dir.to_path_buf(),
            });
        }
        match fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("access", path)(e)),
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(ServerError::NotASocket {
                    path: path.to_path_buf(),
                })
            }
            Ok(_) => match UnixStream::connect(path) {
                Ok(_) => {
                    return Err(ServerError::InUse {
                        path: path.to_path_buf(),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    debug!(path = %path.display(), "removing stale API socket");
                    fs::remove_file(path).map_err(io_err("remove stale socket", path))?;
                }
                Err(e) => return Err(io_err("probe existing socket", path)(e)),
            },
        }

        // SAFETY: umask only changes the process file-mode mask; it has no
        // memory-safety preconditions and cannot fail.
        let old_mask = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(path);
        // SAFETY: as above; restores the previous mask.
        unsafe { libc::umask(old_mask) };
        let listener = bound.map_err(io_err("bind", path))?;

        let file = fs::symlink_metadata(path)
            .map(|meta| SocketFile {
                path: path.to_path_buf(),
                dev: meta.dev(),
                ino: meta.ino(),
            })
            .map_err(io_err("access", path))?;
        // From here on, dropping `file` removes the socket on failure.
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .map_err(io_err("set permissions of", path))?;
        listener
            .set_nonblocking(true)
            .map_err(io_err("configure", path))?;
        Ok(Server { listener, file })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.file.path
    }

    /// Serves requests with `handler` and default [`ServerOptions`].
    pub fn serve(self, handler: Arc<dyn Handler>) -> io::Result<ServerHandle> {
        self.serve_with(handler, ServerOptions::default())
    }

    /// Serves requests with `handler` on a new thread named `api`.
    pub fn serve_with(
        self,
        handler: Arc<dyn Handler>,
        options: ServerOptions,
    ) -> io::Result<ServerHandle> {
        let Server { listener, file } = self;
        let (wake, wake_rx) = UnixStream::pair()?;
        let active = Arc::new(AtomicUsize::new(0));
        let accept = Acceptor {
            listener,
            wake: wake_rx,
            handler,
            options,
            active: Arc::clone(&active),
        };
        let thread =
            sandbox::thread::spawn(ThreadKind::Api, "api".to_string(), move || accept.run())?;
        Ok(ServerHandle {
            wake: Some(wake),
            thread: Some(thread),
            active,
            file,
        })
    }
}

/// A running server. [`ServerHandle::shutdown`] (or dropping the handle)
/// stops accepting connections and removes the socket file; connections
/// already open finish on their own (at end of stream or timeout).
#[derive(Debug)]
pub struct ServerHandle {
    wake: Option<UnixStream>,
    thread: Option<JoinHandle<()>>,
    active: Arc<AtomicUsize>,
    // Dropped after `Drop::drop` has joined the accept thread.
    file: SocketFile,
}

impl ServerHandle {
    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.file.path
    }

    /// The number of connections being served.
    pub fn active_connections(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Stops accepting connections, waits for the accept thread, and
    /// removes the socket file.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(wake) = self.wake.take() {
            // Closing our end makes the accept thread's end readable.
            let _ = wake.shutdown(std::net::Shutdown::Both);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A stream over a Unix socket whose writes never raise `SIGPIPE`
/// (`send(MSG_NOSIGNAL)`), so a vanished peer is an `EPIPE` error even in a
/// process that does not ignore the signal.
#[derive(Debug)]
pub(crate) struct SocketStream(pub(crate) UnixStream);

impl Read for SocketStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for SocketStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: the descriptor is owned by `self.0` and open; the pointer
        // and length describe the live, initialized slice `buf`.
        let sent = unsafe {
            libc::send(
                self.0.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        usize::try_from(sent).map_err(|_| io::Error::last_os_error())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Decrements the connection count when a connection thread ends.
struct ConnectionSlot(Arc<AtomicUsize>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The accept thread's state.
struct Acceptor {
    listener: UnixListener,
    wake: UnixStream,
    handler: Arc<dyn Handler>,
    options: ServerOptions,
    active: Arc<AtomicUsize>,
}

impl Acceptor {
    fn run(self) {
        let listener_fd = self.listener.as_raw_fd();
        let wake_fd = self.wake.as_raw_fd();
        loop {
            let (readable, woken) = match poll2(listener_fd, wake_fd, -1) {
                Ok(ready) => ready,
                Err(e) => {
                    debug!("api: poll failed: {e}");
                    thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            if woken {
                break;
            }
            if !readable {
                continue;
            }
            match self.listener.accept() {
                Ok((stream, _)) => self.dispatch(stream),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::Interrupted
                            | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of
                    // spinning on a listener that stays readable.
                    debug!("api: accept failed: {e}");
                    if matches!(poll2(wake_fd, wake_fd, 100), Ok((true, _))) {
                        break;
                    }
                }
            }
        }
        debug!("api: stopped accepting connections");
    }

    fn dispatch(&self, stream: UnixStream) {
        if let Err(e) = stream.set_nonblocking(false) {
            debug!("api: cannot configure connection: {e}");
            return;
        }
        // The accept thread waits here, so later connections queue in the
        // kernel's listen backlog; it polls only while the server is full.
        let deadline = std::time::Instant::now() + self.options.queue_timeout;
        while self.active.load(Ordering::SeqCst) >= self.options.max_connections {
            if std::time::Instant::now() >= deadline {
                reject(stream);
                return;
            }
            thread::sleep(Duration::from_millis(5));
        }
        self.active.fetch_add(1, Ordering::SeqCst);
        let slot = ConnectionSlot(Arc::clone(&self.active));
        let handler = Arc::clone(&self.handler);
        let options = self.options;
        let spawned = sandbox::thread::spawn(ThreadKind::Api, "api-conn".to_string(), move || {
            let _slot = slot;
            serve_connection(stream, handler.as_ref(), &options);
        });
        if let Err(e) = spawned {
            // The closure, stream and slot included, was dropped.
            debug!("api: cannot spawn a connection thread: {e}");
        }
    }
}

/// Answers 503 to a connection over the limit, without blocking on a peer
/// that does not read.
fn reject(stream: UnixStream) {
    debug!("api: too many connections, rejecting one");
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let response = Response::error(503, "too many connections");
    let _ = http::write_response(&mut SocketStream(stream), &response, false);
}

/// Serves one connection until it closes, times out, or errs.
fn serve_connection(stream: UnixStream, handler: &dyn Handler, options: &ServerOptions) {
    let configured = stream
        .set_read_timeout(Some(options.read_timeout))
        .and_then(|()| stream.set_write_timeout(Some(options.write_timeout)));
    if let Err(e) = configured {
        debug!("api: cannot set connection timeouts: {e}");
        return;
    }
    let mut reader = BufReader::new(SocketStream(stream));
    loop {
        let request = match http::read_request(&mut reader, &options.limits) {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(e) => {
                debug!("api: bad request: {e}");
                let response = Response::error(e.status, e.message);
                let _ = http::write_response(reader.get_mut(), &response, false);
                return;
            }
        };
        let response = catch_unwind(AssertUnwindSafe(|| handler.handle(&request)))
            .unwrap_or_else(|_| Response::error(500, "internal error"));
        let keep_alive = request.wants_keep_alive() && !response.close;
        let include_body = request.method != "HEAD";
        let written =
            http::write_response_inner(reader.get_mut(), &response, keep_alive, include_body);
        let _ = catch_unwind(AssertUnwindSafe(|| handler.responded(&request, &response)));
        if let Err(e) = written {
            debug!("api: cannot write response: {e}");
            return;
        }
        if !keep_alive {
            return;
        }
    }
}

/// Waits until `a` or `b` is readable (or hung up), for at most `timeout_ms`
/// (-1: no limit). Returns whether each is ready.
fn poll2(a: RawFd, b: RawFd, timeout_ms: libc::c_int) -> io::Result<(bool, bool)> {
    let mut fds = [
        libc::pollfd {
            fd: a,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: b,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is a valid, writable array of two pollfd structures
        // that outlives the call; the count matches its length.
        let ret = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
        if ret >= 0 {
            return Ok((fds[0].revents != 0, fds[1].revents != 0));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
pub(crate) mod tests;
