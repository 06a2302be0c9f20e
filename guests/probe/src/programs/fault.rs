//! `probe=fault`: forces a triple fault (the VMM should see a shutdown).

use super::Outcome;
use crate::start_info::StartInfo;
use crate::{bail, idt, say};

pub fn run(_info: &StartInfo) -> Outcome {
    say!("triple fault now");
    idt::load_empty();
    // SAFETY: ud2 raises #UD; with a zero-limit IDT it cannot be delivered,
    // which escalates to a double and then a triple fault. This is the
    // point of the program. (int3 is avoided: KVM's emulator lacks it.)
    unsafe { core::arch::asm!("ud2", options(nomem, nostack)) };
    bail!("still running after the triple fault")
}
