//! Just enough Ethernet, ARP, IPv4, ICMP and UDP for the `net` program:
//! parsing what arrives and building replies in place.

/// EtherType of IPv4.
pub const ETH_IPV4: u16 = 0x0800;
/// EtherType of ARP.
pub const ETH_ARP: u16 = 0x0806;
/// Ethernet header bytes.
pub const ETH_LEN: usize = 14;
/// IPv4 header bytes (no options on what the probe sends).
pub const IP_LEN: usize = 20;
/// UDP header bytes.
pub const UDP_LEN: usize = 8;

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// The ones'-complement sum of `data` folded into 16 bits, inverted.
pub fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A received UDP datagram.
pub struct Udp<'a> {
    /// Sender MAC.
    pub src_mac: [u8; 6],
    /// Sender IPv4 address.
    pub src_ip: [u8; 4],
    /// Sender port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Payload.
    pub payload: &'a [u8],
}

/// What a frame is, as far as the probe cares.
pub enum Frame<'a> {
    /// An ARP request for `target_ip` from `sender`.
    ArpRequest {
        /// Sender MAC and IP.
        sender_mac: [u8; 6],
        sender_ip: [u8; 4],
        /// The address asked about.
        target_ip: [u8; 4],
    },
    /// An ARP reply: `sender_ip` is at `sender_mac`.
    ArpReply {
        /// Who answered.
        sender_mac: [u8; 6],
        sender_ip: [u8; 4],
    },
    /// An ICMP echo request to us: the whole frame (to echo back).
    EchoRequest,
    /// A UDP datagram to `dst_ip`.
    Udp([u8; 4], Udp<'a>),
    /// Anything else.
    Other,
}

/// Classifies `frame`; short or malformed frames are `Other`.
pub fn parse(frame: &[u8]) -> Frame<'_> {
    if frame.len() < ETH_LEN {
        return Frame::Other;
    }
    let mut src_mac = [0u8; 6];
    src_mac.copy_from_slice(&frame[6..12]);
    match be16(frame, 12) {
        ETH_ARP if frame.len() >= ETH_LEN + 28 => {
            let a = &frame[ETH_LEN..];
            let mut sender_mac = [0u8; 6];
            sender_mac.copy_from_slice(&a[8..14]);
            let mut sender_ip = [0u8; 4];
            sender_ip.copy_from_slice(&a[14..18]);
            match be16(a, 6) {
                1 => {}
                2 => {
                    return Frame::ArpReply {
                        sender_mac,
                        sender_ip,
                    }
                }
                _ => return Frame::Other,
            }
            let mut target_ip = [0u8; 4];
            target_ip.copy_from_slice(&a[24..28]);
            Frame::ArpRequest {
                sender_mac,
                sender_ip,
                target_ip,
            }
        }
        ETH_IPV4 if frame.len() >= ETH_LEN + IP_LEN => {
            let ip = &frame[ETH_LEN..];
            let ihl = usize::from(ip[0] & 0xf) * 4;
            let total = usize::from(be16(ip, 2));
            if ip[0] >> 4 != 4 || ihl < IP_LEN || total < ihl || total > ip.len() {
                return Frame::Other;
            }
            let body = &ip[ihl..total];
            let mut src_ip = [0u8; 4];
            src_ip.copy_from_slice(&ip[12..16]);
            let mut dst_ip = [0u8; 4];
            dst_ip.copy_from_slice(&ip[16..20]);
            match ip[9] {
                1 if body.len() >= 8 && body[0] == 8 => Frame::EchoRequest,
                17 if body.len() >= UDP_LEN => {
                    let len = usize::from(be16(body, 4));
                    if len < UDP_LEN || len > body.len() {
                        return Frame::Other;
                    }
                    Frame::Udp(
                        dst_ip,
                        Udp {
                            src_mac,
                            src_ip,
                            src_port: be16(body, 0),
                            dst_port: be16(body, 2),
                            payload: &body[UDP_LEN..len],
                        },
                    )
                }
                _ => Frame::Other,
            }
        }
        _ => Frame::Other,
    }
}

