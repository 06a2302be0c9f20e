//! The virtio-net header that precedes every frame (virtio 1.x §5.1.6),
//! and the checks a guest-written one must pass before the TAP sees it.

/// Bytes of the header: VERSION_1 devices always carry `num_buffers`.
pub const HEADER_LEN: usize = 12;
/// Offset of `num_buffers` in the header.
pub const NUM_BUFFERS_OFFSET: usize = 10;
/// The largest frame (without the header) the device accepts or delivers:
/// a 64 KiB GSO payload plus an Ethernet header with a VLAN tag.
pub const MAX_FRAME: usize = 65535 + 14 + 4;
/// The smallest frame: an Ethernet header.
pub const MIN_FRAME: usize = 14;

/// `flags`: the device must checksum from `csum_start`.
pub const FLAG_NEEDS_CSUM: u8 = 1;
/// `flags`: the checksum is already valid (receive side only).
pub const FLAG_DATA_VALID: u8 = 2;
/// `gso_type`: not a GSO frame.
pub const GSO_NONE: u8 = 0;
/// `gso_type`: TCP over IPv4 segmentation.
pub const GSO_TCPV4: u8 = 1;
/// `gso_type`: UDP fragmentation (UFO).
pub const GSO_UDP: u8 = 3;
/// `gso_type`: TCP over IPv6 segmentation.
pub const GSO_TCPV6: u8 = 4;
/// `gso_type` bit: the TCP segments carry ECN.
pub const GSO_ECN: u8 = 0x80;

/// A parsed virtio-net header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NetHeader {
    /// NEEDS_CSUM / DATA_VALID.
    pub flags: u8,
    /// GSO_* with the ECN bit.
    pub gso_type: u8,
    /// Length of the headers to copy into each segment.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Where, after `csum_start`, the checksum goes.
    pub csum_offset: u16,
}

impl NetHeader {
    /// Parses the first [`HEADER_LEN`] bytes (little-endian fields).
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> NetHeader {
        let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
        NetHeader {
            flags: bytes[0],
            gso_type: bytes[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        }
    }
}

/// The offloads the driver may use on transmit (what it negotiated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TxOffloads {
    /// `CSUM`: partial checksums.
    pub csum: bool,
    /// `HOST_TSO4`.
    pub tso4: bool,
    /// `HOST_TSO6`.
    pub tso6: bool,
    /// `HOST_ECN`.
    pub ecn: bool,
    /// `HOST_UFO`.
    pub ufo: bool,
}

/// Why a transmitted frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The chain is too short to hold the header.
    #[error("the chain holds {0} bytes, fewer than the {HEADER_LEN}-byte header")]
    ShortChain(usize),
    /// The frame is shorter than an Ethernet header or longer than [`MAX_FRAME`].
    #[error("frame of {0} bytes (allowed {MIN_FRAME} to {MAX_FRAME})")]
    FrameLength(usize),
    /// Flags the transmit side does not know or did not negotiate.
    #[error("flags {0:#x} not allowed")]
    Flags(u8),
    /// A GSO type that is unknown or was not negotiated.
    #[error("gso_type {0:#x} unknown or not negotiated")]
    GsoType(u8),
    /// GSO without a segment size or a checksum request.
    #[error("GSO frame with gso_size {0} or without NEEDS_CSUM")]
    GsoShape(u16),
    /// `hdr_len` beyond the frame.
    #[error("hdr_len {0} beyond the frame")]
    HdrLen(u16),
    /// The checksum position lies outside the frame.
    #[error("csum_start {0} + csum_offset {1} beyond the frame")]
    Checksum(u16, u16),
}

