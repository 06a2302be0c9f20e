//! `probe=net`: a virtio-net NIC driven by polling, answering ARP and ICMP
//! echo for `ip=` (default 10.0.0.2), echoing UDP port 7, and moving bulk
//! data both ways over UDP with a checksum both sides check:
//!
//! - control port 9000, ASCII commands from the host:
//!   `SINK <bytes> <fnv64-hex>`: the host will send `bytes` to port 9001 as
//!   datagrams `[seq u32 le][data]`; the probe acks in order (`ACK <next>`,
//!   go-back-N on the host) and answers `DONE <bytes> <fnv> ok|bad`.
//!   `SOURCE <bytes> <datagram>`: the probe sends `bytes` of a fixed pattern
//!   to the requester's port in datagrams of `datagram` bytes, window 64,
//!   resending from the last `ACK <next>` after 20 ms of silence; then
//!   `DONE <bytes> <fnv>`.
//!   `STATS`: `STATS pairs=N q0=F q1=F kicks=K` (frames received per pair).
//!   `BYE`: prints the figures and passes.
//! - `pairs=N` (default 1) queue pairs (MQ through the control queue);
//!   `timeout=S` seconds (default 600) before it gives up.

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

/// FNV-1a 64 over a byte stream.
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// The byte at stream offset `o` of what `SOURCE` sends.
fn pattern(o: u64) -> u8 {
    (o.wrapping_mul(2_654_435_761) >> 13) as u8
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

/// What a received frame asks of the probe, after the frame is released.
enum Reply {
    None,
    Arp { mac: [u8; 6], ip: [u8; 4] },
    Echo { frame: [u8; BUF], len: usize },
    Udp { to: Peer, from_port: u16, text: FmtBuf<96> },
    UdpEcho { to: Peer, from_port: u16, data: [u8; BUF], len: usize },
    Bye,
}

struct State {
    mac: [u8; 6],
    ip: [u8; 4],
    sink: Option<Sink>,
    source: Option<Source>,
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
    fn handle(&mut self, frame: &[u8], stats: &dyn Fn() -> FmtBuf<96>) -> Reply {
        match netproto::parse(frame) {
            Frame::ArpRequest {
                sender_mac,
                sender_ip,
                target_ip,
            } if target_ip == self.ip => Reply::Arp {
                mac: sender_mac,
                ip: sender_ip,
            },
            Frame::EchoRequest if frame.len() <= BUF => {
                let mut copy = [0u8; BUF];
                copy[..frame.len()].copy_from_slice(frame);
                Reply::Echo {
                    frame: copy,
                    len: frame.len(),
                }
            }
            Frame::Udp(dst, udp) if dst == self.ip => {
                let peer = (udp.src_mac, udp.src_ip, udp.src_port);
                match udp.dst_port {
                    SINK_PORT => self.sink_data(udp.payload),
                    CONTROL_PORT => self.command(peer, udp.payload, stats),
                    ECHO_PORT if udp.payload.len() <= BUF => {
                        let mut data = [0u8; BUF];
                        data[..udp.payload.len()].copy_from_slice(udp.payload);
                        Reply::UdpEcho {
                            to: peer,
                            from_port: ECHO_PORT,
                            data,
                            len: udp.payload.len(),
                        }
                    }
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
                let ok = if sink.fnv.0 == sink.want_fnv { "ok" } else { "bad" };
                return text_reply(
                    sink.peer,
                    CONTROL_PORT,
                    format_args!("DONE {} {:016x} {} next={}", sink.bytes, sink.fnv.0, ok, sink.next),
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

    fn command(&mut self, peer: Peer, payload: &[u8], stats: &dyn Fn() -> FmtBuf<96>) -> Reply {
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
                let datagram = num(words.next()).unwrap_or(1472).clamp(64, 1472);
                let chunk = datagram - 4;
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
            Some("STATS") => Reply::Udp {
                to: peer,
                from_port: CONTROL_PORT,
                text: stats(),
            },
            Some("BYE") => Reply::Bye,
            _ => text_reply(peer, CONTROL_PORT, format_args!("ERR unknown command")),
        }
    }
}

fn send_reply(net: &mut Net, pair: usize, state: &State, reply: Reply) -> Result<bool, crate::exit::Reason> {
    let me = (state.mac, state.ip);
    let sent = match reply {
        Reply::None => true,
        Reply::Bye => return Ok(true),
        Reply::Arp { mac, ip } => net.send(pair, |out| netproto::arp_reply(out, me.0, me.1, mac, ip))?,
        Reply::Echo { frame, len } => net.send(pair, |out| netproto::echo_reply(out, &frame[..len]))?,
        Reply::Udp { to, from_port, text } => {
            let bytes = text.as_str().as_bytes();
            net.send(pair, |out| {
                netproto::udp(out, (me.0, me.1, from_port), to, bytes.len(), |p| {
                    p[..bytes.len()].copy_from_slice(bytes)
                })
            })?
        }
        Reply::UdpEcho { to, from_port, data, len } => net.send(pair, |out| {
            netproto::udp(out, (me.0, me.1, from_port), to, len, |p| p[..len].copy_from_slice(&data[..len]))
        })?,
    };
    Ok(sent)
}

/// Sends what the window allows of an active `SOURCE`; resends from the
/// last ack after a silence.
fn pump_source(net: &mut Net, state: &mut State) -> Result<(), crate::exit::Reason> {
    let me = (state.mac, state.ip);
    let Some(src) = state.source.as_mut() else {
        return Ok(());
    };
    if src.acked >= src.count {
        let text: FmtBuf<96> = FmtBuf::from_args(format_args!("DONE {} {:016x}", src.total, src.fnv.0));
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
            netproto::udp(out, (me.0, me.1, CONTROL_PORT + 2), src.peer, 4 + len, |p| {
                p[..4].copy_from_slice(&seq.to_le_bytes());
                for (i, b) in p[4..4 + len].iter_mut().enumerate() {
                    *b = pattern(start + i as u64);
                }
                if first_time {
                    fnv.update(&p[4..4 + len]);
                }
            })
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
    };
    let deadline = Deadline::after_us(timeout_s.saturating_mul(1_000_000));
    let start = tsc::now();
    loop {
        let mut idle = true;
        for p in 0..net.pairs() {
            loop {
                let counts: [u64; 8] = core::array::from_fn(|i| net.rx_frames(i));
                let kicks = net.kicks;
                let npairs = net.pairs();
                let stats = move || {
                    let mut t: FmtBuf<96> = FmtBuf::from_args(format_args!("STATS pairs={}", npairs));
                    for (i, c) in counts.iter().enumerate().take(npairs) {
                        let _ = write!(t, " q{}={}", i, c);
                    }
                    let _ = write!(t, " kicks={}", kicks);
                    t
                };
                let Some(reply) = net.poll_rx(p, |frame| state.handle(frame, &stats))? else {
                    break;
                };
                idle = false;
                if matches!(reply, Reply::Bye) {
                    let ms = (tsc::now() - start) / tsc::khz().max(1);
                    let mut line: FmtBuf<96> = FmtBuf::from_args(format_args!("net done ms={} kicks={}", ms, net.kicks));
                    for q in 0..net.pairs() {
                        let _ = write!(line, " q{}={}", q, net.rx_frames(q));
                    }
                    say!("{}", line.as_str());
                    return Ok(());
                }
                // A reply that finds every buffer in flight waits for one.
                let reply_deadline = Deadline::after_us(1_000_000);
                let mut reply = Some(reply);
                while let Some(r) = reply.take() {
                    let keep = clone_reply(&r);
                    if !send_reply(&mut net, p, &state, r)? {
                        if reply_deadline.expired() {
                            bail!("transmit ring stuck");
                        }
                        reply = keep;
                    }
                }
            }
        }
        pump_source(&mut net, &mut state)?;
        if idle && deadline.expired() {
            bail!("timeout after {} s", timeout_s);
        }
    }
}

fn clone_reply(r: &Reply) -> Option<Reply> {
    Some(match r {
        Reply::None => Reply::None,
        Reply::Bye => Reply::Bye,
        Reply::Arp { mac, ip } => Reply::Arp { mac: *mac, ip: *ip },
        Reply::Echo { frame, len } => Reply::Echo { frame: *frame, len: *len },
        Reply::Udp { to, from_port, text } => Reply::Udp {
            to: *to,
            from_port: *from_port,
            text: FmtBuf::from_args(format_args!("{}", text.as_str())),
        },
        Reply::UdpEcho { to, from_port, data, len } => Reply::UdpEcho {
            to: *to,
            from_port: *from_port,
            data: *data,
            len: *len,
        },
    })
}
