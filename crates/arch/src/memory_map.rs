//! Guest RAM regions for a memory size, and the e820 map that describes them.

use crate::layout::{
    EBDA_ADDR, HIGH_MEMORY_START, MMIO_HOLE_END, MMIO_HOLE_START, PCI_ECAM_SIZE, PCI_ECAM_START,
};

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// One e820 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// Guest physical start.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// Entry type (`E820_RAM`, `E820_RESERVED`).
    pub kind: u32,
}

/// The guest RAM ranges `(start, size)` for `size` bytes of memory: RAM up to
/// the MMIO hole, and the rest above 4 GiB.
pub fn ram_regions(size: u64) -> Vec<(u64, u64)> {
    let low = size.min(MMIO_HOLE_START);
    let mut regions = vec![(0, low)];
    if size > low {
        regions.push((MMIO_HOLE_END, size - low));
    }
    regions
}

/// End of the RAM below the MMIO hole.
pub fn low_ram_end(size: u64) -> u64 {
    size.min(MMIO_HOLE_START)
}

/// The e820 map of a guest (the EBDA, VGA hole and BIOS area are reserved) with `size` bytes of RAM (`size` at least 1 MiB).
pub fn e820_map(size: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_ADDR,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_ADDR,
            size: HIGH_MEMORY_START - EBDA_ADDR,
            kind: E820_RESERVED,
        },
    ];
    let low_end = low_ram_end(size);
    if low_end > HIGH_MEMORY_START {
        map.push(E820Entry {
            addr: HIGH_MEMORY_START,
            size: low_end - HIGH_MEMORY_START,
            kind: E820_RAM,
        });
    }
    // Linux trusts the MCFG's ECAM window only when the firmware reserves it.
    map.push(E820Entry {
        addr: PCI_ECAM_START,
        size: PCI_ECAM_SIZE,
        kind: E820_RESERVED,
    });
    if size > low_end {
        map.push(E820Entry {
            addr: MMIO_HOLE_END,
            size: size - low_end,
            kind: E820_RAM,
        });
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_low_region() {
        assert_eq!(ram_regions(512 << 20), vec![(0, 512 << 20)]);
        let map = e820_map(512 << 20);
        assert_eq!(map.len(), 4);
        assert_eq!(
            map[3],
            E820Entry {
                addr: 0xe000_0000,
                size: 1 << 20,
                kind: E820_RESERVED
            }
        );
        assert_eq!(
            map[2],
            E820Entry {
                addr: 0x10_0000,
                size: (512 << 20) - 0x10_0000,
                kind: 1
            }
        );
    }

    #[test]
    fn large_guest_skips_the_pci_hole() {
        let size = 6u64 << 30;
        assert_eq!(ram_regions(size), vec![(0, 3 << 30), (4 << 30, 3 << 30)]);
        let map = e820_map(size);
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        // Only the 384 KiB between the EBDA and 1 MiB are not RAM.
        assert_eq!(ram, size - (HIGH_MEMORY_START - EBDA_ADDR));
        assert!(map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .all(|e| e.addr + e.size <= MMIO_HOLE_START || e.addr >= MMIO_HOLE_END));
    }

    /// The layout is guest ABI: pin it.
    #[test]
    fn pinned_layout() {
        assert_eq!(crate::layout::MMIO_HOLE_START, 0xc000_0000);
        assert_eq!(crate::layout::ZERO_PAGE_ADDR, 0x7000);
        assert_eq!(crate::layout::BOOT_INFO_ADDR, 0x6000);
        assert_eq!(crate::layout::CMDLINE_ADDR, 0x20000);
        assert_eq!(crate::layout::EBDA_ADDR, 0x9_fc00);
    }
}
