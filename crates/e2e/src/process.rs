//! A VMM process under test: its console lines arrive on a channel, waits
//! have timeouts, and dropping it kills and reaps the process.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running VMM.
pub struct VmProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    serial: Vec<String>,
    log: Arc<Mutex<String>>,
    log_reader: Option<std::thread::JoinHandle<()>>,
}

/// How a VMM process ended.
#[derive(Debug)]
pub struct Exited {
    /// The exit status.
    pub status: ExitStatus,
    /// Every line the guest printed on the console.
    pub serial: Vec<String>,
    /// What the VMM printed on stderr.
    pub log: String,
}

impl Exited {
    /// The exit code (panics if the process died of a signal).
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| panic!("killed by a signal: {self:#?}"))
    }

    /// The console line starting with `prefix`, if any.
    pub fn line(&self, prefix: &str) -> Option<&str> {
        self.serial
            .iter()
            .find(|l| l.starts_with(prefix))
            .map(String::as_str)
    }

    /// The value of `key=` on the console line starting with `prefix`.
    pub fn field(&self, prefix: &str, key: &str) -> Option<String> {
        field(self.line(prefix)?, key)
    }
}

/// The value of `key=` in a line of `key=value` words.
pub fn field(line: &str, key: &str) -> Option<String> {
    let needle = format!("{key}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(needle.as_str()).map(str::to_string))
}

impl VmProcess {
    /// Starts `command` with piped stdio (the guest console on stdout).
    pub fn spawn(mut command: Command) -> VmProcess {
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {command:?}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).split(b'\n') {
                let Ok(line) = line else { break };
                let text = String::from_utf8_lossy(&line)
                    .trim_end_matches('\r')
                    .to_string();
                if tx.send(text).is_err() {
                    break;
                }
            }
        });
        let log = Arc::new(Mutex::new(String::new()));
        let log_writer = log.clone();
        let log_reader = std::thread::spawn(move || {
            let mut stderr = stderr;
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                log_writer
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        VmProcess {
            stdin: child.stdin.take(),
            child,
            lines,
            serial: Vec::new(),
            log,
            log_reader: Some(log_reader),
        }
    }

    /// Waits up to `timeout` for a console line containing `needle`; returns it.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.serial.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no console line with {needle:?} within {timeout:?}; console so far: {:#?}; log: {}", self.serial, self.log())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "console closed before a line with {needle:?}; console: {:#?}; log: {}",
                        self.serial,
                        self.log()
                    )
                }
            }
        }
    }

    /// The console lines that arrive within `window` (none is fine).
    pub fn lines_within(&mut self, window: Duration) -> Vec<String> {
        let deadline = Instant::now() + window;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.serial.push(line.clone());
                    got.push(line);
                }
                Err(_) => return got,
            }
        }
    }

    /// Sends bytes to the guest's console input.
    pub fn send(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(bytes).expect("write to the VMM's stdin");
        stdin.flush().expect("flush the VMM's stdin");
    }

    /// Sends a signal to the VMM.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// The VMM's process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the VMM wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits up to `timeout` for the process to exit and collects its output.
    pub fn wait(mut self, timeout: Duration) -> Exited {
        let deadline = Instant::now() + timeout;
        self.stdin = None;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for the VMM") {
                break status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "VMM still running after {timeout:?}; console: {:#?}; log: {}",
                    self.serial,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        // The console reader ends when the process closes stdout.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.serial.push(line);
        }
        if let Some(reader) = self.log_reader.take() {
            let _ = reader.join();
        }
        Exited {
            status,
            serial: std::mem::take(&mut self.serial),
            log: self.log(),
        }
    }
}

impl Drop for VmProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Connects to the Unix socket at `path`, retrying until `timeout` (the VMM
/// creates it while starting).
pub fn connect_unix(path: &std::path::Path, timeout: Duration) -> std::os::unix::net::UnixStream {
    let deadline = Instant::now() + timeout;
    loop {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(s) => return s,
            Err(e) if Instant::now() > deadline => panic!("connect {}: {e}", path.display()),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}
