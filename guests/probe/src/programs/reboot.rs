//! `probe=reboot`: resets the machine through the i8042 controller
//! (`method=i8042`, the default) or the FADT's reset register (`method=acpi`).

use super::Outcome;
use crate::start_info::StartInfo;
use crate::{acpi_access, bail, cmdline, say, tsc};
use acpi::address::AddressSpace;
use acpi::fadt::Fadt;
use x86_64::instructions::port::Port;

const I8042_COMMAND: u16 = 0x64;
const I8042_PULSE_RESET: u8 = 0xfe;
/// How long the machine gets to reset before the probe fails.
const GRACE_US: u64 = 1_000_000;

pub fn run(info: &StartInfo) -> Outcome {
    match cmdline::value(info.cmdline(), "method").unwrap_or("i8042") {
        "i8042" => {
            say!("rebooting");
            // SAFETY: the i8042 "pulse reset line" command resets the
            // machine, which is what this program is for.
            unsafe { Port::new(I8042_COMMAND).write(I8042_PULSE_RESET) };
        }
        "acpi" => acpi_reset(info.rsdp_paddr)?,
        other => bail!("unknown reboot method {}", other),
    }
    tsc::delay_us(GRACE_US);
    bail!(
        "still running {} ms after the reset request",
        GRACE_US / 1000
    )
}

/// Writes the FADT's RESET_VALUE to its RESET_REG (I/O space only).
fn acpi_reset(rsdp_paddr: u64) -> Outcome {
    let found = acpi_access::find(rsdp_paddr)?;
    let Ok(fadt) = found.tables.find_table::<Fadt>() else {
        bail!("no fadt");
    };
    let Some(reg) = fadt.reset_register().ok().filter(|r| r.address != 0) else {
        bail!("the fadt has no reset register");
    };
    if !matches!(reg.address_space, AddressSpace::SystemIo) || reg.address > 0xffff {
        bail!("reset register is not an i/o port");
    }
    let value = fadt.reset_value;
    say!(
        "rebooting method=acpi reg=io:{:#x} value={:#04x}",
        reg.address,
        value
    );
    // SAFETY: writing the platform's reset value to its reset register
    // resets the machine, which is what this program is for.
    unsafe { Port::new(reg.address as u16).write(value) };
    Ok(())
}
