//! The CPUID a guest sees: KVM's supported set, shaped by the CPU model
//! (`host` or a named model), `features=` changes, the paravirtual leaves
//! (`kvm_pv=on|off`, the TSC frequency leaf) and, per vCPU, the APIC ID and
//! the topology leaves.

pub mod features;
pub mod models;
mod pv;
mod topology;

use kvm_bindings::kvm_cpuid_entry2;

pub use features::{Feature, Reg};
pub use models::{CpuModel, Signature, Vendor, MODELS};
pub use pv::{apply_kvm_pv, PvOptions};
pub use topology::{ensure_topology_leaf, patch_for_vcpu, Topology};

/// A feature to add (`+name`) or remove (`-name`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureChange {
    /// Add (`true`) or remove.
    pub add: bool,
    /// The feature.
    pub feature: &'static Feature,
}

impl FeatureChange {
    /// Parses `+avx512f` or `-x2apic`.
    pub fn parse(text: &str) -> Result<FeatureChange, String> {
        let (add, name) = match text.split_at_checked(1) {
            Some(("+", name)) => (true, name),
            Some(("-", name)) => (false, name),
            _ => return Err(format!("'{text}': expected +FEATURE or -FEATURE")),
        };
        let feature =
            features::by_name(name).ok_or_else(|| format!("'{name}': unknown CPU feature"))?;
        Ok(FeatureChange { add, feature })
    }

    /// `+name` or `-name`.
    pub fn text(&self) -> String {
        format!("{}{}", if self.add { '+' } else { '-' }, self.feature.name)
    }
}

/// Why the guest's CPUID cannot be built on this host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuidError {
    /// No model has this name.
    #[error("unknown CPU model '{0}' (see --cpu-models)")]
    UnknownModel(String),
    /// The model is of another vendor than the host.
    #[error("model {model} needs an {needs} host; this host is {host}")]
    Vendor {
        /// The model.
        model: String,
        /// Its vendor.
        needs: String,
        /// The host's vendor string.
        host: String,
    },
    /// KVM on this host cannot provide these features.
    #[error("{what}: this host cannot provide {}", .missing.join(", "))]
    Missing {
        /// The model or `features=`.
        what: String,
        /// The features it lacks.
        missing: Vec<&'static str>,
    },
}

/// The 32-bit register `reg` of `e`.
pub fn reg_mut(e: &mut kvm_cpuid_entry2, reg: Reg) -> &mut u32 {
    match reg {
        Reg::Eax => &mut e.eax,
        Reg::Ebx => &mut e.ebx,
        Reg::Ecx => &mut e.ecx,
        Reg::Edx => &mut e.edx,
    }
}

/// The 32-bit register `r` of `e`.
pub fn reg(e: &kvm_cpuid_entry2, r: Reg) -> u32 {
    match r {
        Reg::Eax => e.eax,
        Reg::Ebx => e.ebx,
        Reg::Ecx => e.ecx,
        Reg::Edx => e.edx,
    }
}

/// Whether `e` answers CPUID `leaf` with ECX = `subleaf` (KVM flags the
/// entries whose output depends on ECX).
fn answers(e: &kvm_cpuid_entry2, leaf: u32, subleaf: u32) -> bool {
    e.function == leaf
        && (e.index == subleaf || e.flags & kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0)
}

fn find(entries: &[kvm_cpuid_entry2], leaf: u32, subleaf: u32) -> Option<&kvm_cpuid_entry2> {
    entries.iter().find(|e| answers(e, leaf, subleaf))
}

fn find_mut(
    entries: &mut [kvm_cpuid_entry2],
    leaf: u32,
    subleaf: u32,
) -> Option<&mut kvm_cpuid_entry2> {
    entries.iter_mut().find(|e| answers(e, leaf, subleaf))
}

/// Whether `entries` (KVM's supported CPUID) offers `feature`.
pub fn supports(entries: &[kvm_cpuid_entry2], feature: &Feature) -> bool {
    find(entries, feature.leaf, feature.subleaf)
        .is_some_and(|e| reg(e, feature.reg) & (1 << feature.bit) != 0)
}

