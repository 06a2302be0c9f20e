//! Backends of the guest's serial console: the VMM's terminal, a file, a Unix
//! socket, or nothing. The console outlives guest reboots: its UART is reset,
//! its backend stays connected.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::serial::{pump_input, SerialPort};
use vmm_sys_util::eventfd::EventFd;

use crate::config::SerialConfig;

/// The serial console: the UART shared with the port bus, and its backend's threads.
pub struct Console {
    port: Arc<Mutex<SerialPort>>,
    _terminal: Option<RawTerminal>,
}

/// How long a socket client may stall guest output before it is dropped.
const SOCKET_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

impl Console {
    /// Creates the UART and connects the backend `config` names.
    pub fn new(config: &SerialConfig) -> io::Result<Console> {
        let irq = EventFd::new(libc::EFD_CLOEXEC)?;
        let (out, input): (Box<dyn Write + Send>, Option<Input>) = match config {
            SerialConfig::Tty => {
                let stdout = File::from(io::stdout().as_fd().try_clone_to_owned()?);
                (Box::new(stdout), Some(Input::Stdin))
            }
            SerialConfig::File { path } => (Box::new(File::create(path)?), None),
            SerialConfig::Socket { path } => {
                let client = Arc::new(Mutex::new(None));
                (
                    Box::new(SocketOutput(client.clone())),
                    Some(Input::Socket(listen(path)?, client)),
                )
            }
            SerialConfig::Off => (Box::new(io::sink()), None),
        };
        let port = Arc::new(Mutex::new(SerialPort::new(irq, out)?));
        let drained = port
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drained_event()?;
        let mut terminal = None;
        match input {
            Some(Input::Stdin) => {
                terminal = RawTerminal::enter();
                let port = port.clone();
                spawn("serial-stdin", move || {
                    if let Err(e) = pump_input(&port, &drained, io::stdin().lock()) {
                        tracing::warn!("serial input from stdin stopped: {e}");
                    }
                })?;
            }
            Some(Input::Socket(listener, client)) => {
                let port = port.clone();
                spawn("serial-socket", move || {
                    serve_socket(listener, client, port, drained)
                })?;
            }
            None => {}
        }
        Ok(Console {
            port,
            _terminal: terminal,
        })
    }

    /// The UART, for the port bus.
    pub fn port(&self) -> Arc<Mutex<SerialPort>> {
        self.port.clone()
    }
}

enum Input {
    Stdin,
    Socket(UnixListener, SharedClient),
}

type SharedClient = Arc<Mutex<Option<UnixStream>>>;

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> io::Result<()> {
    sandbox::thread::spawn(sandbox::seccomp::ThreadKind::SerialInput, name.into(), f).map(|_| ())
}

/// Binds a Unix socket at `path`, replacing a socket an earlier run left.
pub(crate) fn listen(path: &Path) -> io::Result<UnixListener> {
    // A socket left by an earlier run is replaced; any other file is not.
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if meta.file_type().is_socket() {
            std::fs::remove_file(path)?;
        }
    }
    UnixListener::bind(path)
}

/// Serves one client at a time: its bytes go to the guest, guest output goes to it.
fn serve_socket(
    listener: UnixListener,
    client: SharedClient,
    port: Arc<Mutex<SerialPort>>,
    drained: EventFd,
) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let (Ok(reader), Ok(())) = (
            stream.try_clone(),
            stream.set_write_timeout(Some(SOCKET_WRITE_TIMEOUT)),
        ) else {
            continue;
        };
        *client.lock().unwrap_or_else(|p| p.into_inner()) = Some(stream);
        if let Err(e) = pump_input(&port, &drained, reader) {
            tracing::debug!("serial socket client input ended: {e}");
        }
        *client.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// Guest output to the connected socket client; dropped while none is connected.
struct SocketOutput(SharedClient);

impl Write for SocketOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut client = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(stream) = client.as_mut() {
            if stream.write_all(buf).is_err() {
                *client = None;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Puts the controlling terminal in raw mode (keeping Ctrl-C as SIGINT) and
/// restores it when dropped.
struct RawTerminal {
    saved: libc::termios,
}

impl RawTerminal {
    fn enter() -> Option<RawTerminal> {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
            return None;
        }
        // SAFETY: termios is plain data; zeroed is a valid value to be overwritten.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: stdin is a terminal and `saved` is a valid termios to fill.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw only modifies the struct it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        raw.c_lflag |= libc::ISIG;
        // SAFETY: a valid termios for a terminal descriptor.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enter` on the same descriptor.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved) };
    }
}
