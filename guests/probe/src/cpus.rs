//! CPU discovery: the Intel MP table if there is one, else the ACPI MADT.

use crate::bail;
use crate::exit::Reason;
use crate::start_info::StartInfo;
use crate::{madt, mptable};
use alloc::vec::Vec;
use core::fmt;

/// Most CPUs the probe handles (the x2APIC and the AP start-up code scale
/// to this; per-AP stacks beyond the first 127 come from RAM).
pub const MAX_CPUS: usize = 4096;

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
    ids: Vec<u32>,
}

impl CpuList {
    /// An empty list from `source`.
    pub fn new(source: Source) -> Self {
        Self {
            source,
            ids: Vec::new(),
        }
    }

    /// Adds an enabled CPU; more than [`MAX_CPUS`] fail (duplicates are
    /// caught by [`CpuList::check_unique`]).
    pub fn push(&mut self, apic_id: u32) -> Result<(), Reason> {
        if self.ids.len() == MAX_CPUS {
            bail!("{} lists more than {} cpus", self.source, MAX_CPUS);
        }
        self.ids.push(apic_id);
        Ok(())
    }

    /// Fails if an APIC ID is listed twice (sorting a copy: a pairwise
    /// check of thousands of IDs would take seconds when emulated).
    pub fn check_unique(&self) -> Result<(), Reason> {
        let sorted = self.sorted();
        if let Some(pair) = sorted.windows(2).find(|pair| pair[0] == pair[1]) {
            bail!("{} lists apic id {} twice", self.source, pair[0]);
        }
        Ok(())
    }

    /// APIC IDs in table order.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// APIC IDs in ascending order.
    pub fn sorted(&self) -> Vec<u32> {
        let mut sorted = self.ids.clone();
        sorted.sort_unstable();
        sorted
    }
}

/// Lists the CPUs from the MP table, falling back to ACPI.
///
/// If the loader also passed an RSDP and the MADT lists more enabled CPUs
/// than the MP table, or as many with other APIC IDs, the MADT wins:
/// SeaBIOS (QEMU q35/pc) puts only the first CPU of each package in its MP
/// table, and qboot (QEMU microvm) numbers its MP table's CPUs 0, 1, 2...
/// whatever their APIC IDs (wrong with sparse IDs, e.g. 3 cores per
/// socket). Without an RSDP the (slow, when emulated) BIOS-area search for
/// ACPI only runs when there is no MP table.
pub fn discover(info: &StartInfo) -> Result<CpuList, Reason> {
    let Some(mp) = mptable::find()? else {
        return madt::cpus(info.rsdp_paddr);
    };
    if info.rsdp_paddr != 0 {
        if let Ok(acpi) = madt::cpus(info.rsdp_paddr) {
            let more = acpi.ids().len() > mp.ids().len();
            let other = acpi.ids().len() == mp.ids().len() && acpi.sorted() != mp.sorted();
            if more || other {
                return Ok(acpi);
            }
        }
    }
    Ok(mp)
}
