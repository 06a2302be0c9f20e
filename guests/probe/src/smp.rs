//! Application processor start-up: the APIC mode (xAPIC or x2APIC), a
//! real-mode trampoline copied to [`TRAMPOLINE_ADDR`], INIT/SIPI/SIPI
//! through the local APIC, and the AP's 64-bit entry, which records its APIC
//! ID and parks.
//!
//! The trampoline goes real → protected → long mode using the boot GDT and
//! page tables (their addresses are link-time constants, so it needs no
//! parameters). Each AP takes a stack slot with an atomic increment; the
//! stacks (8 KiB each) are in the image for up to [`STATIC_AP_STACKS`] APs
//! and come from RAM ([`ram::scratch`]) beyond that. The boot CPU waits in
//! `hlt`, woken by its APIC timer (1 ms period).

use crate::apic::{LocalApic, Mode, TIMER_DIVIDE_16, XAPIC_MAX_ID};
use crate::bail;
use crate::cmdline;
use crate::cpus::MAX_CPUS;
use crate::entry::{
    CR0_CLEAR, CR0_SET, CR4_BOOT, EFER_LME, MSR_EFER, SEL_CODE32, SEL_CODE64, SEL_DATA,
};
use crate::exit::{halt_forever, Reason};
use crate::idt::{self, TIMER_VECTOR};
use crate::ram;
use crate::start_info::StartInfo;
use crate::tsc::{self, delay_us, Deadline};
use alloc::vec::Vec;
use core::arch::global_asm;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use x86_64::instructions::interrupts;

/// Physical address the trampoline is copied to (page aligned, below 1 MiB).
const TRAMPOLINE_ADDR: usize = 0x8000;
/// SIPI vector: the AP starts at `vector << 12`.
const SIPI_VECTOR: u8 = (TRAMPOLINE_ADDR >> 12) as u8;
/// Per-AP stack size (log2): 8 KiB.
const AP_STACK_SHIFT: u32 = 13;
/// AP stacks reserved in the image (just under 1 MiB); more come from RAM.
const STATIC_AP_STACKS: usize = 127;
const MAX_APS: usize = MAX_CPUS - 1;
/// MP spec delays: 10 ms after INIT, 200 µs after each SIPI.
const INIT_DELAY_US: u64 = 10_000;
const SIPI_DELAY_US: u64 = 200;
/// How long to wait for all APs to check in: 2 s plus 20 ms per AP.
const AP_TIMEOUT_US: u64 = 2_000_000;
const AP_TIMEOUT_PER_AP_US: u64 = 20_000;
/// APIC timer period while waiting: 1 ms on KVM (1 GHz before the divider).
const WAIT_TIMER_COUNT: u32 = 62_500;

/// Next free AP stack slot, taken by the trampoline with `lock xadd`.
static AP_NEXT_SLOT: AtomicU32 = AtomicU32::new(0);
/// Number of AP stacks at [`AP_STACK_BASE`]; an AP without one parks
/// without checking in.
static AP_SLOTS: AtomicU32 = AtomicU32::new(0);
/// Base of the AP stacks: slot `n`'s stack top is `base + (n + 1) * 8 KiB`.
static AP_STACK_BASE: AtomicU64 = AtomicU64::new(0);
/// Whether APs switch their APIC to x2APIC mode before reading their ID.
static AP_X2APIC: AtomicBool = AtomicBool::new(false);
/// APs that reached `ap_main`.
static AP_STARTED: AtomicU32 = AtomicU32::new(0);
/// APIC ID reported by the AP in each slot.
static AP_IDS: [AtomicU32; MAX_APS] = [const { AtomicU32::new(u32::MAX) }; MAX_APS];

extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
    /// [`STATIC_AP_STACKS`] stacks in the image (not zeroed).
    static mut ap_stacks: u8;
}

