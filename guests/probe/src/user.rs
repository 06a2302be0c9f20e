//! A minimal ring-3 (user-mode) execution path.
//!
//! Under kvm_pvm, KVM runs guest ring-0 code in its instruction emulator
//! (about 1 µs per instruction; a `rep stosq` over 64 MiB takes ~4.5 s) but
//! guest ring-3 code natively, so loops over gigabytes of RAM
//! (`probe=mem`) run in ring 3. This module provides:
//!
//! - a GDT of its own, loaded by [`init`]: the boot GDT's four entries
//!   (same selectors, so the loaded segment registers stay valid), a user
//!   data segment ([`SEL_USER_DATA`]), a 64-bit user code segment
//!   ([`SEL_USER_CODE`]) and a 64-bit TSS whose RSP0 is the kernel stack
//!   for exceptions taken in ring 3 (no I/O permission bitmap: with IOPL
//!   0, ring 3 has no port access);
//! - the way back: a routine ends with `ud2`, and the #UD handler
//!   installed by [`init`] treats a #UD raised by a `ud2` in the user code
//!   pages during [`call`] as the routine's return (any other #UD still
//!   FAILs through the normal handler). Not `int $0x80` through a DPL-3
//!   gate, nor SYSCALL: measured on kvm_pvm (Ferrovisor and QEMU alike),
//!   `int N` in ring 3 raises #UD instead of going through the gate (and
//!   KVM's emulator cannot run `int` in ring 0: emulation failure), and
//!   SYSCALL (EFER.SCE, STAR, LSTAR set) in ring 3 jumps to LSTAR but
//!   stays in ring 3 (the #PF on the kernel page has U/S set in its error
//!   code, CS still the user selector). Exceptions, #UD included, are
//!   delivered to the IDT from both rings on kvm_pvm as on any x86 CPU;
//! - [`call`]: runs a routine in ring 3 (or, for comparison, in ring 0)
//!   with the given registers, and returns the registers it ended with.
//!
//! Routines are assembly in `.text.user.*` sections, which `link.ld` places
//! on pages of their own between `__user_text_start` and
//! `__user_text_end`; [`init`] maps those pages and a one-page user stack
//! user accessible (U/S), nothing else. A routine is entered with IRETQ,
//! runs with interrupts off (RFLAGS = 0x2, IOPL 0), may use every
//! general-purpose register, need not use the stack, and ends with `ud2`.
//! The memory it touches must be mapped user accessible by the caller
//! ([`paging::map_ram`] with `user`). Any other exception in ring 3 is
//! reported like one in ring 0 (`FAIL exception ... cs=0x2b`), on the
//! kernel stack below the [`call`] frame. Boot CPU only, while other CPUs
//! (if any) are parked.

use crate::bail;
use crate::entry::{SEL_CODE64, SEL_DATA};
use crate::exit::Reason;
use crate::idt;
use crate::paging::{self, TableSource};
use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use x86_64::structures::DescriptorTablePointer;
use x86_64::VirtAddr;

/// Selector of the ring-3 data segment (GDT entry 4, RPL 3).
pub const SEL_USER_DATA: u16 = 0x23;
/// Selector of the ring-3 64-bit code segment (GDT entry 5, RPL 3).
pub const SEL_USER_CODE: u16 = 0x2b;
/// Selector of the TSS (GDT entries 6 and 7).
const SEL_TSS: u16 = 0x30;
/// GDT entries.
const GDT_ENTRIES: usize = 8;
/// Vector of #UD, the exception `ud2` raises.
const UD_VECTOR: u8 = 6;
/// RFLAGS a routine starts with: only the always-one bit 1 (IF = 0, IOPL 0).
const ROUTINE_RFLAGS: u64 = 0x2;
/// Size of the 64-bit TSS (no I/O permission bitmap).
const TSS_SIZE: usize = 104;
/// The user stack (one page, user accessible).
const USER_STACK_SIZE: usize = 4096;

/// Where a routine runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Ring {
    /// Ring 3: native speed under kvm_pvm.
    User,
    /// Ring 0: the same code, for comparison (emulated under kvm_pvm).
    Kernel,
}

impl Ring {
    /// `3` or `0`.
    pub fn number(self) -> u8 {
        match self {
            Ring::User => 3,
            Ring::Kernel => 0,
        }
    }
}

/// General-purpose registers a routine starts with and ends with (every
/// one but RSP). The layout is used by the assembly below.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct Regs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
}

/// The GDT and TSS, written once by [`init`].
#[repr(C, align(16))]
struct Tables {
    gdt: [u64; GDT_ENTRIES],
    /// The 64-bit TSS as 32-bit words (RSP0 is at byte 4, not 8-aligned).
    tss: [u32; TSS_SIZE / 4],
}

