//! Composition of one VM: configuration, guest RAM, platform devices, vCPU
//! threads, the lifecycle state machine and the controller that turns
//! control-plane requests, guest requests, faults and host signals into
//! state changes and, in the end, the process's exit status.

mod boot_files;
mod channels;
pub mod config;
mod console;
mod control;
pub mod cpu_model;
pub mod events;
mod instance;
pub mod isolation;
mod memory;
mod msi;
mod net;
mod platform;
pub mod request;
mod signals;
pub mod state;
mod vcpu;

pub use config::{ConfigError, VmConfig};
pub use control::{Outcome, Vmm, VmmOptions};

/// An error that ends the VMM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag's value cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A KVM operation failed.
    #[error("KVM: {0}")]
    Kvm(#[from] hypervisor::Error),
    /// The kernel or initramfs could not be loaded.
    #[error("--kernel {path}: {source}")]
    Load {
        /// The kernel path.
        path: String,
        /// Why.
        #[source]
        source: arch::loader::LoadError,
    },
    /// A platform structure could not be built.
    #[error(transparent)]
    Platform(#[from] arch::Error),
    /// A host I/O operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// An invariant of the VMM failed.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Exit status for bad configuration.
pub const EXIT_CONFIG: i32 = 2;
/// Exit status for a VMM failure at run time.
pub const EXIT_VMM_ERROR: i32 = 1;
/// Exit status for a guest fault (triple fault, emulation failure).
pub const EXIT_GUEST_FAULT: i32 = 3;

impl Error {
    /// The process exit status this error ends the VMM with.
    pub fn exit_status(&self) -> i32 {
        match self {
            Error::Config(_) | Error::Load { .. } => EXIT_CONFIG,
            _ => EXIT_VMM_ERROR,
        }
    }

    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}
