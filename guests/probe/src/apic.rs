//! The local APIC, in xAPIC (MMIO) or x2APIC (MSR) mode: identity, IPIs,
//! the timer, and switching between the two modes.
//!
//! The registers are named by their xAPIC MMIO offsets; in x2APIC mode
//! offset `R` is MSR `0x800 + R / 16` (TPR 0x808, EOI 0x80b, SVR 0x80f,
//! ISR 0x810.., ICR 0x830, LVT timer 0x832, initial count 0x838, current
//! count 0x839, divide 0x83e).

use crate::bail;
use crate::exit::Reason;
use crate::phys::MAPPED_LIMIT;
use core::arch::x86_64::__cpuid;
use x86_64::registers::model_specific::Msr;

const MSR_APIC_BASE: u32 = 0x1b;
const APIC_BASE_ENABLE: u64 = 1 << 11;
/// IA32_APIC_BASE.EXTD: x2APIC mode (with [`APIC_BASE_ENABLE`]).
pub const APIC_BASE_X2APIC: u64 = 1 << 10;
const APIC_BASE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// First x2APIC MSR (the xAPIC register at offset 0).
const X2APIC_MSR_BASE: u32 = 0x800;
/// The x2APIC EOI register (used by the interrupt handlers).
pub const X2APIC_MSR_EOI: u32 = 0x80b;
/// CPUID.1:ECX bit 21: the CPU has an x2APIC.
const CPUID1_ECX_X2APIC: u32 = 1 << 21;
/// The xAPIC broadcast ID: the highest APIC ID xAPIC mode can address is
/// one less.
pub const XAPIC_MAX_ID: u32 = 0xfe;

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

/// The two register interfaces of a local APIC.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    /// Memory-mapped registers, 8-bit APIC IDs.
    XApic,
    /// MSRs, 32-bit APIC IDs.
    X2Apic,
}

impl Mode {
    /// `xapic` or `x2apic`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::XApic => "xapic",
            Mode::X2Apic => "x2apic",
        }
    }
}

/// Whether the CPU has an x2APIC (CPUID.1:ECX bit 21).
pub fn x2apic_supported() -> bool {
    __cpuid(1).ecx & CPUID1_ECX_X2APIC != 0
}

fn apic_base() -> u64 {
    // SAFETY: IA32_APIC_BASE exists on every CPU with an APIC.
    unsafe { Msr::new(MSR_APIC_BASE).read() }
}

fn set_apic_base(value: u64) {
    // SAFETY: the callers only make the transitions the SDM allows
    // (disabled <-> xAPIC -> x2APIC -> disabled), keeping the base address.
    unsafe { Msr::new(MSR_APIC_BASE).write(value) }
}

/// The calling CPU's local APIC.
#[derive(Clone, Copy)]
pub struct LocalApic {
    /// MMIO base (xAPIC mode; unused in x2APIC mode).
    base: usize,
    mode: Mode,
}

impl LocalApic {
    /// Finds this CPU's APIC through IA32_APIC_BASE; it must be enabled,
    /// and in xAPIC mode its page must be below 4 GiB.
    pub fn current() -> Result<Self, Reason> {
        let value = apic_base();
        let base = value & APIC_BASE_ADDR_MASK;
        if value & APIC_BASE_ENABLE == 0 {
            bail!("local apic disabled (apic_base={:#x})", value);
        }
        if value & APIC_BASE_X2APIC != 0 {
            return Ok(Self {
                base: base as usize,
                mode: Mode::X2Apic,
            });
        }
        if base + 0x1000 > MAPPED_LIMIT {
            bail!("local apic at {:#x} is not mapped", base);
        }
        Ok(Self {
            base: base as usize,
            mode: Mode::XApic,
        })
    }

    /// Puts this CPU's APIC in `mode` (nothing to do if it already is) and
    /// returns it. xAPIC -> x2APIC sets EXTD; x2APIC -> xAPIC has to pass
    /// through "disabled", which resets the APIC's registers (callers
    /// enable it again).
    pub fn switch_to(mode: Mode) -> Result<Self, Reason> {
        let current = Self::current()?;
        if current.mode == mode {
            return Ok(current);
        }
        let value = apic_base();
        match mode {
            Mode::X2Apic => {
                if !x2apic_supported() {
                    bail!("cpu has no x2apic (cpuid.1:ecx bit 21 clear)");
                }
                set_apic_base(value | APIC_BASE_ENABLE | APIC_BASE_X2APIC);
            }
            Mode::XApic => {
                let disabled = value & !(APIC_BASE_ENABLE | APIC_BASE_X2APIC);
                set_apic_base(disabled);
                set_apic_base(disabled | APIC_BASE_ENABLE);
            }
        }
        let now = Self::current()?;
        if now.mode != mode {
            bail!(
                "local apic did not switch to {} mode (apic_base={:#x})",
                mode.name(),
                apic_base()
            );
        }
        Ok(now)
    }

    /// The register interface in use.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    fn read(&self, reg: usize) -> u32 {
        match self.mode {
            // SAFETY: `base` is the identity-mapped (uncached) APIC page and
            // `reg` one of its 16-byte aligned registers.
            Mode::XApic => unsafe { ((self.base + reg) as *const u32).read_volatile() },
            // SAFETY: the APIC is in x2APIC mode, where this MSR is the
            // readable register at `reg`.
            Mode::X2Apic => unsafe { Msr::new(X2APIC_MSR_BASE + (reg >> 4) as u32).read() as u32 },
        }
    }

    fn write(&self, reg: usize, value: u32) {
        match self.mode {
            // SAFETY: as for `read`; register writes only affect the APIC.
            Mode::XApic => unsafe { ((self.base + reg) as *mut u32).write_volatile(value) },
            // SAFETY: as for `read`, a writable register.
            Mode::X2Apic => unsafe {
                Msr::new(X2APIC_MSR_BASE + (reg >> 4) as u32).write(u64::from(value))
            },
        }
    }

    /// Physical address of the EOI register; 0 in x2APIC mode, where the
    /// interrupt handlers write MSR [`X2APIC_MSR_EOI`] instead (see
    /// `idt::LAPIC_EOI_ADDR`).
    pub fn eoi_addr(&self) -> u64 {
        match self.mode {
            Mode::XApic => (self.base + REG_EOI) as u64,
            Mode::X2Apic => 0,
        }
    }

    /// This CPU's APIC ID (8 bits in xAPIC mode, 32 in x2APIC mode).
    pub fn id(&self) -> u32 {
        match self.mode {
            Mode::XApic => self.read(REG_ID) >> 24,
            Mode::X2Apic => self.read(REG_ID),
        }
    }

    /// Software-enables the APIC with `spurious_vector` and accepts all
    /// interrupt priorities.
    pub fn enable(&self, spurious_vector: u8) {
        self.write(REG_TPR, 0);
        self.write(REG_SVR, SVR_ENABLE | u32::from(spurious_vector));
    }

    fn send_ipi(&self, apic_id: u32, command: u32) -> Result<(), Reason> {
        if self.mode == Mode::X2Apic {
            // One 64-bit write, destination in bits 63:32; x2APIC mode has
            // no delivery status to wait for.
            // SAFETY: writing the ICR only sends the IPI.
            unsafe {
                Msr::new(X2APIC_MSR_BASE + (REG_ICR_LOW >> 4) as u32)
                    .write(u64::from(apic_id) << 32 | u64::from(command))
            };
            return Ok(());
        }
        if apic_id > XAPIC_MAX_ID {
            bail!("apic id {} cannot be reached in xapic mode", apic_id);
        }
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
