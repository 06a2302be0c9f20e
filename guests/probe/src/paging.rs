//! Run-time changes to the boot page tables: uncached identity mappings for
//! device memory (PCI ECAM, BARs), below 4 GiB (where the boot map already
//! covers it with write-back pages) and above (where new tables are taken
//! from a small static pool).
//!
//! Only the boot CPU calls this, while any APs are parked in `cli; hlt`.

use crate::bail;
use crate::exit::Reason;
use core::arch::global_asm;
use core::arch::x86_64::__cpuid;
use core::sync::atomic::{AtomicUsize, Ordering};

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const WRITE_THROUGH: u64 = 1 << 3;
const CACHE_DISABLE: u64 = 1 << 4;
const HUGE: u64 = 1 << 7;
const TABLE_FLAGS: u64 = PRESENT | WRITABLE;
/// A 2 MiB uncached (PCD | PWT: UC with the default PAT) device page.
const DEVICE_PAGE_FLAGS: u64 = PRESENT | WRITABLE | WRITE_THROUGH | CACHE_DISABLE | HUGE;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
const PAGE_2M: u64 = 1 << 21;
/// The boot tables cover this much with 2 MiB pages in `boot_pd`.
const BOOT_MAPPED: u64 = 1 << 32;
/// Extra page tables (PDPTs and PDs) for mappings above 4 GiB.
const POOL_TABLES: usize = 8;
/// Physical address width assumed when CPUID does not report it.
const DEFAULT_PHYS_BITS: u32 = 36;
/// Identity mapping needs canonical virtual addresses: with 4-level paging
/// the lower half ends at 128 TiB.
const CANONICAL_LIMIT: u64 = 1 << 47;

extern "C" {
    static mut boot_pml4: [u64; 512];
    static mut boot_pd: [u64; 2048];
    /// `POOL_TABLES` page-aligned 4 KiB tables reserved in the kernel image,
    /// not zeroed at boot: `next_table` zeroes each one it hands out.
    static mut page_table_pool: u8;
}

global_asm!(
    r#"
    .section .noinit.page_table_pool, "aw", @nobits
    .balign 4096
    .globl page_table_pool
page_table_pool:
    .skip {size}
    .text
    "#,
    size = const POOL_TABLES * TABLE_SIZE,
    options(att_syntax)
);

/// Bytes in a page table.
const TABLE_SIZE: usize = 4096;
static POOL_USED: AtomicUsize = AtomicUsize::new(0);

/// End of what [`map_device`] can map: the smaller of the physical address
/// space and the canonical lower half.
pub fn mappable_limit() -> u64 {
    (1u64 << phys_bits()).min(CANONICAL_LIMIT)
}

/// Width of physical addresses (CPUID 0x80000008 EAX[7:0]).
pub fn phys_bits() -> u32 {
    if __cpuid(0x8000_0000).eax < 0x8000_0008 {
        return DEFAULT_PHYS_BITS;
    }
    match __cpuid(0x8000_0008).eax & 0xff {
        0 => DEFAULT_PHYS_BITS,
        bits => bits,
    }
}

/// Identity-maps `addr..addr+len` as uncached device memory (rounded out to
/// 2 MiB pages). Fails beyond [`mappable_limit`] or when the table pool
/// runs out.
pub fn map_device(addr: u64, len: u64) -> Result<(), Reason> {
    if len == 0 {
        return Ok(());
    }
    let Some(end) = addr.checked_add(len) else {
        bail!("device range {:#x}+{:#x} overflows", addr, len);
    };
    let limit = mappable_limit();
    if end > limit {
        bail!(
            "device range {:#x}+{:#x} cannot be identity mapped (limit {:#x})",
            addr,
            len,
            limit
        );
    }
    let mut page = addr & !(PAGE_2M - 1);
    while page < end {
        let entry = pd_entry(page)?;
        // SAFETY: `entry` points into a live page directory (boot or pool);
        // the new entry maps the same physical page at the same address.
        unsafe { entry.write_volatile(page | DEVICE_PAGE_FLAGS) };
        page += PAGE_2M;
    }
    flush_tlb();
    Ok(())
}

