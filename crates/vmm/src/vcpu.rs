//! vCPU threads: configuring each vCPU for boot, the run loop that serves
//! its exits until the VM stops it, and the gate that parks every vCPU for a
//! pause.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use arch::cpu::{self, EntryPoint};
use arch::cpuid::{self, Topology};
use arch::GuestMemory;
use hypervisor::kvm_bindings::CpuId;
use hypervisor::{SystemEvent, Vcpu, VcpuExit};
use vm_device::{Bus, Counters};

use crate::control::{Event, Msg, Tagged};
use crate::Error;

/// The exit counters of each vCPU (`vm.counters`).
pub const COUNTER_NAMES: &[&str] = &["exits", "io", "mmio", "interrupted", "paused"];
const EXITS: usize = 0;
const IO: usize = 1;
const MMIO: usize = 2;
const INTERRUPTED: usize = 3;
const PAUSED: usize = 4;

/// Parks vCPU threads between their exits while the VM is paused.
#[derive(Default)]
pub struct VcpuGate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    paused: bool,
    parked: usize,
}

impl VcpuGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks every vCPU to park; the caller then kicks them out of `KVM_RUN`.
    pub fn close(&self) {
        self.lock().paused = true;
    }

    /// Waits until `running` vCPU threads have parked; `false` on timeout.
    pub fn wait_parked(&self, running: impl Fn() -> usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        while state.parked < running() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, left.min(Duration::from_millis(50)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// Lets every parked vCPU run again.
    pub fn open(&self) {
        self.lock().paused = false;
        self.changed.notify_all();
    }

    /// On a vCPU thread: parks while the gate is closed and `stop` is not set.
    /// Returns whether it parked.
    fn park_if_closed(&self, stop: &AtomicBool) -> bool {
        let mut state = self.lock();
        if !state.paused {
            return false;
        }
        state.parked += 1;
        self.changed.notify_all();
        while state.paused && !stop.load(Ordering::Acquire) {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.parked -= 1;
        true
    }
}

/// Gives `vcpu` its CPUID, MSRs, FPU and LAPIC wiring; the boot vCPU also gets
/// the entry state. Application processors wait for INIT/SIPI from the guest.
///
/// `cpu` is the vCPU's index (0 boots) in `topology`.
pub fn configure(
    vcpu: &Vcpu,
    vm_cpuid: &CpuId,
    cpu: (u32, Topology),
    mem: &GuestMemory,
    entry: Option<&EntryPoint>,
) -> Result<(), Error> {
    let mut cpuid = vm_cpuid.clone();
    cpuid::patch_for_vcpu(cpuid.as_mut_slice(), cpu.0, cpu.1);
    vcpu.set_cpuid(&cpuid)?;

    let msrs = cpu::boot_msrs().ok_or_else(|| Error::Internal("boot MSR list".into()))?;
    let written = vcpu.set_msrs(&msrs)?;
    if written != msrs.as_slice().len() {
        let index = msrs.as_slice()[written].index;
        tracing::warn!(
            "vCPU {}: KVM refused boot MSR {index:#x}; later MSRs left at reset values",
            vcpu.id()
        );
    }
    vcpu.set_fpu(&cpu::boot_fpu())?;
    let mut lapic = vcpu.lapic()?;
    cpu::set_lint(&mut lapic);
    vcpu.set_lapic(&lapic)?;

    if let Some(entry) = entry {
        let mut sregs = vcpu.sregs()?;
        cpu::setup_sregs(mem, &mut sregs, entry.mode)?;
        vcpu.set_sregs(&sregs)?;
        vcpu.set_regs(&cpu::entry_regs(entry))?;
    }
    Ok(())
}

/// What a vCPU thread needs.
pub struct VcpuRunner {
    /// The vCPU.
    pub vcpu: Vcpu,
    /// Port I/O devices.
    pub pio: Arc<Bus>,
    /// MMIO devices.
    pub mmio: Arc<Bus>,
    /// Where faults and KVM system events go.
    pub events: Sender<Msg>,
    /// The VM instance's generation, tagged on every event.
    pub generation: u64,
    /// Set when the VM stops; the thread then returns.
    pub stop: Arc<AtomicBool>,
    /// Closed while the VM is paused.
    pub gate: Arc<VcpuGate>,
    /// Exit counters.
    pub counters: Arc<Counters>,
}

impl VcpuRunner {
    /// Runs the vCPU until stopped or until it can run no further; returns the
    /// vCPU so that its run structure outlives every kick aimed at it.
    pub fn run(mut self) -> Vcpu {
        while !self.stop.load(Ordering::Acquire) {
            if self.gate.park_if_closed(&self.stop) {
                self.counters.add(PAUSED, 1);
                self.vcpu.clear_exit_request();
                continue;
            }
            if let Some(event) = self.step() {
                let _ = self.events.send(Msg::Event(Tagged {
                    generation: self.generation,
                    event,
                }));
                break;
            }
        }
        self.vcpu
    }

    /// One `KVM_RUN`; returns an event when the vCPU must stop.
    fn step(&mut self) -> Option<Event> {
        let id = self.vcpu.id();
        let fault = |reason: String| Some(Event::Fault { vcpu: id, reason });
        let counters = &self.counters;
        counters.add(EXITS, 1);
        let exit = self.vcpu.run();
        match &exit {
            Ok(VcpuExit::IoOut { .. } | VcpuExit::IoIn { .. }) => counters.add(IO, 1),
            Ok(VcpuExit::MmioWrite { .. } | VcpuExit::MmioRead { .. }) => counters.add(MMIO, 1),
            Ok(VcpuExit::Interrupted) => counters.add(INTERRUPTED, 1),
            _ => {}
        }
        match exit {
            Ok(VcpuExit::IoOut { port, data }) => {
                if !self.pio.write(u64::from(port), data) {
                    tracing::trace!("unclaimed port write {port:#x}");
                }
                None
            }
            Ok(VcpuExit::IoIn { port, data }) => {
                self.pio.read(u64::from(port), data);
                None
            }
            Ok(VcpuExit::MmioWrite { addr, data }) => {
                self.mmio.write(addr, data);
                None
            }
            Ok(VcpuExit::MmioRead { addr, data }) => {
                self.mmio.read(addr, data);
                None
            }
            Ok(VcpuExit::Interrupted) => None,
            Ok(VcpuExit::SystemEvent(SystemEvent::Shutdown)) => {
                Some(Event::Guest(devices::GuestRequest::PowerOff))
            }
            Ok(VcpuExit::SystemEvent(SystemEvent::Reset)) => {
                Some(Event::Guest(devices::GuestRequest::Reset))
            }
            Ok(VcpuExit::SystemEvent(SystemEvent::Crash)) => {
                fault("guest reported a crash (KVM_SYSTEM_EVENT_CRASH)".into())
            }
            Ok(VcpuExit::SystemEvent(SystemEvent::Other(kind))) => {
                fault(format!("unknown KVM system event {kind}"))
            }
            Ok(VcpuExit::Shutdown) => fault("triple fault (KVM_EXIT_SHUTDOWN)".into()),
            Ok(VcpuExit::Hlt) => fault("HLT exit although the LAPIC is in the kernel".into()),
            Ok(VcpuExit::InternalError { suberror }) => {
                let what = match suberror {
                    1 => "emulation failure",
                    2 => "simultaneous exception",
                    3 => "delivery event failure",
                    _ => "unknown",
                };
                fault(format!("KVM internal error, suberror {suberror} ({what})"))
            }
            Ok(VcpuExit::FailEntry { reason }) => {
                fault(format!("VM entry failed, hardware reason {reason:#x}"))
            }
            Ok(VcpuExit::Unhandled(name)) => fault(format!("unhandled exit {name}")),
            Err(e) => fault(format!("{e}")),
        }
        .map(|event| match event {
            Event::Fault { vcpu, reason } => Event::Fault {
                vcpu,
                reason: format!("{reason}; {}", self.vcpu.register_dump()),
            },
            other => other,
        })
    }
}