/// Writes a broadcast ARP request for `target` (we are `mac`/`ip`) into `out`; its length.
pub fn arp_request(out: &mut [u8], mac: [u8; 6], ip: [u8; 4], target: [u8; 4]) -> usize {
    let n = arp_reply(out, mac, ip, [0; 6], target);
    out[..6].fill(0xff);
    out[ETH_LEN + 7] = 1;
    n
}

/// Writes an ARP reply (we are `mac`/`ip`) into `out`; its length.
pub fn arp_reply(
    out: &mut [u8],
    mac: [u8; 6],
    ip: [u8; 4],
    to_mac: [u8; 6],
    to_ip: [u8; 4],
) -> usize {
    out[..6].copy_from_slice(&to_mac);
    out[6..12].copy_from_slice(&mac);
    out[12..14].copy_from_slice(&ETH_ARP.to_be_bytes());
    let a = &mut out[ETH_LEN..ETH_LEN + 28];
    a[..8].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
    a[8..14].copy_from_slice(&mac);
    a[14..18].copy_from_slice(&ip);
    a[18..24].copy_from_slice(&to_mac);
    a[24..28].copy_from_slice(&to_ip);
    ETH_LEN + 28
}

/// Turns the ICMP echo request `request` into its reply in `out`; its length.
pub fn echo_reply(out: &mut [u8], request: &[u8]) -> usize {
    let n = request.len().min(out.len());
    out[..n].copy_from_slice(&request[..n]);
    // Swap MACs.
    out[..6].copy_from_slice(&request[6..12]);
    out[6..12].copy_from_slice(&request[..6]);
    let ip = &mut out[ETH_LEN..n];
    let ihl = usize::from(ip[0] & 0xf) * 4;
    let total = usize::from(be16(ip, 2)).min(ip.len());
    // Swap addresses (the header checksum is unchanged by a swap).
    for i in 0..4 {
        ip.swap(12 + i, 16 + i);
    }
    let icmp = &mut ip[ihl..total];
    icmp[0] = 0;
    icmp[2] = 0;
    icmp[3] = 0;
    let sum = checksum(icmp, 0);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    n
}

/// Writes a UDP datagram with `payload_len` bytes of payload (written by
/// `fill` into the payload area) into `out`; its length.
#[allow(clippy::too_many_arguments)]
pub fn udp(
    out: &mut [u8],
    src: ([u8; 6], [u8; 4], u16),
    dst: ([u8; 6], [u8; 4], u16),
    payload_len: usize,
    fill: impl FnOnce(&mut [u8]),
) -> usize {
    let total = ETH_LEN + IP_LEN + UDP_LEN + payload_len;
    out[..6].copy_from_slice(&dst.0);
    out[6..12].copy_from_slice(&src.0);
    out[12..14].copy_from_slice(&ETH_IPV4.to_be_bytes());
    let ip_len = (IP_LEN + UDP_LEN + payload_len) as u16;
    {
        let ip = &mut out[ETH_LEN..ETH_LEN + IP_LEN];
        ip[0] = 0x45;
        ip[1] = 0;
        ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
        ip[4..8].copy_from_slice(&[0, 0, 0x40, 0]);
        ip[8] = 64;
        ip[9] = 17;
        ip[10] = 0;
        ip[11] = 0;
        ip[12..16].copy_from_slice(&src.1);
        ip[16..20].copy_from_slice(&dst.1);
        let sum = checksum(ip, 0);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
    }
    let u = &mut out[ETH_LEN + IP_LEN..total];
    u[0..2].copy_from_slice(&src.2.to_be_bytes());
    u[2..4].copy_from_slice(&dst.2.to_be_bytes());
    u[4..6].copy_from_slice(&((UDP_LEN + payload_len) as u16).to_be_bytes());
    // A zero UDP checksum means "none" over IPv4.
    u[6..8].copy_from_slice(&[0, 0]);
    fill(&mut u[UDP_LEN..]);
    total
}
