//! Time keeping with the TSC. Its frequency comes from kvmclock when the
//! hypervisor offers it, otherwise from the PIT, otherwise a deliberately
//! high guess (so timeouts err on the long side).
//!
//! kvmclock can also be kept on as a clock ([`kvmclock_start`],
//! [`kvmclock_ns`]): the guest's paravirtual system time, which a VMM
//! freezes (KVM_GET_CLOCK / KVM_SET_CLOCK) while the VM is paused.

use core::arch::x86_64::__cpuid;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use x86_64::instructions::port::Port;
use x86_64::registers::model_specific::Msr;

/// Frequency assumed when it cannot be measured.
const FALLBACK_KHZ: u64 = 4_000_000;
/// KVM's "KVMKVMKVM\0\0\0" CPUID signature (EBX, ECX, EDX of 0x40000000).
const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];
const KVM_FEATURE_CLOCKSOURCE: u32 = 1 << 0;
const KVM_FEATURE_CLOCKSOURCE2: u32 = 1 << 3;
const MSR_KVM_SYSTEM_TIME: u32 = 0x12;
const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
/// PIT input clock in Hz, and the calibration window (10 ms).
const PIT_HZ: u64 = 1_193_182;
const PIT_CALIBRATION_TICKS: u16 = 11_932;
/// Gives up on the PIT after this many TSC cycles (50 ms at 4 GHz), so a
/// missing PIT whose port 0x61 reads 0 costs little.
const PIT_TIMEOUT_CYCLES: u64 = 200_000_000;

static TSC_KHZ: AtomicU64 = AtomicU64::new(0);
/// Where [`TSC_KHZ`] came from (a [`RateSource`] as `u8`).
static TSC_SOURCE: AtomicU8 = AtomicU8::new(RateSource::Guess as u8);
/// Set while kvmclock is kept on by [`kvmclock_start`].
static KVMCLOCK_ON: AtomicBool = AtomicBool::new(false);
/// The MSR [`kvmclock_start`] wrote, for [`kvmclock_stop`].
static KVMCLOCK_MSR: AtomicU64 = AtomicU64::new(0);
/// The latest value [`kvmclock_ns`] returned (it never goes backwards).
static KVMCLOCK_LAST: AtomicU64 = AtomicU64::new(0);

/// Where the TSC frequency came from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RateSource {
    /// kvmclock's TSC-to-nanoseconds factor.
    Kvmclock = 0,
    /// Measured against PIT channel 2.
    Pit = 1,
    /// Not measurable: [`FALLBACK_KHZ`] assumed.
    Guess = 2,
}

impl RateSource {
    /// `kvmclock`, `pit` or `guess`.
    pub fn name(self) -> &'static str {
        match self {
            RateSource::Kvmclock => "kvmclock",
            RateSource::Pit => "pit",
            RateSource::Guess => "guess",
        }
    }
}

/// `struct pvclock_vcpu_time_info`, filled in by KVM.
#[repr(C, align(64))]
struct PvclockTimeInfo {
    version: u32,
    pad0: u32,
    tsc_timestamp: u64,
    system_time: u64,
    tsc_to_system_mul: u32,
    tsc_shift: i8,
    flags: u8,
    pad: [u8; 2],
}

struct PvclockCell(UnsafeCell<PvclockTimeInfo>);

// SAFETY: only the boot CPU touches the cell (KVM writes it while kvmclock
// is on; the readers follow the pvclock version protocol).
unsafe impl Sync for PvclockCell {}

static PVCLOCK: PvclockCell = PvclockCell(UnsafeCell::new(PvclockTimeInfo {
    version: 0,
    pad0: 0,
    tsc_timestamp: 0,
    system_time: 0,
    tsc_to_system_mul: 0,
    tsc_shift: 0,
    flags: 0,
    pad: [0; 2],
}));

