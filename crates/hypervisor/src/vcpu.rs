//! A KVM vCPU: its registers and state, and one run step as a [`VcpuExit`].

use kvm_bindings::{
    kvm_fpu, kvm_lapic_state, kvm_regs, kvm_run, kvm_sregs, CpuId, Msrs, KVM_SYSTEM_EVENT_CRASH,
    KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::VcpuFd;

use crate::{Error, Result};

/// Why `KVM_RUN` returned, with borrowed access to the data of an I/O exit.
#[derive(Debug)]
pub enum VcpuExit<'a> {
    /// The guest wrote `data` to I/O port `port`.
    IoOut { port: u16, data: &'a [u8] },
    /// The guest reads I/O port `port`; fill `data`.
    IoIn { port: u16, data: &'a mut [u8] },
    /// The guest reads `data.len()` bytes of MMIO at `addr`; fill `data`.
    MmioRead { addr: u64, data: &'a mut [u8] },
    /// The guest wrote `data` to MMIO at `addr`.
    MmioWrite { addr: u64, data: &'a [u8] },
    /// The guest halted with no interrupt pending (only without an in-kernel LAPIC).
    Hlt,
    /// The vCPU shut down: triple fault or an unrecoverable exception.
    Shutdown,
    /// KVM asks the VMM to power off, reset, or report a guest crash.
    SystemEvent(SystemEvent),
    /// KVM could not handle the exit itself (for example an emulation failure).
    InternalError { suberror: u32 },
    /// The hardware refused to enter the guest.
    FailEntry { reason: u64 },
    /// `KVM_RUN` was interrupted by a signal or by `immediate_exit`.
    Interrupted,
    /// Any other exit, by its name.
    Unhandled(&'static str),
}

/// A system event reported by KVM through `KVM_EXIT_SYSTEM_EVENT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemEvent {
    /// The guest asked to be powered off.
    Shutdown,
    /// The guest asked to be reset.
    Reset,
    /// The guest reported a crash.
    Crash,
    /// Another event type.
    Other(u32),
}

/// A vCPU and the ID it was created with.
pub struct Vcpu {
    fd: VcpuFd,
    id: u32,
    run: *mut kvm_run,
}

// SAFETY: `run` points into the vCPU's own mmap of `struct kvm_run`, which lives
// as long as `fd`; it moves with the vCPU and is only dereferenced by the
// thread that owns the vCPU (or, for `immediate_exit`, through `Kicker`).
unsafe impl Send for Vcpu {}

impl Vcpu {
    pub(crate) fn new(mut fd: VcpuFd, id: u32) -> Vcpu {
        let run: *mut kvm_run = fd.get_kvm_run();
        Vcpu { fd, id, run }
    }

    /// A handle other threads use to make this vCPU leave `KVM_RUN`.
    pub fn kicker(&self) -> Kicker {
        Kicker {
            // SAFETY: taking the address of a field of the live kvm_run mapping.
            immediate_exit: unsafe { std::ptr::addr_of_mut!((*self.run).immediate_exit) },
        }
    }

    /// The vCPU's index (equal to its initial APIC ID).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Sets the CPUID table the guest sees on this vCPU.
    pub fn set_cpuid(&self, cpuid: &CpuId) -> Result<()> {
        self.fd
            .set_cpuid2(cpuid)
            .map_err(Error::wrap("KVM_SET_CPUID2"))
    }

    /// Writes MSRs; returns how many KVM accepted (it stops at the first it rejects).
    pub fn set_msrs(&self, msrs: &Msrs) -> Result<usize> {
        self.fd.set_msrs(msrs).map_err(Error::wrap("KVM_SET_MSRS"))
    }

    /// Sets the FPU and SSE state.
    pub fn set_fpu(&self, fpu: &kvm_fpu) -> Result<()> {
        self.fd.set_fpu(fpu).map_err(Error::wrap("KVM_SET_FPU"))
    }

    /// Reads the general-purpose registers.
    pub fn regs(&self) -> Result<kvm_regs> {
        self.fd.get_regs().map_err(Error::wrap("KVM_GET_REGS"))
    }

    /// Writes the general-purpose registers.
    pub fn set_regs(&self, regs: &kvm_regs) -> Result<()> {
        self.fd.set_regs(regs).map_err(Error::wrap("KVM_SET_REGS"))
    }

    /// Reads the segment and control registers.
    pub fn sregs(&self) -> Result<kvm_sregs> {
        self.fd.get_sregs().map_err(Error::wrap("KVM_GET_SREGS"))
    }

    /// Writes the segment and control registers.
    pub fn set_sregs(&self, sregs: &kvm_sregs) -> Result<()> {
        self.fd
            .set_sregs(sregs)
            .map_err(Error::wrap("KVM_SET_SREGS"))
    }

    /// Reads the local APIC's register page.
    pub fn lapic(&self) -> Result<kvm_lapic_state> {
        self.fd.get_lapic().map_err(Error::wrap("KVM_GET_LAPIC"))
    }

    /// Writes the local APIC's register page.
    pub fn set_lapic(&self, lapic: &kvm_lapic_state) -> Result<()> {
        self.fd
            .set_lapic(lapic)
            .map_err(Error::wrap("KVM_SET_LAPIC"))
    }

    /// The CPUID KVM holds for this vCPU (`KVM_GET_CPUID2`).
    pub fn cpuid(&self) -> Result<CpuId> {
        self.fd
            .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(Error::wrap("KVM_GET_CPUID2"))
    }

    /// The guest TSC frequency in kHz (`KVM_GET_TSC_KHZ`).
    pub fn tsc_khz(&self) -> Result<u32> {
        self.fd
            .get_tsc_khz()
            .map_err(Error::wrap("KVM_GET_TSC_KHZ"))
    }

    /// Clears a pending [`Kicker::request_exit`], so that the next `KVM_RUN`
    /// enters the guest again (after a pause).
    pub fn clear_exit_request(&mut self) {
        self.fd.set_kvm_immediate_exit(0);
    }

    /// Runs the vCPU until the next exit that needs the VMM.
    pub fn run(&mut self) -> Result<VcpuExit<'_>> {
        use kvm_ioctls::VcpuExit as K;
        let run = self.run;
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                return Ok(VcpuExit::Interrupted)
            }
            Err(e) => return Err(Error::wrap("KVM_RUN")(e)),
        };
        Ok(match exit {
            K::IoOut(port, data) => VcpuExit::IoOut { port, data },
            K::IoIn(port, data) => VcpuExit::IoIn { port, data },
            K::MmioRead(addr, data) => VcpuExit::MmioRead { addr, data },
            K::MmioWrite(addr, data) => VcpuExit::MmioWrite { addr, data },
            K::Hlt => VcpuExit::Hlt,
            K::Shutdown => VcpuExit::Shutdown,
            K::Intr => VcpuExit::Interrupted,
            K::SystemEvent(kind, _) => VcpuExit::SystemEvent(match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => SystemEvent::Shutdown,
                KVM_SYSTEM_EVENT_RESET => SystemEvent::Reset,
                KVM_SYSTEM_EVENT_CRASH => SystemEvent::Crash,
                other => SystemEvent::Other(other),
            }),
            K::InternalError => VcpuExit::InternalError {
                suberror: Self::internal_error_suberror(run),
            },
            K::FailEntry(reason, _) => VcpuExit::FailEntry { reason },
            K::Exception => VcpuExit::Unhandled("KVM_EXIT_EXCEPTION"),
            K::Unknown => VcpuExit::Unhandled("KVM_EXIT_UNKNOWN"),
            K::IrqWindowOpen => VcpuExit::Unhandled("KVM_EXIT_IRQ_WINDOW_OPEN"),
            K::Hypercall(_) => VcpuExit::Unhandled("KVM_EXIT_HYPERCALL"),
            K::Debug(_) => VcpuExit::Unhandled("KVM_EXIT_DEBUG"),
            K::X86Rdmsr(_) => VcpuExit::Unhandled("KVM_EXIT_X86_RDMSR"),
            K::X86Wrmsr(_) => VcpuExit::Unhandled("KVM_EXIT_X86_WRMSR"),
            _ => VcpuExit::Unhandled("another KVM exit"),
        })
    }

    fn internal_error_suberror(run: *const kvm_run) -> u32 {
        // SAFETY: `run` is the live kvm_run mapping of this vCPU, and after
        // KVM_EXIT_INTERNAL_ERROR the kernel filled the `internal` member.
        unsafe { (*run).__bindgen_anon_1.internal.suberror }
    }

    /// A one-line dump of the registers that explain a fault.
    pub fn register_dump(&self) -> RegisterDump {
        RegisterDump {
            regs: self.regs().ok(),
            sregs: self.sregs().ok(),
        }
    }
}

