//! `probe=poweroff`: requests ACPI soft-off whatever `exit=` says, through
//! the register the ACPI tables describe (see [`acpi_power`]).

use super::Outcome;
use crate::start_info::StartInfo;
use crate::{acpi_power, bail, exit, say, tsc};

/// How long the machine gets to act on the request before the probe fails.
const GRACE_US: u64 = 1_000_000;

pub fn run(info: &StartInfo) -> Outcome {
    let poweroff = acpi_power::install(info.rsdp_paddr);
    say!("poweroff {}", poweroff);
    say!("powering off");
    exit::request_poweroff();
    tsc::delay_us(GRACE_US);
    bail!(
        "still running {} ms after the poweroff request",
        GRACE_US / 1000
    )
}
