//! `probe=poweroff`: requests ACPI soft-off whatever `exit=` says.

use super::Outcome;
use crate::start_info::StartInfo;
use crate::{bail, exit, say, tsc};

/// How long the machine gets to act on the request before the probe fails.
const GRACE_US: u64 = 1_000_000;

pub fn run(_info: &StartInfo) -> Outcome {
    say!("powering off");
    exit::request_poweroff();
    tsc::delay_us(GRACE_US);
    bail!(
        "still running {} ms after the poweroff request",
        GRACE_US / 1000
    )
}