/// Result of [`start_aps`].
pub struct ApReport {
    /// APs that checked in.
    pub started: usize,
    /// Their APIC IDs, in check-in slot order.
    pub ids: Vec<u32>,
    /// The APIC mode the CPUs were started in.
    pub mode: Mode,
    /// From the first INIT until every AP had checked in (or the timeout).
    pub elapsed_us: u64,
}

/// Puts the boot CPU's APIC in the mode AP start-up needs and returns it.
///
/// `x2apic=on` on the command line asks for x2APIC mode, `x2apic=off` for
/// xAPIC mode; by default (`auto`) the APIC switches to x2APIC mode when an
/// APIC ID in `apic_ids` is above 254 (xAPIC's highest) and otherwise stays
/// as the firmware left it. FAILs when x2APIC mode is needed (or asked for)
/// and CPUID.1:ECX.x2APIC is clear, or `x2apic=off` with an ID above 254.
pub fn select_mode(lapic: LocalApic, apic_ids: &[u32], cmdline: &str) -> Result<LocalApic, Reason> {
    let wanted = match cmdline::value(cmdline, "x2apic") {
        None | Some("auto") => None,
        Some("on") => Some(Mode::X2Apic),
        Some("off") => Some(Mode::XApic),
        Some(other) => bail!("unknown x2apic mode {} (want on, off or auto)", other),
    };
    let high = apic_ids
        .iter()
        .copied()
        .filter(|&id| id > XAPIC_MAX_ID)
        .max();
    let supported = crate::apic::x2apic_supported();
    let mode = match (wanted, high) {
        (Some(Mode::XApic), Some(id)) => {
            bail!("x2apic=off, but apic id {} needs x2apic mode", id)
        }
        (Some(Mode::X2Apic), _) if !supported => {
            bail!("x2apic=on, but the cpu has no x2apic (cpuid.1:ecx bit 21 clear)")
        }
        (None, Some(id)) if !supported => bail!(
            "apic id {} needs x2apic mode, but the cpu has no x2apic (cpuid.1:ecx bit 21 clear)",
            id
        ),
        (Some(mode), _) => mode,
        (None, Some(_)) => Mode::X2Apic,
        (None, None) => return Ok(lapic),
    };
    LocalApic::switch_to(mode)
}

/// Starts every CPU in `apic_ids` except the caller and waits (bounded) for
/// them to check in. The caller's APIC must be enabled (and in the mode
/// from [`select_mode`]); interrupts are off again on return, the timer
/// stopped.
pub fn start_aps(
    lapic: &LocalApic,
    apic_ids: &[u32],
    info: &StartInfo,
) -> Result<ApReport, Reason> {
    let me = lapic.id();
    let targets = || apic_ids.iter().copied().filter(move |&id| id != me);
    let expected = targets().count();
    if expected > MAX_APS {
        bail!("too many aps: {}", expected);
    }
    if lapic.mode() == Mode::XApic {
        if let Some(id) = targets().find(|&id| id > XAPIC_MAX_ID) {
            bail!("apic id {} cannot be reached in xapic mode", id);
        }
    }
    if expected == 0 {
        return Ok(ApReport {
            started: 0,
            ids: Vec::new(),
            mode: lapic.mode(),
            elapsed_us: 0,
        });
    }
    let stacks = if expected <= STATIC_AP_STACKS {
        core::ptr::addr_of_mut!(ap_stacks) as u64
    } else {
        ram::scratch(info, expected << AP_STACK_SHIFT)?.as_mut_ptr() as u64
    };
    AP_STACK_BASE.store(stacks, Ordering::SeqCst);
    AP_SLOTS.store(expected as u32, Ordering::SeqCst);
    AP_X2APIC.store(lapic.mode() == Mode::X2Apic, Ordering::SeqCst);
    install_trampoline()?;
    // Settle the TSC rate before timing anything.
    tsc::khz();

    idt::LAPIC_EOI_ADDR.store(lapic.eoi_addr(), Ordering::SeqCst);
    let ticks_before = idt::timer_ticks();
    lapic.start_periodic_timer(TIMER_VECTOR, TIMER_DIVIDE_16, WAIT_TIMER_COUNT);
    interrupts::enable();
    let waiter = Waiter {
        lapic,
        ticks_before,
    };
    let started = || AP_STARTED.load(Ordering::Acquire) as usize;

    let start = tsc::now();
    let result: Result<(), Reason> = (|| {
        for id in targets() {
            lapic.send_init(id)?;
        }
        waiter.wait(Deadline::after_us(INIT_DELAY_US), || false);
        for round in 0..2 {
            if round == 1 && started() == expected {
                break;
            }
            for id in targets() {
                lapic.send_startup(id, SIPI_VECTOR)?;
            }
            delay_us(SIPI_DELAY_US);
        }
        let timeout = AP_TIMEOUT_US + AP_TIMEOUT_PER_AP_US * expected as u64;
        waiter.wait(Deadline::after_us(timeout), || started() >= expected);
        Ok(())
    })();
    let elapsed_us = tsc::now().wrapping_sub(start) * 1000 / tsc::khz();
    interrupts::disable();
    lapic.stop_timer();
    result?;

    let slots = expected.min(AP_IDS.len());
    let ids = AP_IDS[..slots]
        .iter()
        .map(|id| id.load(Ordering::Acquire))
        .filter(|&id| id != u32::MAX)
        .collect();
    Ok(ApReport {
        started: started(),
        ids,
        mode: lapic.mode(),
        elapsed_us,
    })
}

