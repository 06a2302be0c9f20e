//! Application processor start-up: a real-mode trampoline copied to
//! [`TRAMPOLINE_ADDR`], INIT/SIPI/SIPI through the local APIC, and the AP's
//! 64-bit entry, which records its APIC ID and parks.
//!
//! The trampoline goes real → protected → long mode using the boot GDT and
//! page tables (their addresses are link-time constants, so it needs no
//! parameters). Each AP takes a stack slot with an atomic increment.

use crate::apic::LocalApic;
use crate::bail;
use crate::cpus::MAX_CPUS;
use crate::entry::{
    CR0_CLEAR, CR0_SET, CR4_BOOT, EFER_LME, MSR_EFER, SEL_CODE32, SEL_CODE64, SEL_DATA,
};
use crate::exit::{halt_forever, Reason};
use crate::tsc::{delay_us, Deadline};
use core::arch::global_asm;
use core::sync::atomic::{AtomicU32, Ordering};

/// Physical address the trampoline is copied to (page aligned, below 1 MiB).
const TRAMPOLINE_ADDR: usize = 0x8000;
/// SIPI vector: the AP starts at `vector << 12`.
const SIPI_VECTOR: u8 = (TRAMPOLINE_ADDR >> 12) as u8;
/// Per-AP stack size (log2) and count.
const AP_STACK_SHIFT: u32 = 14;
const MAX_APS: usize = MAX_CPUS - 1;
/// MP spec delays: 10 ms after INIT, 200 µs after each SIPI.
const INIT_DELAY_US: u64 = 10_000;
const SIPI_DELAY_US: u64 = 200;
/// How long to wait for all APs to check in.
const AP_TIMEOUT_US: u64 = 2_000_000;

/// Next free AP stack slot, taken by the trampoline with `lock xadd`.
static AP_NEXT_SLOT: AtomicU32 = AtomicU32::new(0);
/// APs that reached `ap_main`.
static AP_STARTED: AtomicU32 = AtomicU32::new(0);
/// APIC ID reported by the AP in each slot.
static AP_IDS: [AtomicU32; MAX_APS] = [const { AtomicU32::new(u32::MAX) }; MAX_APS];

extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
}

/// Result of [`start_aps`].
pub struct ApReport {
    /// APs that checked in.
    pub started: usize,
    /// Their APIC IDs, in check-in slot order.
    pub ids: [u32; MAX_APS],
}

/// Starts every CPU in `apic_ids` except the caller and waits (bounded) for
/// them to check in.
pub fn start_aps(lapic: &LocalApic, apic_ids: &[u32]) -> Result<ApReport, Reason> {
    let me = lapic.id();
    let targets = || apic_ids.iter().copied().filter(move |&id| id != me);
    let expected = targets().count();
    if expected > MAX_APS {
        bail!("too many aps: {}", expected);
    }
    if let Some(id) = targets().find(|&id| id > 0xfe) {
        bail!("apic id {} cannot be reached in xapic mode", id);
    }
    install_trampoline()?;

    for id in targets() {
        lapic.send_init(id)?;
    }
    delay_us(INIT_DELAY_US);
    for _ in 0..2 {
        for id in targets() {
            lapic.send_startup(id, SIPI_VECTOR)?;
        }
        delay_us(SIPI_DELAY_US);
    }

    let deadline = Deadline::after_us(AP_TIMEOUT_US);
    while (AP_STARTED.load(Ordering::Acquire) as usize) < expected && !deadline.expired() {
        core::hint::spin_loop();
    }
    let mut report = ApReport {
        started: AP_STARTED.load(Ordering::Acquire) as usize,
        ids: [u32::MAX; MAX_APS],
    };
    for (slot, id) in report.ids.iter_mut().zip(AP_IDS.iter()) {
        *slot = id.load(Ordering::Acquire);
    }
    Ok(report)
}

/// Copies the trampoline to [`TRAMPOLINE_ADDR`].
fn install_trampoline() -> Result<(), Reason> {
    let start = core::ptr::addr_of!(ap_trampoline_start);
    let end = core::ptr::addr_of!(ap_trampoline_end);
    let len = end as usize - start as usize;
    if len > 4096 {
        bail!("ap trampoline is {} bytes, more than a page", len);
    }
    // SAFETY: the trampoline page is conventional low memory that neither the
    // kernel image nor any live data uses (the start info was copied out).
    unsafe { core::ptr::copy_nonoverlapping(start, TRAMPOLINE_ADDR as *mut u8, len) };
    Ok(())
}

/// 64-bit Rust entry of an AP, on its own stack.
extern "C" fn ap_main(slot: u32) -> ! {
    crate::idt::load();
    if let Ok(lapic) = LocalApic::current() {
        if let Some(id) = AP_IDS.get(slot as usize) {
            id.store(lapic.id(), Ordering::Release);
        }
    }
    AP_STARTED.fetch_add(1, Ordering::AcqRel);
    halt_forever()
}

global_asm!(
    r#"
    /* Copied to {base} and entered in real mode at CS:IP = {base_seg}:0. */
    .section .rodata.ap_trampoline, "a"
    .balign 16
    .globl ap_trampoline_start
    .code16
ap_trampoline_start:
    cli
    cld
    xor %ax, %ax
    mov %ax, %ds
    lgdtl {base} + ap_gdt_ptr - ap_trampoline_start
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl ${code32}, $({base} + ap_protected - ap_trampoline_start)

    .code32
ap_protected:
    mov ${data}, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
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
    ljmp ${code64}, $ap_long_mode_entry

    .balign 8
ap_gdt_ptr:
    .word 31 /* 4 descriptors, as in boot_gdt */
    .long boot_gdt
    .globl ap_trampoline_end
ap_trampoline_end:
    .code64

    /* Runs in the kernel image: take a stack slot, call ap_main. */
    .text
ap_long_mode_entry:
    mov ${data}, %eax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    mov $1, %eax
    lock xadd %eax, {next_slot}(%rip)
    cmp ${max_aps}, %eax
    jae 2f
    mov %eax, %edi
    lea 1(%rax), %rcx
    shl ${stack_shift}, %rcx
    lea ap_stacks(%rip), %rsp
    add %rcx, %rsp
    call {ap_main}
2:  cli
    hlt
    jmp 2b

    .section .noinit.ap_stacks, "aw", @nobits
    .balign 4096
ap_stacks:
    .skip {max_aps} << {stack_shift}
    .text
    "#,
    base = const TRAMPOLINE_ADDR,
    base_seg = const TRAMPOLINE_ADDR >> 4,
    code32 = const SEL_CODE32,
    code64 = const SEL_CODE64,
    data = const SEL_DATA,
    cr4 = const CR4_BOOT,
    efer = const MSR_EFER,
    lme = const EFER_LME,
    cr0_clear = const CR0_CLEAR,
    cr0_set = const CR0_SET,
    max_aps = const MAX_APS,
    stack_shift = const AP_STACK_SHIFT,
    next_slot = sym AP_NEXT_SLOT,
    ap_main = sym ap_main,
    options(att_syntax)
);
