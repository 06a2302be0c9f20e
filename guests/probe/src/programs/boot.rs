//! `probe=boot`: boot protocol, memory map, CPU discovery and AP start-up,
//! the local APIC timer and the CMOS clock.

use super::Outcome;
use crate::apic::{LocalApic, TIMER_DIVIDE_16};
use crate::cpus::{self, CpuList};
use crate::idt::{self, SPURIOUS_VECTOR, TIMER_VECTOR};
use crate::start_info::{StartInfo, MAX_MEMMAP, MEM_TYPE_RAM};
use crate::tsc::Deadline;
use crate::{bail, pic, rtc, say, smp};
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::Ordering;
use x86_64::instructions::interrupts;

/// 1 ms per tick on KVM, whose APIC timer runs at 1 GHz before the divider.
const TIMER_INITIAL_COUNT: u32 = 62_500;
const TIMER_TICKS_WANTED: u64 = 10;
const TIMER_TIMEOUT_US: u64 = 2_000_000;
/// RTCs before this year are considered unset.
const RTC_MIN_YEAR: u32 = 2020;

pub fn run(info: &StartInfo) -> Outcome {
    report_start_info(info)?;

    let cpus = cpus::discover(info)?;
    let lapic = LocalApic::current()?;
    let bsp = lapic.id();
    say!(
        "cpus source={} count={} bsp_apic_id={}",
        cpus.source,
        cpus.ids().len(),
        bsp
    );
    if !cpus.ids().contains(&bsp) {
        bail!("boot cpu apic id {} is not in the {}", bsp, cpus.source);
    }
    let lapic = smp::select_mode(lapic, cpus.ids(), info.cmdline())?;
    lapic.enable(SPURIOUS_VECTOR);
    pic::disable();

    check_aps(&lapic, &cpus, info)?;
    check_timer(&lapic)?;
    check_rtc()
}

fn report_start_info(info: &StartInfo) -> Outcome {
    say!("boot protocol=pvh start_info_version={}", info.version);
    say!("cmdline={}", info.cmdline());
    let mut ram: u64 = 0;
    for entry in info.memmap() {
        say!(
            "e820 addr={:#x} size={:#x} type={}",
            entry.addr,
            entry.size,
            entry.kind
        );
        if entry.kind == MEM_TYPE_RAM {
            ram = ram.saturating_add(entry.size);
        }
    }
    say!("ram total_mib={}", ram >> 20);
    if info.memmap_entries as usize > MAX_MEMMAP {
        bail!(
            "memmap has {} entries, more than {}",
            info.memmap_entries,
            MAX_MEMMAP
        );
    }
    Ok(())
}

/// Comma-separated list of APIC IDs.
struct IdList<'a>(&'a [u32]);

impl fmt::Display for IdList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, id) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}", id)?;
        }
        Ok(())
    }
}

fn check_aps(lapic: &LocalApic, cpus: &CpuList, info: &StartInfo) -> Outcome {
    let expected = cpus.ids().len() - 1;
    let report = smp::start_aps(lapic, cpus.ids(), info)?;
    say!(
        "aps started={} expected={} mode={} ms={}",
        report.started,
        expected,
        report.mode.name(),
        report.elapsed_us / 1000
    );

    let mut seen = report.ids;
    seen.push(lapic.id());
    seen.sort_unstable();
    say!("apic ids={}", IdList(&seen));

    let listed = cpus.sorted();
    if report.started != expected {
        let missing: Vec<u32> = listed
            .iter()
            .copied()
            .filter(|id| seen.binary_search(id).is_err())
            .collect();
        bail!(
            "aps started={} expected={} (missing apic ids {})",
            report.started,
            expected,
            IdList(&missing)
        );
    }
    if seen != listed {
        bail!(
            "apic ids {} differ from the {} ({})",
            IdList(&seen),
            cpus.source,
            IdList(&listed)
        );
    }
    Ok(())
}

fn check_timer(lapic: &LocalApic) -> Outcome {
    idt::LAPIC_EOI_ADDR.store(lapic.eoi_addr(), Ordering::SeqCst);
    // AP start-up ran the timer already: count from here.
    let before = idt::timer_ticks();
    let deadline = Deadline::after_us(TIMER_TIMEOUT_US);
    lapic.start_periodic_timer(TIMER_VECTOR, TIMER_DIVIDE_16, TIMER_INITIAL_COUNT);
    interrupts::enable();
    loop {
        let ticks = idt::timer_ticks() - before;
        if ticks >= TIMER_TICKS_WANTED || deadline.expired() {
            break;
        }
        // Sleep only when another tick is bound to come: the timer has
        // already interrupted us, is still counting and its last interrupt
        // was acknowledged. Otherwise spin, so the deadline is checked.
        interrupts::disable();
        let can_sleep =
            ticks > 0 && lapic.timer_current_count() != 0 && !lapic.in_service(TIMER_VECTOR);
        if can_sleep {
            interrupts::enable_and_hlt();
        } else {
            interrupts::enable();
            core::hint::spin_loop();
        }
    }
    interrupts::disable();
    lapic.stop_timer();
    let ticks = idt::timer_ticks() - before;
    say!("apic timer ticks={}", ticks);
    if ticks < TIMER_TICKS_WANTED {
        bail!(
            "apic timer ticks={} in {} ms, want {}",
            ticks,
            TIMER_TIMEOUT_US / 1000,
            TIMER_TICKS_WANTED
        );
    }
    Ok(())
}

fn check_rtc() -> Outcome {
    let now = rtc::read()?;
    say!("rtc {}", now);
    if now.year < RTC_MIN_YEAR {
        bail!("rtc year {} is before {}", now.year, RTC_MIN_YEAR);
    }
    Ok(())
}
