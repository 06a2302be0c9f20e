//! `probe=reboot`: resets the machine through the i8042 controller.

use super::Outcome;
use crate::start_info::StartInfo;
use crate::{bail, say, tsc};
use x86_64::instructions::port::Port;

const I8042_COMMAND: u16 = 0x64;
const I8042_PULSE_RESET: u8 = 0xfe;
/// How long the machine gets to reset before the probe fails.
const GRACE_US: u64 = 1_000_000;

pub fn run(_info: &StartInfo) -> Outcome {
    say!("rebooting");
    // SAFETY: the i8042 "pulse reset line" command resets the machine, which
    // is what this program is for.
    unsafe { Port::new(I8042_COMMAND).write(I8042_PULSE_RESET) };
    tsc::delay_us(GRACE_US);
    bail!("still running {} ms after the i8042 reset", GRACE_US / 1000)
}