/// Reads the time stamp counter.
pub fn now() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc only reads the counter.
    unsafe {
        core::arch::asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags));
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// TSC frequency in kHz, measured on first use.
pub fn khz() -> u64 {
    match TSC_KHZ.load(Ordering::Relaxed) {
        0 => {
            let (khz, source) = match kvmclock_khz() {
                Some(khz) => (khz, RateSource::Kvmclock),
                None => match pit_khz() {
                    Some(khz) => (khz, RateSource::Pit),
                    None => (FALLBACK_KHZ, RateSource::Guess),
                },
            };
            TSC_SOURCE.store(source as u8, Ordering::Relaxed);
            TSC_KHZ.store(khz, Ordering::Relaxed);
            khz
        }
        khz => khz,
    }
}

/// Where [`khz`]'s value came from (measured first if need be).
pub fn khz_source() -> RateSource {
    khz();
    match TSC_SOURCE.load(Ordering::Relaxed) {
        0 => RateSource::Kvmclock,
        1 => RateSource::Pit,
        _ => RateSource::Guess,
    }
}

/// A point in time after which [`Deadline::expired`] returns true.
#[derive(Clone, Copy)]
pub struct Deadline(u64);

impl Deadline {
    /// `us` microseconds from now.
    pub fn after_us(us: u64) -> Self {
        Deadline(now().saturating_add(us.saturating_mul(khz()) / 1000))
    }

    /// `cycles` TSC cycles from now (see [`cycles_for_us`]): no division
    /// on hot paths.
    pub fn after_cycles(cycles: u64) -> Self {
        Deadline(now().saturating_add(cycles))
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        now() >= self.0
    }
}

/// TSC cycles in `us` microseconds.
pub fn cycles_for_us(us: u64) -> u64 {
    us.saturating_mul(khz()) / 1000
}

/// Busy-waits for at least `us` microseconds.
pub fn delay_us(us: u64) {
    let deadline = Deadline::after_us(us);
    while !deadline.expired() {
        core::hint::spin_loop();
    }
}

/// The kvmclock system-time MSR, if KVM's CPUID leaves offer one.
fn kvmclock_msr() -> Option<u32> {
    let base = __cpuid(0x4000_0000);
    if [base.ebx, base.ecx, base.edx] != KVM_SIGNATURE || base.eax < 0x4000_0001 {
        return None;
    }
    let features = __cpuid(0x4000_0001).eax;
    if features & KVM_FEATURE_CLOCKSOURCE2 != 0 {
        Some(MSR_KVM_SYSTEM_TIME_NEW)
    } else if features & KVM_FEATURE_CLOCKSOURCE != 0 {
        Some(MSR_KVM_SYSTEM_TIME)
    } else {
        None
    }
}

/// One consistent snapshot of the pvclock structure: (tsc_timestamp,
/// system_time, tsc_to_system_mul, tsc_shift), or `None` if KVM has not
/// filled it in (version 0) or keeps it odd (mid-update) for too long.
///
/// # Safety
/// kvmclock must be on (KVM writes the structure), or the structure must
/// not be written concurrently.
unsafe fn pvclock_snapshot() -> Option<(u64, u64, u32, i8)> {
    let info = PVCLOCK.0.get();
    for _ in 0..1000 {
        // SAFETY: the static is valid for reads; KVM may update it at any
        // time, which the version protocol (odd = updating, changed =
        // retry) detects. On x86 loads are not reordered with other loads,
        // so a compiler fence keeps the field reads between the two version
        // reads.
        let (v1, snapshot, v2) = unsafe {
            let v1 = core::ptr::addr_of!((*info).version).read_volatile();
            core::sync::atomic::compiler_fence(Ordering::SeqCst);
            let snapshot = (
                core::ptr::addr_of!((*info).tsc_timestamp).read_volatile(),
                core::ptr::addr_of!((*info).system_time).read_volatile(),
                core::ptr::addr_of!((*info).tsc_to_system_mul).read_volatile(),
                core::ptr::addr_of!((*info).tsc_shift).read_volatile(),
            );
            core::sync::atomic::compiler_fence(Ordering::SeqCst);
            let v2 = core::ptr::addr_of!((*info).version).read_volatile();
            (v1, snapshot, v2)
        };
        if v1 == 0 {
            return None;
        }
        if v1 == v2 && v1 & 1 == 0 {
            return Some(snapshot);
        }
        core::hint::spin_loop();
    }
    None
}

