//! CPU discovery: the Intel MP table if there is one, else the ACPI MADT.

use crate::bail;
use crate::exit::Reason;
use crate::start_info::StartInfo;
use crate::{madt, mptable};
use core::fmt;

/// Most CPUs the probe handles.
pub const MAX_CPUS: usize = 64;

/// Which firmware table listed the CPUs.
#[derive(Clone, Copy)]
pub enum Source {
    MpTable,
    Acpi,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::MpTable => "mptable",
            Source::Acpi => "acpi",
        })
    }
}

/// The APIC IDs of the enabled CPUs, in table order.
pub struct CpuList {
    pub source: Source,
    ids: [u32; MAX_CPUS],
    len: usize,
}

impl CpuList {
    /// An empty list from `source`.
    pub fn new(source: Source) -> Self {
        Self {
            source,
            ids: [0; MAX_CPUS],
            len: 0,
        }
    }

    /// Adds an enabled CPU; duplicates and more than [`MAX_CPUS`] fail.
    pub fn push(&mut self, apic_id: u32) -> Result<(), Reason> {
        if self.ids().contains(&apic_id) {
            bail!("{} lists apic id {} twice", self.source, apic_id);
        }
        if self.len == MAX_CPUS {
            bail!("{} lists more than {} cpus", self.source, MAX_CPUS);
        }
        self.ids[self.len] = apic_id;
        self.len += 1;
        Ok(())
    }

    /// APIC IDs in table order.
    pub fn ids(&self) -> &[u32] {
        &self.ids[..self.len]
    }
}

/// Lists the CPUs from the MP table, falling back to ACPI.
///
/// If the loader also passed an RSDP and the MADT lists more enabled CPUs
/// than the MP table, the MADT wins: SeaBIOS (QEMU q35/pc) puts only the
/// first CPU of each package in its MP table. Without an RSDP the (slow, when
/// emulated) BIOS-area search for ACPI only runs when there is no MP table.
pub fn discover(info: &StartInfo) -> Result<CpuList, Reason> {
    let Some(mp) = mptable::find()? else {
        return madt::cpus(info.rsdp_paddr);
    };
    if info.rsdp_paddr != 0 {
        if let Ok(acpi) = madt::cpus(info.rsdp_paddr) {
            if acpi.ids().len() > mp.ids().len() {
                return Ok(acpi);
            }
        }
    }
    Ok(mp)
}
