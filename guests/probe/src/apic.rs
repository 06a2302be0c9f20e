//! The local APIC in xAPIC (MMIO) mode: identity, IPIs and the timer.

use crate::bail;
use crate::exit::Reason;
use crate::phys::MAPPED_LIMIT;
use x86_64::registers::model_specific::Msr;

const MSR_APIC_BASE: u32 = 0x1b;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_BASE_X2APIC: u64 = 1 << 10;
const APIC_BASE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

const REG_ID: usize = 0x20;
const REG_TPR: usize = 0x80;
const REG_EOI: usize = 0xb0;
const REG_SVR: usize = 0xf0;
const REG_ISR0: usize = 0x100;
const REG_ICR_LOW: usize = 0x300;
const REG_ICR_HIGH: usize = 0x310;
const REG_LVT_TIMER: usize = 0x320;
const REG_TIMER_INITIAL: usize = 0x380;
const REG_TIMER_CURRENT: usize = 0x390;
const REG_TIMER_DIVIDE: usize = 0x3e0;

const SVR_ENABLE: u32 = 1 << 8;
const ICR_DELIVERY_PENDING: u32 = 1 << 12;
const ICR_INIT: u32 = 0x0000_4500; // INIT, level assert, edge
const ICR_STARTUP: u32 = 0x0000_4600; // STARTUP, level assert, edge
const LVT_MASKED: u32 = 1 << 16;
const LVT_TIMER_PERIODIC: u32 = 1 << 17;
/// Divide configuration value for "divide by 16".
pub const TIMER_DIVIDE_16: u32 = 0x3;
const MAX_ICR_POLLS: u32 = 100_000;

/// The calling CPU's local APIC.
#[derive(Clone, Copy)]
pub struct LocalApic {
    base: usize,
}

impl LocalApic {
    /// Finds this CPU's APIC through IA32_APIC_BASE; it must be enabled, in
    /// xAPIC mode and below 4 GiB.
    pub fn current() -> Result<Self, Reason> {
        // SAFETY: IA32_APIC_BASE exists on every CPU with an APIC.
        let value = unsafe { Msr::new(MSR_APIC_BASE).read() };
        let base = value & APIC_BASE_ADDR_MASK;
        if value & APIC_BASE_ENABLE == 0 {
            bail!("local apic disabled (apic_base={:#x})", value);
        }
        if value & APIC_BASE_X2APIC != 0 {
            bail!("local apic in x2apic mode (apic_base={:#x})", value);
        }
        if base + 0x1000 > MAPPED_LIMIT {
            bail!("local apic at {:#x} is not mapped", base);
        }
        Ok(Self {
            base: base as usize,
        })
    }

    fn read(&self, reg: usize) -> u32 {
        // SAFETY: `base` is the identity-mapped (uncached) APIC page and `reg`
        // one of its 16-byte aligned registers.
        unsafe { ((self.base + reg) as *const u32).read_volatile() }
    }

    fn write(&self, reg: usize, value: u32) {
        // SAFETY: as for `read`; register writes only affect the APIC.
        unsafe { ((self.base + reg) as *mut u32).write_volatile(value) }
    }

    /// Physical address of the EOI register.
    pub fn eoi_addr(&self) -> u64 {
        (self.base + REG_EOI) as u64
    }

    /// This CPU's APIC ID.
    pub fn id(&self) -> u32 {
        self.read(REG_ID) >> 24
    }

    /// Software-enables the APIC with `spurious_vector` and accepts all
    /// interrupt priorities.
    pub fn enable(&self, spurious_vector: u8) {
        self.write(REG_TPR, 0);
        self.write(REG_SVR, SVR_ENABLE | u32::from(spurious_vector));
    }

    fn send_ipi(&self, apic_id: u32, command: u32) -> Result<(), Reason> {
        self.write(REG_ICR_HIGH, apic_id << 24);
        self.write(REG_ICR_LOW, command);
        for _ in 0..MAX_ICR_POLLS {
            if self.read(REG_ICR_LOW) & ICR_DELIVERY_PENDING == 0 {
                return Ok(());
            }
            core::hint::spin_loop();
        }
        bail!("ipi {:#x} to apic {} stuck in delivery", command, apic_id)
    }

    /// Sends an INIT IPI.
    pub fn send_init(&self, apic_id: u32) -> Result<(), Reason> {
        self.send_ipi(apic_id, ICR_INIT)
    }

    /// Sends a STARTUP IPI: the target starts in real mode at `vector << 12`.
    pub fn send_startup(&self, apic_id: u32, vector: u8) -> Result<(), Reason> {
        self.send_ipi(apic_id, ICR_STARTUP | u32::from(vector))
    }

    /// Starts the timer in periodic mode on `vector`.
    pub fn start_periodic_timer(&self, vector: u8, divide: u32, initial_count: u32) {
        self.write(REG_TIMER_DIVIDE, divide);
        self.write(REG_LVT_TIMER, LVT_TIMER_PERIODIC | u32::from(vector));
        self.write(REG_TIMER_INITIAL, initial_count);
    }

    /// Puts the timer in one-shot mode on `vector`, stopped; each
    /// [`LocalApic::arm_one_shot`] then starts one countdown.
    pub fn start_one_shot_timer(&self, vector: u8, divide: u32) {
        self.write(REG_TIMER_INITIAL, 0);
        self.write(REG_TIMER_DIVIDE, divide);
        self.write(REG_LVT_TIMER, u32::from(vector));
    }

    /// (Re)starts a one-shot countdown of `count` (0 stops the timer).
    pub fn arm_one_shot(&self, count: u32) {
        self.write(REG_TIMER_INITIAL, count);
    }

    /// Masks and stops the timer.
    pub fn stop_timer(&self) {
        self.write(REG_LVT_TIMER, LVT_MASKED);
        self.write(REG_TIMER_INITIAL, 0);
    }

    /// The timer's current count (0 once a one-shot timer has fired).
    pub fn timer_current_count(&self) -> u32 {
        self.read(REG_TIMER_CURRENT)
    }

    /// Whether `vector` is in service (delivered, EOI not yet written).
    pub fn in_service(&self, vector: u8) -> bool {
        let reg = REG_ISR0 + usize::from(vector / 32) * 0x10;
        self.read(reg) & (1 << (vector % 32)) != 0
    }
}