/// Turns kvmclock on and keeps it on, so that [`kvmclock_ns`] reads the
/// guest's system time. Returns the MSR used, or `None` if KVM offers no
/// kvmclock (no KVM CPUID signature or clock-source feature) or does not
/// fill in the structure.
pub fn kvmclock_start() -> Option<u32> {
    // Settle the TSC rate first: its kvmclock path turns the clock off again.
    khz();
    let msr_index = kvmclock_msr()?;
    let mut msr = Msr::new(msr_index);
    // SAFETY: the MSR exists (CPUID says so); KVM writes the 32-byte
    // structure at this static, 64-byte aligned address, which nothing else
    // uses while the clock is on. Bit 0 enables the clock.
    unsafe { msr.write(PVCLOCK.0.get() as u64 | 1) };
    // SAFETY: the clock is on; KVM fills in the structure before the MSR
    // write returns to the guest.
    match unsafe { pvclock_snapshot() } {
        Some((_, _, mul, _)) if mul != 0 => {
            KVMCLOCK_MSR.store(u64::from(msr_index), Ordering::SeqCst);
            KVMCLOCK_LAST.store(0, Ordering::SeqCst);
            KVMCLOCK_ON.store(true, Ordering::SeqCst);
            Some(msr_index)
        }
        _ => {
            // SAFETY: as above; 0 turns the clock off.
            unsafe { msr.write(0) };
            None
        }
    }
}

/// Turns kvmclock off again (after [`kvmclock_start`]).
pub fn kvmclock_stop() {
    if KVMCLOCK_ON.swap(false, Ordering::SeqCst) {
        let mut msr = Msr::new(KVMCLOCK_MSR.load(Ordering::SeqCst) as u32);
        // SAFETY: the MSR was written by `kvmclock_start`; 0 turns it off.
        unsafe { msr.write(0) };
    }
}

/// The guest's kvmclock system time in nanoseconds (0 unless
/// [`kvmclock_start`] succeeded). Never goes backwards.
pub fn kvmclock_ns() -> u64 {
    if !KVMCLOCK_ON.load(Ordering::Relaxed) {
        return 0;
    }
    // SAFETY: the clock is on.
    let Some((tsc_timestamp, system_time, mul, shift)) = (unsafe { pvclock_snapshot() }) else {
        return KVMCLOCK_LAST.load(Ordering::Relaxed);
    };
    // No `lfence` before `rdtsc` (an SSE2 instruction KVM's emulator
    // lacks): a TSC read ahead of the snapshot counts as no time passed.
    let delta = now().saturating_sub(tsc_timestamp);
    let delta = if shift >= 0 {
        delta.checked_shl(shift as u32).unwrap_or(u64::MAX)
    } else {
        delta
            .checked_shr(u32::from(shift.unsigned_abs()))
            .unwrap_or(0)
    };
    let ns = system_time.wrapping_add(((u128::from(delta) * u128::from(mul)) >> 32) as u64);
    let last = KVMCLOCK_LAST.load(Ordering::Relaxed);
    if ns < last {
        return last;
    }
    KVMCLOCK_LAST.store(ns, Ordering::Relaxed);
    ns
}

