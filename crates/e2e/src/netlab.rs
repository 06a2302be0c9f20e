//! A network lab for tests: network namespaces the test creates itself
//! (`fvnet-<pid>-<n>`), bridges and veth pairs inside them, sockets opened
//! inside a namespace, and the host side of the probe guest's `net`
//! protocol (UDP transfers with checksums, go-back-N on the sender).
//! Every namespace is deleted when its guard drops, on failure too; it
//! holds only the addresses the test gave it and no route elsewhere.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Whether the lab can run here: root, `ip` and /dev/net/tun.
pub fn lab_available() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("network namespaces need root".into());
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Err("/dev/net/tun is missing".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => Ok(()),
        _ => Err("the `ip` command (iproute2) is missing".into()),
    }
}

/// Runs `ip ARGS`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace, deleted on drop.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `fvnet-<pid>-<n>` with loopback up.
    pub fn new() -> NetNs {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "fvnet-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = NetNs { name };
        ns.exec_ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip ARGS` inside the namespace.
    pub fn exec_ip(&self, args: &[&str]) {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full);
    }

    /// A command run inside the namespace (`ip netns exec NAME PROGRAM`).
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Creates bridge `name` with address `addr` (CIDR) inside the namespace.
    pub fn bridge(&self, name: &str, addr: &str) {
        self.exec_ip(&["link", "add", name, "type", "bridge"]);
        self.exec_ip(&["addr", "add", addr, "dev", name]);
        self.exec_ip(&["link", "set", name, "up"]);
    }

    /// Creates a persistent TAP `name` (multi-queue when asked) attached to
    /// bridge `bridge`, for a VMM to open.
    pub fn tap_on_bridge(&self, name: &str, bridge: &str, multi_queue: bool) {
        let mut args = vec!["tuntap", "add", "dev", name, "mode", "tap", "vnet_hdr"];
        if multi_queue {
            args.push("multi_queue");
        }
        self.exec_ip(&args);
        self.exec_ip(&["link", "set", name, "master", bridge]);
        self.exec_ip(&["link", "set", name, "up"]);
    }

    /// Runs `f` on a thread that entered the namespace: sockets it opens
    /// live there.
    pub fn run_inside<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open the namespace");
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a namespace descriptor affects this thread only.
            let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("namespace thread")
    }

    /// A UDP socket bound to `addr` inside the namespace.
    pub fn udp(&self, addr: SocketAddrV4) -> UdpSocket {
        self.run_inside(move || UdpSocket::bind(addr).expect("bind in namespace"))
    }
}

impl Default for NetNs {
    fn default() -> NetNs {
        NetNs::new()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// FNV-1a 64 over the little-endian u64 words of one datagram's data
/// (the last word zero-padded), as the probe computes it.
pub fn fnv64(data: &[u8], mut hash: u64) -> u64 {
    for w in data.chunks(8) {
        let mut b = [0u8; 8];
        b[..w.len()].copy_from_slice(w);
        hash ^= u64::from_le_bytes(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// FNV-1a 64's start value.
pub const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// The byte at stream offset `o` of what the probe's `SOURCE` sends
/// (word `i` is `i * 0x9e37_79b9_7f4a_7c15`, little-endian).
pub fn pattern(o: u64) -> u8 {
    (o / 8).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes()[(o % 8) as usize]
}

/// The probe's control port.
pub const CONTROL_PORT: u16 = 9000;
/// The probe's sink port.
pub const SINK_PORT: u16 = 9001;
/// The probe's UDP echo port.
pub const ECHO_PORT: u16 = 7;

/// The host side of one probe guest at `guest`, speaking from `socket`.
pub struct ProbePeer {
    /// The socket (bound in the namespace).
    pub socket: UdpSocket,
    /// The guest's address.
    pub guest: Ipv4Addr,
}

/// What a transfer measured.
#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    /// Payload bytes moved.
    pub bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Datagrams sent again after a silence.
    pub resent: u64,
}

impl Transfer {
    /// Gbit/s of payload.
    pub fn gbit_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64() / 1e9
    }
}

impl ProbePeer {
    fn control(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.guest, CONTROL_PORT)
    }

    /// Sends `text` to the control port and waits for a reply starting with `expect`.
    pub fn ask(&self, text: &str, expect: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            self.socket
                .send_to(text.as_bytes(), self.control())
                .map_err(|e| format!("send {text}: {e}"))?;
            self.socket
                .set_read_timeout(Some(Duration::from_millis(500)))
                .map_err(|e| e.to_string())?;
            let until = Instant::now() + Duration::from_millis(500);
            while Instant::now() < until {
                if let Ok((n, _)) = self.socket.recv_from(&mut buf) {
                    let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if reply.starts_with(expect) {
                        return Ok(reply);
                    }
                }
            }
        }
        Err(format!("no {expect} reply to {text}"))
    }

    /// Sends `bytes` of `data` (repeated) to the guest, which checks the
    /// checksum; go-back-N with a window of `window` datagrams.
    pub fn send_to_guest(&self, data: &[u8], bytes: u64, window: u32) -> Result<Transfer, String> {
        const CHUNK: usize = 1468;
        let count = bytes.div_ceil(CHUNK as u64) as u32;
        let byte_at = |o: u64| data[(o % data.len() as u64) as usize];
        let mut fnv = FNV_START;
        let mut chunk = vec![0u8; 4 + CHUNK];
        for seq in 0..count {
            let start = u64::from(seq) * CHUNK as u64;
            let len = (bytes - start).min(CHUNK as u64) as usize;
            for (i, b) in chunk[4..4 + len].iter_mut().enumerate() {
                *b = byte_at(start + i as u64);
            }
            fnv = fnv64(&chunk[4..4 + len], fnv);
        }
        self.ask(
            &format!("SINK {bytes} {fnv:016x}"),
            "READY",
            Duration::from_secs(10),
        )?;
        let sink = SocketAddrV4::new(self.guest, SINK_PORT);
        self.socket
            .set_read_timeout(Some(Duration::from_millis(1)))
            .map_err(|e| e.to_string())?;
        let began = Instant::now();
        let (mut next, mut acked, mut resent) = (0u32, 0u32, 0u64);
        let mut last_progress = Instant::now();
        let mut buf = [0u8; 2048];
        loop {
            while next < count && next < acked + window {
                let start = u64::from(next) * CHUNK as u64;
                let len = (bytes - start).min(CHUNK as u64) as usize;
                chunk[..4].copy_from_slice(&next.to_le_bytes());
                for (i, b) in chunk[4..4 + len].iter_mut().enumerate() {
                    *b = byte_at(start + i as u64);
                }
                self.socket
                    .send_to(&chunk[..4 + len], sink)
                    .map_err(|e| format!("send: {e}"))?;
                next += 1;
            }
            match self.socket.recv_from(&mut buf) {
                Ok((n, _)) => {
                    let reply = String::from_utf8_lossy(&buf[..n]);
                    if let Some(rest) = reply.strip_prefix("ACK ") {
                        let n: u32 = rest.trim().parse().unwrap_or(0);
                        if n > acked {
                            acked = n;
                            last_progress = Instant::now();
                        }
                    } else if reply.starts_with("DONE ") {
                        if !reply.contains(" ok") {
                            return Err(format!("the guest's checksum differs: {reply}"));
                        }
                        return Ok(Transfer {
                            bytes,
                            elapsed: began.elapsed(),
                            resent,
                        });
                    }
                }
                Err(_) => {
                    if last_progress.elapsed() > Duration::from_millis(200) {
                        resent += u64::from(next - acked);
                        next = acked;
                        last_progress = Instant::now();
                    }
                    if began.elapsed() > Duration::from_secs(900) {
                        return Err(format!("stalled at {acked}/{count}"));
                    }
                }
            }
        }
    }

    /// Has the guest send `bytes` of its pattern; checks every byte in
    /// order and the guest's checksum.
    pub fn receive_from_guest(&self, bytes: u64) -> Result<Transfer, String> {
        const DATAGRAM: u64 = 1468;
        let chunk = DATAGRAM - 4;
        let count = bytes.div_ceil(chunk) as u32;
        self.socket
            .set_read_timeout(Some(Duration::from_millis(5)))
            .map_err(|e| e.to_string())?;
        let began = Instant::now();
        self.socket
            .send_to(
                format!("SOURCE {bytes} {DATAGRAM}").as_bytes(),
                self.control(),
            )
            .map_err(|e| format!("send: {e}"))?;
        let mut next = 0u32;
        let mut fnv = FNV_START;
        let mut since_ack = 0u32;
        let mut buf = [0u8; 2048];
        let mut last = Instant::now();
        loop {
            match self.socket.recv_from(&mut buf) {
                Ok((n, from)) => {
                    last = Instant::now();
                    if from.port() == CONTROL_PORT {
                        let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
                        if let Some(rest) = reply.strip_prefix("DONE ") {
                            let theirs = rest.split_whitespace().nth(1).unwrap_or("");
                            if next != count || theirs != format!("{fnv:016x}") {
                                return Err(format!(
                                    "got {next}/{count} datagrams, fnv {fnv:016x}; guest says {reply}"
                                ));
                            }
                            return Ok(Transfer {
                                bytes,
                                elapsed: began.elapsed(),
                                resent: 0,
                            });
                        }
                        continue;
                    }
                    if n < 4 {
                        continue;
                    }
                    let seq = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
                    if seq == next {
                        let start = u64::from(seq) * chunk;
                        for (i, &b) in buf[4..n].iter().enumerate() {
                            if b != pattern(start + i as u64) {
                                return Err(format!("datagram {seq} byte {i} differs"));
                            }
                        }
                        fnv = fnv64(&buf[4..n], fnv);
                        next += 1;
                        since_ack += 1;
                    }
                    if since_ack >= 16 || seq != next.wrapping_sub(1) || next == count {
                        since_ack = 0;
                        let _ = self
                            .socket
                            .send_to(format!("ACK {next}").as_bytes(), self.control());
                    }
                }
                Err(_) => {
                    let _ = self
                        .socket
                        .send_to(format!("ACK {next}").as_bytes(), self.control());
                    if last.elapsed() > Duration::from_secs(30) {
                        return Err(format!("silence at {next}/{count}"));
                    }
                }
            }
        }
    }

    /// Round trips of `n` UDP echo requests; their times.
    pub fn echo_round_trips(&self, n: usize, size: usize) -> Result<Vec<Duration>, String> {
        let to = SocketAddrV4::new(self.guest, ECHO_PORT);
        self.socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        let mut times = Vec::with_capacity(n);
        let mut buf = [0u8; 2048];
        let payload = vec![0x5au8; size];
        for i in 0..n {
            let t = Instant::now();
            self.socket
                .send_to(&payload, to)
                .map_err(|e| e.to_string())?;
            loop {
                let (got, from) = self
                    .socket
                    .recv_from(&mut buf)
                    .map_err(|e| format!("echo {i}: {e}"))?;
                if from.port() == ECHO_PORT && got == size {
                    break;
                }
            }
            times.push(t.elapsed());
        }
        Ok(times)
    }
}