/// Sleeps between APIC timer ticks.
struct Waiter<'a> {
    lapic: &'a LocalApic,
    /// Timer interrupts before the timer was started.
    ticks_before: u64,
}

impl Waiter<'_> {
    /// Waits until `done()` or the deadline. Sleeps in `hlt` only when
    /// another tick is bound to come (the timer has interrupted us, is
    /// counting, and its last interrupt was acknowledged); otherwise spins,
    /// so the deadline is still checked.
    fn wait(&self, deadline: Deadline, done: impl Fn() -> bool) {
        while !done() && !deadline.expired() {
            interrupts::disable();
            let can_sleep = idt::timer_ticks() > self.ticks_before
                && self.lapic.timer_current_count() != 0
                && !self.lapic.in_service(TIMER_VECTOR);
            if can_sleep {
                interrupts::enable_and_hlt();
            } else {
                interrupts::enable();
                core::hint::spin_loop();
            }
        }
    }
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

/// 64-bit Rust entry of an AP, on its own stack. In x2APIC mode the AP
/// switches its own APIC first: its xAPIC ID register holds only 8 bits.
extern "C" fn ap_main(slot: u32) -> ! {
    crate::idt::load();
    let lapic = if AP_X2APIC.load(Ordering::Acquire) {
        LocalApic::switch_to(Mode::X2Apic)
    } else {
        LocalApic::current()
    };
    if let Ok(lapic) = lapic {
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

    /* Runs in the kernel image: take a stack slot (park if there is none),
       call ap_main. */
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
    cmp {slots}(%rip), %eax
    jae 2f
    mov %eax, %edi
    lea 1(%rax), %rcx
    shl ${stack_shift}, %rcx
    mov {stack_base}(%rip), %rsp
    add %rcx, %rsp
    call {ap_main}
2:  cli
    hlt
    jmp 2b

    .section .noinit.ap_stacks, "aw", @nobits
    .balign 4096
    .globl ap_stacks
ap_stacks:
    .skip {static_stacks} << {stack_shift}
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
    static_stacks = const STATIC_AP_STACKS,
    stack_shift = const AP_STACK_SHIFT,
    next_slot = sym AP_NEXT_SLOT,
    slots = sym AP_SLOTS,
    stack_base = sym AP_STACK_BASE,
    ap_main = sym ap_main,
    options(att_syntax)
);
