//! Time keeping with the TSC. Its frequency comes from kvmclock when the
//! hypervisor offers it, otherwise from the PIT, otherwise a deliberately
//! high guess (so timeouts err on the long side).

use core::arch::x86_64::__cpuid;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, Ordering};
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

// SAFETY: only the boot CPU touches the cell, during calibration.
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
            let khz = kvmclock_khz().or_else(pit_khz).unwrap_or(FALLBACK_KHZ);
            TSC_KHZ.store(khz, Ordering::Relaxed);
            khz
        }
        khz => khz,
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

/// Reads the TSC rate KVM publishes for its paravirtual clock.
fn kvmclock_khz() -> Option<u64> {
    let base = __cpuid(0x4000_0000);
    if [base.ebx, base.ecx, base.edx] != KVM_SIGNATURE || base.eax < 0x4000_0001 {
        return None;
    }
    let features = __cpuid(0x4000_0001).eax;
    let msr = if features & KVM_FEATURE_CLOCKSOURCE2 != 0 {
        MSR_KVM_SYSTEM_TIME_NEW
    } else if features & KVM_FEATURE_CLOCKSOURCE != 0 {
        MSR_KVM_SYSTEM_TIME
    } else {
        return None;
    };
    let info = PVCLOCK.0.get();
    let mut msr = Msr::new(msr);
    // SAFETY: the MSR exists (CPUID says so); KVM writes the 32-byte
    // structure at this static, 64-byte aligned address, which nothing else
    // uses. Bit 0 enables the clock; writing 0 turns it off again.
    let (version, mul, shift) = unsafe {
        msr.write(info as u64 | 1);
        let version = core::ptr::addr_of!((*info).version).read_volatile();
        let mul = core::ptr::addr_of!((*info).tsc_to_system_mul).read_volatile();
        let shift = core::ptr::addr_of!((*info).tsc_shift).read_volatile();
        msr.write(0);
        (version, mul, shift)
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