/// The host's vendor from KVM's leaf 0.
pub fn vendor_id(entries: &[kvm_cpuid_entry2]) -> [u8; 12] {
    let mut id = [0u8; 12];
    if let Some(e) = find(entries, 0, 0) {
        id[0..4].copy_from_slice(&e.ebx.to_le_bytes());
        id[4..8].copy_from_slice(&e.edx.to_le_bytes());
        id[8..12].copy_from_slice(&e.ecx.to_le_bytes());
    }
    id
}

/// What shapes the VM's CPUID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuSpec {
    /// `host` or a model name.
    pub model: String,
    /// Changes applied after the model.
    pub changes: Vec<FeatureChange>,
    /// The paravirtual leaves.
    pub pv: PvOptions,
}

/// Why `model` cannot run on a host with `supported` CPUID, if it cannot.
pub fn check_model(supported: &[kvm_cpuid_entry2], model: &CpuModel) -> Result<(), CpuidError> {
    let host = vendor_id(supported);
    if let Some(v) = model.vendor {
        if v.id() != &host {
            return Err(CpuidError::Vendor {
                model: model.name.into(),
                needs: match v {
                    Vendor::Intel => "Intel".into(),
                    Vendor::Amd => "AMD".into(),
                },
                host: String::from_utf8_lossy(&host).into_owned(),
            });
        }
    }
    let missing: Vec<&'static str> = model
        .features
        .iter()
        .filter_map(|name| features::by_name(name))
        .filter(|f| f.name != "hypervisor" && !supports(supported, f))
        .map(|f| f.name)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(CpuidError::Missing {
            what: format!("model {}", model.name),
            missing,
        })
    }
}

/// The VM-wide CPUID (before the per-vCPU topology patch) for `spec`.
pub fn build(
    supported: &[kvm_cpuid_entry2],
    spec: &CpuSpec,
) -> Result<Vec<kvm_cpuid_entry2>, CpuidError> {
    let mut entries = supported.to_vec();
    if spec.model != "host" {
        let model = models::by_name(&spec.model)
            .ok_or_else(|| CpuidError::UnknownModel(spec.model.clone()))?;
        check_model(supported, model)?;
        apply_model(&mut entries, model);
    }
    let missing: Vec<&'static str> = spec
        .changes
        .iter()
        .filter(|c| c.add && c.feature.name != "hypervisor" && !supports(supported, c.feature))
        .map(|c| c.feature.name)
        .collect();
    if !missing.is_empty() {
        return Err(CpuidError::Missing {
            what: "features=".into(),
            missing,
        });
    }
    for change in &spec.changes {
        let f = change.feature;
        if let Some(e) = find_mut(&mut entries, f.leaf, f.subleaf) {
            let r = reg_mut(e, f.reg);
            if change.add {
                *r |= 1 << f.bit;
            } else {
                *r &= !(1 << f.bit);
            }
        }
    }
    sync_xsave_leaf(&mut entries);
    apply_kvm_pv(&mut entries, &spec.pv);
    ensure_topology_leaf(&mut entries);
    Ok(entries)
}

