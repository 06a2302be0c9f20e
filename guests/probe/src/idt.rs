//! The 64-bit IDT: exception stubs that turn any CPU exception into a FAIL,
//! the APIC timer handler (vector 0x40), counting handlers for device
//! interrupts (MSI/MSI-X, vectors 0x50..0x57), the legacy INTx handler
//! (vector 0x58, through the I/O APIC), the ACPI SCI handler (vector 0x59,
//! fixed-feature power button) and the spurious-interrupt handler. Their
//! EOIs go to the xAPIC EOI register or, in x2APIC mode, the EOI MSR (see
//! [`LAPIC_EOI_ADDR`]). [`with_gp_skip`] swaps in a #GP handler that skips
//! faulting RDMSR/WRMSR instructions.
//!
//! `extern "x86-interrupt"` is nightly-only, so the entry stubs are written
//! in assembly.

use crate::entry::SEL_CODE64;
use crate::fail_reason;
use core::arch::global_asm;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::instructions::tables::lidt;
use x86_64::registers::control::Cr2;
use x86_64::structures::DescriptorTablePointer;
use x86_64::VirtAddr;

/// Vector of the local APIC timer.
pub const TIMER_VECTOR: u8 = 0x40;
/// Vector programmed into the APIC's spurious interrupt register.
pub const SPURIOUS_VECTOR: u8 = 0xff;

/// First of the device vectors: each counts its interrupts and sends an EOI.
pub const DEVICE_VECTOR_BASE: u8 = 0x50;
/// Number of device vectors.
pub const DEVICE_VECTORS: usize = 8;

/// Vector of the INTx handler: counts, reads the byte register at
/// [`INTX_ACK_ADDR`] (a virtio ISR status register: the read acknowledges
/// the interrupt and lowers the line) and sends an EOI.
pub const INTX_VECTOR: u8 = 0x58;
/// Register the INTx handler reads before its EOI (0: none).
pub static INTX_ACK_ADDR: AtomicU64 = AtomicU64::new(0);
/// Interrupts taken on [`INTX_VECTOR`].
pub static INTX_IRQS: AtomicU64 = AtomicU64::new(0);
/// The INTx interrupts whose acknowledging read returned 0 (not ours).
pub static INTX_IDLE: AtomicU64 = AtomicU64::new(0);

/// Vector of the ACPI SCI handler: counts, reads PM1_STS (the 16-bit port
/// in [`SCI_PM1_STS_PORT`]), and if PWRBTN_STS (bit 8) is set clears it
/// (write 1) and counts a power button press, then sends an EOI. The
/// status is cleared before the EOI: the SCI is level-triggered and stays
/// asserted while an enabled status bit is set.
pub const SCI_VECTOR: u8 = 0x59;
/// PM1a_STS's I/O port for the SCI handler (0: none, only EOI).
pub static SCI_PM1_STS_PORT: AtomicU64 = AtomicU64::new(0);
/// Interrupts taken on [`SCI_VECTOR`].
pub static SCI_IRQS: AtomicU64 = AtomicU64::new(0);
/// Power button presses the SCI handler saw (PWRBTN_STS found set).
pub static POWER_BUTTON_PRESSES: AtomicU64 = AtomicU64::new(0);

/// Interrupts taken on each device vector.
static DEVICE_IRQS: [AtomicU64; DEVICE_VECTORS] = [const { AtomicU64::new(0) }; DEVICE_VECTORS];

/// Interrupts taken on [`TIMER_VECTOR`].
pub static TIMER_TICKS: AtomicU64 = AtomicU64::new(0);
/// Address of the local APIC EOI register, written by the interrupt
/// handlers; 0 means x2APIC mode: they write the x2APIC EOI MSR (0x80b)
/// instead. Store `LocalApic::eoi_addr()` here.
pub static LAPIC_EOI_ADDR: AtomicU64 = AtomicU64::new(0xfee0_00b0);