/// Checks the header of a transmitted frame of `frame_len` bytes (the chain
/// minus the header) against what the driver negotiated.
pub fn check_tx(h: &NetHeader, frame_len: usize, allowed: TxOffloads) -> Result<(), HeaderError> {
    if !(MIN_FRAME..=MAX_FRAME).contains(&frame_len) {
        return Err(HeaderError::FrameLength(frame_len));
    }
    let known = if allowed.csum { FLAG_NEEDS_CSUM } else { 0 };
    if h.flags & !known != 0 {
        return Err(HeaderError::Flags(h.flags));
    }
    if h.flags & FLAG_NEEDS_CSUM != 0 {
        let end = usize::from(h.csum_start) + usize::from(h.csum_offset) + 2;
        if end > frame_len {
            return Err(HeaderError::Checksum(h.csum_start, h.csum_offset));
        }
    }
    let ecn = h.gso_type & GSO_ECN != 0;
    let base = h.gso_type & !GSO_ECN;
    let ok = match base {
        GSO_NONE => !ecn,
        GSO_TCPV4 => allowed.tso4 && (!ecn || allowed.ecn),
        GSO_TCPV6 => allowed.tso6 && (!ecn || allowed.ecn),
        GSO_UDP => allowed.ufo && !ecn,
        _ => false,
    };
    if !ok {
        return Err(HeaderError::GsoType(h.gso_type));
    }
    if base != GSO_NONE {
        if h.gso_size == 0 || h.flags & FLAG_NEEDS_CSUM == 0 {
            return Err(HeaderError::GsoShape(h.gso_size));
        }
        if usize::from(h.hdr_len) > frame_len {
            return Err(HeaderError::HdrLen(h.hdr_len));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: TxOffloads = TxOffloads {
        csum: true,
        tso4: true,
        tso6: true,
        ecn: true,
        ufo: true,
    };

    fn header(flags: u8, gso_type: u8) -> NetHeader {
        NetHeader {
            flags,
            gso_type,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        }
    }

    #[test]
    fn parses_little_endian_fields() {
        let bytes = [1, 0x81, 54, 0, 0xa8, 5, 34, 0, 16, 0, 0, 0];
        let h = NetHeader::parse(&bytes);
        assert_eq!(h, header(1, 0x81));
    }

    #[test]
    fn plain_and_offloaded_frames_pass() {
        assert_eq!(
            check_tx(&NetHeader::default(), 60, TxOffloads::default()),
            Ok(())
        );
        assert_eq!(check_tx(&header(1, GSO_NONE), 60, ALL), Ok(()));
        assert_eq!(
            check_tx(&header(1, GSO_TCPV4 | GSO_ECN), 65000, ALL),
            Ok(())
        );
        assert_eq!(check_tx(&header(1, GSO_TCPV6), 65000, ALL), Ok(()));
        assert_eq!(check_tx(&header(1, GSO_UDP), 9000, ALL), Ok(()));
    }

    #[test]
    fn bad_headers_are_refused() {
        let none = TxOffloads::default();
        assert_eq!(
            check_tx(&NetHeader::default(), 13, none),
            Err(HeaderError::FrameLength(13))
        );
        assert_eq!(
            check_tx(&NetHeader::default(), MAX_FRAME + 1, ALL),
            Err(HeaderError::FrameLength(MAX_FRAME + 1))
        );
        assert_eq!(
            check_tx(&header(1, 0), 60, none),
            Err(HeaderError::Flags(1))
        );
        assert_eq!(check_tx(&header(2, 0), 60, ALL), Err(HeaderError::Flags(2)));
        assert_eq!(
            check_tx(&header(0x10, 0), 60, ALL),
            Err(HeaderError::Flags(0x10))
        );
        assert_eq!(
            check_tx(&header(1, 0), 51, ALL),
            Err(HeaderError::Checksum(34, 16))
        );
        for bad in [2u8, 5, 0x7f, GSO_ECN, GSO_UDP | GSO_ECN] {
            assert_eq!(
                check_tx(&header(1, bad), 9000, ALL),
                Err(HeaderError::GsoType(bad))
            );
        }
        let csum_only = TxOffloads {
            csum: true,
            ..TxOffloads::default()
        };
        assert_eq!(
            check_tx(&header(1, GSO_TCPV4), 9000, csum_only),
            Err(HeaderError::GsoType(GSO_TCPV4))
        );
        assert_eq!(
            check_tx(&header(0, GSO_TCPV4), 9000, ALL),
            Err(HeaderError::GsoShape(1448))
        );
        let mut zero = header(1, GSO_TCPV4);
        zero.gso_size = 0;
        assert_eq!(check_tx(&zero, 9000, ALL), Err(HeaderError::GsoShape(0)));
        let mut long = header(1, GSO_TCPV4);
        long.hdr_len = 9001;
        assert_eq!(check_tx(&long, 9000, ALL), Err(HeaderError::HdrLen(9001)));
    }
}
