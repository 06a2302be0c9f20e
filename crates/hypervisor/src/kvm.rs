//! The KVM system handle (`/dev/kvm`): capabilities and supported CPUID.

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm};

use crate::{Error, Result, Vm};

/// How this host's KVM virtualizes: the kind decides nothing in the VMM, it is
/// reported in the log so that figures can be read in context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmKind {
    /// Intel VT-x (`kvm_intel`).
    Vmx,
    /// AMD-V (`kvm_amd`).
    Svm,
    /// Pagetable-based software virtualization (`kvm_pvm`), no hardware assist.
    Pvm,
    /// None of the above could be identified.
    Unknown,
}

impl KvmKind {
    /// Identifies the loaded KVM vendor module from `/sys/module`.
    pub fn detect() -> KvmKind {
        let loaded = |m: &str| std::path::Path::new("/sys/module").join(m).exists();
        if loaded("kvm_pvm") {
            KvmKind::Pvm
        } else if loaded("kvm_intel") {
            KvmKind::Vmx
        } else if loaded("kvm_amd") {
            KvmKind::Svm
        } else {
            KvmKind::Unknown
        }
    }

    /// True when guest execution is assisted by VT-x or AMD-V.
    pub fn is_hardware_backed(self) -> bool {
        matches!(self, KvmKind::Vmx | KvmKind::Svm)
    }
}

impl std::fmt::Display for KvmKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KvmKind::Vmx => "kvm_intel (VT-x)",
            KvmKind::Svm => "kvm_amd (AMD-V)",
            KvmKind::Pvm => "kvm_pvm (software, no hardware assist)",
            KvmKind::Unknown => "unknown KVM module",
        })
    }
}

/// An open `/dev/kvm`.
pub struct Hypervisor {
    kvm: Kvm,
    /// KVM's supported CPUID, asked once (it does not change).
    supported: std::sync::OnceLock<CpuId>,
}

impl Hypervisor {
    /// Opens `/dev/kvm` and checks the capabilities Ferrovisor cannot run without.
    pub fn open() -> Result<Hypervisor> {
        let kvm = Kvm::new().map_err(Error::wrap("open /dev/kvm"))?;
        for (cap, name) in [
            (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
            (Cap::Pit2, "KVM_CAP_PIT2"),
            (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
            (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
            (Cap::Irqfd, "KVM_CAP_IRQFD"),
            (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(Error {
                    op: name,
                    source: vmm_sys_util::errno::Error::new(libc::ENOTSUP),
                });
            }
        }
        Ok(Hypervisor {
            kvm,
            supported: std::sync::OnceLock::new(),
        })
    }

    /// The largest number of vCPUs one VM may have (`KVM_CAP_MAX_VCPUS`).
    pub fn max_vcpus(&self) -> usize {
        self.kvm.get_max_vcpus()
    }

    /// One more than the largest vCPU ID (APIC ID) KVM accepts
    /// (`KVM_CAP_MAX_VCPU_ID`).
    pub fn max_vcpu_id(&self) -> usize {
        self.kvm.get_max_vcpu_id()
    }

    /// The CPUID entries KVM can present to a guest on this host.
    pub fn supported_cpuid(&self) -> Result<CpuId> {
        if let Some(c) = self.supported.get() {
            return Ok(c.clone());
        }
        let c = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(Error::wrap("KVM_GET_SUPPORTED_CPUID"))?;
        Ok(self.supported.get_or_init(|| c).clone())
    }

    /// Creates an empty VM.
    pub fn create_vm(&self) -> Result<Vm> {
        let fd = self.kvm.create_vm().map_err(Error::wrap("KVM_CREATE_VM"))?;
        Ok(Vm::new(fd))
    }
}
