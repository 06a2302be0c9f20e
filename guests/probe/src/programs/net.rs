//! `probe=net`: a virtio-net NIC driven by polling, answering ARP and ICMP
//! echo for `ip=` (default 10.0.0.2), echoing UDP port 7, and moving bulk
//! data both ways over UDP with a checksum both sides check:
//!
//! - control port 9000, ASCII commands from the host:
//!   `SINK <bytes> <fnv64-hex>`: the host will send `bytes` to port 9001 as
//!   datagrams `[seq u32 le][data]`; the probe acks in order (`ACK <next>`,
//!   go-back-N on the host) and answers `DONE <bytes> <fnv> ok|bad`. The
//!   checksum is FNV-1a 64 over each datagram's data as little-endian u64
//!   words (the last one zero-padded).
//!   `SOURCE <bytes> <datagram>`: the probe sends `bytes` of a fixed pattern
//!   to the requester's port in datagrams of `datagram` bytes, window 64,
//!   resending from the last `ACK <next>` after 20 ms of silence; then
//!   `DONE <bytes> <fnv>`.
//!   `STATS`: `STATS pairs=N q0=F q1=F kicks=K` (frames received per pair).
//!   `CALL <ip> <word>`: resolves `ip` by ARP, sends `word` to its UDP
//!   echo port from port 9003 and reports the echo as `CALLED <ip> <word>`
//!   (two guests on one bridge reach each other).
//!   `HOSTILE`: sends three malformed frames (an unknown gso_type, a
//!   checksum offset past the frame, a chain shorter than the header) and
//!   answers `HOSTILE sent=3`; the device drops and counts them.
//!   `BYE`: prints the figures and passes.
//! - `pairs=N` (default 1) queue pairs (MQ through the control queue);
//!   `timeout=S` seconds (default 600) without traffic before it gives up.

use super::Outcome;
use crate::fmtbuf::FmtBuf;
use crate::netproto::{self, Frame};
use crate::start_info::StartInfo;
use crate::tsc::{self, Deadline};
use crate::virtio_net::{Net, BUF, HEADER};
use crate::{bail, cmdline, fail_reason, say};
use core::fmt::Write;

const CONTROL_PORT: u16 = 9000;
const SINK_PORT: u16 = 9001;
const ECHO_PORT: u16 = 7;
const WINDOW: u32 = 64;
const RESEND_US: u64 = 20_000;
const ACK_EVERY: u32 = 16;
const CALL_PORT: u16 = 9003;
const ARP_RETRY_US: u64 = 200_000;

