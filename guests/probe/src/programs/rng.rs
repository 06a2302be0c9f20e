//! `probe=rng`: reads 64 KiB from a virtio entropy device on PCI bus 0,
//! driven by `virtio-drivers` (PCI transport, one virtqueue), with MSI-X
//! completion interrupts (`irq=msix`, the default) or the legacy INTx line
//! through the I/O APIC (`irq=intx`).
//!
//! The crate's `VirtIORng` waits for completions by spinning, so the probe
//! drives the request queue itself to sleep in `hlt` until the queue's
//! interrupt fires.

use super::Outcome;
use crate::apic::TIMER_DIVIDE_16;
use crate::exit::Reason;
use crate::idt::{self, DEVICE_VECTOR_BASE, INTX_VECTOR, TIMER_VECTOR};
use crate::msix::Msix;
use crate::pci::{self, Bar, Bdf, ConfigAccess};
use crate::start_info::StartInfo;
use crate::tsc::Deadline;
use crate::virtio_hal::ProbeHal;
use crate::virtio_msix::{self, CommonCfg};
use crate::virtio_pci;
use crate::{bail, cmdline, fail_reason, ioapic, say, text};
use alloc::string::String;
use alloc::vec;
use core::fmt::Write;
use core::sync::atomic::Ordering;
use virtio_drivers::device::common::Feature;
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::pci::bus::{DeviceFunction, PciRoot};
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::Transport;
use x86_64::instructions::interrupts;

/// Modern (virtio 1.x) and transitional entropy device IDs.
const RNG_MODERN: u16 = 0x1044;
const RNG_TRANSITIONAL: u16 = 0x1005;
const TOTAL_BYTES: usize = 64 * 1024;
const REQUEST_BYTES: usize = 4096;
const REQUEST_QUEUE: u16 = 0;
const QUEUE_SIZE: usize = 4;
/// MSI-X table entries and the vectors they raise.
const CONFIG_ENTRY: u16 = 0;
const QUEUE_ENTRY: u16 = 1;
const CONFIG_VECTOR: u8 = DEVICE_VECTOR_BASE;
const QUEUE_VECTOR: u8 = DEVICE_VECTOR_BASE + 1;
/// How long to sleep for the queue interrupt before polling instead.
const IRQ_WAIT_US: u64 = 100_000;
/// How long one request may take at all.
const REQUEST_TIMEOUT_US: u64 = 2_000_000;
/// APIC timer period while waiting (10 ms on KVM): it bounds each `hlt`.
const WAKE_TIMER_COUNT: u32 = 625_000;
/// PCI configuration registers of the INTx routing.
const REG_INTERRUPT_LINE: u16 = 0x3c;

/// `irq=`: how completions are signalled.
#[derive(Clone, Copy, PartialEq, Eq)]
enum IrqMode {
    Msix,
    Intx,
}

/// The INTx route in use, for the result line and cleanup.
struct Intx {
    route: ioapic::Route,
}

fn queue_irqs() -> u64 {
    idt::device_irqs(QUEUE_VECTOR)
}

fn intx_irqs() -> u64 {
    idt::INTX_IRQS.load(Ordering::SeqCst)
}

