//! The CPU the guest sees: KVM's supported CPUID shaped by `--cpus
//! model=,features=,kvm_pv=`, with the TSC frequency leaf when the TSC is
//! invariant; and the `--cpu-models` listing.

use arch::cpuid::{self, CpuSpec, FeatureChange, PvOptions};
use hypervisor::kvm_bindings::CpuId;
use hypervisor::{Hypervisor, Vcpu};

use crate::config::CpusConfig;
use crate::{ConfigError, Error};

/// The VM-wide CPUID for `cpus` (before each vCPU's topology patch).
/// `vcpu` reports the TSC frequency.
pub fn vm_cpuid(hv: &Hypervisor, cpus: &CpusConfig, vcpu: &Vcpu) -> Result<CpuId, Error> {
    let supported = hv.supported_cpuid()?;
    let invtsc = cpuid::features::by_name("invtsc")
        .is_some_and(|f| cpuid::supports(supported.as_slice(), f));
    let tsc_khz = if invtsc {
        vcpu.tsc_khz().ok().filter(|k| *k > 0)
    } else {
        None
    };
    let spec = spec(cpus, tsc_khz)?;
    let entries = cpuid::build(supported.as_slice(), &spec)
        .map_err(|e| ConfigError::new("--cpus", e.to_string()))?;
    CpuId::from_entries(&entries)
        .map_err(|_| Error::Internal(format!("{} CPUID entries are too many", entries.len())))
}

fn spec(cpus: &CpusConfig, tsc_khz: Option<u32>) -> Result<CpuSpec, ConfigError> {
    let changes = cpus
        .features
        .iter()
        .map(|f| FeatureChange::parse(f).map_err(|e| ConfigError::new("--cpus", e)))
        .collect::<Result<_, _>>()?;
    Ok(CpuSpec {
        model: cpus.model.clone(),
        changes,
        pv: PvOptions {
            kvm_pv: cpus.kvm_pv,
            tsc_khz,
        },
    })
}

/// Features whose bit KVM holds differently from what the VMM set (some
/// KVMs, such as PVM, force host bits into the guest's CPUID): each with the
/// value KVM holds.
pub fn overridden_features(
    set: &[hypervisor::kvm_bindings::kvm_cpuid_entry2],
    held: &[hypervisor::kvm_bindings::kvm_cpuid_entry2],
) -> Vec<(&'static str, bool)> {
    cpuid::features::FEATURES
        .iter()
        .filter_map(|f| {
            let has = |entries| cpuid::supports(entries, f);
            let in_set = set
                .iter()
                .any(|e| e.function == f.leaf && e.index == f.subleaf);
            (in_set && has(set) != has(held)).then(|| (f.name, has(held)))
        })
        .collect()
}

/// Reads back what KVM holds for `vcpu` after `set`, and warns once when it
/// is not what a named model fixes (for `model=host`, an info line).
pub(crate) fn warn_if_overridden(vcpu: &Vcpu, set: &CpuId, named_model: bool) {
    let Ok(held) = vcpu.cpuid() else {
        return;
    };
    let changed = overridden_features(set.as_slice(), held.as_slice());
    if changed.is_empty() {
        return;
    }
    let list: Vec<String> = changed
        .iter()
        .map(|(name, on)| format!("{}{name}", if *on { '+' } else { '-' }))
        .collect();
    if named_model {
        tracing::warn!(
            "KVM on this host overrides CPUID bits the CPU model fixes ({}); the guest sees those as the host has them",
            list.join(" ")
        );
    } else {
        tracing::info!(
            "KVM on this host overrides CPUID bits of the host model ({})",
            list.join(" ")
        );
    }
}

/// `--cpu-models`: one line per model, with whether this host can run it.
pub fn list_models() -> Result<String, Error> {
    let hv = Hypervisor::open()?;
    let supported = hv.supported_cpuid()?;
    let mut out = format!(
        "{:<16} {:<8} {:<60} {}\n",
        "MODEL", "VENDOR", "DESCRIPTION", "ON THIS HOST"
    );
    out.push_str(&format!(
        "{:<16} {:<8} {:<60} yes\n",
        "host", "host", "every feature KVM can virtualize on this host"
    ));
    for m in cpuid::MODELS {
        let vendor = match m.vendor {
            None => "host",
            Some(cpuid::Vendor::Intel) => "Intel",
            Some(cpuid::Vendor::Amd) => "AMD",
        };
        let verdict = match cpuid::check_model(supported.as_slice(), m) {
            Ok(()) => "yes".to_string(),
            Err(e) => format!("no: {e}"),
        };
        out.push_str(&format!(
            "{:<16} {:<8} {:<60} {verdict}\n",
            m.name, vendor, m.description
        ));
    }
    Ok(out)
}
