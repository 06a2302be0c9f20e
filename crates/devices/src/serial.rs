//! The 16550 UART on COM1 (vm-superio's), its interrupt line, and the input
//! pump that feeds host bytes to the guest without losing any: when the
//! receive FIFO is full the pump waits until the guest has drained it.

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};

use vm_device::BusDevice;
use vm_superio::serial::SerialEvents;
use vm_superio::Serial;
use vmm_sys_util::eventfd::EventFd;

use crate::IrqLine;

/// COM1's base port.
pub const COM1_PORT: u64 = 0x3f8;
/// Ports claimed.
pub const LEN: u64 = 8;
/// COM1's ISA interrupt.
pub const COM1_IRQ: u32 = 4;

/// Signals the input pump whenever the guest empties the receive FIFO.
pub struct InputDrained(EventFd);

impl SerialEvents for InputDrained {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        // A failed eventfd write only delays the pump until the next drain.
        let _ = self.0.write(1);
    }
}

type Uart = Serial<IrqLine, InputDrained, Box<dyn Write + Send>>;

/// The UART and the two eventfds it signals.
pub struct SerialPort {
    uart: Uart,
    irq: EventFd,
    drained: EventFd,
    /// While set (the VM is paused), no input enters the FIFO.
    input_paused: bool,
}

impl SerialPort {
    /// A UART raising `irq` and writing guest output to `out`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> io::Result<SerialPort> {
        let drained = EventFd::new(libc::EFD_CLOEXEC)?;
        let uart = Serial::with_events(
            IrqLine(irq.try_clone()?),
            InputDrained(drained.try_clone()?),
            out,
        );
        Ok(SerialPort {
            uart,
            irq,
            drained,
            input_paused: false,
        })
    }

    /// The eventfd that raises the UART's interrupt (registered as an irqfd).
    pub fn irq(&self) -> &EventFd {
        &self.irq
    }

    /// An eventfd signalled each time the guest empties the receive FIFO.
    pub fn drained_event(&self) -> io::Result<EventFd> {
        self.drained.try_clone()
    }

    /// Puts as many of `bytes` into the receive FIFO as fit; returns how many.
    pub fn enqueue(&mut self, bytes: &[u8]) -> usize {
        if self.input_paused {
            return 0;
        }
        let n = self.uart.fifo_capacity().min(bytes.len());
        if n == 0 {
            return 0;
        }
        self.uart.enqueue_raw_bytes(&bytes[..n]).unwrap_or(0)
    }

    /// Holds input back (a paused VM) or lets it flow again; the input pump,
    /// waiting for the FIFO to drain, is woken on resume.
    pub fn set_input_paused(&mut self, paused: bool) {
        self.input_paused = paused;
        if !paused {
            let _ = self.drained.write(1);
        }
    }

    /// Returns the UART to its power-on state, keeping its output and eventfds.
    pub fn reset(&mut self) -> io::Result<()> {
        let fresh = Serial::with_events(
            IrqLine(self.irq.try_clone()?),
            InputDrained(self.drained.try_clone()?),
            Box::new(io::sink()) as Box<dyn Write + Send>,
        );
        let old = std::mem::replace(&mut self.uart, fresh);
        *self.uart.writer_mut() = old.into_writer();
        Ok(())
    }
}

impl BusDevice for SerialPort {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let Some(b) = data.first_mut() {
            *b = self.uart.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(&b) = data.first() {
            // Output errors (a closed pipe, a full disk) must not stop the guest.
            let _ = self.uart.write(offset as u8, b);
        }
    }
}

/// Copies `input` into the guest's receive FIFO until end of input, waiting
/// on `drained` whenever the FIFO is full. Never drops a byte.
pub fn pump_input(
    port: &Arc<Mutex<SerialPort>>,
    drained: &EventFd,
    mut input: impl Read,
) -> io::Result<()> {
    let mut buf = [0u8; 256];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut pending = &buf[..n];
        while !pending.is_empty() {
            let taken = port
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .enqueue(pending);
            pending = &pending[taken..];
            if !pending.is_empty() {
                drained.read()?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn port() -> (SerialPort, Captured) {
        let out = Captured::default();
        (
            SerialPort::new(EventFd::new(0).unwrap(), Box::new(out.clone())).unwrap(),
            out,
        )
    }

    #[test]
    fn guest_output_reaches_the_writer() {
        let (mut p, out) = port();
        for b in b"hi\n" {
            p.write(0, &[*b]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hi\n");
        p.reset().unwrap();
        p.write(0, b"!");
        assert_eq!(&*out.0.lock().unwrap(), b"hi\n!");
    }

    #[test]
    fn input_is_never_dropped() {
        let (p, _) = port();
        let drained = p.drained_event().unwrap();
        let p = Arc::new(Mutex::new(p));
        let input: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let expected = input.clone();
        let pump = {
            let p = p.clone();
            std::thread::spawn(move || pump_input(&p, &drained, &input[..]))
        };
        // The guest: read the data register while LSR says data is ready.
        let mut got = Vec::new();
        while got.len() < expected.len() {
            let mut lsr = [0u8];
            p.lock().unwrap().read(5, &mut lsr);
            if lsr[0] & 1 == 1 {
                let mut b = [0u8];
                p.lock().unwrap().read(0, &mut b);
                got.push(b[0]);
            } else {
                std::thread::yield_now();
            }
        }
        pump.join().unwrap().unwrap();
        assert_eq!(got, expected);
    }

    #[test]
    fn paused_input_waits_and_then_flows() {
        let (p, _) = port();
        let drained = p.drained_event().unwrap();
        let p = Arc::new(Mutex::new(p));
        p.lock().unwrap().set_input_paused(true);
        let pump = {
            let p = p.clone();
            std::thread::spawn(move || pump_input(&p, &drained, &b"xy"[..]))
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut lsr = [0u8];
        p.lock().unwrap().read(5, &mut lsr);
        assert_eq!(lsr[0] & 1, 0, "no data while paused");
        p.lock().unwrap().set_input_paused(false);
        pump.join().unwrap().unwrap();
        let mut b = [0u8];
        p.lock().unwrap().read(0, &mut b);
        assert_eq!(b[0], b'x');
    }

    #[test]
    fn empty_and_wide_accesses_are_harmless() {
        let (mut p, _) = port();
        p.read(0, &mut []);
        p.write(0, &[]);
        p.write(7, &[1, 2, 3, 4]);
        p.read(200, &mut [0u8; 8]);
    }
}
