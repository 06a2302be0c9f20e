//! COM1 (16550 UART at 0x3f8): polled output in FIFO-sized bursts and polled
//! input.
//!
//! Every port access is a VM exit, so output is written in bursts of up to
//! 16 bytes per "transmitter empty" check instead of one check per byte.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use x86_64::instructions::port::Port;

const COM1: u16 = 0x3f8;
const REG_DATA: u16 = 0; // THR / RBR
const REG_IER: u16 = 1;
const REG_DLL: u16 = 0; // while LCR.DLAB is set
const REG_DLM: u16 = 1; // while LCR.DLAB is set
const REG_FCR_IIR: u16 = 2;
const REG_LCR: u16 = 3;
const REG_MCR: u16 = 4;
const REG_LSR: u16 = 5;

const LCR_DLAB: u8 = 0x80;
const LCR_8N1: u8 = 0x03;
/// FIFO enable, 14-byte receive trigger; no "clear FIFO" bits, so bytes that
/// are already queued are kept on devices that allow it.
const FCR_ENABLE: u8 = 0xc1;
const IIR_FIFO_MASK: u8 = 0xc0;
const MCR_DTR_RTS: u8 = 0x03;
const LSR_DATA_READY: u8 = 0x01;
const LSR_THR_EMPTY: u8 = 0x20;

/// Transmit FIFO depth of a 16550A.
const FIFO_SIZE: usize = 16;
/// Upper bound on "transmitter empty" polls before writing anyway, so that a
/// broken UART cannot hang the probe.
const MAX_THR_POLLS: u32 = 100_000;
/// Marks a byte held in [`STASHED`].
const STASHED_VALID: u16 = 0x100;

/// Bytes written per "transmitter empty" check: 1 until the FIFO is known.
static BURST: AtomicUsize = AtomicUsize::new(1);
/// A byte received before the FIFO was enabled (enabling it flushes the
/// receiver on QEMU), tagged with [`STASHED_VALID`].
static STASHED: AtomicU16 = AtomicU16::new(0);

fn outb(reg: u16, value: u8) {
    // SAFETY: COM1's registers have no memory side effects; the probe is the
    // only user of the port.
    unsafe { Port::new(COM1 + reg).write(value) }
}

fn inb(reg: u16) -> u8 {
    // SAFETY: as for `outb`; reading RBR/LSR/IIR only changes UART state.
    unsafe { Port::new(COM1 + reg).read() }
}

/// Programs COM1 for 115200 8N1 with FIFOs, polled (no interrupts).
pub fn init() {
    outb(REG_IER, 0);
    outb(REG_LCR, LCR_DLAB);
    outb(REG_DLL, 1); // divisor 1: 115200 baud
    outb(REG_DLM, 0);
    outb(REG_LCR, LCR_8N1);
    if inb(REG_LSR) & LSR_DATA_READY != 0 {
        let byte = inb(REG_DATA);
        STASHED.store(STASHED_VALID | u16::from(byte), Ordering::Relaxed);
    }
    outb(REG_FCR_IIR, FCR_ENABLE);
    outb(REG_MCR, MCR_DTR_RTS);
    if inb(REG_FCR_IIR) & IIR_FIFO_MASK == IIR_FIFO_MASK {
        BURST.store(FIFO_SIZE, Ordering::Relaxed);
    }
}

fn wait_transmitter_empty() {
    for _ in 0..MAX_THR_POLLS {
        if inb(REG_LSR) & LSR_THR_EMPTY != 0 {
            return;
        }
        core::hint::spin_loop();
    }
}

/// Writes raw bytes to COM1.
pub fn write_bytes(bytes: &[u8]) {
    let burst = BURST.load(Ordering::Relaxed);
    for chunk in bytes.chunks(burst) {
        wait_transmitter_empty();
        for &byte in chunk {
            outb(REG_DATA, byte);
        }
    }
}

/// Returns the next received byte, if one is waiting.
pub fn try_read_byte() -> Option<u8> {
    let stashed = STASHED.swap(0, Ordering::Relaxed);
    if stashed & STASHED_VALID != 0 {
        return Some(stashed as u8);
    }
    if inb(REG_LSR) & LSR_DATA_READY != 0 {
        Some(inb(REG_DATA))
    } else {
        None
    }
}

/// Collects one output line so that it leaves in as few bursts as possible.
struct Line {
    buf: [u8; 128],
    len: usize,
}

impl Line {
    fn push(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if self.len == self.buf.len() {
                self.flush();
            }
            self.buf[self.len] = byte;
            self.len += 1;
        }
    }

    fn flush(&mut self) {
        write_bytes(&self.buf[..self.len]);
        self.len = 0;
    }
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push(s.as_bytes());
        Ok(())
    }
}

/// Prints `probe: <args>\n`. Use through [`say!`](crate::say).
pub fn say(args: fmt::Arguments) {
    let mut line = Line {
        buf: [0; 128],
        len: 0,
    };
    line.push(b"probe: ");
    // `Line` never reports errors; a failing `Display` impl just cuts the line.
    let _ = line.write_fmt(args);
    line.push(b"\n");
    line.flush();
}

/// Prints one `probe: ...` line on COM1, formatted like `format!`.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::serial::say(format_args!($($arg)*))
    };
}