/// The page directory entry mapping the 2 MiB page at `page`, creating the
/// intermediate tables above 4 GiB.
fn pd_entry(page: u64) -> Result<*mut u64, Reason> {
    if page < BOOT_MAPPED {
        // SAFETY: `boot_pd` has 2048 entries covering 0..4 GiB.
        return Ok(unsafe { core::ptr::addr_of_mut!(boot_pd[(page >> 21) as usize]) });
    }
    // SAFETY: `boot_pml4` is the live top-level table.
    let pml4e = unsafe { core::ptr::addr_of_mut!(boot_pml4[((page >> 39) & 511) as usize]) };
    let pdpt = next_table(pml4e, page)?;
    // SAFETY: `pdpt` is a 512-entry table returned by `next_table`.
    let pdpte = unsafe { pdpt.add(((page >> 30) & 511) as usize) };
    let pd = next_table(pdpte, page)?;
    // SAFETY: `pd` is a 512-entry table returned by `next_table`.
    Ok(unsafe { pd.add(((page >> 21) & 511) as usize) })
}

/// The table `entry` points to, allocated from the pool if not present.
fn next_table(entry: *mut u64, page: u64) -> Result<*mut u64, Reason> {
    // SAFETY: `entry` points into a live table (see `pd_entry`).
    let value = unsafe { entry.read_volatile() };
    if value & PRESENT != 0 {
        if value & HUGE != 0 {
            bail!("{:#x} is already mapped by a 1 GiB page", page);
        }
        return Ok((value & ADDR_MASK) as *mut u64);
    }
    let index = POOL_USED.fetch_add(1, Ordering::Relaxed);
    if index >= POOL_TABLES {
        bail!("out of page tables mapping {:#x}", page);
    }
    // SAFETY: each pool slot is handed out once (the index only grows), the
    // pool lies inside the identity-mapped image, and the entry is written
    // only after the table is zeroed.
    unsafe {
        let table = core::ptr::addr_of_mut!(page_table_pool).add(index * TABLE_SIZE);
        table.write_bytes(0, TABLE_SIZE);
        entry.write_volatile(table as u64 | TABLE_FLAGS);
        Ok(table.cast::<u64>())
    }
}

/// Drops all non-global TLB entries by reloading CR3.
fn flush_tlb() {
    // SAFETY: writing CR3 with its current value only flushes the TLB.
    unsafe {
        core::arch::asm!("mov {tmp}, cr3", "mov cr3, {tmp}", tmp = out(reg) _, options(nostack, preserves_flags));
    }
}

/// User-accessible (U/S) bit of a paging-structure entry.
const USER: u64 = 1 << 2;
/// PAT bit of a 4 KiB entry (bit 7, where larger pages have PS).
const PAT_4K: u64 = 1 << 7;
/// PAT bit of a 2 MiB or 1 GiB entry.
const PAT_LARGE: u64 = 1 << 12;
/// Attribute bits of a leaf kept when it is split: P, R/W, U/S, PWT, PCD,
/// A, D, G (PS and PAT are handled apart) and XD.
const LEAF_ATTRS: u64 = 0x7f | (1 << 8) | (1 << 63);
const PAGE_4K: u64 = 1 << 12;
const PAGE_1G: u64 = 1 << 30;

/// Whether the CPU supports 1 GiB pages (CPUID 0x80000001 EDX bit 26).
pub fn gib_pages_supported() -> bool {
    __cpuid(0x8000_0000).eax >= 0x8000_0001 && __cpuid(0x8000_0001).edx & (1 << 26) != 0
}

/// Zeroed 4 KiB page tables for [`map_ram`], handed out from a region of
/// RAM the caller sets aside (identity mapped, below 4 GiB).
pub struct TableSource {
    next: u64,
    end: u64,
    used: usize,
}

impl TableSource {
    /// Tables from `start..end` (4 KiB aligned).
    ///
    /// # Safety
    /// The range must be identity-mapped RAM that nothing else uses for as
    /// long as the tables are in use (for the probe: until it exits).
    pub unsafe fn new(start: u64, end: u64) -> Self {
        TableSource {
            next: start,
            end,
            used: 0,
        }
    }

    /// Tables handed out so far.
    pub fn used(&self) -> usize {
        self.used
    }

    fn take(&mut self) -> Result<*mut u64, Reason> {
        if self.next + TABLE_SIZE as u64 > self.end {
            bail!("out of page tables ({} used)", self.used);
        }
        let table = self.next as *mut u64;
        // SAFETY: the page lies in the caller's reserved region (see `new`)
        // and is handed out once.
        unsafe { table.cast::<u8>().write_bytes(0, TABLE_SIZE) };
        self.next += TABLE_SIZE as u64;
        self.used += 1;
        Ok(table)
    }
}

