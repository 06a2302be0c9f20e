//! The Linux x86 boot protocol's `boot_params` (zero page) for the 64-bit entry.

use linux_loader::loader::bootparam::{boot_params, setup_header};

use crate::memory_map::E820Entry;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
/// Largest command line of a kernel whose header predates `cmdline_size` (protocol 2.06).
const OLD_CMDLINE_MAX: u32 = 255;
/// `initrd_addr_max` of kernels whose header predates it (protocol 2.03).
const OLD_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

/// The largest command line (without NUL) the kernel with `hdr` accepts.
pub fn cmdline_limit(hdr: Option<&setup_header>) -> usize {
    match hdr {
        Some(h) if h.version >= 0x206 && h.cmdline_size > 0 => h.cmdline_size as usize,
        Some(_) => OLD_CMDLINE_MAX as usize,
        None => crate::layout::CMDLINE_MAX_SIZE - 1,
    }
}

/// The highest address (inclusive) the initramfs may end at.
pub fn initrd_addr_max(hdr: Option<&setup_header>) -> u64 {
    match hdr {
        Some(h) if h.version >= 0x203 && h.initrd_addr_max != 0 => u64::from(h.initrd_addr_max),
        Some(_) => OLD_INITRD_ADDR_MAX,
        None => u64::from(u32::MAX),
    }
}

/// Builds the zero page: the kernel's setup header (for a bzImage) or a
/// synthetic one (for an ELF vmlinux), the command line, the initramfs, the
/// e820 map and the ACPI RSDP's address (`acpi_rsdp_addr`, boot protocol
/// 2.14; older kernels ignore it and scan for the RSDP).
pub fn build_boot_params(
    hdr: Option<setup_header>,
    e820: &[E820Entry],
    cmdline_addr: u64,
    cmdline_len: usize,
    initrd: Option<(u64, u64)>,
    acpi_rsdp: Option<u64>,
) -> boot_params {
    let mut params = boot_params {
        hdr: hdr.unwrap_or_default(),
        ..Default::default()
    };
    if hdr.is_none() {
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.cmd_line_ptr = cmdline_addr as u32;
    params.ext_cmd_line_ptr = (cmdline_addr >> 32) as u32;
    params.hdr.cmdline_size = cmdline_len as u32 + 1;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
        params.ext_ramdisk_image = (addr >> 32) as u32;
        params.ext_ramdisk_size = (size >> 32) as u32;
    }
    let count = e820.len().min(params.e820_table.len());
    for (slot, e) in params.e820_table.iter_mut().zip(&e820[..count]) {
        slot.addr = e.addr;
        slot.size = e.size;
        slot.r#type = e.kind;
    }
    params.e820_entries = count as u8;
    params.acpi_rsdp_addr = acpi_rsdp.unwrap_or(0);
    params
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory_map::e820_map;

    #[test]
    fn synthetic_header_for_vmlinux() {
        let map = e820_map(512 << 20);
        let p = build_boot_params(
            None,
            &map,
            0x20000,
            10,
            Some((0x1000_0000, 4096)),
            Some(0xe_0000),
        );
        assert_eq!({ p.hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ p.hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!({ p.hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ p.hdr.ramdisk_image }, 0x1000_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 4096);
        assert_eq!(p.e820_entries as usize, map.len());
        assert_eq!({ p.e820_table[2].addr }, 0x10_0000);
        assert_eq!({ p.acpi_rsdp_addr }, 0xe_0000);
        let none = build_boot_params(None, &map, 0x20000, 10, None, None);
        assert_eq!({ none.acpi_rsdp_addr }, 0);
    }

    #[test]
    fn acpi_rsdp_addr_sits_at_0x70() {
        let p = build_boot_params(None, &[], 0, 0, None, Some(0x1234_5678_9abc));
        let bytes = vm_memory::ByteValued::as_slice(&p);
        assert_eq!(crate::bytes::le64(bytes, 0x70), Some(0x1234_5678_9abc));
    }

    #[test]
    fn limits_follow_the_protocol_version() {
        let mut h = setup_header {
            version: 0x205,
            ..Default::default()
        };
        assert_eq!(cmdline_limit(Some(&h)), 255);
        assert_eq!(
            initrd_addr_max(Some(&h)),
            u64::from(h.initrd_addr_max).max(0x37ff_ffff)
        );
        h.version = 0x20f;
        h.cmdline_size = 2047;
        h.initrd_addr_max = 0x7fff_ffff;
        assert_eq!(cmdline_limit(Some(&h)), 2047);
        assert_eq!(initrd_addr_max(Some(&h)), 0x7fff_ffff);
    }
}
