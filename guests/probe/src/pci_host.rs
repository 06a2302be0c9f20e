//! The PCI host bridge as the platform describes it: which configuration
//! mechanisms work (legacy ports; ECAM from the ACPI MCFG, else from the
//! host bridge's `_CBA` in the DSDT) and which memory windows it forwards
//! (the DSDT's host bridge `_CRS`).
//!
//! Missing or unusable ACPI tables are not an error here: there is then no
//! ECAM and no described window.

use crate::acpi_access;
use crate::aml_scan::{self, MemWindow};
use crate::exit::Reason;
use crate::pci::ConfigAccess;
use acpi::fadt::Fadt;
use acpi::mcfg::Mcfg;
use alloc::vec::Vec;

/// An ECAM region for segment 0 covering bus 0.
#[derive(Clone, Copy)]
pub struct EcamRegion {
    pub base: u64,
    pub start_bus: u8,
    pub end_bus: u8,
    /// `mcfg` or `cba` (the DSDT's `_CBA`; bus 0 only is assumed).
    pub source: &'static str,
}

/// What [`find`] learned.
pub struct Host {
    /// The 0xCF8/0xCFC mechanism, if it responds.
    pub legacy: Option<ConfigAccess>,
    /// ECAM, if the MCFG describes it (and it is mapped).
    pub ecam: Option<ConfigAccess>,
    pub ecam_region: Option<EcamRegion>,
    /// Memory windows of the host bridge `_CRS`, if the DSDT has one.
    pub windows: Option<Vec<MemWindow>>,
}

impl Host {
    /// The preferred mechanism: ECAM, else legacy.
    pub fn access(&self) -> Option<ConfigAccess> {
        self.ecam.or(self.legacy)
    }
}

/// Probes the legacy mechanism and reads the MCFG and DSDT (RSDP from
/// `rsdp_paddr`, else the BIOS areas). Fails only if the MCFG describes an
/// ECAM that cannot be used.
pub fn find(rsdp_paddr: u64) -> Result<Host, Reason> {
    let mut host = Host {
        legacy: ConfigAccess::legacy(),
        ecam: None,
        ecam_region: None,
        windows: None,
    };
    let Ok(found) = acpi_access::find(rsdp_paddr) else {
        return Ok(host);
    };
    let mut region = None;
    if let Ok(mcfg) = found.tables.find_table::<Mcfg>() {
        region = mcfg
            .entries()
            .iter()
            .map(|entry| {
                // Copies out of the packed entry.
                let (segment, base) = (entry.pci_segment_group, entry.base_address);
                let (start_bus, end_bus) = (entry.bus_number_start, entry.bus_number_end);
                let source = "mcfg";
                (
                    segment,
                    EcamRegion {
                        base,
                        start_bus,
                        end_bus,
                        source,
                    },
                )
            })
            .find(|(segment, region)| *segment == 0 && region.start_bus == 0)
            .map(|(_, region)| region);
    }
    if let Ok(fadt) = found.tables.find_table::<Fadt>() {
        if let Ok(dsdt) = acpi_access::dsdt(&fadt) {
            let bytes = acpi_access::copy(&dsdt);
            let aml = bytes
                .get(acpi_access::SDT_HEADER_LEN as usize..)
                .unwrap_or(&[]);
            host.windows = aml_scan::host_bridge_windows(aml);
            if region.is_none() {
                region = aml_scan::config_base(aml).map(|base| EcamRegion {
                    base,
                    start_bus: 0,
                    end_bus: 0,
                    source: "cba",
                });
            }
        }
    }
    if let Some(region) = region {
        host.ecam = Some(ConfigAccess::ecam(
            region.base,
            region.start_bus,
            region.end_bus,
        )?);
        host.ecam_region = Some(region);
    }
    Ok(host)
}
