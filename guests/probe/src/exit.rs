//! Final verdict (`probe: PASS` / `probe: FAIL <reason>`) and the ways the
//! probe leaves the machine.

use crate::fmtbuf::FmtBuf;
use crate::say;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use x86_64::instructions::port::Port;

/// isa-debug-exit port: QEMU exits with status `(value << 1) | 1`.
const DEBUG_EXIT_PORT: u16 = 0xf4;
/// PM1a control block of QEMU q35 (and Ferrovisor).
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

/// Requests ACPI S5 through PM1a_CNT. Returns if the platform ignores it.
pub fn request_poweroff() {
    // SAFETY: a PM1a_CNT write only changes the machine's power state.
    unsafe { Port::new(PM1A_CNT_PORT).write(PM1_SLP_EN) }
}

/// Stops this CPU for good.
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
