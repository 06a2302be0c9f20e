//! Where things live in guest physical memory. These addresses are guest ABI:
//! changing one changes what every guest sees, so tests pin them.

/// The GDT the VMM builds for the entry mode.
pub const GDT_ADDR: u64 = 0x500;
/// An empty IDT (limit 0) loaded at entry.
pub const IDT_ADDR: u64 = 0x520;
/// PVH `hvm_start_info` or multiboot info, with their tables after them.
pub const BOOT_INFO_ADDR: u64 = 0x6000;
/// Size of the boot info area.
pub const BOOT_INFO_SIZE: u64 = 0x1000;
/// Linux `boot_params` (the zero page).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer for the 64-bit Linux entry.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables for the 64-bit Linux entry: PML4, PDPT, then 4 PDs.
pub const PML4_ADDR: u64 = 0x9000;
/// The kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// The largest command line the VMM passes (the kernel may accept less).
pub const CMDLINE_MAX_SIZE: usize = 0x1_0000;
/// Start of the EBDA: the last KiB of conventional memory, holding the MP table.
pub const EBDA_ADDR: u64 = 0x9_fc00;
/// End of conventional memory (start of the VGA hole).
pub const LOW_MEMORY_END: u64 = 0xa_0000;
/// Start of high memory, where kernels load.
pub const HIGH_MEMORY_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole below 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole (4 GiB), where the rest of RAM continues.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// Three pages KVM needs for the real-mode TSS and identity map (in the hole).
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
/// The IOAPIC's MMIO base.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// The local APIC's MMIO base.
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
/// The smallest guest RAM Ferrovisor accepts.
pub const MIN_MEMORY: u64 = 16 << 20;

/// Start of the 32-bit PCI MMIO window (BARs below 4 GiB).
pub const PCI_MMIO32_START: u64 = MMIO_HOLE_START;
/// Size of the 32-bit PCI MMIO window.
pub const PCI_MMIO32_SIZE: u64 = 0x2000_0000;
/// PCIe ECAM (MMCONFIG) base: 1 MiB per bus.
pub const PCI_ECAM_START: u64 = 0xe000_0000;
/// PCI buses exposed through ECAM (bus 0 only).
pub const PCI_ECAM_BUSES: u64 = 1;
/// Size of the ECAM region actually decoded.
pub const PCI_ECAM_SIZE: u64 = PCI_ECAM_BUSES << 20;
/// The 64-bit PCI MMIO window starts at 64 GiB (or above RAM, for larger guests).
pub const PCI_MMIO64_MIN_START: u64 = 64 << 30;
/// Size of the 64-bit PCI MMIO window.
pub const PCI_MMIO64_SIZE: u64 = 64 << 30;
/// The ACPI RSDP, in the legacy search area (0xE0000–0xFFFFF); the other tables follow it.
pub const ACPI_RSDP_ADDR: u64 = 0xe_0000;
/// End of the area the ACPI tables may occupy.
pub const ACPI_TABLES_END: u64 = HIGH_MEMORY_START;
/// The ACPI SCI's ISA interrupt.
pub const ACPI_SCI_IRQ: u32 = 9;

/// The 64-bit PCI MMIO window `(start, size)` for a guest with `mem_size` bytes of RAM.
pub const fn pci_mmio64_window(mem_size: u64) -> (u64, u64) {
    let ram_end = if mem_size > MMIO_HOLE_START {
        MMIO_HOLE_END + (mem_size - MMIO_HOLE_START)
    } else {
        MMIO_HOLE_END
    };
    let aligned = (ram_end + (1 << 30) - 1) & !((1 << 30) - 1);
    let start = if aligned > PCI_MMIO64_MIN_START {
        aligned
    } else {
        PCI_MMIO64_MIN_START
    };
    (start, PCI_MMIO64_SIZE)
}