/// Vector of the general-protection exception.
const GP_VECTOR: usize = 13;
/// RDMSR/WRMSR #GPs skipped by `gp_skip_isr` (see [`with_gp_skip`]).
static GP_SKIPPED: AtomicU64 = AtomicU64::new(0);

/// A 64-bit interrupt gate.
#[repr(C)]
#[derive(Clone, Copy)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    attributes: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

impl Gate {
    const MISSING: Gate = Gate {
        offset_low: 0,
        selector: 0,
        ist: 0,
        attributes: 0,
        offset_mid: 0,
        offset_high: 0,
        reserved: 0,
    };

    /// Present, DPL 0, 64-bit interrupt gate (IF cleared on entry).
    fn interrupt(handler: u64) -> Gate {
        Gate {
            offset_low: handler as u16,
            selector: SEL_CODE64,
            ist: 0,
            attributes: 0x8e,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

#[repr(C, align(16))]
struct Idt(UnsafeCell<[Gate; 256]>);

// SAFETY: the table is filled by the boot CPU in `init`, before interrupts
// are enabled and before any other CPU runs; later only `with_gp_skip`
// swaps the #GP gate, on the boot CPU, while APs are parked.
unsafe impl Sync for Idt {}

static IDT: Idt = Idt(UnsafeCell::new([Gate::MISSING; 256]));

/// Stack layout built by the exception stubs (see `exc_common`).
#[repr(C)]
struct ExceptionFrame {
    vector: u64,
    error: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
}

extern "C" {
    static exception_stubs: [u64; 32];
    static device_stubs: [u64; DEVICE_VECTORS];
    fn timer_isr();
    fn spurious_isr();
    fn intx_isr();
    fn sci_isr();
    fn gp_skip_isr();
}

/// Fills the IDT and loads it on this CPU.
pub fn init() {
    // SAFETY: only the boot CPU calls this, before `sti` and before APs run,
    // so nothing else accesses the table.
    let gates = unsafe { &mut *IDT.0.get() };
    // SAFETY: `exception_stubs` is a read-only table defined below.
    let stubs = unsafe { &*core::ptr::addr_of!(exception_stubs) };
    for (gate, &stub) in gates.iter_mut().zip(stubs.iter()) {
        *gate = Gate::interrupt(stub);
    }
    // Masked legacy PIC lines can still raise spurious IRQ 7/15; any of its
    // vectors is simply ignored (no EOI: a spurious IRQ needs none, and the
    // lines are masked).
    let ignore = Gate::interrupt(spurious_isr as *const () as u64);
    let pic = usize::from(crate::pic::VECTOR_BASE);
    gates[pic..pic + 16].fill(ignore);
    gates[usize::from(SPURIOUS_VECTOR)] = ignore;
    gates[usize::from(TIMER_VECTOR)] = Gate::interrupt(timer_isr as *const () as u64);
    // SAFETY: `device_stubs` is a read-only table defined below.
    let device = unsafe { &*core::ptr::addr_of!(device_stubs) };
    let base = usize::from(DEVICE_VECTOR_BASE);
    for (gate, &stub) in gates[base..base + DEVICE_VECTORS]
        .iter_mut()
        .zip(device.iter())
    {
        *gate = Gate::interrupt(stub);
    }
    gates[usize::from(INTX_VECTOR)] = Gate::interrupt(intx_isr as *const () as u64);
    gates[usize::from(SCI_VECTOR)] = Gate::interrupt(sci_isr as *const () as u64);
    load();
}

/// Runs `f` with a recoverable #GP handler: a #GP raised by an RDMSR or
/// WRMSR instruction is counted and the instruction skipped (as if it had
/// done nothing; RDMSR then leaves EDX:EAX unchanged); any other #GP still
/// ends the probe. Returns `f`'s result and the number of #GPs skipped. The
/// normal handler is back in place afterwards. Boot CPU only, while other
/// CPUs (if any) are parked.
pub fn with_gp_skip<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let gate = |handler: u64| {
        // SAFETY: one gate of the live IDT is replaced with a complete new
        // value; only the boot CPU runs code that can fault while this
        // happens (APs are parked with interrupts off), and a gate write is
        // not torn in a way that matters: no #GP is raised in between.
        unsafe {
            let gates = &mut *IDT.0.get();
            core::ptr::write_volatile(&mut gates[GP_VECTOR], Gate::interrupt(handler));
        }
    };
    // SAFETY: `exception_stubs` is a read-only table defined below.
    let normal = unsafe { (*core::ptr::addr_of!(exception_stubs))[GP_VECTOR] };
    let before = GP_SKIPPED.load(Ordering::SeqCst);
    gate(gp_skip_isr as *const () as u64);
    core::sync::atomic::compiler_fence(Ordering::SeqCst);
    let result = f();
    core::sync::atomic::compiler_fence(Ordering::SeqCst);
    gate(normal);
    (result, GP_SKIPPED.load(Ordering::SeqCst) - before)
}

/// Replaces the gate of `vector` with a (DPL 0) interrupt gate to
/// `handler`, for good. Boot CPU only, while other CPUs (if any) are
/// parked, with interrupts off.
pub fn set_gate(vector: u8, handler: u64) {
    // SAFETY: one gate of the live IDT is replaced with a complete new
    // value on the boot CPU (see `with_gp_skip`); the caller makes sure
    // the vector is not raised meanwhile.
    unsafe {
        let gates = &mut *IDT.0.get();
        core::ptr::write_volatile(&mut gates[usize::from(vector)], Gate::interrupt(handler));
    }
}

/// Loads the (already built) IDT on this CPU.
pub fn load() {
    let pointer = DescriptorTablePointer {
        limit: (core::mem::size_of::<[Gate; 256]>() - 1) as u16,
        base: VirtAddr::new(IDT.0.get() as u64),
    };
    // SAFETY: the IDT is a static with valid gates and is never moved.
    unsafe { lidt(&pointer) };
}

/// Loads an IDT with limit 0: any exception then escalates to a triple fault.
pub fn load_empty() {
    let pointer = DescriptorTablePointer {
        limit: 0,
        base: VirtAddr::new(0),
    };
    // SAFETY: deliberately breaks exception delivery; used right before a
    // forced triple fault.
    unsafe { lidt(&pointer) };
}

/// Called by `exc_common` with the exception frame; reports and exits.
extern "C" fn exception_handler(frame: &ExceptionFrame) -> ! {
    crate::exit::finish(Err(fail_reason!(
        "exception vector={} error={:#x} rip={:#x} cs={:#x} rflags={:#x} cr2={:#x}",
        frame.vector,
        frame.error,
        frame.rip,
        frame.cs,
        frame.rflags,
        Cr2::read_raw()
    )))
}

global_asm!(
    r#"
    /* EOI to the local APIC: a 32-bit write of 0 to the xAPIC EOI register
       at LAPIC_EOI_ADDR, or, when that is 0 (x2APIC mode), a WRMSR of 0 to
       the x2APIC EOI MSR. Clobbers RAX (and the flags, which iretq
       restores); saves RCX and RDX itself. */
    .macro lapic_eoi
    mov {eoi}(%rip), %rax
    test %rax, %rax
    jz 88f
    movl $0, (%rax)
    jmp 89f
88: push %rcx
    push %rdx
    mov ${eoi_msr}, %ecx
    xor %eax, %eax
    xor %edx, %edx
    wrmsr
    pop %rdx
    pop %rcx
89:
    .endm

    .macro exc_stub vec, has_error
exc_stub_\vec:
    .if \has_error == 0
    push $0
    .endif
    push $\vec
    jmp exc_common
    .endm

    .text
    .irp v, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31
    exc_stub \v, 0
    .endr
    .irp v, 8,10,11,12,13,14,17,21,29,30
    exc_stub \v, 1
    .endr

exc_common:
    mov %rsp, %rdi
    and $-16, %rsp
    call {handler}
1:  cli
    hlt
    jmp 1b

    .globl timer_isr
timer_isr:
    push %rax
    lock incq {ticks}(%rip)
    lapic_eoi
    pop %rax
    iretq

    .globl spurious_isr
spurious_isr:
    iretq

    /* #GP while `with_gp_skip` runs: if the faulting instruction is RDMSR
       (0f 32) or WRMSR (0f 30), count it and resume after it (both are two
       bytes); any other #GP takes the fatal path. Stack on entry: error
       code, RIP, CS, RFLAGS, RSP, SS. */
    .globl gp_skip_isr
gp_skip_isr:
    push %rax
    mov 16(%rsp), %rax
    movzwl (%rax), %eax
    cmp $0x320f, %eax
    je 4f
    cmp $0x300f, %eax
    je 4f
    pop %rax
    jmp exc_stub_13
4:  lock incq {gp_skipped}(%rip)
    addq $2, 16(%rsp)
    pop %rax
    add $8, %rsp
    iretq

    /* Device vectors: count, EOI (MSIs are edge triggered). */
    .irp i, 0,1,2,3,4,5,6,7
device_isr_\i:
    push %rax
    lock incq {device_irqs}+8*\i(%rip)
    lapic_eoi
    pop %rax
    iretq
    .endr

    /* INTx: count, read the acknowledge register (before the EOI, so a
       level-triggered line is low again when the I/O APIC sees the EOI),
       EOI. */
    .globl intx_isr
intx_isr:
    push %rax
    lock incq {intx_irqs}(%rip)
    mov {intx_ack}(%rip), %rax
    test %rax, %rax
    jz 2f
    movzbl (%rax), %eax
    test %eax, %eax
    jnz 2f
    lock incq {intx_idle}(%rip)
2:  lapic_eoi
    pop %rax
    iretq

    /* ACPI SCI: count; if PM1_STS has PWRBTN_STS (bit 8), write 1 to clear
       it and count a press; then EOI (after the clear: the line is
       level-triggered). */
    .globl sci_isr
sci_isr:
    push %rax
    push %rdx
    lock incq {sci_irqs}(%rip)
    mov {sci_port}(%rip), %rdx
    test %rdx, %rdx
    jz 3f
    inw %dx, %ax
    test $0x100, %ax
    jz 3f
    mov $0x100, %eax
    outw %ax, %dx
    lock incq {presses}(%rip)
3:  lapic_eoi
    pop %rdx
    pop %rax
    iretq

    .section .rodata.exception_stubs, "a"
    .balign 8
    .globl exception_stubs
exception_stubs:
    .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad exc_stub_\v
    .endr

    .section .rodata.device_stubs, "a"
    .balign 8
    .globl device_stubs
device_stubs:
    .irp i, 0,1,2,3,4,5,6,7
    .quad device_isr_\i
    .endr
    .text
    "#,
    handler = sym exception_handler,
    ticks = sym TIMER_TICKS,
    device_irqs = sym DEVICE_IRQS,
    eoi = sym LAPIC_EOI_ADDR,
    intx_irqs = sym INTX_IRQS,
    intx_ack = sym INTX_ACK_ADDR,
    intx_idle = sym INTX_IDLE,
    sci_irqs = sym SCI_IRQS,
    sci_port = sym SCI_PM1_STS_PORT,
    presses = sym POWER_BUTTON_PRESSES,
    eoi_msr = const crate::apic::X2APIC_MSR_EOI,
    gp_skipped = sym GP_SKIPPED,
    options(att_syntax)
);

/// Current number of timer ticks.
pub fn timer_ticks() -> u64 {
    TIMER_TICKS.load(Ordering::SeqCst)
}

/// Interrupts taken so far on device vector `vector` (0 for vectors outside
/// `DEVICE_VECTOR_BASE..DEVICE_VECTOR_BASE + DEVICE_VECTORS`).
pub fn device_irqs(vector: u8) -> u64 {
    vector
        .checked_sub(DEVICE_VECTOR_BASE)
        .and_then(|i| DEVICE_IRQS.get(usize::from(i)))
        .map_or(0, |count| count.load(Ordering::SeqCst))
}