/// Identity-maps `start..end` (4 KiB aligned) as write-back RAM, writable,
/// and user accessible with `user`, with the largest pages that fit: 1 GiB
/// (only with `gib_pages`), 2 MiB, 4 KiB. Existing mappings in the range
/// are replaced; a larger page that the range covers only in part is split
/// first into a table of smaller pages with its own address and attributes
/// (so the rest of it stays as it was), and an existing table is reused.
/// With `user`, the U/S bit is also set on every table entry above the
/// range's pages (harmless for what else they map: every level must allow
/// user access). Boot CPU only, while other CPUs are parked; flushes the
/// TLB.
pub fn map_ram(
    start: u64,
    end: u64,
    user: bool,
    gib_pages: bool,
    tables: &mut TableSource,
) -> Result<(), Reason> {
    if !start.is_multiple_of(PAGE_4K) || !end.is_multiple_of(PAGE_4K) || end > mappable_limit() {
        bail!("cannot map ram {:#x}..{:#x}", start, end);
    }
    let leaf = PRESENT | WRITABLE | if user { USER } else { 0 };
    let mut addr = start;
    while addr < end {
        let fits = |size: u64| addr.is_multiple_of(size) && end - addr >= size;
        // SAFETY: `boot_pml4` is the live top-level table.
        let pml4e = unsafe { core::ptr::addr_of_mut!(boot_pml4[((addr >> 39) & 511) as usize]) };
        let pdpt = child_table(pml4e, user, PAGE_1G, tables)?;
        // SAFETY (here and below): `child_table` returns 512-entry tables.
        let pdpte = unsafe { pdpt.add(((addr >> 30) & 511) as usize) };
        if gib_pages && fits(PAGE_1G) && !is_table(pdpte) {
            // SAFETY: a live entry; it now maps the same address range.
            unsafe { pdpte.write_volatile(addr | leaf | HUGE) };
            addr += PAGE_1G;
            continue;
        }
        let pd = child_table(pdpte, user, PAGE_2M, tables)?;
        // SAFETY: `child_table` returns a 512-entry table; the index is masked to 511.
        let pde = unsafe { pd.add(((addr >> 21) & 511) as usize) };
        if fits(PAGE_2M) && !is_table(pde) {
            // SAFETY: as above.
            unsafe { pde.write_volatile(addr | leaf | HUGE) };
            addr += PAGE_2M;
            continue;
        }
        let pt = child_table(pde, user, PAGE_4K, tables)?;
        // SAFETY: as above.
        unsafe {
            pt.add(((addr >> 12) & 511) as usize)
                .write_volatile(addr | leaf)
        };
        addr += PAGE_4K;
    }
    flush_tlb();
    Ok(())
}

/// Whether the entry at `entry` points to a table (present, not a leaf).
fn is_table(entry: *mut u64) -> bool {
    // SAFETY: callers pass entries of live tables.
    let value = unsafe { entry.read_volatile() };
    value & PRESENT != 0 && value & HUGE == 0
}

/// The table that `entry` points to, for [`map_ram`]: a new empty one if
/// the entry is not present; if it is a leaf (pages of `child_size` * 512),
/// a new table of 512 `child_size` pages with the leaf's address and
/// attributes. With `user`, the entry gets the U/S bit.
fn child_table(
    entry: *mut u64,
    user: bool,
    child_size: u64,
    tables: &mut TableSource,
) -> Result<*mut u64, Reason> {
    // SAFETY: callers pass entries of live tables.
    let value = unsafe { entry.read_volatile() };
    let user_bit = if user { USER } else { 0 };
    if value & PRESENT != 0 && value & HUGE == 0 {
        if user && value & USER == 0 {
            // SAFETY: only adds U/S to a live entry (see `map_ram`).
            unsafe { entry.write_volatile(value | USER) };
        }
        return Ok((value & ADDR_MASK) as *mut u64);
    }
    let table = tables.take()?;
    if value & PRESENT != 0 {
        // Split a leaf: same frames, same attributes.
        let base = value & ADDR_MASK & !(child_size * 512 - 1);
        let pat = value & PAT_LARGE != 0;
        let mut attrs = value & LEAF_ATTRS;
        if child_size == PAGE_4K {
            attrs |= if pat { PAT_4K } else { 0 };
        } else {
            attrs |= HUGE | if pat { PAT_LARGE } else { 0 };
        }
        for i in 0..512 {
            // SAFETY: `table` is a fresh 512-entry table, not yet linked.
            unsafe {
                table
                    .add(i)
                    .write_volatile((base + i as u64 * child_size) | attrs)
            };
        }
    }
    // A table entry: present, writable; U/S if the old leaf had it or if
    // asked (the leaves decide).
    let old_user = if value & PRESENT != 0 {
        value & USER
    } else {
        0
    };
    let flags = TABLE_FLAGS | old_user | user_bit;
    // SAFETY: the table is complete before the entry points to it.
    unsafe { entry.write_volatile(table as u64 | flags) };
    Ok(table)
}
