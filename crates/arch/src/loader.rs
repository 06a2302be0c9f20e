//! Loads a kernel by inspecting its bytes, and writes everything its boot
//! protocol expects: a PVH ELF (32-bit entry with `hvm_start_info`), a Linux
//! ELF vmlinux or bzImage (64-bit boot protocol with `boot_params`), or a
//! multiboot v1 kernel (32-bit entry with the multiboot information).
//!
//! The kernel and initramfs bytes are hostile input: every size and address
//! is checked, and errors say what was wrong.

use std::io::Cursor;

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress};

use crate::cpu::{EntryMode, EntryPoint};
use crate::layout::{
    BOOT_INFO_ADDR, BOOT_INFO_SIZE, CMDLINE_ADDR, HIGH_MEMORY_START, ZERO_PAGE_ADDR,
};
use crate::memory_map::{e820_map, low_ram_end};
use crate::{elf, linux, multiboot, pvh, write_bytes, GuestMemory};

/// The boot protocol a kernel image was recognised as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// An ELF with a Xen PVH entry note.
    Pvh,
    /// A Linux ELF vmlinux without a PVH note, booted through the 64-bit entry.
    LinuxElf,
    /// A Linux bzImage, booted through its 64-bit entry.
    BzImage,
    /// A multiboot v1 kernel.
    Multiboot,
}

impl std::fmt::Display for KernelFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KernelFormat::Pvh => "PVH ELF",
            KernelFormat::LinuxElf => "Linux ELF vmlinux (64-bit boot protocol)",
            KernelFormat::BzImage => "Linux bzImage (64-bit boot protocol)",
            KernelFormat::Multiboot => "multiboot v1",
        })
    }
}

/// What to boot.
#[derive(Debug, Clone, Copy)]
pub struct BootImage<'a> {
    /// The kernel file's bytes.
    pub kernel: &'a [u8],
    /// The initramfs file's bytes.
    pub initramfs: Option<&'a [u8]>,
    /// The kernel command line.
    pub cmdline: &'a str,
    /// The ACPI RSDP's address, handed to PVH and Linux kernels (None: no
    /// ACPI tables, or let the guest scan for them).
    pub acpi_rsdp: Option<u64>,
}

/// A loaded kernel: its format and the boot vCPU's entry state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedKernel {
    /// The recognised format.
    pub format: KernelFormat,
    /// The entry point and argument registers.
    pub entry: EntryPoint,
}

