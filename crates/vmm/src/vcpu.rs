//! vCPU threads: configuring each vCPU for boot, and the run loop that serves
//! its exits until the VM stops it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;

use arch::cpu::{self, EntryPoint};
use arch::cpuid::{self, Topology};
use arch::GuestMemory;
use hypervisor::kvm_bindings::CpuId;
use hypervisor::{SystemEvent, Vcpu, VcpuExit};
use vm_device::Bus;

use crate::vm::{Event, Tagged};
use crate::Error;

/// Gives `vcpu` its CPUID, MSRs, FPU and LAPIC wiring; the boot vCPU also gets
/// the entry state. Application processors wait for INIT/SIPI from the guest.
pub fn configure(
    vcpu: &Vcpu,
    supported: &CpuId,
    topology: Topology,
    mem: &GuestMemory,
    entry: Option<&EntryPoint>,
) -> Result<(), Error> {
    let mut cpuid = supported.clone();
    cpuid::patch_for_vcpu(cpuid.as_mut_slice(), vcpu.id(), topology);
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
    pub events: Sender<Tagged>,
    /// The VM instance's generation, tagged on every event.
    pub generation: u64,
    /// Set when the VM stops; the thread then returns.
    pub stop: Arc<AtomicBool>,
}

impl VcpuRunner {
    /// Runs the vCPU until stopped or until it can run no further; returns the
    /// vCPU so that its run structure outlives every kick aimed at it.
    pub fn run(mut self) -> Vcpu {
        while !self.stop.load(Ordering::Acquire) {
            if let Some(event) = self.step() {
                let _ = self.events.send(Tagged {
                    generation: self.generation,
                    event,
                });
                break;
            }
        }
        self.vcpu
    }

    /// One `KVM_RUN`; returns an event when the vCPU must stop.
    fn step(&mut self) -> Option<Event> {
        let id = self.vcpu.id();
        let fault = |reason: String| Some(Event::Fault { vcpu: id, reason });
        match self.vcpu.run() {
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
