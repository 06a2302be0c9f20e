//! Where the platform wants the ACPI soft-off (S5) write: the FADT's PM1a
//! control block with `\_S5`'s SLP_TYPa, or on hardware-reduced platforms
//! (QEMU microvm) the FADT's sleep control register.

use crate::acpi_access;
use crate::aml_scan;
use crate::exit::{self, Reason, SleepRegister};
use crate::fail_reason;
use acpi::address::{AddressSpace, GenericAddress};
use acpi::fadt::Fadt;
use acpi::AcpiTable;
use core::fmt;

/// PM1_CNT: SLP_EN and the SLP_TYP field.
const PM1_SLP_EN: u32 = 1 << 13;
const PM1_SLP_TYP_SHIFT: u32 = 10;
/// Sleep control register: SLP_EN and the SLP_TYP field.
const SLEEP_CTL_SLP_EN: u32 = 1 << 5;
const SLEEP_CTL_SLP_TYP_SHIFT: u32 = 2;
/// FADT length needed to hold SLEEP_CONTROL_REG (offset 244, 12 bytes).
const FADT_SLEEP_CONTROL_END: u32 = 256;

/// The resolved poweroff write and where it came from.
pub struct PowerOff {
    pub register: SleepRegister,
    /// `\_S5` SLP_TYPa, if the DSDT has one.
    pub s5: Option<u64>,
    /// `None`: taken from ACPI; `Some(reason)`: ACPI was unusable, so the
    /// q35 default is used.
    pub fallback: Option<Reason>,
}

impl fmt::Display for PowerOff {
    /// `reg=io:0x604 value=0x2000 source=acpi s5=0`, or
    /// `reg=... source=default (reason)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "reg={}", self.register)?;
        match (&self.fallback, self.s5) {
            (Some(reason), _) => write!(f, " source=default ({})", reason),
            (None, Some(s5)) => write!(f, " source=acpi s5={}", s5),
            (None, None) => write!(f, " source=acpi s5=none"),
        }
    }
}

/// Resolves the poweroff register from ACPI (RSDP from `rsdp_paddr`, else
/// the BIOS areas), falling back to [`SleepRegister::DEFAULT`].
pub fn resolve(rsdp_paddr: u64) -> PowerOff {
    match from_acpi(rsdp_paddr) {
        Ok((register, s5)) => PowerOff {
            register,
            s5,
            fallback: None,
        },
        Err(reason) => PowerOff {
            register: SleepRegister::DEFAULT,
            s5: None,
            fallback: Some(reason),
        },
    }
}

/// Resolves the register and makes [`exit::request_poweroff`] use it.
pub fn install(rsdp_paddr: u64) -> PowerOff {
    let poweroff = resolve(rsdp_paddr);
    exit::set_poweroff_register(poweroff.register);
    poweroff
}

fn from_acpi(rsdp_paddr: u64) -> Result<(SleepRegister, Option<u64>), Reason> {
    let found = acpi_access::find(rsdp_paddr)?;
    let fadt = found
        .tables
        .find_table::<Fadt>()
        .map_err(|e| fail_reason!("no fadt: {:?}", e))?;
    let dsdt = acpi_access::copy(&acpi_access::dsdt(&fadt)?);
    let aml = dsdt
        .get(acpi_access::SDT_HEADER_LEN as usize..)
        .unwrap_or(&[]);
    let s5 = aml_scan::s5_slp_typa(aml);
    // Without \_S5 the firmware does not describe S5; use type 0, like the
    // q35 default.
    let slp_typ = (s5.unwrap_or(0) & 0x7) as u32;

    let pm1a = fadt
        .pm1a_control_block()
        .map_err(|e| fail_reason!("bad pm1a_cnt: {:?}", e))?;
    if pm1a.address != 0 {
        let register = target(&pm1a, 2, PM1_SLP_EN | (slp_typ << PM1_SLP_TYP_SHIFT))?;
        return Ok((register, s5));
    }
    let sleep_control = if fadt.header().length >= FADT_SLEEP_CONTROL_END {
        fadt.sleep_control_register()
            .map_err(|e| fail_reason!("bad sleep control register: {:?}", e))?
    } else {
        None
    };
    match sleep_control {
        Some(gas) if gas.address != 0 => {
            let value = SLEEP_CTL_SLP_EN | (slp_typ << SLEEP_CTL_SLP_TYP_SHIFT);
            Ok((target(&gas, 1, value)?, s5))
        }
        _ => Err(fail_reason!(
            "fadt has no pm1a_cnt and no sleep control register"
        )),
    }
}

fn target(gas: &GenericAddress, width: u8, value: u32) -> Result<SleepRegister, Reason> {
    let io = match gas.address_space {
        AddressSpace::SystemIo => true,
        AddressSpace::SystemMemory => false,
        other => return Err(fail_reason!("sleep register in {:?} space", other)),
    };
    Ok(SleepRegister {
        io,
        addr: gas.address,
        width,
        value,
    })
}
