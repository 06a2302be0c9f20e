//! Identity page tables for the 64-bit Linux entry: the first 4 GiB mapped
//! with 2 MiB pages.

use crate::layout::PML4_ADDR;
use crate::{write_bytes, GuestMemory, Result};

/// Number of page directories (each maps 1 GiB).
const PAGE_DIRECTORIES: u64 = 4;
const PRESENT_WRITABLE: u64 = 0x3;
const HUGE_PAGE: u64 = 0x80;

/// Writes the PML4, PDPT and page directories starting at [`PML4_ADDR`];
/// returns the value for CR3.
pub fn write_identity_tables(mem: &GuestMemory) -> Result<u64> {
    let pdpt = PML4_ADDR + 0x1000;
    let first_pd = pdpt + 0x1000;
    let mut pml4 = vec![0u8; 0x1000];
    pml4[..8].copy_from_slice(&(pdpt | PRESENT_WRITABLE).to_le_bytes());
    write_bytes(mem, "PML4", PML4_ADDR, &pml4)?;

    let mut pdpt_page = vec![0u8; 0x1000];
    for i in 0..PAGE_DIRECTORIES {
        let pd = first_pd + i * 0x1000;
        let off = (i * 8) as usize;
        pdpt_page[off..off + 8].copy_from_slice(&(pd | PRESENT_WRITABLE).to_le_bytes());
        let mut pd_page = vec![0u8; 0x1000];
        for j in 0..512u64 {
            let phys = (i << 30) | (j << 21);
            let off = (j * 8) as usize;
            pd_page[off..off + 8]
                .copy_from_slice(&(phys | PRESENT_WRITABLE | HUGE_PAGE).to_le_bytes());
        }
        write_bytes(mem, "page directory", pd, &pd_page)?;
    }
    write_bytes(mem, "PDPT", pdpt, &pdpt_page)?;
    Ok(PML4_ADDR)
}

/// End of the page-table area (exclusive).
pub const fn tables_end() -> u64 {
    PML4_ADDR + 0x1000 * (2 + PAGE_DIRECTORIES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn maps_identity_with_huge_pages() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        assert_eq!(write_identity_tables(&mem).unwrap(), PML4_ADDR);
        let pdpt: u64 = mem.read_obj(GuestAddress(PML4_ADDR)).unwrap();
        assert_eq!(pdpt & !0xfff, PML4_ADDR + 0x1000);
        // Third PD, entry 5: 2 GiB + 10 MiB.
        let pd2: u64 = mem.read_obj(GuestAddress(PML4_ADDR + 0x1000 + 16)).unwrap();
        let e: u64 = mem.read_obj(GuestAddress((pd2 & !0xfff) + 5 * 8)).unwrap();
        assert_eq!(e, (2 << 30) + (5 << 21) + 0x83);
        assert!(tables_end() <= crate::layout::EBDA_ADDR);
    }
}
