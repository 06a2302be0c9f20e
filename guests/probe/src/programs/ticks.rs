//! `probe=ticks`: prints a line every `interval_ms` of guest time, measured
//! with kvmclock (the guest's paravirtual system time, which a VMM freezes
//! while the VM is paused), sleeping in `hlt` on one-shot APIC timer
//! interrupts in between; and powers off through ACPI S5 when the ACPI
//! fixed-feature power button is pressed (PWRBTN_STS, signalled by the SCI
//! through the I/O APIC).
//!
//! Ticks follow the guest clock, not a count of timer interrupts: a VM that
//! was frozen and whose clock was restored prints no burst of ticks.

use super::Outcome;
use crate::apic::{LocalApic, TIMER_DIVIDE_16};
use crate::exit::Reason;
use crate::idt::{self, SCI_VECTOR, SPURIOUS_VECTOR, TIMER_VECTOR};
use crate::start_info::StartInfo;
use crate::{acpi_access, acpi_power, bail, cmdline, exit, fail_reason, ioapic, pic, say, tsc};
use acpi::address::{AddressSpace, GenericAddress};
use acpi::fadt::Fadt;
use core::sync::atomic::Ordering;
use x86_64::instructions::interrupts;
use x86_64::instructions::port::Port;

const DEFAULT_INTERVAL_MS: u64 = 100;
const MIN_INTERVAL_MS: u64 = 10;
const MAX_INTERVAL_MS: u64 = 10_000;
const NS_PER_MS: u64 = 1_000_000;

/// APIC timer calibration: one one-shot countdown of this many counts
/// (10 ms on KVM, whose APIC timer runs at 1 GHz before the divider).
const CALIBRATION_COUNT: u32 = 625_000;
/// The rate KVM's APIC timer has with divide 16, if calibration is useless.
const ASSUMED_TIMER_KHZ: u64 = 62_500;

/// FADT fields the crate keeps private: PM1_EVT_LEN, GPE0_BLK_LEN,
/// GPE1_BLK_LEN (bytes).
const FADT_PM1_EVT_LEN: u64 = 88;
const FADT_GPE0_BLK_LEN: u64 = 92;
const FADT_GPE1_BLK_LEN: u64 = 93;
/// PM1_STS.PWRBTN_STS and PM1_EN.PWRBTN_EN.
const PWRBTN: u16 = 1 << 8;
/// PM1_CNT.SCI_EN: the hardware is in ACPI mode (SCIs, not SMIs).
const SCI_EN: u16 = 1 << 0;
/// How long the firmware may take to enter ACPI mode after ACPI_ENABLE.
const ACPI_ENABLE_TIMEOUT_MS: u64 = 1_000;
/// How long the machine gets to act on the S5 request before the probe fails.
const POWEROFF_GRACE_MS: u64 = 1_000;

/// The clock the ticks follow.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Clock {
    /// kvmclock's system time.
    Kvmclock,
    /// The TSC at `khz`.
    Tsc { khz: u64 },
}

impl Clock {
    /// Nanoseconds on this clock (an arbitrary origin).
    fn ns(self) -> u64 {
        match self {
            Clock::Kvmclock => tsc::kvmclock_ns(),
            Clock::Tsc { khz } => {
                (u128::from(tsc::now()) * u128::from(NS_PER_MS) / u128::from(khz.max(1))) as u64
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            Clock::Kvmclock => "kvmclock",
            Clock::Tsc { .. } => "tsc",
        }
    }
}

/// `clock=`: which clock to use.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ClockChoice {
    /// kvmclock if KVM offers it, else the TSC.
    Auto,
    Kvmclock,
    Tsc,
}

struct Options {
    interval_ms: u64,
    /// `ticks=N`: PASS after N ticks; `None` runs until the power button.
    ticks: Option<u64>,
    clock: ClockChoice,
}

impl Options {
    fn parse(cmdline: &str) -> Result<Self, Reason> {
        let interval_ms = cmdline::number(cmdline, "interval_ms")?.unwrap_or(DEFAULT_INTERVAL_MS);
        if !(MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&interval_ms) {
            bail!(
                "interval_ms={} is outside {}..={}",
                interval_ms,
                MIN_INTERVAL_MS,
                MAX_INTERVAL_MS
            );
        }
        let ticks = cmdline::number(cmdline, "ticks")?;
        if ticks == Some(0) {
            bail!("ticks=0: give at least 1 (or leave ticks= out to run until the power button)");
        }
        let clock = match cmdline::value(cmdline, "clock") {
            None | Some("auto") => ClockChoice::Auto,
            Some("kvmclock") => ClockChoice::Kvmclock,
            Some("tsc") => ClockChoice::Tsc,
            Some(other) => bail!("unknown clock {} (auto, kvmclock or tsc)", other),
        };
        Ok(Options {
            interval_ms,
            ticks,
            clock,
        })
    }
}

