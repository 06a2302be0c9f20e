//! The boot GDT and the KVM segment descriptors that match it.
//!
//! Selectors follow the Linux boot protocol: code at 0x10 (`__BOOT_CS`), data
//! at 0x18 (`__BOOT_DS`), and a TSS at 0x20.

use kvm_bindings::kvm_segment;

/// Code segment selector.
pub const CODE_SELECTOR: u16 = 0x10;
/// Data segment selector.
pub const DATA_SELECTOR: u16 = 0x18;
/// TSS selector.
pub const TSS_SELECTOR: u16 = 0x20;

/// Flags of a 64-bit code segment (present, DPL 0, execute/read, L).
const CODE64_FLAGS: u16 = 0xa09b;
/// Flags of a 32-bit code segment (present, DPL 0, execute/read, D/B, 4 KiB granularity).
const CODE32_FLAGS: u16 = 0xc09b;
/// Flags of a flat read/write data segment.
const DATA_FLAGS: u16 = 0xc093;
/// Flags of a busy 32-bit TSS.
const TSS_FLAGS: u16 = 0x808b;

/// Packs a GDT entry from flags, base and limit (the limit is in 4 KiB units when G is set).
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The boot GDT: null, null, code, data, TSS.
pub fn boot_gdt(long_mode: bool) -> [u64; 5] {
    let code = if long_mode {
        CODE64_FLAGS
    } else {
        CODE32_FLAGS
    };
    [
        0,
        0,
        gdt_entry(code, 0, 0xfffff),
        gdt_entry(DATA_FLAGS, 0, 0xfffff),
        gdt_entry(TSS_FLAGS, 0, 0xfffff),
    ]
}

/// The KVM view of GDT entry `entry` loaded with `selector`.
pub fn segment_from_entry(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    kvm_segment {
        base,
        limit,
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(((entry >> 47) & 1) == 0),
        padding: 0,
    }
}

/// The GDT as bytes for guest memory.
pub fn gdt_bytes(gdt: &[u64]) -> Vec<u8> {
    gdt.iter().flat_map(|e| e.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code64_segment_decodes() {
        let gdt = boot_gdt(true);
        let cs = segment_from_entry(gdt[2], CODE_SELECTOR);
        assert_eq!((cs.l, cs.db, cs.present, cs.type_, cs.g), (1, 0, 1, 0xb, 1));
        assert_eq!(cs.limit, 0xffff_ffff);
        assert_eq!(cs.base, 0);
    }

    #[test]
    fn code32_and_data_segments_decode() {
        let gdt = boot_gdt(false);
        let cs = segment_from_entry(gdt[2], CODE_SELECTOR);
        assert_eq!((cs.l, cs.db, cs.s), (0, 1, 1));
        let ds = segment_from_entry(gdt[3], DATA_SELECTOR);
        assert_eq!((ds.type_, ds.db, ds.limit), (3, 1, 0xffff_ffff));
        let tss = segment_from_entry(gdt[4], TSS_SELECTOR);
        assert_eq!((tss.type_, tss.s, tss.unusable), (0xb, 0, 0));
        assert_eq!(segment_from_entry(0, 0).unusable, 1);
    }

    #[test]
    fn entry_packs_base_and_limit() {
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0x808b, 0x1234_5678, 0x67), 0x1280_8b34_5678_0067);
    }
}