/// Reads the TSC rate KVM publishes for its paravirtual clock.
fn kvmclock_khz() -> Option<u64> {
    let (version, mul, shift) = if KVMCLOCK_ON.load(Ordering::SeqCst) {
        // SAFETY: the clock is on.
        let (_, _, mul, shift) = unsafe { pvclock_snapshot() }?;
        (2, mul, shift)
    } else {
        let info = PVCLOCK.0.get();
        let mut msr = Msr::new(kvmclock_msr()?);
        // SAFETY: the MSR exists (CPUID says so); KVM writes the 32-byte
        // structure at this static, 64-byte aligned address, which nothing
        // else uses. Bit 0 enables the clock; writing 0 turns it off again.
        unsafe {
            msr.write(info as u64 | 1);
            let version = core::ptr::addr_of!((*info).version).read_volatile();
            let mul = core::ptr::addr_of!((*info).tsc_to_system_mul).read_volatile();
            let shift = core::ptr::addr_of!((*info).tsc_shift).read_volatile();
            msr.write(0);
            (version, mul, shift)
        }
    };
    if version == 0 || version & 1 != 0 || mul == 0 {
        return None;
    }
    // ns = ((tsc << shift) * mul) >> 32, so kHz = 10^6 * 2^32 / mul / 2^shift.
    let khz = (1_000_000u64 << 32) / u64::from(mul);
    let khz = if shift >= 0 {
        khz >> shift
    } else {
        khz << shift.unsigned_abs()
    };
    (khz > 0).then_some(khz)
}

/// The TSC rate the CPUID leaves state: the hypervisor timing leaf
/// 0x40000010 (EAX: TSC kHz; offered by KVM hosts such as QEMU with a known
/// TSC frequency), else leaf 0x15 (crystal Hz * EBX / EAX), else leaf 0x16
/// (base MHz, nominal). The kHz and the leaf's name (`cpuid40000010`,
/// `cpuid15`, `cpuid16`).
pub fn cpuid_khz() -> Option<(u64, &'static str)> {
    let hypervisor = __cpuid(1).ecx & (1 << 31) != 0;
    if hypervisor {
        let base = __cpuid(0x4000_0000);
        if (0x4000_0010..0x4000_0100).contains(&base.eax) {
            let khz = u64::from(__cpuid(0x4000_0010).eax);
            if khz != 0 {
                return Some((khz, "cpuid40000010"));
            }
        }
    }
    let max = __cpuid(0).eax;
    if max >= 0x15 {
        let leaf = __cpuid(0x15);
        if leaf.eax != 0 && leaf.ebx != 0 && leaf.ecx != 0 {
            let khz = u64::from(leaf.ecx) * u64::from(leaf.ebx) / u64::from(leaf.eax) / 1000;
            if khz != 0 {
                return Some((khz, "cpuid15"));
            }
        }
    }
    if max >= 0x16 {
        let mhz = u64::from(__cpuid(0x16).eax & 0xffff);
        if mhz != 0 {
            return Some((mhz * 1000, "cpuid16"));
        }
    }
    None
}

/// Measures the TSC against 10 ms of PIT channel 2 (gated through port 0x61).
fn pit_khz() -> Option<u64> {
    let mut port61: Port<u8> = Port::new(0x61);
    let mut command: Port<u8> = Port::new(0x43);
    let mut channel2: Port<u8> = Port::new(0x42);
    let [lo, hi] = PIT_CALIBRATION_TICKS.to_le_bytes();
    // SAFETY: programs PIT channel 2 (the speaker timer) with the speaker
    // output off; nothing else uses it.
    let start = unsafe {
        let gate = port61.read();
        port61.write((gate & !0x02) | 0x01);
        command.write(0xb0); // channel 2, lobyte/hibyte, mode 0, binary
        channel2.write(lo);
        channel2.write(hi);
        now()
    };
    loop {
        let cycles = now().wrapping_sub(start);
        if cycles > PIT_TIMEOUT_CYCLES {
            return None;
        }
        // SAFETY: reading port 0x61 has no side effects.
        if unsafe { port61.read() } & 0x20 != 0 {
            let khz = cycles * PIT_HZ / (u64::from(PIT_CALIBRATION_TICKS) * 1000);
            // Below 100 MHz the "PIT" answered instantly: there is none.
            return (khz >= 100_000).then_some(khz);
        }
    }
}