/// The one-shot APIC timer, calibrated against the clock: it ends each
/// `hlt`.
struct Timer {
    lapic: LocalApic,
    /// Timer counts per millisecond.
    khz: u64,
}

impl Timer {
    /// Puts the timer in one-shot mode and measures its rate against
    /// `clock` over one [`CALIBRATION_COUNT`] countdown, waited for in
    /// `hlt`.
    fn calibrate(lapic: LocalApic, clock: Clock) -> Result<Timer, Reason> {
        lapic.start_one_shot_timer(TIMER_VECTOR, TIMER_DIVIDE_16);
        interrupts::disable();
        let before = idt::timer_ticks();
        let start = clock.ns();
        lapic.arm_one_shot(CALIBRATION_COUNT);
        if lapic.timer_current_count() >= CALIBRATION_COUNT {
            // Read back once more (another MMIO exit): by now it must have
            // counted down.
            if lapic.timer_current_count() >= CALIBRATION_COUNT {
                lapic.stop_timer();
                bail!("apic timer does not count down");
            }
        }
        while idt::timer_ticks() == before {
            interrupts::enable_and_hlt();
            interrupts::disable();
        }
        let ns = clock.ns().saturating_sub(start);
        let khz = (u64::from(CALIBRATION_COUNT) * NS_PER_MS)
            .checked_div(ns)
            .map_or(ASSUMED_TIMER_KHZ, |khz| khz.max(1));
        Ok(Timer { lapic, khz })
    }

    /// Starts a countdown of `ns` nanoseconds (at least one count).
    fn arm(&self, ns: u64) {
        let count = u128::from(ns) * u128::from(self.khz) / u128::from(NS_PER_MS);
        self.lapic
            .arm_one_shot(count.clamp(1, u128::from(u32::MAX)) as u32);
    }

    /// Sleeps in `hlt` until `clock` reaches `deadline`. Returns with
    /// interrupts disabled.
    fn sleep_until(&self, clock: Clock, deadline: u64) {
        loop {
            interrupts::disable();
            let now = clock.ns();
            if now >= deadline {
                return;
            }
            self.arm(deadline - now);
            // `sti; hlt`: an interrupt that is already pending ends the hlt.
            interrupts::enable_and_hlt();
        }
    }
}

/// The fixed-feature power button's registers (PM1a event block, I/O
/// space) and what the FADT says about the SCI.
struct PowerButton {
    /// PM1_STS and PM1_EN ports.
    status: u16,
    enable: u16,
    /// PM1_EVT_LEN.
    evt_len: u8,
    /// FADT SCI_INT.
    sci: u16,
    /// `on` (SCI_EN was set), `enabled` (set through SMI_CMD), `off`
    /// (clear, and no SMI_CMD to change that), `unknown` (PM1a_CNT not in
    /// I/O space).
    acpi_mode: &'static str,
}

fn read16(port: u16) -> u16 {
    // SAFETY: PM1 registers (from the FADT): reads have no side effects.
    unsafe { Port::<u16>::new(port).read() }
}

fn write16(port: u16, value: u16) {
    // SAFETY: PM1 registers (from the FADT): status bits are write-1-to-
    // clear, enable bits select the events that raise the SCI.
    unsafe { Port::<u16>::new(port).write(value) }
}

/// An I/O-space generic address as a port, or FAIL naming `what`.
fn io_port(gas: &GenericAddress, what: &str) -> Result<u16, Reason> {
    match gas.address_space {
        AddressSpace::SystemIo if gas.address != 0 && gas.address <= 0xffff => {
            Ok(gas.address as u16)
        }
        AddressSpace::SystemIo => bail!("fadt {} at bad port {:#x}", what, gas.address),
        space => bail!("fadt {} in {:?} space (only i/o is supported)", what, space),
    }
}