/// The registers of a vCPU, formatted on one line for fault reports.
pub struct RegisterDump {
    regs: Option<kvm_regs>,
    sregs: Option<kvm_sregs>,
}

impl std::fmt::Display for RegisterDump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.regs {
            Some(r) => write!(
                f,
                "rip={:#x} rsp={:#x} rflags={:#x} rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x} rbp={:#x}",
                r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp
            )?,
            None => f.write_str("(general registers unreadable)")?,
        }
        match &self.sregs {
            Some(s) => write!(
                f,
                " cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x} cs.base={:#x} ss={:#x} idt.limit={:#x}",
                s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.cs.selector, s.cs.base, s.ss.selector, s.idt.limit
            ),
            None => f.write_str(" (special registers unreadable)"),
        }
    }
}

/// Makes a vCPU leave `KVM_RUN`: sets `immediate_exit` in its run structure, so
/// that a signal (sent by the caller) interrupts a running `KVM_RUN` and any
/// later `KVM_RUN` returns at once.
#[derive(Clone, Copy)]
pub struct Kicker {
    immediate_exit: *mut u8,
}

// SAFETY: the pointer targets a byte of a kernel-shared mapping that the kernel
// itself reads concurrently; a volatile byte store from any thread is the
// documented way to use it. The owner keeps the vCPU alive while kickers exist.
unsafe impl Send for Kicker {}
// SAFETY: as above; only single-byte volatile stores are made.
unsafe impl Sync for Kicker {}

impl Kicker {
    /// Requests that the vCPU's next `KVM_RUN` return immediately.
    ///
    /// The vCPU must still exist; the VMM kicks vCPUs only before joining their threads.
    pub fn request_exit(&self) {
        // SAFETY: see the type's Send/Sync justification.
        unsafe { std::ptr::write_volatile(self.immediate_exit, 1) }
    }
}