/// Why a kernel could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// None of the supported formats matched.
    #[error("unrecognised kernel format (expected an ELF with a PVH note, an ELF vmlinux, a bzImage or a multiboot kernel)")]
    Unrecognised,
    /// The ELF headers are malformed.
    #[error(transparent)]
    Elf(#[from] elf::ElfError),
    /// A 32-bit ELF without a multiboot header.
    #[error("32-bit ELF without a multiboot header: no supported boot protocol")]
    Elf32WithoutMultiboot,
    /// The multiboot header is unusable.
    #[error(transparent)]
    MultibootHeader(#[from] multiboot::HeaderError),
    /// linux-loader refused the image.
    #[error("{0}")]
    Linux(#[from] linux_loader::loader::Error),
    /// A bzImage without the 64-bit entry point.
    #[error("bzImage lacks a 64-bit entry point (boot protocol {0:#x}, xloadflags bit 0 clear)")]
    No64BitEntry(u16),
    /// A segment does not fit guest RAM.
    #[error("kernel segment at {addr:#x} ({size} bytes) lies outside guest RAM above 1 MiB")]
    SegmentOutsideRam {
        /// Load address.
        addr: u64,
        /// Size in memory.
        size: u64,
    },
    /// The command line is longer than the kernel accepts.
    #[error("--cmdline: {len} bytes, the kernel accepts at most {max}")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The command line contains a NUL byte.
    #[error("--cmdline: contains a NUL byte")]
    CmdlineNul,
    /// The initramfs does not fit between the kernel and the top of low RAM.
    #[error("--initramfs: {size} bytes do not fit in guest RAM between the kernel's end ({kernel_end:#x}) and {limit:#x}")]
    InitramfsTooLarge {
        /// Its size.
        size: u64,
        /// End of the kernel.
        kernel_end: u64,
        /// Highest end address allowed.
        limit: u64,
    },
    /// Writing a platform structure failed.
    #[error(transparent)]
    Platform(#[from] crate::Error),
}

/// Loads `image` into `mem` (fresh, zeroed guest RAM of `mem_size` bytes) and
/// prepares the boot protocol's structures.
pub fn load(
    mem: &GuestMemory,
    mem_size: u64,
    image: &BootImage,
) -> Result<LoadedKernel, LoadError> {
    let ram_end = low_ram_end(mem_size);
    let kernel = load_kernel(mem, ram_end, image.kernel)?;

    let cmdline_max = match kernel.format {
        KernelFormat::BzImage | KernelFormat::LinuxElf => {
            linux::cmdline_limit(kernel.setup.as_ref())
        }
        _ => crate::layout::CMDLINE_MAX_SIZE - 1,
    };
    write_cmdline(mem, image.cmdline, cmdline_max)?;

    let initrd_limit = match kernel.format {
        KernelFormat::BzImage | KernelFormat::LinuxElf => {
            linux::initrd_addr_max(kernel.setup.as_ref()).saturating_add(1)
        }
        _ => u64::from(u32::MAX),
    }
    .min(ram_end);
    let initrd = match image.initramfs {
        Some(bytes) => Some(place_initramfs(mem, bytes, kernel.end, initrd_limit)?),
        None => None,
    };

    let e820 = e820_map(mem_size);
    let mut entry = EntryPoint::new(kernel.mode(), kernel.entry);
    match kernel.format {
        KernelFormat::Pvh => {
            let module = initrd.map(|(addr, size)| pvh::Module { addr, size });
            let info = pvh::build_start_info(
                BOOT_INFO_ADDR,
                &e820,
                CMDLINE_ADDR,
                module,
                image.acpi_rsdp.unwrap_or(0),
            );
            write_boot_info(mem, "PVH start info", &info)?;
            entry.rbx = BOOT_INFO_ADDR;
        }
        KernelFormat::Multiboot => {
            let module = initrd.map(|(addr, size)| multiboot::Module {
                start: addr as u32,
                end: (addr + size) as u32,
            });
            let info =
                multiboot::build_info(BOOT_INFO_ADDR as u32, &e820, CMDLINE_ADDR as u32, module);
            write_boot_info(mem, "multiboot info", &info)?;
            entry.rax = u64::from(multiboot::BOOTLOADER_MAGIC);
            entry.rbx = BOOT_INFO_ADDR;
        }
        KernelFormat::BzImage | KernelFormat::LinuxElf => {
            let params = linux::build_boot_params(
                kernel.setup,
                &e820,
                CMDLINE_ADDR,
                image.cmdline.len(),
                initrd,
                image.acpi_rsdp,
            );
            mem.write_obj(params, GuestAddress(ZERO_PAGE_ADDR))
                .map_err(|source| crate::Error::GuestWrite {
                    what: "boot_params",
                    addr: ZERO_PAGE_ADDR,
                    source,
                })?;
            entry.rsi = ZERO_PAGE_ADDR;
        }
    }
    Ok(LoadedKernel {
        format: kernel.format,
        entry,
    })
}

struct KernelPlacement {
    format: KernelFormat,
    entry: u64,
    end: u64,
    setup: Option<setup_header>,
}

impl KernelPlacement {
    fn mode(&self) -> EntryMode {
        match self.format {
            KernelFormat::Pvh | KernelFormat::Multiboot => EntryMode::Protected32,
            KernelFormat::BzImage | KernelFormat::LinuxElf => EntryMode::Long64,
        }
    }
}

const XLF_KERNEL_64: u16 = 1;
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

fn load_kernel(
    mem: &GuestMemory,
    ram_end: u64,
    kernel: &[u8],
) -> Result<KernelPlacement, LoadError> {
    let mb_header = multiboot::find_header(kernel).transpose()?;
    if elf::is_elf(kernel) {
        let parsed = elf::parse(kernel)?;
        if !parsed.is_64bit {
            let Some(header) = mb_header else {
                return Err(LoadError::Elf32WithoutMultiboot);
            };
            return load_multiboot(mem, ram_end, kernel, header, Some(parsed));
        }
        check_segments(&parsed, ram_end)?;
        let result = Elf::load(
            mem,
            None,
            &mut Cursor::new(kernel),
            Some(GuestAddress(HIGH_MEMORY_START)),
        )?;
        let (format, entry) = match result.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(addr) => (KernelFormat::Pvh, addr.0),
            _ if mb_header.is_some() => (KernelFormat::Multiboot, parsed.entry),
            _ => (KernelFormat::LinuxElf, result.kernel_load.0),
        };
        return Ok(KernelPlacement {
            format,
            entry,
            end: result.kernel_end,
            setup: None,
        });
    }
    if kernel.get(0x202..0x206) == Some(b"HdrS") {
        let result = BzImage::load(
            mem,
            None,
            &mut Cursor::new(kernel),
            Some(GuestAddress(HIGH_MEMORY_START)),
        )?;
        let Some(hdr) = result.setup_header else {
            return Err(LoadError::Unrecognised);
        };
        if hdr.version < 0x20c || hdr.xloadflags & XLF_KERNEL_64 == 0 {
            return Err(LoadError::No64BitEntry(hdr.version));
        }
        if result.kernel_end > ram_end {
            return Err(LoadError::SegmentOutsideRam {
                addr: result.kernel_load.0,
                size: kernel.len() as u64,
            });
        }
        return Ok(KernelPlacement {
            format: KernelFormat::BzImage,
            entry: result.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
            end: result.kernel_end,
            setup: Some(hdr),
        });
    }
    match mb_header {
        Some(header) if header.addresses.is_some() => {
            load_multiboot(mem, ram_end, kernel, header, None)
        }
        _ => Err(LoadError::Unrecognised),
    }
}

fn check_segment(addr: u64, size: u64, ram_end: u64) -> Result<(), LoadError> {
    let outside = LoadError::SegmentOutsideRam { addr, size };
    let end = addr
        .checked_add(size)
        .ok_or(LoadError::SegmentOutsideRam { addr, size })?;
    if addr < HIGH_MEMORY_START || end > ram_end {
        return Err(outside);
    }
    Ok(())
}

fn check_segments(image: &elf::ElfImage, ram_end: u64) -> Result<(), LoadError> {
    image
        .segments
        .iter()
        .try_for_each(|s| check_segment(s.paddr, s.memsz, ram_end))
}

/// Loads a multiboot kernel: from its ELF program headers, or from the
/// header's address fields (the "a.out kludge", flag bit 16).
fn load_multiboot(
    mem: &GuestMemory,
    ram_end: u64,
    kernel: &[u8],
    header: multiboot::Header,
    elf_image: Option<elf::ElfImage>,
) -> Result<KernelPlacement, LoadError> {
    let (segments, entry) = match (header.addresses, elf_image) {
        (Some(addrs), _) => aout_kludge_segment(kernel, header.offset, addrs)?,
        (None, Some(image)) => (image.segments, image.entry),
        (None, None) => return Err(LoadError::Unrecognised),
    };
    let mut end = 0;
    for s in &segments {
        check_segment(s.paddr, s.memsz, ram_end)?;
        // Both bounds were checked by the parser: offset + filesz <= file length.
        let bytes = &kernel[s.offset as usize..(s.offset + s.filesz) as usize];
        write_bytes(mem, "kernel segment", s.paddr, bytes)?;
        end = end.max(s.paddr + s.memsz);
    }
    Ok(KernelPlacement {
        format: KernelFormat::Multiboot,
        entry,
        end,
        setup: None,
    })
}

fn aout_kludge_segment(
    kernel: &[u8],
    header_offset: usize,
    [header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr]: [u32; 5],
) -> Result<(Vec<elf::Segment>, u64), LoadError> {
    let bad = |what| LoadError::Elf(elf::ElfError::Malformed(what));
    let back = header_addr
        .checked_sub(load_addr)
        .ok_or(bad("multiboot load_addr above header_addr"))?;
    let offset = (header_offset as u64)
        .checked_sub(u64::from(back))
        .ok_or(bad("multiboot load_addr before the file"))?;
    let file_left = kernel.len() as u64 - offset;
    let filesz = if load_end_addr == 0 {
        file_left
    } else {
        u64::from(
            load_end_addr
                .checked_sub(load_addr)
                .ok_or(bad("multiboot load_end_addr below load_addr"))?,
        )
    };
    if filesz > file_left {
        return Err(bad("multiboot load_end_addr past the end of the file"));
    }
    let memsz = if bss_end_addr == 0 {
        filesz
    } else {
        u64::from(
            bss_end_addr
                .checked_sub(load_addr)
                .ok_or(bad("multiboot bss_end_addr below load_addr"))?,
        )
        .max(filesz)
    };
    let seg = elf::Segment {
        offset,
        paddr: u64::from(load_addr),
        filesz,
        memsz,
    };
    Ok((vec![seg], u64::from(entry_addr)))
}

fn write_cmdline(mem: &GuestMemory, cmdline: &str, max: usize) -> Result<(), LoadError> {
    if cmdline.as_bytes().contains(&0) {
        return Err(LoadError::CmdlineNul);
    }
    if cmdline.len() > max {
        return Err(LoadError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    let mut bytes = Vec::with_capacity(cmdline.len() + 1);
    bytes.extend_from_slice(cmdline.as_bytes());
    bytes.push(0);
    write_bytes(mem, "command line", CMDLINE_ADDR, &bytes)?;
    Ok(())
}

const PAGE: u64 = 0x1000;

/// Places the initramfs as high as `limit` allows, page-aligned, above the kernel.
fn place_initramfs(
    mem: &GuestMemory,
    bytes: &[u8],
    kernel_end: u64,
    limit: u64,
) -> Result<(u64, u64), LoadError> {
    let size = bytes.len() as u64;
    let too_large = LoadError::InitramfsTooLarge {
        size,
        kernel_end,
        limit,
    };
    let lowest = kernel_end
        .checked_add(PAGE - 1)
        .ok_or(LoadError::Unrecognised)?
        & !(PAGE - 1);
    let addr = limit.checked_sub(size).ok_or(too_large)? & !(PAGE - 1);
    if addr < lowest {
        return Err(LoadError::InitramfsTooLarge {
            size,
            kernel_end,
            limit,
        });
    }
    write_bytes(mem, "initramfs", addr, bytes)?;
    Ok((addr, size))
}

fn write_boot_info(mem: &GuestMemory, what: &'static str, bytes: &[u8]) -> Result<(), LoadError> {
    if bytes.len() as u64 > BOOT_INFO_SIZE {
        return Err(crate::Error::TooLarge(what).into());
    }
    Ok(write_bytes(mem, what, BOOT_INFO_ADDR, bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bytes::le32;
    use crate::elf::tests::elf32;

    fn memory(size: u64) -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap()
    }

    fn multiboot_elf32() -> Vec<u8> {
        let mut code = vec![0u8; 16];
        let magic = multiboot::HEADER_MAGIC;
        code[4..8].copy_from_slice(&magic.to_le_bytes());
        code[12..16].copy_from_slice(&0u32.wrapping_sub(magic).to_le_bytes());
        code.extend_from_slice(&[0xf4; 16]);
        elf32(0x10_0000, &code, 0x1000)
    }

    #[test]
    fn loads_multiboot_elf32_with_module() {
        let mem = memory(64 << 20);
        let initrd = b"initrd-bytes".to_vec();
        let img = BootImage {
            kernel: &multiboot_elf32(),
            initramfs: Some(&initrd),
            cmdline: "hello",
            acpi_rsdp: None,
        };
        let loaded = load(&mem, 64 << 20, &img).unwrap();
        assert_eq!(loaded.format, KernelFormat::Multiboot);
        assert_eq!(loaded.entry.mode, EntryMode::Protected32);
        assert_eq!(loaded.entry.rax, 0x2bad_b002);
        assert_eq!(loaded.entry.rbx, BOOT_INFO_ADDR);
        let mut info = [0u8; 64];
        mem.read_slice(&mut info, GuestAddress(BOOT_INFO_ADDR))
            .unwrap();
        assert_eq!(le32(&info, 20), Some(1));
        let mods = le32(&info, 24).unwrap();
        let start: u32 = mem.read_obj(GuestAddress(u64::from(mods))).unwrap();
        let mut head = [0u8; 12];
        mem.read_slice(&mut head, GuestAddress(u64::from(start)))
            .unwrap();
        assert_eq!(&head, b"initrd-bytes");
        assert_eq!(start % 4096, 0);
    }

    #[test]
    fn refuses_unknown_and_hostile_images() {
        let mem = memory(64 << 20);
        let img = |k: &'static [u8]| BootImage {
            kernel: k,
            initramfs: None,
            cmdline: "",
            acpi_rsdp: None,
        };
        assert!(matches!(
            load(&mem, 64 << 20, &img(b"garbage")),
            Err(LoadError::Unrecognised)
        ));
        assert!(matches!(
            load(&mem, 64 << 20, &img(&[])),
            Err(LoadError::Unrecognised)
        ));
        let plain32 = elf32(0x10_0000, &[0x90; 16], 0);
        let r = load(
            &mem,
            64 << 20,
            &BootImage {
                kernel: &plain32,
                initramfs: None,
                cmdline: "",
                acpi_rsdp: None,
            },
        );
        assert!(matches!(r, Err(LoadError::Elf32WithoutMultiboot)));
        // A segment loaded over the boot structures below 1 MiB.
        let mut low = multiboot_elf32();
        low[52 + 12..52 + 16].copy_from_slice(&0x7000u32.to_le_bytes());
        let r = load(
            &mem,
            64 << 20,
            &BootImage {
                kernel: &low,
                initramfs: None,
                cmdline: "",
                acpi_rsdp: None,
            },
        );
        assert!(matches!(r, Err(LoadError::SegmentOutsideRam { .. })));
        // A segment past the end of RAM.
        let mut high = multiboot_elf32();
        high[52 + 12..52 + 16].copy_from_slice(&0x3ff_f000u32.to_le_bytes());
        let r = load(
            &mem,
            64 << 20,
            &BootImage {
                kernel: &high,
                initramfs: None,
                cmdline: "",
                acpi_rsdp: None,
            },
        );
        assert!(matches!(r, Err(LoadError::SegmentOutsideRam { .. })));
    }

    #[test]
    fn refuses_oversized_cmdline_and_initramfs() {
        let mem = memory(16 << 20);
        let k = multiboot_elf32();
        let long = "x".repeat(crate::layout::CMDLINE_MAX_SIZE);
        let r = load(
            &mem,
            16 << 20,
            &BootImage {
                kernel: &k,
                initramfs: None,
                cmdline: &long,
                acpi_rsdp: None,
            },
        );
        assert!(matches!(r, Err(LoadError::CmdlineTooLong { .. })));
        let r = load(
            &mem,
            16 << 20,
            &BootImage {
                kernel: &k,
                initramfs: None,
                cmdline: "a\0b",
                acpi_rsdp: None,
            },
        );
        assert!(matches!(r, Err(LoadError::CmdlineNul)));
        let big = vec![0u8; 16 << 20];
        let r = load(
            &mem,
            16 << 20,
            &BootImage {
                kernel: &k,
                initramfs: Some(&big),
                cmdline: "",
                acpi_rsdp: None,
            },
        );
        assert!(matches!(r, Err(LoadError::InitramfsTooLarge { .. })));
    }

    #[test]
    fn bzimage_without_64bit_entry_is_refused() {
        let mem = memory(64 << 20);
        let mut k = vec![0u8; 0x1000];
        k[0x1f1] = 1; // setup_sects
        k[0x202..0x206].copy_from_slice(b"HdrS");
        k[0x206..0x208].copy_from_slice(&0x20bu16.to_le_bytes());
        k[0x211] = 1; // loadflags: LOADED_HIGH
        k[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
        let r = load(
            &mem,
            64 << 20,
            &BootImage {
                kernel: &k,
                initramfs: None,
                cmdline: "",
                acpi_rsdp: None,
            },
        );
        assert!(matches!(r, Err(LoadError::No64BitEntry(0x20b))), "{r:?}");
    }

    #[test]
    fn aout_kludge_bounds() {
        let k = vec![0u8; 64];
        assert!(aout_kludge_segment(&k, 16, [0x10_0010, 0x10_0000, 0, 0, 0x10_0000]).is_ok());
        assert!(aout_kludge_segment(&k, 16, [0x10_0000, 0x10_0010, 0, 0, 0]).is_err());
        assert!(aout_kludge_segment(&k, 8, [0x10_0010, 0x10_0000, 0, 0, 0]).is_err());
        assert!(aout_kludge_segment(&k, 16, [0x10_0010, 0x10_0000, 0x20_0000, 0, 0]).is_err());
    }

    /// A tiny deterministic PRNG for mutation tests (xorshift64).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn bzimage_like() -> Vec<u8> {
        let mut k = vec![0u8; 0x2000];
        k[0x1f1] = 1;
        k[0x202..0x206].copy_from_slice(b"HdrS");
        k[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        k[0x211] = 1;
        k[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
        k[0x236..0x238].copy_from_slice(&1u16.to_le_bytes());
        k
    }

    /// Mutated images of every format never panic the loader: they load or
    /// are refused with an error.
    #[test]
    fn mutated_images_never_panic() {
        let mem = memory(32 << 20);
        let seeds = [multiboot_elf32(), bzimage_like(), {
            let mut f = vec![0u8; 64];
            f[0..4].copy_from_slice(&multiboot::HEADER_MAGIC.to_le_bytes());
            let flags = multiboot::FLAG_ADDRESSES;
            f[4..8].copy_from_slice(&flags.to_le_bytes());
            f[8..12].copy_from_slice(
                &0u32
                    .wrapping_sub(multiboot::HEADER_MAGIC.wrapping_add(flags))
                    .to_le_bytes(),
            );
            f[12..16].copy_from_slice(&0x10_0000u32.to_le_bytes());
            f[16..20].copy_from_slice(&0x10_0000u32.to_le_bytes());
            f[32..36].copy_from_slice(&0x10_0020u32.to_le_bytes());
            f
        }];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for seed in &seeds {
            assert!(load(
                &mem,
                32 << 20,
                &BootImage {
                    kernel: seed,
                    initramfs: None,
                    cmdline: "",
                    acpi_rsdp: None,
                }
            )
            .is_ok());
            for _ in 0..3000 {
                let mut k = seed.clone();
                for _ in 0..1 + rng.next() % 8 {
                    let i = (rng.next() % k.len() as u64) as usize;
                    k[i] = rng.next() as u8;
                }
                if rng.next() % 8 == 0 {
                    k.truncate((rng.next() % k.len() as u64) as usize);
                }
                let _ = load(
                    &mem,
                    32 << 20,
                    &BootImage {
                        kernel: &k,
                        initramfs: None,
                        cmdline: "x",
                        acpi_rsdp: None,
                    },
                );
            }
        }
    }
}
