//! The architectural state of a vCPU at the kernel's entry point: segment and
//! control registers for the entry mode, general registers, FPU, boot MSRs and
//! the local APIC's LINT pins.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_sregs, Msrs};

use crate::gdt::{self, CODE_SELECTOR, DATA_SELECTOR, TSS_SELECTOR};
use crate::layout::{BOOT_STACK_POINTER, GDT_ADDR, IDT_ADDR};
use crate::{paging, write_bytes, GuestMemory, Result};

/// The processor mode a kernel is entered in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// 64-bit long mode with identity paging (Linux 64-bit boot protocol).
    Long64,
    /// 32-bit protected mode, paging off (PVH, multiboot).
    Protected32,
}

/// Where and how the boot vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryPoint {
    /// Processor mode at entry.
    pub mode: EntryMode,
    /// Entry address.
    pub rip: u64,
    /// Initial RAX (the multiboot magic).
    pub rax: u64,
    /// Initial RBX (PVH start info, multiboot info).
    pub rbx: u64,
    /// Initial RSI (Linux `boot_params`).
    pub rsi: u64,
}

impl EntryPoint {
    /// An entry at `rip` in `mode` with all argument registers zero.
    pub fn new(mode: EntryMode, rip: u64) -> EntryPoint {
        EntryPoint {
            mode,
            rip,
            rax: 0,
            rbx: 0,
            rsi: 0,
        }
    }
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// Writes the GDT, an empty IDT and (for long mode) the page tables, and sets
/// `sregs` to match `mode`.
pub fn setup_sregs(mem: &GuestMemory, sregs: &mut kvm_sregs, mode: EntryMode) -> Result<()> {
    let long = mode == EntryMode::Long64;
    let table = gdt::boot_gdt(long);
    write_bytes(mem, "GDT", GDT_ADDR, &gdt::gdt_bytes(&table))?;
    write_bytes(mem, "IDT", IDT_ADDR, &[0u8; 8])?;

    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (table.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;

    let code = gdt::segment_from_entry(table[2], CODE_SELECTOR);
    let data = gdt::segment_from_entry(table[3], DATA_SELECTOR);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = gdt::segment_from_entry(table[4], TSS_SELECTOR);

    if long {
        sregs.cr3 = paging::write_identity_tables(mem)?;
        sregs.cr4 = X86_CR4_PAE;
        sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
        sregs.efer = EFER_LME | EFER_LMA;
    } else {
        sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
        sregs.cr3 = 0;
        sregs.cr4 = 0;
        sregs.efer = 0;
    }
    Ok(())
}

/// The general registers at `entry`.
pub fn entry_regs(entry: &EntryPoint) -> kvm_regs {
    kvm_regs {
        rip: entry.rip,
        rax: entry.rax,
        rbx: entry.rbx,
        rsi: entry.rsi,
        rsp: if entry.mode == EntryMode::Long64 {
            BOOT_STACK_POINTER
        } else {
            0
        },
        rbp: if entry.mode == EntryMode::Long64 {
            BOOT_STACK_POINTER
        } else {
            0
        },
        rflags: 0x2,
        ..Default::default()
    }
}

/// FPU state after reset: x87 control word 0x37f, MXCSR 0x1f80.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// MSR numbers set at boot.
pub mod msr_index {
    /// IA32_TSC.
    pub const TSC: u32 = 0x10;
    /// IA32_SYSENTER_CS.
    pub const SYSENTER_CS: u32 = 0x174;
    /// IA32_SYSENTER_ESP.
    pub const SYSENTER_ESP: u32 = 0x175;
    /// IA32_SYSENTER_EIP.
    pub const SYSENTER_EIP: u32 = 0x176;
    /// IA32_MISC_ENABLE.
    pub const MISC_ENABLE: u32 = 0x1a0;
    /// IA32_MTRR_DEF_TYPE.
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
    /// STAR.
    pub const STAR: u32 = 0xc000_0081;
    /// LSTAR.
    pub const LSTAR: u32 = 0xc000_0082;
    /// CSTAR.
    pub const CSTAR: u32 = 0xc000_0083;
    /// SFMASK.
    pub const SYSCALL_MASK: u32 = 0xc000_0084;
    /// KERNEL_GS_BASE.
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
}

/// The MSR values every vCPU starts with: syscall MSRs cleared, fast strings
/// on, MTRRs enabled with write-back as the default type.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    use msr_index::*;
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        entry(SYSENTER_CS, 0),
        entry(SYSENTER_ESP, 0),
        entry(SYSENTER_EIP, 0),
        entry(STAR, 0),
        entry(CSTAR, 0),
        entry(KERNEL_GS_BASE, 0),
        entry(SYSCALL_MASK, 0),
        entry(LSTAR, 0),
        entry(TSC, 0),
        entry(MISC_ENABLE, 1),
        entry(MTRR_DEF_TYPE, (1 << 11) | 6),
    ]
}

/// The boot MSRs as a KVM list (`None` only if the FAM wrapper refused the
/// list, which a fixed list of this length never makes it do).
pub fn boot_msrs() -> Option<Msrs> {
    Msrs::from_entries(&boot_msr_entries()).ok()
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let b = &lapic.regs[offset..offset + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        lapic.regs[offset + i] = *byte as _;
    }
}

/// Wires LINT0 as ExtINT (the PIC) and LINT1 as NMI, as firmware does.
pub fn set_lint(lapic: &mut kvm_lapic_state) {
    let lvt0 = lapic_reg(lapic, APIC_LVT0);
    set_lapic_reg(lapic, APIC_LVT0, (lvt0 & !0x700) | (APIC_MODE_EXTINT << 8));
    let lvt1 = lapic_reg(lapic, APIC_LVT1);
    set_lapic_reg(lapic, APIC_LVT1, (lvt1 & !0x700) | (APIC_MODE_NMI << 8));
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    #[test]
    fn long_mode_sregs() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut s = kvm_sregs::default();
        setup_sregs(&mem, &mut s, EntryMode::Long64).unwrap();
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_eq!(s.cs.l, 1);
        assert_eq!(s.cs.selector, 0x10);
        assert_eq!(s.ds.selector, 0x18);
    }

    #[test]
    fn protected_mode_sregs() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut s = kvm_sregs::default();
        setup_sregs(&mem, &mut s, EntryMode::Protected32).unwrap();
        assert_eq!(s.cr0, X86_CR0_PE | X86_CR0_ET);
        assert_eq!((s.cs.l, s.cs.db), (0, 1));
        assert_eq!(s.efer, 0);
    }

    #[test]
    fn lint_pins() {
        let mut l = kvm_lapic_state::default();
        set_lint(&mut l);
        assert_eq!(lapic_reg(&l, APIC_LVT0), 0x700);
        assert_eq!(lapic_reg(&l, APIC_LVT1), 0x400);
    }

    #[test]
    fn entry_registers() {
        let mut e = EntryPoint::new(EntryMode::Protected32, 0x100000);
        e.rax = 0x2bad_b002;
        e.rbx = 0x6000;
        let r = entry_regs(&e);
        assert_eq!(
            (r.rip, r.rax, r.rbx, r.rflags),
            (0x100000, 0x2bad_b002, 0x6000, 2)
        );
    }
}