struct TablesCell(UnsafeCell<Tables>);

// SAFETY: written only by `init` on the boot CPU before the GDT is loaded;
// afterwards the CPU reads it and `user_call` writes the TSS's RSP0 (boot
// CPU only, see the module documentation).
unsafe impl Sync for TablesCell {}

static TABLES: TablesCell = TablesCell(UnsafeCell::new(Tables {
    gdt: [0; GDT_ENTRIES],
    tss: [0; TSS_SIZE / 4],
}));

/// Kernel RSP saved by `user_call` for `user_ud` (0: no call running).
static SAVED_RSP: AtomicU64 = AtomicU64::new(0);
/// Set once [`init`] has run (`ltr` marks the TSS busy: it runs once).
static READY: AtomicBool = AtomicBool::new(false);

extern "C" {
    static __user_text_start: u8;
    static __user_text_end: u8;
    static mut user_stack: u8;
    fn user_call(regs: *mut Regs, entry: u64, rsp: u64, cs: u64, ss: u64);
    fn user_ud();
}

/// Loads the GDT with the user segments and the TSS, installs the #UD
/// handler that ends routines and maps the user code pages and the user
/// stack user accessible (page tables from `tables`). Runs once; later
/// calls do nothing.
pub fn init(tables: &mut TableSource) -> Result<(), Reason> {
    if READY.load(Ordering::SeqCst) {
        return Ok(());
    }
    let text_start = core::ptr::addr_of!(__user_text_start) as u64;
    let text_end = core::ptr::addr_of!(__user_text_end) as u64;
    let stack = core::ptr::addr_of_mut!(user_stack) as u64;
    if [text_start, text_end, stack]
        .iter()
        .any(|a| !a.is_multiple_of(4096))
    {
        bail!("user code or stack not page aligned");
    }
    paging::map_ram(text_start, text_end, true, false, tables)?;
    paging::map_ram(stack, stack + USER_STACK_SIZE as u64, true, false, tables)?;

    // SAFETY: single-threaded start-up (see `TablesCell`); nothing uses
    // the tables before `lgdt` below.
    let t = unsafe { &mut *TABLES.0.get() };
    // No I/O permission bitmap: its offset (bytes 102..104) is the limit.
    t.tss[TSS_SIZE / 4 - 1] = (TSS_SIZE as u32) << 16;
    let tss = t.tss.as_ptr() as u64;
    let limit = (TSS_SIZE - 1) as u64;
    t.gdt = [
        0,
        // The boot GDT's entries: 32-bit code, flat data, 64-bit code.
        0x00cf_9a00_0000_ffff,
        0x00cf_9200_0000_ffff,
        0x00af_9a00_0000_ffff,
        // DPL 3: flat data, 64-bit code.
        0x00cf_f200_0000_ffff,
        0x00af_fa00_0000_ffff,
        // 64-bit TSS (type 9, available), present, DPL 0; 16 bytes.
        (limit & 0xffff)
            | ((tss & 0xff_ffff) << 16)
            | (0x89 << 40)
            | (((limit >> 16) & 0xf) << 48)
            | (((tss >> 24) & 0xff) << 56),
        tss >> 32,
    ];
    let pointer = DescriptorTablePointer {
        limit: (core::mem::size_of::<[u64; GDT_ENTRIES]>() - 1) as u16,
        base: VirtAddr::new(t.gdt.as_ptr() as u64),
    };
    // SAFETY: the new GDT keeps the boot GDT's descriptors at the same
    // selectors, so the loaded segment registers stay valid; the TSS
    // descriptor points to a static TSS; `ltr` runs once (READY).
    unsafe {
        x86_64::instructions::tables::lgdt(&pointer);
        asm!("ltr {0:x}", in(reg) SEL_TSS, options(nostack, preserves_flags));
    }
    idt::set_gate(UD_VECTOR, user_ud as *const () as u64);
    READY.store(true, Ordering::SeqCst);
    Ok(())
}

/// Runs the routine at `entry` in `ring` with `regs`, until it executes
/// `ud2`; `regs` then holds its registers at that point.
///
/// # Safety
/// `entry` must be a routine in a `.text.user.*` section that follows the
/// rules in the module documentation, and with these registers may touch
/// only memory that is safe to touch (and, in ring 3, mapped user
/// accessible).
pub unsafe fn call(ring: Ring, entry: *const u8, regs: &mut Regs) -> Result<(), Reason> {
    let text_start = core::ptr::addr_of!(__user_text_start) as u64;
    let text_end = core::ptr::addr_of!(__user_text_end) as u64;
    let entry = entry as u64;
    if !READY.load(Ordering::SeqCst) || !(text_start..text_end).contains(&entry) {
        bail!(
            "user::call of {:#x} before init or outside user code",
            entry
        );
    }
    let (rsp, cs, ss) = match ring {
        Ring::User => (
            core::ptr::addr_of_mut!(user_stack) as u64 + USER_STACK_SIZE as u64,
            SEL_USER_CODE,
            SEL_USER_DATA,
        ),
        // 0: just below `user_call`'s frame on this stack.
        Ring::Kernel => (0, SEL_CODE64, SEL_DATA),
    };
    // SAFETY: the caller vouches for the routine; `user_call` saves and
    // restores the callee-saved registers and the kernel stack, and comes
    // back through `user_ud` (see the assembly).
    unsafe { user_call(regs, entry, rsp, u64::from(cs), u64::from(ss)) };
    Ok(())
}

