//! The i8042 keyboard controller, as far as guests use it here: the reset line
//! (command 0xFE on port 0x64). The controller itself is vm-superio's.

use vm_device::BusDevice;
use vm_superio::I8042Device;

use crate::{GuestRequest, GuestRequestSink};

/// First port (data, 0x60); the command/status port is 0x64.
pub const PORT: u64 = 0x60;
/// Ports claimed (0x60..=0x64; 0x61 is the PIT speaker port, which KVM handles in the kernel).
pub const LEN: u64 = 5;

/// Adapts the reset trigger to a [`GuestRequest::Reset`].
pub struct ResetLine(GuestRequestSink);

impl vm_superio::Trigger for ResetLine {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        (self.0)(GuestRequest::Reset);
        Ok(())
    }
}

/// The i8042 on the port bus.
pub struct I8042 {
    inner: I8042Device<ResetLine>,
}

impl I8042 {
    /// An i8042 whose reset reports to `sink`.
    pub fn new(sink: GuestRequestSink) -> I8042 {
        I8042 {
            inner: I8042Device::new(ResetLine(sink)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let Some(b) = data.first_mut() {
            *b = self.inner.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(b) = data.first() {
            // The trigger is infallible.
            let _ = self.inner.write(offset as u8, *b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn pulse_reset_requests_reset() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let mut d = I8042::new(Arc::new(move |r| s.lock().unwrap().push(r)));
        let mut b = [0u8; 1];
        d.read(4, &mut b);
        assert_eq!(b[0] & 0x2, 0, "input buffer empty");
        d.write(4, &[0xfe]);
        d.write(4, &[]);
        d.read(0, &mut []);
        assert_eq!(*seen.lock().unwrap(), vec![GuestRequest::Reset]);
    }
}
