//! A thin seam over `kvm-ioctls`: the KVM system handle, a VM and its vCPUs.
//!
//! The rest of Ferrovisor talks to KVM only through this crate, so the exits a
//! vCPU can take are one enum ([`VcpuExit`]) and every KVM error carries the
//! name of the operation that failed.

mod kvm;
mod vcpu;
mod vm;

pub use kvm::{Hypervisor, KvmKind};
pub use vcpu::{Kicker, RegisterDump, SystemEvent, Vcpu, VcpuExit};
pub use vm::{GsiRoute, Vm};

/// Re-exported so that callers can build KVM structures without their own dependency.
pub use kvm_bindings;

/// An error from a KVM operation, naming the operation.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {source}")]
pub struct Error {
    /// The KVM operation that failed (for example `KVM_CREATE_VM`).
    pub op: &'static str,
    /// The errno KVM returned.
    #[source]
    pub source: vmm_sys_util::errno::Error,
}

impl Error {
    pub(crate) fn wrap(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
        move |source| Error { op, source }
    }
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