/// Sets every feature register to exactly the model's bits (keeping the
/// bits KVM maintains at run time), and the vendor, signature and brand.
fn apply_model(entries: &mut [kvm_cpuid_entry2], model: &CpuModel) {
    let host = Vendor::from_id(&vendor_id(entries)).unwrap_or(Vendor::Intel);
    let masks = model_registers(model);
    for &(leaf, subleaf, r) in features::FEATURE_REGISTERS {
        let Some(e) = find_mut(entries, leaf, subleaf) else {
            continue;
        };
        let runtime: u32 = features::RUNTIME_BITS
            .iter()
            .filter(|(l, s, rr, _)| (*l, *s, *rr) == (leaf, subleaf, r))
            .fold(0, |m, (_, _, _, bit)| m | 1 << bit);
        let want = masks
            .iter()
            .find(|(l, s, rr, _)| (*l, *s, *rr) == (leaf, subleaf, r))
            .map_or(0, |m| m.3);
        let v = reg_mut(e, r);
        *v = want | (*v & runtime);
    }
    let vendor = model.vendor.unwrap_or(host);
    let sig = (model.signature)(vendor).eax();
    if let Some(e) = find_mut(entries, 1, 0) {
        e.eax = sig;
    }
    let id = vendor.id();
    let word = |i: usize| u32::from_le_bytes([id[i], id[i + 1], id[i + 2], id[i + 3]]);
    for leaf in [0, 0x8000_0000] {
        if let Some(e) = find_mut(entries, leaf, 0) {
            (e.ebx, e.edx, e.ecx) = (word(0), word(4), word(8));
        }
    }
    let mut brand = [0u8; 48];
    let n = model.brand.len().min(47);
    brand[..n].copy_from_slice(&model.brand.as_bytes()[..n]);
    for (i, leaf) in (0x8000_0002u32..=0x8000_0004).enumerate() {
        if let Some(e) = find_mut(entries, leaf, 0) {
            let w = |k: usize| {
                let o = i * 16 + k * 4;
                u32::from_le_bytes([brand[o], brand[o + 1], brand[o + 2], brand[o + 3]])
            };
            (e.eax, e.ebx, e.ecx, e.edx) = (w(0), w(1), w(2), w(3));
        }
    }
}

/// The value of each feature register under `model`: (leaf, subleaf, reg, bits).
pub fn model_registers(model: &CpuModel) -> Vec<(u32, u32, Reg, u32)> {
    let mut out: Vec<(u32, u32, Reg, u32)> = features::FEATURE_REGISTERS
        .iter()
        .map(|&(l, s, r)| (l, s, r, 0))
        .collect();
    for name in model.features {
        if let Some(f) = features::by_name(name) {
            if let Some(slot) = out
                .iter_mut()
                .find(|(l, s, r, _)| (*l, *s, *r) == (f.leaf, f.subleaf, f.reg))
            {
                slot.3 |= 1 << f.bit;
            }
        }
    }
    out
}

/// XSAVE state components and the feature each needs.
const XSAVE_COMPONENTS: &[(u32, &str)] = &[
    (2, "avx"),
    (3, "mpx"),
    (4, "mpx"),
    (5, "avx512f"),
    (6, "avx512f"),
    (7, "avx512f"),
    (9, "pku"),
    (17, "amx_tile"),
    (18, "amx_tile"),
];

/// Makes leaf 0xD agree with the feature bits: state components whose
/// feature is hidden vanish from the supported XCR0 mask and their subleaves
/// are zeroed; the maximum save area size follows. Without XSAVE the whole
/// leaf is zeroed.
fn sync_xsave_leaf(entries: &mut [kvm_cpuid_entry2]) {
    let has = |entries: &[kvm_cpuid_entry2], name: &str| {
        features::by_name(name).is_some_and(|f| supports(entries, f))
    };
    let xsave = has(entries, "xsave");
    let mut allowed: u64 = if xsave { 0b11 } else { 0 };
    for &(component, feature) in XSAVE_COMPONENTS {
        if xsave && has(entries, feature) {
            allowed |= 1 << component;
        }
    }
    let mut max_size = if xsave { 576u32 } else { 0 };
    for e in entries.iter_mut().filter(|e| e.function == 0xd) {
        match e.index {
            0 => {
                e.eax &= allowed as u32;
                e.edx &= (allowed >> 32) as u32;
            }
            1 if !xsave => (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0),
            1 => {}
            i if i < 64 && allowed & (1 << i) == 0 => (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0),
            // A user state component (ECX bit 0 clear) sits at offset EBX.
            i if i < 64 && e.ecx & 1 == 0 => {
                max_size = max_size.max(e.ebx.saturating_add(e.eax));
            }
            _ => {}
        }
    }
    if let Some(e) = entries
        .iter_mut()
        .find(|e| e.function == 0xd && e.index == 0)
    {
        e.ecx = if xsave { max_size } else { 0 };
        if !xsave {
            (e.eax, e.ebx, e.edx) = (0, 0, 0);
        }
    }
}

#[cfg(test)]
mod tests;
