//! Intel MultiProcessor Specification 1.4 tables: the floating pointer
//! structure and the processor entries of the configuration table.

use crate::bail;
use crate::cpus::{CpuList, Source};
use crate::exit::Reason;
use crate::phys::PhysRange;

const FLOATING_SIGNATURE: u32 = u32::from_le_bytes(*b"_MP_");
const CONFIG_SIGNATURE: u32 = u32::from_le_bytes(*b"PCMP");
const FLOATING_LEN: u64 = 16;
const CONFIG_HEADER_LEN: u64 = 44;
/// Address of the BDA word holding the EBDA segment.
const BDA_EBDA_SEGMENT: u64 = 0x40e;

const ENTRY_PROCESSOR: u8 = 0;
const PROCESSOR_ENTRY_LEN: u64 = 20;
const OTHER_ENTRY_LEN: u64 = 8;
const PROCESSOR_ENABLED: u8 = 1 << 0;

/// Looks for a valid floating pointer in the three places the spec lists
/// and returns the enabled processors of its configuration table. `None`
/// means there is no usable MP table (including "default configuration"
/// tables, which carry no processor entries).
pub fn find() -> Result<Option<CpuList>, Reason> {
    // SAFETY: the BIOS data area is firmware memory that nothing writes.
    let bda = unsafe { PhysRange::new("bda", BDA_EBDA_SEGMENT, 2)? };
    let ebda = u64::from(bda.read::<u16>(0).unwrap_or(0)) << 4;
    let areas = [(ebda, 1024), (0x9fc00, 1024), (0xf0000, 0x10000)];
    for (start, len) in areas {
        if start == 0 {
            continue;
        }
        // SAFETY: low firmware memory, below the kernel image, not written.
        let area = unsafe { PhysRange::new("mp search area", start, len)? };
        if let Some(floating) = scan(&area)? {
            return parse_floating(&floating);
        }
    }
    Ok(None)
}

/// Returns the first floating pointer in `area` with a valid checksum.
fn scan(area: &PhysRange) -> Result<Option<PhysRange>, Reason> {
    for offset in (0..area.len()).step_by(16) {
        if area.read::<u32>(offset) != Some(FLOATING_SIGNATURE) {
            continue;
        }
        // SAFETY: inside `area`, which the caller checked.
        let floating =
            unsafe { PhysRange::new("mp floating pointer", area.addr() + offset, FLOATING_LEN)? };
        let length = u64::from(floating.byte(8)) * 16;
        if length == FLOATING_LEN && floating.checksum_ok() {
            return Ok(Some(floating));
        }
    }
    Ok(None)
}

fn parse_floating(floating: &PhysRange) -> Result<Option<CpuList>, Reason> {
    let config_addr = u64::from(floating.read::<u32>(4).unwrap_or(0));
    let default_config = floating.byte(11);
    if default_config != 0 || config_addr == 0 {
        return Ok(None);
    }
    // SAFETY: firmware memory named by a checksummed floating pointer.
    let header = unsafe { PhysRange::new("mp config table", config_addr, CONFIG_HEADER_LEN)? };
    if header.read::<u32>(0) != Some(CONFIG_SIGNATURE) {
        bail!(
            "mptable config table at {:#x} has a bad signature",
            config_addr
        );
    }
    let length = u64::from(header.read::<u16>(4).unwrap_or(0));
    if length < CONFIG_HEADER_LEN {
        bail!("mptable config table length {} too short", length);
    }
    // SAFETY: as above, with the length the table declares.
    let table = unsafe { PhysRange::new("mp config table", config_addr, length)? };
    if !table.checksum_ok() {
        bail!(
            "mptable config table at {:#x} has a bad checksum",
            config_addr
        );
    }

    // Walk the entries by the table length, like Linux: some firmware
    // (qboot) leaves the header's entry count at 0.
    let mut cpus = CpuList::new(Source::MpTable);
    let mut offset = CONFIG_HEADER_LEN;
    while offset < length {
        let kind = table.byte(offset);
        let entry_len = match kind {
            ENTRY_PROCESSOR => PROCESSOR_ENTRY_LEN,
            1..=4 => OTHER_ENTRY_LEN,
            _ => bail!(
                "mptable entry at offset {} has unknown type {}",
                offset,
                kind
            ),
        };
        if offset + entry_len > length {
            bail!("mptable entry at offset {} overruns the table", offset);
        }
        if kind == ENTRY_PROCESSOR && table.byte(offset + 3) & PROCESSOR_ENABLED != 0 {
            cpus.push(u32::from(table.byte(offset + 1)))?;
        }
        offset += entry_len;
    }
    cpus.check_unique()?;
    Ok(Some(cpus))
}
