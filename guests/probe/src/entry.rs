//! PVH boot entry: the Xen ELF note, the 32-bit entry point, the boot page
//! tables and GDT, and the switch to long mode before `probe_main`.
//!
//! The page tables are fully built at link time (identity map of the first
//! 4 GiB with 2 MiB pages), so entering long mode costs a dozen instructions.

use core::arch::global_asm;

/// Size of the boot CPU's stack.
const BSP_STACK_SIZE: usize = 64 * 1024;

/// GDT selectors (shared with the AP trampoline in `smp`).
pub const SEL_CODE32: u16 = 0x08;
pub const SEL_DATA: u16 = 0x10;
pub const SEL_CODE64: u16 = 0x18;

/// CR4: PAE | OSFXSR | OSXMMEXCPT.
pub const CR4_BOOT: u32 = 0x620;
/// CR0 bits cleared when enabling paging: CD, NW, TS, EM.
pub const CR0_CLEAR: u32 = 0x6000_000c;
/// CR0 bits set when enabling paging: PG, MP, PE.
pub const CR0_SET: u32 = 0x8000_0003;
/// IA32_EFER and its long mode enable bit.
pub const MSR_EFER: u32 = 0xc000_0080;
pub const EFER_LME: u32 = 0x100;

global_asm!(
    r#"
    /* Xen PVH note: XEN_ELFNOTE_PHYS32_ENTRY with a 32-bit entry address.
       QEMU reads the descriptor as a 64-bit value, hence the zero pad. */
    .section .note.Xen, "a"
    .balign 4
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .balign 4
    .long pvh_start32
    .long 0

    .section .text.boot, "ax"
    .code32
    .globl pvh_start32
pvh_start32:
    /* PVH: flat 32-bit protected mode, paging off, EBX = hvm_start_info. */
    cli
    cld
    mov %ebx, %esi
    mov %cr4, %eax
    or ${cr4}, %eax
    mov %eax, %cr4
    mov $boot_pml4, %eax
    mov %eax, %cr3
    mov ${efer}, %ecx
    rdmsr
    or ${lme}, %eax
    wrmsr
    mov %cr0, %eax
    and $~{cr0_clear}, %eax
    or ${cr0_set}, %eax
    mov %eax, %cr0
    lgdt boot_gdt_ptr
    ljmp ${code64}, $long_mode_entry

    .code64
long_mode_entry:
    mov ${data}, %eax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    lea bsp_stack_top(%rip), %rsp
    /* Zero .bss (8-byte multiple, see link.ld). */
    lea __bss_start(%rip), %rdi
    lea __bss_end(%rip), %rcx
    sub %rdi, %rcx
    shr $3, %rcx
    xor %eax, %eax
    rep stosq
    mov %esi, %edi
    call {probe_main}
1:  cli
    hlt
    jmp 1b

    /* Identity map of 0..4 GiB with 2 MiB pages. The IOAPIC (0xfec00000)
       and LAPIC (0xfee00000) pages are uncached. */
    .section .data.boot_page_tables, "aw"
    .balign 4096
    .globl boot_pml4
boot_pml4:
    .quad boot_pdpt + 0x3
    .fill 511, 8, 0
    .globl boot_pdpt
boot_pdpt:
    .quad boot_pd + 0x0003
    .quad boot_pd + 0x1003
    .quad boot_pd + 0x2003
    .quad boot_pd + 0x3003
    .fill 508, 8, 0
    .globl boot_pd
boot_pd:
    .set pd_index, 0
    .rept 2038
    .quad (pd_index << 21) | 0x83
    .set pd_index, pd_index + 1
    .endr
    .quad (2038 << 21) | 0x9b
    .quad (2039 << 21) | 0x9b
    .set pd_index, 2040
    .rept 8
    .quad (pd_index << 21) | 0x83
    .set pd_index, pd_index + 1
    .endr

    /* null, 32-bit code, flat data, 64-bit code */
    .section .data.boot_gdt, "aw"
    .balign 16
    .globl boot_gdt
boot_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff
    .quad 0x00cf92000000ffff
    .quad 0x00af9a000000ffff
boot_gdt_end:
    .globl boot_gdt_ptr
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .quad boot_gdt

    .section .noinit.bsp_stack, "aw", @nobits
    .balign 4096
    .skip {stack_size}
bsp_stack_top:

    .text
    "#,
    cr4 = const CR4_BOOT,
    efer = const MSR_EFER,
    lme = const EFER_LME,
    cr0_clear = const CR0_CLEAR,
    cr0_set = const CR0_SET,
    code64 = const SEL_CODE64,
    data = const SEL_DATA,
    stack_size = const BSP_STACK_SIZE,
    probe_main = sym crate::probe_main,
    options(att_syntax)
);
