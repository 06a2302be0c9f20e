//! `probe=pci`: every function on bus 0 with its IDs, class, interrupt pin,
//! capabilities and BARs; through ECAM and the legacy ports when both
//! exist, which must then agree.

use super::Outcome;
use crate::pci::{self, Bdf, ConfigAccess};
use crate::pci_host;
use crate::start_info::StartInfo;
use crate::{bail, say, text};
use alloc::string::String;
use core::fmt::Write;

/// Configuration bytes compared between the two mechanisms (all that the
/// legacy one reaches).
const COMPARED_BYTES: u16 = 256;

pub fn run(info: &StartInfo) -> Outcome {
    let host = pci_host::find(info.rsdp_paddr)?;
    let ecam = match host.ecam_region {
        Some(region) => text!("{:#x} ecam_source={}", region.base, region.source),
        None => text!("none"),
    };
    say!(
        "pci config legacy={} ecam={}",
        if host.legacy.is_some() { "yes" } else { "no" },
        ecam
    );
    let Some(access) = host.access() else {
        bail!("no pci configuration mechanism (0xcf8 does not respond, no mcfg or _CBA)");
    };
    let functions = access.functions_on_bus0();

    if let (Some(legacy), Some(ecam)) = (host.legacy, host.ecam) {
        let through_legacy = legacy.functions_on_bus0();
        if through_legacy != functions {
            bail!(
                "legacy finds {} functions, ecam {}",
                through_legacy.len(),
                functions.len()
            );
        }
        for &bdf in &functions {
            compare(&legacy, &ecam, bdf)?;
        }
        say!(
            "pci legacy and ecam agree functions={} bytes={}",
            functions.len(),
            COMPARED_BYTES
        );
    }

    for &bdf in &functions {
        report(&access, bdf)?;
    }
    say!("pci count={}", functions.len());
    if functions.is_empty() {
        bail!("no pci functions on bus 0");
    }
    Ok(())
}

/// Fails on the first dword that differs between the two mechanisms.
fn compare(legacy: &ConfigAccess, ecam: &ConfigAccess, bdf: Bdf) -> Outcome {
    for offset in (0..COMPARED_BYTES).step_by(4) {
        let (a, b) = (legacy.read32(bdf, offset), ecam.read32(bdf, offset));
        if a != b {
            bail!(
                "{} offset {:#x}: legacy reads {:#010x}, ecam {:#010x}",
                bdf,
                offset,
                a,
                b
            );
        }
    }
    Ok(())
}

/// Prints `pci 00:SS.F vendor=.. device=.. class=.. irq_pin=.. caps=.. barN=..`.
fn report(access: &ConfigAccess, bdf: Bdf) -> Outcome {
    let ids = access.read32(bdf, pci::REG_VENDOR);
    let class = access.read32(bdf, pci::REG_CLASS) >> 8;
    let irq_pin = access.read8(bdf, pci::REG_INTERRUPT_PIN);
    let mut line = String::new();
    for (i, (_, id)) in access.capabilities(bdf)?.into_iter().enumerate() {
        let sep = if i > 0 { "," } else { "" };
        let _ = write!(line, "{}{:#04x}({})", sep, id, pci::capability_name(id));
    }
    if line.is_empty() {
        line.push_str("none");
    }
    for bar in access.bars(bdf)? {
        let _ = write!(line, " {}", bar);
    }
    say!(
        "pci {} vendor={:#06x} device={:#06x} class={:#08x} irq_pin={} caps={}",
        bdf,
        ids & 0xffff,
        ids >> 16,
        class,
        irq_pin,
        line
    );
    Ok(())
}