/// Reads the FADT, puts the hardware in ACPI mode if needed, disables every
/// GPE and fixed event, and clears PWRBTN_STS. PWRBTN_EN is set later,
/// once the SCI is routed.
fn setup_power_button(rsdp_paddr: u64, timer: &Timer, clock: Clock) -> Result<PowerButton, Reason> {
    let found = acpi_access::find(rsdp_paddr)?;
    let fadt = found
        .tables
        .find_table::<Fadt>()
        .map_err(|e| fail_reason!("no fadt: {:?}", e))?;
    let raw = acpi_access::table(fadt.physical_start() as u64, "fadt")?;
    let flags = fadt.flags;
    if flags.power_button_is_control_method() {
        bail!("fadt flags say the power button is a control method device (PWR_BUTTON set)");
    }
    let evt = fadt
        .pm1a_event_block()
        .map_err(|e| fail_reason!("bad pm1a_evt: {:?}", e))?;
    if evt.address == 0 {
        bail!("fadt has no pm1a_evt block (hardware-reduced acpi?)");
    }
    let base = io_port(&evt, "pm1a_evt")?;
    let evt_len = raw.read::<u8>(FADT_PM1_EVT_LEN).unwrap_or(0);
    if evt_len < 4 || evt_len % 2 != 0 {
        bail!("fadt pm1_evt_len={} (want an even length >= 4)", evt_len);
    }
    let enable = base
        .checked_add(u16::from(evt_len / 2))
        .ok_or_else(|| fail_reason!("pm1a_evt {:#x} + {} overflows", base, evt_len))?;
    let sci = fadt.sci_interrupt;
    let (smi_cmd, acpi_enable) = (fadt.smi_cmd_port, fadt.acpi_enable);

    // ACPI mode: SCI_EN in PM1a_CNT; firmware with an SMI command port may
    // need ACPI_ENABLE written there first (ACPI 16.3.1).
    let control = fadt
        .pm1a_control_block()
        .ok()
        .filter(|gas| gas.address != 0)
        .and_then(|gas| io_port(&gas, "pm1a_cnt").ok());
    let acpi_mode = match control {
        None => "unknown",
        Some(port) if read16(port) & SCI_EN != 0 => "on",
        Some(port) if smi_cmd != 0 && smi_cmd <= 0xffff && acpi_enable != 0 => {
            // SAFETY: the FADT's SMI command port; ACPI_ENABLE hands the
            // ACPI registers to the OS.
            unsafe { Port::<u8>::new(smi_cmd as u16).write(acpi_enable) };
            let deadline = clock.ns() + ACPI_ENABLE_TIMEOUT_MS * NS_PER_MS;
            loop {
                if read16(port) & SCI_EN != 0 {
                    break "enabled";
                }
                let step = clock.ns() + NS_PER_MS;
                if step > deadline {
                    bail!(
                        "SCI_EN still clear {} ms after writing acpi_enable={:#x} to smi_cmd={:#x}",
                        ACPI_ENABLE_TIMEOUT_MS,
                        acpi_enable,
                        smi_cmd
                    );
                }
                timer.sleep_until(clock, step);
            }
        }
        Some(_) => "off",
    };

    // Only the power button may raise the SCI: every GPE and fixed event
    // off (a level-triggered SCI from a source no one clears would storm).
    let gpe_lengths = [
        (fadt.gpe0_block(), FADT_GPE0_BLK_LEN),
        (fadt.gpe1_block(), FADT_GPE1_BLK_LEN),
    ];
    for (block, len_offset) in gpe_lengths {
        let Ok(Some(gas)) = block else { continue };
        let len = u16::from(raw.read::<u8>(len_offset).unwrap_or(0));
        let Ok(port) = io_port(&gas, "gpe") else {
            continue;
        };
        for offset in len / 2..len {
            // SAFETY: the GPE enable registers (second half of the block):
            // zero disables those events.
            unsafe { Port::<u8>::new(port.wrapping_add(offset)).write(0) };
        }
    }
    write16(enable, 0);
    write16(base, PWRBTN);
    Ok(PowerButton {
        status: base,
        enable,
        evt_len,
        sci,
        acpi_mode,
    })
}

fn presses() -> u64 {
    idt::POWER_BUTTON_PRESSES.load(Ordering::SeqCst)
}

pub fn run(info: &StartInfo) -> Outcome {
    let options = Options::parse(info.cmdline())?;

    let lapic = LocalApic::current()?;
    lapic.enable(SPURIOUS_VECTOR);
    pic::disable();
    idt::LAPIC_EOI_ADDR.store(lapic.eoi_addr(), Ordering::SeqCst);

    // The clock.
    let kvmclock = match options.clock {
        ClockChoice::Tsc => None,
        _ => tsc::kvmclock_start(),
    };
    let clock = match (kvmclock, options.clock) {
        (Some(_), _) => Clock::Kvmclock,
        (None, ClockChoice::Kvmclock) => bail!("clock=kvmclock, but kvm offers no kvmclock"),
        (None, _) => Clock::Tsc { khz: tsc_khz().0 },
    };
    let timer = match Timer::calibrate(lapic, clock) {
        Ok(timer) => timer,
        Err(reason) => {
            tsc::kvmclock_stop();
            return Err(reason);
        }
    };
    match kvmclock {
        Some(msr) => say!(
            "ticks clock=kvmclock msr={:#x} tsc_khz={} apic_timer_khz={}",
            msr,
            tsc::khz(),
            timer.khz
        ),
        None => {
            let (khz, source) = tsc_khz();
            say!(
                "ticks clock=tsc reason={} tsc_khz={} tsc_source={} apic_timer_khz={}",
                if options.clock == ClockChoice::Tsc {
                    "forced"
                } else {
                    "no-kvmclock"
                },
                khz,
                source,
                timer.khz
            );
        }
    }

    let result = run_armed(info, &options, lapic, &timer, clock);
    interrupts::disable();
    lapic.stop_timer();
    tsc::kvmclock_stop();
    result
}

