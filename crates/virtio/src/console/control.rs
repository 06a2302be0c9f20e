//! The control queues' wire format (virtio 1.x §5.3.6.2) and the bounded
//! list of messages waiting for the driver to post control receive buffers.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Control events (`struct virtio_console_control.event`).
pub(super) mod event {
    /// Driver → device: the driver is ready (value 1) or failed (0).
    pub const DEVICE_READY: u16 = 0;
    /// Device → driver: port `id` exists.
    pub const DEVICE_ADD: u16 = 1;
    /// Device → driver: port `id` went away (never sent: ports are fixed).
    pub const DEVICE_REMOVE: u16 = 2;
    /// Driver → device: port `id` is set up (value 1) or failed (0).
    pub const PORT_READY: u16 = 3;
    /// Device → driver: port `id` is a console.
    pub const CONSOLE_PORT: u16 = 4;
    /// Device → driver: console size change (never sent: no size).
    pub const RESIZE: u16 = 5;
    /// Both ways: the host (device → driver) or guest (driver → device)
    /// side of port `id` opened (value 1) or closed (0).
    pub const PORT_OPEN: u16 = 6;
    /// Device → driver: port `id`'s name follows the header.
    pub const PORT_NAME: u16 = 7;
}

/// Bytes in a control message header.
pub(super) const HEADER_LEN: usize = 8;
/// The most messages waiting for control receive buffers.
pub(super) const PENDING_CAP: usize = 1024;

/// One control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Message {
    /// Port number.
    pub id: u32,
    /// One of [`event`].
    pub event: u16,
    /// Event argument.
    pub value: u16,
    /// Bytes after the header (PORT_NAME only).
    pub name: Vec<u8>,
}

impl Message {
    /// A header-only message.
    pub fn new(id: u32, event: u16, value: u16) -> Message {
        Message {
            id,
            event,
            value,
            name: Vec::new(),
        }
    }

    /// The wire form: little-endian header, then the name.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.name.len());
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&self.event.to_le_bytes());
        out.extend_from_slice(&self.value.to_le_bytes());
        out.extend_from_slice(&self.name);
        out
    }

    /// Parses a header (anything after it is ignored).
    pub fn decode(header: &[u8; HEADER_LEN]) -> Message {
        Message::new(
            u32::from_le_bytes([header[0], header[1], header[2], header[3]]),
            u16::from_le_bytes([header[4], header[5]]),
            u16::from_le_bytes([header[6], header[7]]),
        )
    }

    /// A message only its latest value matters for.
    fn is_state(&self) -> bool {
        matches!(self.event, event::PORT_OPEN | event::RESIZE)
    }
}

/// Messages for the driver, oldest first, bounded by [`PENDING_CAP`].
#[derive(Debug, Default)]
pub(super) struct ControlOut {
    pending: VecDeque<Message>,
}

impl ControlOut {
    /// Queues `msg`. A PORT_OPEN or RESIZE still waiting for the same port is
    /// updated in place; an identical waiting message is not repeated; when
    /// full, the oldest PORT_OPEN/RESIZE makes room, else `msg` is dropped.
    /// Returns false when `msg` was dropped.
    pub fn push(&mut self, msg: Message) -> bool {
        if msg.is_state() {
            if let Some(old) = self
                .pending
                .iter_mut()
                .find(|m| m.id == msg.id && m.event == msg.event)
            {
                old.value = msg.value;
                return true;
            }
        } else if self.pending.contains(&msg) {
            return true;
        }
        if self.pending.len() >= PENDING_CAP {
            match self.pending.iter().position(Message::is_state) {
                Some(i) => {
                    self.pending.remove(i);
                }
                None => return false,
            }
        }
        self.pending.push_back(msg);
        true
    }

    /// The oldest waiting message.
    pub fn front(&self) -> Option<&Message> {
        self.pending.front()
    }

    /// Forgets the oldest waiting message.
    pub fn pop(&mut self) {
        self.pending.pop_front();
    }

    /// How many messages wait.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.pending.len()
    }
}

/// Lets a log line through at most once a second.
#[derive(Debug, Default)]
pub(super) struct RateLimit {
    last: Option<Instant>,
}

impl RateLimit {
    /// Whether a line may be logged now.
    pub fn allow(&mut self) -> bool {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return false;
        }
        self.last = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let mut m = Message::new(7, event::PORT_NAME, 1);
        m.name = b"org.test".to_vec();
        let bytes = m.encode();
        assert_eq!(&bytes[..8], &[7, 0, 0, 0, 7, 0, 1, 0]);
        let header: [u8; 8] = bytes[..8].try_into().unwrap();
        let back = Message::decode(&header);
        assert_eq!((back.id, back.event, back.value), (7, event::PORT_NAME, 1));
    }

    #[test]
    fn state_messages_coalesce_and_the_list_is_bounded() {
        let mut out = ControlOut::default();
        assert!(out.push(Message::new(1, event::PORT_OPEN, 1)));
        assert!(out.push(Message::new(1, event::DEVICE_ADD, 0)));
        assert!(out.push(Message::new(1, event::PORT_OPEN, 0)));
        assert!(out.push(Message::new(1, event::DEVICE_ADD, 0)));
        assert_eq!(out.len(), 2);
        assert_eq!(out.front().map(|m| m.value), Some(0));
        for id in 0..(2 * PENDING_CAP as u32) {
            out.push(Message::new(id, event::DEVICE_ADD, 0));
        }
        assert_eq!(out.len(), PENDING_CAP);
        // The open message made room first; then new messages are dropped.
        assert_eq!(out.front().map(|m| m.event), Some(event::DEVICE_ADD));
        assert!(!out.push(Message::new(u32::MAX, event::DEVICE_ADD, 0)));
        assert!(!out.push(Message::new(3, event::PORT_OPEN, 1)));
        assert_eq!(out.len(), PENDING_CAP);
    }

    #[test]
    fn rate_limit_allows_one_line_a_second() {
        let mut r = RateLimit::default();
        assert!(r.allow());
        assert!(!r.allow());
    }
}
