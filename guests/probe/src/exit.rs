//! Final verdict (`probe: PASS` / `probe: FAIL <reason>`) and the ways the
//! probe leaves the machine.

use crate::fmtbuf::FmtBuf;
use crate::say;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use x86_64::instructions::port::Port;

/// isa-debug-exit port: QEMU exits with status `(value << 1) | 1`.
const DEBUG_EXIT_PORT: u16 = 0xf4;
/// PM1a control block of QEMU q35 (and Ferrovisor): the default target.
const PM1A_CNT_PORT: u16 = 0x604;
/// PM1_CNT.SLP_EN with SLP_TYP = 0 (S5 on these machines).
const PM1_SLP_EN: u16 = 0x2000;

/// Why a program failed; printed after `probe: FAIL `.
pub struct Reason(FmtBuf<160>);

impl Reason {
    /// Formats a reason. Prefer the [`fail_reason!`](crate::fail_reason) macro.
    pub fn new(args: fmt::Arguments) -> Self {
        Self(FmtBuf::from_args(args))
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Builds a [`Reason`] like `format!`.
#[macro_export]
macro_rules! fail_reason {
    ($($arg:tt)*) => {
        $crate::exit::Reason::new(format_args!($($arg)*))
    };
}

/// Returns `Err(Reason)` from the enclosing function, formatted like `format!`.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::fail_reason!($($arg)*))
    };
}

/// What to do once the verdict is printed (`exit=` on the command line).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ExitMode {
    /// Write 0 (pass) or 1 (fail) to the isa-debug-exit port.
    Debug = 0,
    /// ACPI soft-off through PM1a_CNT.
    Poweroff = 1,
    /// `cli; hlt` forever.
    Halt = 2,
}

static MODE: AtomicU8 = AtomicU8::new(ExitMode::Debug as u8);
/// The poweroff write, packed by [`SleepRegister::pack`].
static POWEROFF_ADDR: AtomicU64 = AtomicU64::new(PM1A_CNT_PORT as u64);
static POWEROFF_WRITE: AtomicU64 = AtomicU64::new(SleepRegister::DEFAULT.pack_write());
static FINISHING: AtomicBool = AtomicBool::new(false);

/// Selects how [`finish`] leaves the machine.
pub fn set_mode(mode: ExitMode) {
    MODE.store(mode as u8, Ordering::Relaxed);
}

fn mode() -> ExitMode {
    match MODE.load(Ordering::Relaxed) {
        1 => ExitMode::Poweroff,
        2 => ExitMode::Halt,
        _ => ExitMode::Debug,
    }
}

/// Prints the verdict and exits according to the exit mode. A second call
/// (e.g. a panic while reporting) skips the printing.
pub fn finish(result: Result<(), crate::exit::Reason>) -> ! {
    let passed = result.is_ok();
    if !FINISHING.swap(true, Ordering::SeqCst) {
        match result {
            Ok(()) => say!("PASS"),
            Err(reason) => say!("FAIL {}", reason),
        }
    }
    match mode() {
        ExitMode::Debug => debug_exit(if passed { 0 } else { 1 }),
        ExitMode::Poweroff => request_poweroff(),
        ExitMode::Halt => {}
    }
    halt_forever()
}

/// Asks QEMU's isa-debug-exit device to end the VM. Returns if absent.
pub fn debug_exit(value: u8) {
    // SAFETY: writing the debug-exit port only ends the VM (or is ignored).
    unsafe { Port::new(DEBUG_EXIT_PORT).write(value) }
}

/// A register write that requests soft-off (S5): PM1a_CNT, or the sleep
/// control register of hardware-reduced ACPI.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SleepRegister {
    /// I/O port (true) or memory (false).
    pub io: bool,
    pub addr: u64,
    /// Access width in bytes: 1, 2 or 4.
    pub width: u8,
    pub value: u32,
}

impl SleepRegister {
    /// 16-bit write of SLP_EN | SLP_TYP=0 to port 0x604 (QEMU q35).
    pub const DEFAULT: SleepRegister = SleepRegister {
        io: true,
        addr: PM1A_CNT_PORT as u64,
        width: 2,
        value: PM1_SLP_EN as u32,
    };

    const fn pack_write(&self) -> u64 {
        (self.value as u64) | ((self.width as u64) << 32) | ((self.io as u64) << 40)
    }

    fn unpack(addr: u64, write: u64) -> Self {
        SleepRegister {
            io: (write >> 40) & 1 != 0,
            addr,
            width: (write >> 32) as u8,
            value: write as u32,
        }
    }

    /// Performs the write. Memory targets must lie below 4 GiB (identity
    /// mapped); others are ignored, as are unknown widths.
    fn write(&self) {
        if !self.io && self.addr.saturating_add(u64::from(self.width)) > crate::phys::MAPPED_LIMIT {
            return;
        }
        // SAFETY: the register is the platform's sleep control, taken from
        // the FADT or the q35 default; writing it only changes the machine's
        // power state. Memory targets are identity mapped (checked above).
        unsafe {
            match (self.io, self.width) {
                (true, 1) => Port::<u8>::new(self.addr as u16).write(self.value as u8),
                (true, 2) => Port::<u16>::new(self.addr as u16).write(self.value as u16),
                (true, 4) => Port::<u32>::new(self.addr as u16).write(self.value),
                (false, 1) => (self.addr as *mut u8).write_volatile(self.value as u8),
                (false, 2) => (self.addr as *mut u16).write_volatile(self.value as u16),
                (false, 4) => (self.addr as *mut u32).write_volatile(self.value),
                _ => {}
            }
        }
    }
}

impl fmt::Display for SleepRegister {
    /// `io:0x604 value=0x2000` (`mem:` for memory).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let space = if self.io { "io" } else { "mem" };
        write!(f, "{}:{:#x} value={:#x}", space, self.addr, self.value)
    }
}

/// Sets the register [`request_poweroff`] writes (default:
/// [`SleepRegister::DEFAULT`]).
pub fn set_poweroff_register(register: SleepRegister) {
    POWEROFF_WRITE.store(register.pack_write(), Ordering::SeqCst);
    POWEROFF_ADDR.store(register.addr, Ordering::SeqCst);
}

/// The register [`request_poweroff`] writes.
pub fn poweroff_register() -> SleepRegister {
    SleepRegister::unpack(
        POWEROFF_ADDR.load(Ordering::SeqCst),
        POWEROFF_WRITE.load(Ordering::SeqCst),
    )
}

/// Requests ACPI S5 through the poweroff register. Returns if the platform
/// ignores it.
pub fn request_poweroff() {
    poweroff_register().write();
}

/// Stops this CPU for good.
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