pub fn run(info: &StartInfo) -> Outcome {
    let mode = match cmdline::value(info.cmdline(), "irq") {
        None | Some("msix") => IrqMode::Msix,
        Some("intx") => IrqMode::Intx,
        Some(other) => bail!("unknown irq mode {}", other),
    };
    let virtio_pci::Function {
        access,
        bdf,
        device_id,
        assigned,
    } = virtio_pci::open(
        info,
        "virtio entropy device",
        &[RNG_MODERN, RNG_TRANSITIONAL],
        None,
        mode == IrqMode::Intx,
    )?;
    let placement = match &assigned.pools {
        Some(pools) => text!(" {}", pools),
        None => text!(""),
    };
    say!(
        "rng device={} id={:#06x} config={} {} assigned={}{}",
        bdf,
        device_id,
        access.name(),
        BarList(&assigned.bars),
        assigned.count,
        placement
    );

    let lapic = virtio_pci::interrupt_lapic()?;

    let msix = Msix::find(&access, bdf, &assigned.bars)?;
    let intx = match mode {
        IrqMode::Msix => {
            let Some(msix) = &msix else {
                bail!("{} has no msi-x capability", bdf);
            };
            msix.set_entry(CONFIG_ENTRY, lapic.id(), CONFIG_VECTOR)?;
            msix.set_entry(QUEUE_ENTRY, lapic.id(), QUEUE_VECTOR)?;
            msix.enable(&access);
            None
        }
        IrqMode::Intx => {
            // MSI-X stays (or is made) disabled: the device signals INTx.
            if let Some(msix) = msix.as_ref().filter(|m| m.enabled(&access)) {
                msix.disable(&access);
            }
            Some(setup_intx(info, &access, bdf, &assigned.bars, lapic.id())?)
        }
    };
    let common = CommonCfg::find(&access, bdf, &assigned.bars)?;

    // Declared before the transport, so that it is freed only after the
    // transport's drop has reset the device (even on a timeout).
    let mut data = vec![0u8; TOTAL_BYTES];
    let mut root = PciRoot::new(access);
    let function = DeviceFunction {
        bus: bdf.bus,
        device: bdf.device,
        function: bdf.function,
    };
    let mut transport = PciTransport::new::<ProbeHal, _>(&mut root, function)
        .map_err(|e| fail_reason!("virtio pci transport: {}", e))?;
    transport.begin_init(Feature::VERSION_1);
    // After the reset in `begin_init`, which clears the vectors (INTx mode
    // leaves them at NO_VECTOR).
    if mode == IrqMode::Msix {
        let config_vector = common.set_config_vector(CONFIG_ENTRY);
        let queue_vector = common.set_queue_vector(REQUEST_QUEUE, QUEUE_ENTRY);
        if config_vector != CONFIG_ENTRY || queue_vector != QUEUE_ENTRY {
            bail!(
                "device refused msi-x vectors: msix_config={:#x} queue_msix_vector={:#x}",
                config_vector,
                queue_vector
            );
        }
    }
    let mut queue =
        VirtQueue::<ProbeHal, QUEUE_SIZE>::new(&mut transport, REQUEST_QUEUE, false, false)
            .map_err(|e| fail_reason!("virtqueue setup: {}", e))?;
    transport.finish_init();
    let irqs: fn() -> u64 = match (&intx, &msix) {
        (None, Some(msix)) => {
            msix.unmask(CONFIG_ENTRY);
            msix.unmask(QUEUE_ENTRY);
            queue_irqs
        }
        (None, None) => bail!("{} has no msi-x capability", bdf),
        (Some(intx), _) => {
            let route = &intx.route;
            route
                .ioapic
                .route(route.gsi, INTX_VECTOR, lapic.id(), route.mode)?;
            intx_irqs
        }
    };

    lapic.start_periodic_timer(TIMER_VECTOR, TIMER_DIVIDE_16, WAKE_TIMER_COUNT);
    interrupts::enable();
    let read = read_all(&mut queue, &mut transport, &mut data, irqs);
    interrupts::disable();
    lapic.stop_timer();
    if let Some(intx) = &intx {
        intx.route.ioapic.mask(intx.route.gsi);
        idt::INTX_ACK_ADDR.store(0, Ordering::SeqCst);
    }
    let counts = read?;

    let mut seen = [false; 256];
    for &byte in &data[..counts.bytes] {
        seen[usize::from(byte)] = true;
    }
    let distinct = seen.iter().filter(|&&s| s).count();
    if let Some(intx) = &intx {
        let intx_irqs = intx_irqs();
        // Interrupts whose ISR read returned 0 (e.g. QEMU q35 re-delivers a
        // level-triggered line once more after the EOI).
        say!(
            "rng intx isr_zero={}",
            idt::INTX_IDLE.load(Ordering::SeqCst)
        );
        say!(
            "rng bytes={} distinct={} intx_irqs={} polled={} gsi={}",
            counts.bytes,
            distinct,
            intx_irqs,
            counts.polled,
            intx.route.gsi
        );
        if counts.bytes != TOTAL_BYTES || distinct != 256 || intx_irqs == 0 {
            bail!("want bytes={} distinct=256 intx_irqs>0", TOTAL_BYTES);
        }
        return Ok(());
    }
    let msix_irqs = idt::device_irqs(CONFIG_VECTOR) + idt::device_irqs(QUEUE_VECTOR);
    say!(
        "rng bytes={} distinct={} msix_irqs={} polled={}",
        counts.bytes,
        distinct,
        msix_irqs,
        counts.polled
    );
    if counts.bytes != TOTAL_BYTES || distinct != 256 || msix_irqs == 0 {
        bail!("want bytes={} distinct=256 msix_irqs>0", TOTAL_BYTES);
    }
    Ok(())
}