/// The TSC rate for the fallback clock and where it came from: kvmclock's
/// (if KVM offers it, `clock=tsc`), else the CPUID leaves, else the PIT or
/// a guess.
fn tsc_khz() -> (u64, &'static str) {
    let khz = tsc::khz();
    match tsc::khz_source() {
        tsc::RateSource::Kvmclock => (khz, "kvmclock"),
        source => tsc::cpuid_khz().unwrap_or((khz, source.name())),
    }
}

/// Arms the power button and the SCI, then ticks until the power button or
/// `ticks=N`.
fn run_armed(
    info: &StartInfo,
    options: &Options,
    lapic: LocalApic,
    timer: &Timer,
    clock: Clock,
) -> Outcome {
    // Resolved now: no table walk once the button is pressed.
    let poweroff = acpi_power::install(info.rsdp_paddr);
    let button = setup_power_button(info.rsdp_paddr, timer, clock)?;
    let Ok(line) = u8::try_from(button.sci) else {
        bail!(
            "fadt sci_int={} is not an isa irq or gsi below 256",
            button.sci
        );
    };
    let route = ioapic::route(info.rsdp_paddr, line)?;
    idt::SCI_PM1_STS_PORT.store(u64::from(button.status), Ordering::SeqCst);
    route
        .ioapic
        .route(route.gsi, SCI_VECTOR, lapic.id(), route.mode)?;
    write16(button.enable, PWRBTN);
    say!(
        "ticks pm1a_evt={:#x} pm1_evt_len={} pm1_en={:#x} acpi_mode={} sci={} gsi={} ioapic={:#x} source={} ioapic_pin={} mode={}{} vector={:#x} apic_id={}",
        button.status,
        button.evt_len,
        button.enable,
        button.acpi_mode,
        button.sci,
        route.gsi,
        route.ioapic.addr,
        route.ioapic.source,
        route.gsi - route.ioapic.gsi_base,
        route.mode,
        if route.overridden { " override=madt" } else { "" },
        SCI_VECTOR,
        lapic.id()
    );
    say!("ticks poweroff {}", poweroff);

    let result = tick(options, timer, clock, route.gsi);
    interrupts::disable();
    write16(button.enable, 0);
    route.ioapic.mask(route.gsi);
    idt::SCI_PM1_STS_PORT.store(0, Ordering::SeqCst);
    match result? {
        Stop::Ticks => Ok(()),
        Stop::PowerButton => {
            say!("power button pressed");
            say!("powering off");
            exit::request_poweroff();
            let deadline = clock.ns() + POWEROFF_GRACE_MS * NS_PER_MS;
            timer.sleep_until(clock, deadline);
            bail!(
                "still running {} ms after the poweroff request",
                POWEROFF_GRACE_MS
            )
        }
    }
}

/// Why the tick loop ended.
enum Stop {
    /// `ticks=N` ticks were printed.
    Ticks,
    PowerButton,
}

/// Prints the ready line, then `tick n=K guest_ms=T` whenever the clock
/// passes the next multiple of the interval since the ready line; sleeps in
/// `hlt` in between.
fn tick(options: &Options, timer: &Timer, clock: Clock, sci_gsi: u32) -> Result<Stop, Reason> {
    let interval = options.interval_ms * NS_PER_MS;
    let start = clock.ns();
    say!(
        "ticks ready clock={} interval_ms={} sci_gsi={}",
        clock.name(),
        options.interval_ms,
        sci_gsi
    );
    let mut count: u64 = 0;
    let mut due = interval;
    loop {
        interrupts::disable();
        if presses() != 0 {
            return Ok(Stop::PowerButton);
        }
        let elapsed = clock.ns().saturating_sub(start);
        if elapsed >= due {
            count += 1;
            say!("tick n={} guest_ms={}", count, elapsed / NS_PER_MS);
            if options.ticks == Some(count) {
                return Ok(Stop::Ticks);
            }
            // The next multiple of the interval: if the clock jumped over
            // several, they are skipped rather than printed in a burst.
            due = (elapsed / interval + 1) * interval;
            continue;
        }
        timer.arm(due - elapsed);
        // Woken by the timer, the SCI, or anything else; the loop rechecks.
        interrupts::enable_and_hlt();
    }
}