global_asm!(
    r#"
    /* user_call(regs = rdi, entry = rsi, rsp = rdx (0: this stack),
       cs = rcx, ss = r8): saves the callee-saved registers and the Regs
       pointer on this stack, records RSP in SAVED_RSP and as the TSS's
       RSP0 (exceptions from ring 3 push their frames below it), loads the
       routine's registers and enters it with iretq. It "returns" through
       user_ud. */
    .text
    .globl user_call
user_call:
    push %rbx
    push %rbp
    push %r12
    push %r13
    push %r14
    push %r15
    push %rdi
    mov %rsp, {saved}(%rip)
    mov %rsp, {tables}+{rsp0}(%rip)
    test %rdx, %rdx
    jnz 1f
    lea -64(%rsp), %rdx
1:  push %r8
    push %rdx
    pushq ${rflags}
    push %rcx
    push %rsi
    mov 0(%rdi), %rax
    mov 8(%rdi), %rbx
    mov 16(%rdi), %rcx
    mov 24(%rdi), %rdx
    mov 32(%rdi), %rsi
    mov 48(%rdi), %rbp
    mov 56(%rdi), %r8
    mov 64(%rdi), %r9
    mov 72(%rdi), %r10
    mov 80(%rdi), %r11
    mov 88(%rdi), %r12
    mov 96(%rdi), %r13
    mov 104(%rdi), %r14
    mov 112(%rdi), %r15
    mov 40(%rdi), %rdi
    iretq

    /* #UD handler. Frame: RIP, CS, RFLAGS, RSP, SS (no error code); on
       the kernel stack below SAVED_RSP (TSS RSP0) when raised in ring 3,
       on the routine's stack (below user_call's frame) in ring 0, IF
       clear. A ud2 (0f 0b) in the user code pages while a call runs is
       the routine's return: store its registers into the Regs, go back to
       the saved kernel RSP, reload the data segments (iretq to ring 3
       nulled DS/ES/FS/GS, and the return to ring 0 left SS null) and
       return from user_call. Any other #UD: the normal handler (FAIL),
       with the frame untouched. */
    .globl user_ud
user_ud:
    cmpq $0, {saved}(%rip)
    je 9f
    push %rax
    push %rbx
    mov 16(%rsp), %rax
    lea __user_text_start(%rip), %rbx
    cmp %rbx, %rax
    jb 8f
    lea __user_text_end-2(%rip), %rbx
    cmp %rbx, %rax
    ja 8f
    cmpw $0x0b0f, (%rax)
    jne 8f
    mov {saved}(%rip), %rax
    mov (%rax), %rax
    mov %rcx, 16(%rax)
    mov %rdx, 24(%rax)
    mov %rsi, 32(%rax)
    mov %rdi, 40(%rax)
    mov %rbp, 48(%rax)
    mov %r8, 56(%rax)
    mov %r9, 64(%rax)
    mov %r10, 72(%rax)
    mov %r11, 80(%rax)
    mov %r12, 88(%rax)
    mov %r13, 96(%rax)
    mov %r14, 104(%rax)
    mov %r15, 112(%rax)
    pop %rbx
    mov %rbx, 8(%rax)
    pop %rbx
    mov %rbx, 0(%rax)
    mov {saved}(%rip), %rsp
    movq $0, {saved}(%rip)
    mov ${data}, %eax
    mov %ax, %ss
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %fs
    mov %ax, %gs
    cld
    pop %rdi
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbp
    pop %rbx
    ret
8:  pop %rbx
    pop %rax
9:  jmp *exception_stubs+{ud_offset}(%rip)

    .section .noinit.user_stack, "aw", @nobits
    .balign 4096
    .globl user_stack
user_stack:
    .skip {stack_size}
    .text
    "#,
    saved = sym SAVED_RSP,
    ud_offset = const 8 * UD_VECTOR as usize,
    tables = sym TABLES,
    rsp0 = const core::mem::offset_of!(Tables, tss) + 4,
    rflags = const ROUTINE_RFLAGS,
    data = const SEL_DATA,
    stack_size = const USER_STACK_SIZE,
    options(att_syntax)
);
