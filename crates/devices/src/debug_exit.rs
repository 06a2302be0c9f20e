//! QEMU's isa-debug-exit: a write of `v` ends the VMM with status `(v << 1) | 1`.

use vm_device::BusDevice;

use crate::{GuestRequest, GuestRequestSink};

/// The conventional port.
pub const PORT: u64 = 0xf4;
/// Ports claimed (QEMU tests use `iosize=4`).
pub const LEN: u64 = 4;

/// The debug-exit port.
pub struct DebugExit {
    sink: GuestRequestSink,
}

impl DebugExit {
    /// A debug-exit device reporting to `sink`.
    pub fn new(sink: GuestRequestSink) -> DebugExit {
        DebugExit { sink }
    }

    /// The process exit status for a written value (an 8-bit status, as the OS truncates it).
    pub fn exit_status(value: u32) -> i32 {
        (((value << 1) | 1) & 0xff) as i32
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let mut value = [0u8; 4];
        let n = data.len().min(4);
        value[..n].copy_from_slice(&data[..n]);
        (self.sink)(GuestRequest::DebugExit(u32::from_le_bytes(value)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn status_matches_qemu() {
        assert_eq!(DebugExit::exit_status(0), 1);
        assert_eq!(DebugExit::exit_status(1), 3);
        assert_eq!(DebugExit::exit_status(0x10), 0x21);
        assert_eq!(DebugExit::exit_status(0xff), 0xff);
    }

    #[test]
    fn any_width_write_requests_exit() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let mut d = DebugExit::new(Arc::new(move |r| s.lock().unwrap().push(r)));
        d.write(0, &[3]);
        d.write(0, &[1, 2, 0, 0, 9, 9, 9, 9]);
        d.write(0, &[]);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![
                GuestRequest::DebugExit(3),
                GuestRequest::DebugExit(0x201),
                GuestRequest::DebugExit(0)
            ]
        );
    }
}