/// FNV-1a 64 over the little-endian u64 words of each datagram's data (a
/// short last word zero-padded): word-wise, because ring-0 code is
/// emulated instruction by instruction under kvm_pvm.
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn update(&mut self, data: &[u8]) {
        let mut words = data.chunks_exact(8);
        for w in &mut words {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            self.0 ^= u64::from_le_bytes(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            self.0 ^= u64::from_le_bytes(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// Fills `out` with what `SOURCE` sends at stream offset `start` (a
/// multiple of 8): word `i` of the stream is `i * 0x9e37_79b9_7f4a_7c15`.
fn pattern(start: u64, out: &mut [u8]) {
    let first = start / 8;
    let mut words = out.chunks_exact_mut(8);
    let mut i = first;
    for w in &mut words {
        w.copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
        i += 1;
    }
    let rest = words.into_remainder();
    let n = rest.len();
    rest.copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes()[..n]);
}

type Peer = ([u8; 6], [u8; 4], u16);

struct Sink {
    total: u64,
    want_fnv: u64,
    bytes: u64,
    next: u32,
    fnv: Fnv,
    peer: Peer,
    since_ack: u32,
    done: bool,
}

struct Source {
    total: u64,
    chunk: u64,
    count: u32,
    next: u32,
    high: u32,
    acked: u32,
    fnv: Fnv,
    peer: Peer,
    control: Peer,
    last_progress: Deadline,
}

/// A `CALL` in progress.
struct Call {
    target: [u8; 4],
    word: FmtBuf<96>,
    host: Peer,
    target_mac: Option<[u8; 6]>,
    retry: Deadline,
}

/// What a received frame asks of the probe (sent while the frame is still
/// in its receive buffer: nothing large is copied).
enum Reply {
    None,
    ArpAsk([u8; 4]),
    Hostile {
        to: Peer,
    },
    Stats {
        to: Peer,
    },
    Arp {
        mac: [u8; 6],
        ip: [u8; 4],
    },
    /// Echo the ICMP request in the frame.
    Echo,
    Udp {
        to: Peer,
        from_port: u16,
        text: FmtBuf<96>,
    },
    /// Echo the UDP payload at `start..start + len` of the frame.
    UdpEcho {
        to: Peer,
        from_port: u16,
        start: usize,
        len: usize,
    },
    Bye,
}

struct State {
    mac: [u8; 6],
    ip: [u8; 4],
    sink: Option<Sink>,
    source: Option<Source>,
    call: Option<Call>,
}

fn parse_ip(text: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = text.split('.');
    for b in &mut out {
        *b = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

fn text_reply(to: Peer, from_port: u16, args: core::fmt::Arguments) -> Reply {
    Reply::Udp {
        to,
        from_port,
        text: FmtBuf::from_args(args),
    }
}

impl State {
    fn handle(&mut self, frame: &[u8]) -> Reply {
        match netproto::parse(frame) {
            Frame::ArpRequest {
                sender_mac,
                sender_ip,
                target_ip,
            } if target_ip == self.ip => Reply::Arp {
                mac: sender_mac,
                ip: sender_ip,
            },
            Frame::ArpReply {
                sender_mac,
                sender_ip,
            } => {
                if let Some(call) = self.call.as_mut().filter(|c| c.target == sender_ip) {
                    if call.target_mac.is_none() {
                        call.target_mac = Some(sender_mac);
                        call.retry = Deadline::after_us(0);
                    }
                }
                Reply::None
            }
            Frame::EchoRequest if frame.len() <= BUF => Reply::Echo,
            Frame::Udp(dst, udp) if dst == self.ip => {
                let peer = (udp.src_mac, udp.src_ip, udp.src_port);
                match udp.dst_port {
                    SINK_PORT => self.sink_data(udp.payload),
                    CALL_PORT => match self.call.take() {
                        Some(call) if call.target == udp.src_ip => text_reply(
                            call.host,
                            CONTROL_PORT,
                            format_args!(
                                "CALLED {}.{}.{}.{} {}",
                                udp.src_ip[0],
                                udp.src_ip[1],
                                udp.src_ip[2],
                                udp.src_ip[3],
                                core::str::from_utf8(udp.payload).unwrap_or("?")
                            ),
                        ),
                        other => {
                            self.call = other;
                            Reply::None
                        }
                    },
                    CONTROL_PORT => self.command(peer, udp.payload),
                    ECHO_PORT => Reply::UdpEcho {
                        to: peer,
                        from_port: ECHO_PORT,
                        start: udp.payload.as_ptr() as usize - frame.as_ptr() as usize,
                        len: udp.payload.len(),
                    },
                    _ => Reply::None,
                }
            }
            _ => Reply::None,
        }
    }

    fn sink_data(&mut self, payload: &[u8]) -> Reply {
        let Some(sink) = self.sink.as_mut() else {
            return Reply::None;
        };
        if payload.len() < 4 || sink.done {
            return Reply::None;
        }
        let seq = u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]);
        if seq == sink.next {
            let data = &payload[4..];
            let take = (data.len() as u64).min(sink.total - sink.bytes) as usize;
            sink.fnv.update(&data[..take]);
            sink.bytes += take as u64;
            sink.next += 1;
            sink.since_ack += 1;
            if sink.bytes >= sink.total {
                sink.done = true;
                let ok = if sink.fnv.0 == sink.want_fnv {
                    "ok"
                } else {
                    "bad"
                };
                return text_reply(
                    sink.peer,
                    CONTROL_PORT,
                    format_args!(
                        "DONE {} {:016x} {} next={}",
                        sink.bytes, sink.fnv.0, ok, sink.next
                    ),
                );
            }
            if sink.since_ack < ACK_EVERY {
                return Reply::None;
            }
        } else if seq < sink.next {
            // A resent datagram already taken: the ack below repeats.
        }
        sink.since_ack = 0;
        text_reply(sink.peer, CONTROL_PORT, format_args!("ACK {}", sink.next))
    }

    fn command(&mut self, peer: Peer, payload: &[u8]) -> Reply {
        let text = core::str::from_utf8(payload).unwrap_or("");
        let mut words = text.split_ascii_whitespace();
        let num = |w: Option<&str>| w.and_then(|s| s.parse::<u64>().ok());
        match words.next() {
            Some("SINK") => {
                let total = num(words.next()).unwrap_or(0);
                let want_fnv = words
                    .next()
                    .and_then(|s| u64::from_str_radix(s, 16).ok())
                    .unwrap_or(0);
                self.sink = Some(Sink {
                    total,
                    want_fnv,
                    bytes: 0,
                    next: 0,
                    fnv: Fnv::new(),
                    peer,
                    since_ack: 0,
                    done: false,
                });
                text_reply(peer, CONTROL_PORT, format_args!("READY {}", total))
            }
            Some("SOURCE") => {
                let total = num(words.next()).unwrap_or(0);
                let datagram = num(words.next()).unwrap_or(1468).clamp(68, 1468);
                // Data per datagram: a multiple of 8 (the pattern is word-wise).
                let chunk = (datagram - 4) & !7;
                let count = total.div_ceil(chunk).min(u64::from(u32::MAX)) as u32;
                self.source = Some(Source {
                    total,
                    chunk,
                    count,
                    next: 0,
                    high: 0,
                    acked: 0,
                    fnv: Fnv::new(),
                    peer,
                    control: peer,
                    last_progress: Deadline::after_us(RESEND_US),
                });
                Reply::None
            }
            Some("ACK") => {
                if let (Some(src), Some(n)) = (self.source.as_mut(), num(words.next())) {
                    let n = (n.min(u64::from(src.count))) as u32;
                    if n > src.acked {
                        src.acked = n;
                        src.last_progress = Deadline::after_us(RESEND_US);
                    }
                    if src.next < src.acked {
                        src.next = src.acked;
                    }
                }
                Reply::None
            }
            Some("STATS") => Reply::Stats { to: peer },
            Some("CALL") => {
                let Some(target) = words.next().and_then(parse_ip) else {
                    return text_reply(peer, CONTROL_PORT, format_args!("ERR CALL needs an ip"));
                };
                self.call = Some(Call {
                    target,
                    word: FmtBuf::from_args(format_args!("{}", words.next().unwrap_or("hello"))),
                    host: peer,
                    target_mac: None,
                    retry: Deadline::after_us(ARP_RETRY_US),
                });
                Reply::ArpAsk(target)
            }
            Some("HOSTILE") => Reply::Hostile { to: peer },
            Some("BYE") => Reply::Bye,
            _ => text_reply(peer, CONTROL_PORT, format_args!("ERR unknown command")),
        }
    }
}

fn send_text(
    net: &mut Net,
    pair: usize,
    me: ([u8; 6], [u8; 4]),
    from_port: u16,
    to: Peer,
    text: &str,
) -> Result<bool, crate::exit::Reason> {
    let bytes = text.as_bytes();
    net.send(pair, |out| {
        netproto::udp(out, (me.0, me.1, from_port), to, bytes.len(), |p| {
            p[..bytes.len()].copy_from_slice(bytes)
        })
    })
}

/// Sends `reply` to what `frame` (still in its receive buffer) asked; false
/// when every transmit buffer is in flight (try again).
fn send_reply(
    net: &mut Net,
    pair: usize,
    state: &State,
    reply: &Reply,
    frame: &[u8],
) -> Result<bool, crate::exit::Reason> {
    let me = (state.mac, state.ip);
    match *reply {
        Reply::None | Reply::Bye => Ok(true),
        Reply::ArpAsk(target) => {
            net.send(pair, |out| netproto::arp_request(out, me.0, me.1, target))
        }
        Reply::Hostile { to } => {
            send_hostile(net, pair, me, to)?;
            // If this answer finds no buffer, the host asks again.
            send_text(net, pair, me, CONTROL_PORT, to, "HOSTILE sent=3")?;
            Ok(true)
        }
        Reply::Stats { to } => {
            let mut t: FmtBuf<96> = FmtBuf::from_args(format_args!("STATS pairs={}", net.pairs()));
            for q in 0..net.pairs() {
                let _ = write!(t, " q{}={}", q, net.rx_frames(q));
            }
            let _ = write!(t, " kicks={}", net.kicks);
            send_text(net, pair, me, CONTROL_PORT, to, t.as_str())
        }
        Reply::Arp { mac, ip } => {
            net.send(pair, |out| netproto::arp_reply(out, me.0, me.1, mac, ip))
        }
        Reply::Echo => net.send(pair, |out| netproto::echo_reply(out, frame)),
        Reply::Udp {
            to,
            from_port,
            ref text,
        } => send_text(net, pair, me, from_port, to, text.as_str()),
        Reply::UdpEcho {
            to,
            from_port,
            start,
            len,
        } => {
            let data = frame.get(start..start + len).unwrap_or(&[]);
            net.send(pair, |out| {
                netproto::udp(out, (me.0, me.1, from_port), to, data.len(), |p| {
                    p[..data.len()].copy_from_slice(data)
                })
            })
        }
    }
}

/// Three frames a correct driver never sends, each waiting for a free buffer.
fn send_hostile(
    net: &mut Net,
    pair: usize,
    me: ([u8; 6], [u8; 4]),
    to: Peer,
) -> Result<(), crate::exit::Reason> {
    let frame = |buf: &mut [u8], flags: u8, gso: u8, csum_start: u16| {
        buf[..HEADER].fill(0);
        buf[0] = flags;
        buf[1] = gso;
        buf[4] = 100;
        buf[6..8].copy_from_slice(&csum_start.to_le_bytes());
        HEADER
            + netproto::udp(
                &mut buf[HEADER..],
                (me.0, me.1, CONTROL_PORT),
                to,
                16,
                |p| p[..16].fill(0xee),
            )
    };
    let deadline = Deadline::after_us(1_000_000);
    for kind in 0..3 {
        loop {
            let sent = net.send_raw(pair, |buf| match kind {
                0 => frame(buf, 1, 7, 34),
                1 => frame(buf, 1, 0, 60_000),
                _ => 8,
            })?;
            if sent {
                break;
            }
            if deadline.expired() {
                bail!("transmit ring stuck");
            }
        }
    }
    Ok(())
}

/// Resolves and calls the peer of a `CALL`, retrying the ARP request.
fn pump_call(net: &mut Net, state: &mut State) -> Result<(), crate::exit::Reason> {
    let me = (state.mac, state.ip);
    let Some(call) = state.call.as_mut() else {
        return Ok(());
    };
    if !call.retry.expired() {
        return Ok(());
    }
    call.retry = Deadline::after_us(ARP_RETRY_US);
    let target = call.target;
    match call.target_mac {
        None => {
            net.send(0, |out| netproto::arp_request(out, me.0, me.1, target))?;
        }
        Some(mac) => {
            let bytes = call.word.as_str().as_bytes();
            net.send(0, |out| {
                netproto::udp(
                    out,
                    (me.0, me.1, CALL_PORT),
                    (mac, target, ECHO_PORT),
                    bytes.len(),
                    |p| p[..bytes.len()].copy_from_slice(bytes),
                )
            })?;
        }
    }
    Ok(())
}

/// Sends what the window allows of an active `SOURCE`; resends from the
/// last ack after a silence.
fn pump_source(net: &mut Net, state: &mut State) -> Result<(), crate::exit::Reason> {
    let me = (state.mac, state.ip);
    let Some(src) = state.source.as_mut() else {
        return Ok(());
    };
    if src.acked >= src.count {
        let text: FmtBuf<96> =
            FmtBuf::from_args(format_args!("DONE {} {:016x}", src.total, src.fnv.0));
        let bytes = text.as_str().as_bytes();
        let control = src.control;
        state.source = None;
        net.send(0, |out| {
            netproto::udp(out, (me.0, me.1, CONTROL_PORT), control, bytes.len(), |p| {
                p[..bytes.len()].copy_from_slice(bytes)
            })
        })?;
        return Ok(());
    }
    if src.last_progress.expired() {
        src.next = src.acked;
        src.last_progress = Deadline::after_us(RESEND_US);
    }
    while src.next < src.count && src.next < src.acked.saturating_add(WINDOW) {
        let seq = src.next;
        let start = u64::from(seq) * src.chunk;
        let len = (src.total - start).min(src.chunk) as usize;
        let first_time = seq == src.high;
        let mut fnv = src.fnv;
        let sent = net.send(0, |out| {
            netproto::udp(
                out,
                (me.0, me.1, CONTROL_PORT + 2),
                src.peer,
                4 + len,
                |p| {
                    p[..4].copy_from_slice(&seq.to_le_bytes());
                    pattern(start, &mut p[4..4 + len]);
                    if first_time {
                        fnv.update(&p[4..4 + len]);
                    }
                },
            )
        })?;
        if !sent {
            break;
        }
        if first_time {
            src.fnv = fnv;
            src.high += 1;
        }
        src.next += 1;
    }
    Ok(())
}

pub fn run(info: &StartInfo) -> Outcome {
    let cmd = info.cmdline();
    let ip = match cmdline::value(cmd, "ip") {
        Some(text) => parse_ip(text).ok_or_else(|| fail_reason!("bad ip={}", text))?,
        None => [10, 0, 0, 2],
    };
    let pairs = cmdline::number(cmd, "pairs")?.unwrap_or(1).clamp(1, 8) as u16;
    let timeout_s = cmdline::number(cmd, "timeout")?.unwrap_or(600);
    let mut net = Net::open(info, pairs)?;
    let m = net.mac;
    say!(
        "net mac={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} status={} pairs={} ip={}.{}.{}.{} header={}",
        m[0], m[1], m[2], m[3], m[4], m[5], net.status, net.pairs(), ip[0], ip[1], ip[2], ip[3], HEADER
    );
    if net.status & 1 == 0 {
        bail!("link is down (status={})", net.status);
    }
    say!("net ready");
    let mut state = State {
        mac: net.mac,
        ip,
        sink: None,
        source: None,
        call: None,
    };
    let idle_cycles = tsc::cycles_for_us(timeout_s.saturating_mul(1_000_000));
    let mut deadline = Deadline::after_cycles(idle_cycles);
    let start = tsc::now();
    loop {
        let mut idle = true;
        for p in 0..net.pairs() {
            while let Some((slot, frame)) = net.rx_next(p)? {
                idle = false;
                let reply = state.handle(frame);
                if matches!(reply, Reply::Bye) {
                    let ms = (tsc::now() - start) / tsc::khz().max(1);
                    let mut line: FmtBuf<96> =
                        FmtBuf::from_args(format_args!("net done ms={} kicks={}", ms, net.kicks));
                    for q in 0..net.pairs() {
                        let _ = write!(line, " q{}={}", q, net.rx_frames(q));
                    }
                    say!("{}", line.as_str());
                    return Ok(());
                }
                // A reply that finds every buffer in flight waits for one.
                let reply_deadline = Deadline::after_us(1_000_000);
                while !send_reply(&mut net, p, &state, &reply, frame)? {
                    if reply_deadline.expired() {
                        bail!("transmit ring stuck");
                    }
                }
                net.rx_done(p, slot)?;
            }
        }
        pump_source(&mut net, &mut state)?;
        pump_call(&mut net, &mut state)?;
        if !idle {
            deadline = Deadline::after_cycles(idle_cycles);
        } else if deadline.expired() {
            bail!("no traffic for {} s", timeout_s);
        }
    }
}