/// Finds the INTx route of `bdf` (interrupt pin and line registers, the
/// line resolved through the MADT), points the interrupt handler at the
/// device's ISR status register and prints the route. The I/O APIC entry
/// is programmed later, once the device is set up.
fn setup_intx(
    info: &StartInfo,
    access: &ConfigAccess,
    bdf: Bdf,
    bars: &[Bar],
    apic_id: u32,
) -> Result<Intx, Reason> {
    let pin = access.read8(bdf, pci::REG_INTERRUPT_PIN);
    let line = access.read8(bdf, REG_INTERRUPT_LINE);
    if pin == 0 || pin > 4 {
        bail!("{} has no intx pin (interrupt pin={})", bdf, pin);
    }
    if line == 0 || line == 0xff {
        bail!("{} interrupt line is not set ({:#x})", bdf, line);
    }
    let isr = virtio_msix::isr_status_addr(access, bdf, bars)?;
    idt::INTX_ACK_ADDR.store(isr, Ordering::SeqCst);
    let route = ioapic::route(info.rsdp_paddr, line)?;
    say!(
        "rng intx pin=INT{} line={} gsi={} ioapic={:#x} source={} ioapic_pin={} mode={}{} vector={:#x} apic_id={}",
        char::from(b'A' + pin - 1),
        line,
        route.gsi,
        route.ioapic.addr,
        route.ioapic.source,
        route.gsi - route.ioapic.gsi_base,
        route.mode,
        if route.overridden { " override=madt" } else { "" },
        INTX_VECTOR,
        apic_id
    );
    Ok(Intx { route })
}

/// `bar1=mem32:0x..+0x.. bar4=...`.
struct BarList<'a>(&'a [Bar]);

impl core::fmt::Display for BarList<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut text = String::new();
        for bar in self.0 {
            let _ = write!(text, "{}{}", if text.is_empty() { "" } else { " " }, bar);
        }
        f.write_str(if text.is_empty() { "bars=none" } else { &text })
    }
}

/// Bytes read and how their completions were noticed.
struct Counts {
    bytes: usize,
    /// Completions seen only by polling (no interrupt within
    /// [`IRQ_WAIT_US`]).
    polled: usize,
}

/// Fills `data` with requests of at most [`REQUEST_BYTES`].
fn read_all(
    queue: &mut VirtQueue<ProbeHal, QUEUE_SIZE>,
    transport: &mut PciTransport,
    data: &mut [u8],
    irqs: fn() -> u64,
) -> Result<Counts, Reason> {
    let mut counts = Counts {
        bytes: 0,
        polled: 0,
    };
    while counts.bytes < data.len() {
        let want = REQUEST_BYTES.min(data.len() - counts.bytes);
        let mut outputs = [&mut data[counts.bytes..counts.bytes + want]];
        let irqs_before = irqs();
        // SAFETY: `outputs` is neither used nor dropped before `pop_used`
        // below; on a timeout the caller's transport drop resets the device
        // before `data` is freed.
        let token = unsafe { queue.add(&[], &mut outputs) }
            .map_err(|e| fail_reason!("virtqueue add: {}", e))?;
        if queue.should_notify() {
            transport.notify(REQUEST_QUEUE);
        }
        if !wait(queue, irqs, irqs_before)? {
            counts.polled += 1;
        }
        // SAFETY: the same buffers as passed to `add` for this token.
        let len = unsafe { queue.pop_used(token, &[], &mut outputs) }
            .map_err(|e| fail_reason!("virtqueue pop: {}", e))? as usize;
        if len == 0 || len > want {
            bail!("device returned {} bytes for a {}-byte request", len, want);
        }
        counts.bytes += len;
    }
    Ok(counts)
}

/// Waits for the request to complete: in `hlt` until the queue's interrupt
/// (counted by `irqs`) fires (true), or by polling once [`IRQ_WAIT_US`] passed without one
/// (false). Fails after [`REQUEST_TIMEOUT_US`].
fn wait(
    queue: &VirtQueue<ProbeHal, QUEUE_SIZE>,
    irqs: fn() -> u64,
    irqs_before: u64,
) -> Result<bool, Reason> {
    let irq_deadline = Deadline::after_us(IRQ_WAIT_US);
    let deadline = Deadline::after_us(REQUEST_TIMEOUT_US);
    loop {
        interrupts::disable();
        let fired = irqs() != irqs_before;
        let done = queue.can_pop();
        if done && fired {
            interrupts::enable();
            return Ok(true);
        }
        let sleep = !irq_deadline.expired();
        if done && !sleep {
            interrupts::enable();
            return Ok(false);
        }
        if deadline.expired() {
            interrupts::enable();
            bail!(
                "request not completed within {} ms",
                REQUEST_TIMEOUT_US / 1000
            );
        }
        if sleep {
            // Woken by the queue vector or, at the latest, the wake timer.
            interrupts::enable_and_hlt();
        } else {
            interrupts::enable();
            core::hint::spin_loop();
        }
    }
}
