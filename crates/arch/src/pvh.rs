//! The Xen PVH boot protocol's `hvm_start_info`, handed to the kernel in EBX.

use crate::bytes::LeWriter;
use crate::memory_map::E820Entry;

/// `hvm_start_info.magic`.
pub const START_INFO_MAGIC: u32 = 0x336e_c578;
/// Version 1 carries the memory map.
const START_INFO_VERSION: u32 = 1;
/// Size of `hvm_start_info`.
const START_INFO_SIZE: u64 = 56;
/// Size of one `hvm_modlist_entry`.
const MODLIST_ENTRY_SIZE: u64 = 32;

/// A module (the initramfs): guest physical address and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Module {
    /// Guest physical start.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Builds the start info to be placed at `addr`, followed by the module list
/// and the memory map. `rsdp_paddr` is the ACPI RSDP's address (0: none, the
/// guest scans for it).
pub fn build_start_info(
    addr: u64,
    e820: &[E820Entry],
    cmdline_addr: u64,
    module: Option<Module>,
    rsdp_paddr: u64,
) -> Vec<u8> {
    let modlist_addr = addr + START_INFO_SIZE;
    let nr_modules = u32::from(module.is_some());
    let memmap_addr = modlist_addr + u64::from(nr_modules) * MODLIST_ENTRY_SIZE;
    let mut w = LeWriter::new();
    w.u32(START_INFO_MAGIC)
        .u32(START_INFO_VERSION)
        .u32(0)
        .u32(nr_modules);
    w.u64(if module.is_some() { modlist_addr } else { 0 });
    w.u64(cmdline_addr)
        .u64(rsdp_paddr)
        .u64(memmap_addr)
        .u32(e820.len() as u32)
        .u32(0);
    if let Some(m) = module {
        w.u64(m.addr).u64(m.size).u64(0).u64(0);
    }
    for e in e820 {
        w.u64(e.addr).u64(e.size).u32(e.kind).u32(0);
    }
    w.into_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bytes::{le32, le64};
    use crate::memory_map::e820_map;

    #[test]
    fn start_info_layout() {
        let map = e820_map(256 << 20);
        let b = build_start_info(
            0x6000,
            &map,
            0x20000,
            Some(Module {
                addr: 0x800_0000,
                size: 77,
            }),
            0xe_0000,
        );
        assert_eq!(le32(&b, 0), Some(START_INFO_MAGIC));
        assert_eq!(le32(&b, 12), Some(1));
        assert_eq!(le64(&b, 16), Some(0x6000 + 56));
        assert_eq!(le64(&b, 24), Some(0x20000));
        assert_eq!(le64(&b, 32), Some(0xe_0000));
        assert_eq!(le64(&b, 40), Some(0x6000 + 56 + 32));
        assert_eq!(le32(&b, 48), Some(map.len() as u32));
        assert_eq!(le64(&b, 56), Some(0x800_0000));
        assert_eq!(le64(&b, 64), Some(77));
        assert_eq!(b.len(), 56 + 32 + 24 * map.len());
    }
}
