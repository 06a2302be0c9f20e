//! The PVH `struct hvm_start_info` handed over in EBX, copied into the
//! kernel early because the low memory it lives in is reused later (e.g. by
//! the AP trampoline).

use crate::bail;
use crate::exit::Reason;
use crate::phys::{PhysRange, MAPPED_LIMIT};

/// `hvm_start_info.magic`.
const MAGIC: u32 = 0x336e_c578;
/// Size of `hvm_start_info` (version 1).
const START_INFO_SIZE: u64 = 56;
/// Size of one `hvm_memmap_table_entry`.
const MEMMAP_ENTRY_SIZE: u64 = 24;
/// Memory map entries kept; the boot program fails if there are more.
pub const MAX_MEMMAP: usize = 128;
/// Command-line bytes kept (Linux's x86 COMMAND_LINE_SIZE, minus the NUL).
const MAX_CMDLINE: usize = 2047;

/// E820 type of usable RAM.
pub const MEM_TYPE_RAM: u32 = 1;

/// One `hvm_memmap_table_entry`.
#[derive(Clone, Copy, Default)]
pub struct MemEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// A validated copy of the start info, its memory map and command line.
pub struct StartInfo {
    pub version: u32,
    /// `rsdp_paddr`, 0 if the loader did not provide one.
    pub rsdp_paddr: u64,
    /// Number of memory map entries the loader reported.
    pub memmap_entries: u32,
    memmap: [MemEntry; MAX_MEMMAP],
    memmap_len: usize,
    cmdline: [u8; MAX_CMDLINE],
    cmdline_len: usize,
    /// Where the loader put the start info, its memory map and the command
    /// line (`(addr, bytes)`, bytes 0 when absent); see [`Self::loader_ranges`].
    loader: [(u64, u64); 3],
}

impl StartInfo {
    /// Validates and copies the start info at `paddr`.
    ///
    /// # Safety
    /// `paddr` must be the address the PVH loader passed in EBX, and the
    /// structures it points to must not overlap the kernel image.
    pub unsafe fn read(paddr: u32) -> Result<Self, Reason> {
        // SAFETY: the caller guarantees the start info is loader memory.
        let si = unsafe { PhysRange::new("start_info", u64::from(paddr), START_INFO_SIZE)? };
        let field32 = |offset| si.read::<u32>(offset).unwrap_or(0);
        let field64 = |offset| si.read::<u64>(offset).unwrap_or(0);
        let magic = field32(0);
        if magic != MAGIC {
            bail!("bad start_info magic={:#x}", magic);
        }
        let mut info = StartInfo {
            version: field32(4),
            rsdp_paddr: field64(32),
            memmap_entries: 0,
            memmap: [MemEntry::default(); MAX_MEMMAP],
            memmap_len: 0,
            cmdline: [0; MAX_CMDLINE],
            cmdline_len: 0,
            loader: [(u64::from(paddr), START_INFO_SIZE), (0, 0), (0, 0)],
        };

        let cmdline_paddr = field64(24);
        if cmdline_paddr != 0 {
            let len = (MAPPED_LIMIT.saturating_sub(cmdline_paddr)).min(MAX_CMDLINE as u64);
            // SAFETY: the command line belongs to the loader, like the start info.
            let cmdline = unsafe { PhysRange::new("cmdline", cmdline_paddr, len)? };
            for (i, slot) in info.cmdline.iter_mut().enumerate() {
                match cmdline.byte(i as u64) {
                    0 => break,
                    byte => *slot = byte,
                }
                info.cmdline_len = i + 1;
            }
            // The bytes read, and the NUL after them.
            info.loader[2] = (cmdline_paddr, (info.cmdline_len as u64 + 1).min(len));
        }

        if info.version >= 1 {
            info.memmap_entries = field32(48);
            let count = (info.memmap_entries as usize).min(MAX_MEMMAP);
            if count > 0 {
                let len = MEMMAP_ENTRY_SIZE * count as u64;
                // SAFETY: the memory map belongs to the loader, like the start info.
                let memmap = unsafe { PhysRange::new("memmap", field64(40), len)? };
                for (i, slot) in info.memmap[..count].iter_mut().enumerate() {
                    let entry = MEMMAP_ENTRY_SIZE * i as u64;
                    *slot = MemEntry {
                        addr: memmap.read(entry).unwrap_or(0),
                        size: memmap.read(entry + 8).unwrap_or(0),
                        kind: memmap.read(entry + 16).unwrap_or(0),
                    };
                }
                info.memmap_len = count;
                info.loader[1] = (memmap.addr(), len);
            }
        }
        Ok(info)
    }

    /// The kernel command line (up to the first invalid UTF-8 byte).
    pub fn cmdline(&self) -> &str {
        let bytes = &self.cmdline[..self.cmdline_len];
        match core::str::from_utf8(bytes) {
            Ok(s) => s,
            // `valid_up_to` marks the longest valid prefix.
            Err(e) => core::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or(""),
        }
    }

    /// The loader's structures the probe read at boot (start info, memory
    /// map, command line) as `(addr, bytes)`; `bytes` is 0 for an absent
    /// one. They were copied, but `probe=mem` leaves them alone anyway.
    pub fn loader_ranges(&self) -> [(u64, u64); 3] {
        self.loader
    }

    /// The memory map entries that were copied (see [`MAX_MEMMAP`]).
    pub fn memmap(&self) -> &[MemEntry] {
        &self.memmap[..self.memmap_len]
    }
}
