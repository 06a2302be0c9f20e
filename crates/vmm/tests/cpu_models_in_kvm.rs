//! What KVM holds for a vCPU after the VMM set a model's CPUID
//! (`KVM_GET_CPUID2`): exactly the model's feature bits, vendor, signature
//! and brand, whatever the host. On hardware-backed KVM this is what the
//! guest's CPUID instruction returns; the probe tests check that side too
//! where the host's KVM enforces it.

use arch::cpuid::{self, reg};
use hypervisor::kvm_bindings::kvm_cpuid_entry2;
use hypervisor::Hypervisor;
use vmm::config::CpusConfig;

fn get(entries: &[kvm_cpuid_entry2], leaf: u32, subleaf: u32) -> Option<kvm_cpuid_entry2> {
    entries
        .iter()
        .find(|e| e.function == leaf && e.index == subleaf)
        .copied()
}

/// The CPUID the VMM sets for a vCPU given `cpus`, and what KVM reports back.
fn set_and_held(
    hv: &Hypervisor,
    cpus: &CpusConfig,
) -> (Vec<kvm_cpuid_entry2>, Vec<kvm_cpuid_entry2>) {
    let vm = hv.create_vm().unwrap();
    vm.create_platform_irqchip().unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    let cpuid = vmm::cpu_model::vm_cpuid(hv, cpus, &vcpu).unwrap();
    vcpu.set_cpuid(&cpuid).unwrap();
    let held = vcpu.cpuid().unwrap().as_slice().to_vec();
    (cpuid.as_slice().to_vec(), held)
}

fn held_by_kvm(hv: &Hypervisor, cpus: &CpusConfig) -> Vec<kvm_cpuid_entry2> {
    set_and_held(hv, cpus).1
}

#[test]
fn every_model_this_host_can_run_is_what_kvm_holds() {
    if !e2e::host::require_kvm() {
        return;
    }
    let hv = Hypervisor::open().unwrap();
    let supported = hv.supported_cpuid().unwrap();
    let (mut ran, mut exact) = (0, 0);
    for model in cpuid::MODELS {
        if cpuid::check_model(supported.as_slice(), model).is_err() {
            continue;
        }
        ran += 1;
        let mut cpus = CpusConfig::with_boot(1);
        cpus.model = model.name.into();
        let (set, held) = set_and_held(&hv, &cpus);
        let overridden = vmm::cpu_model::overridden_features(&set, &held);
        if !hypervisor::KvmKind::detect().is_hardware_backed() && !overridden.is_empty() {
            // PVM forces host bits into the guest's CPUID: it may add
            // features, never take away one the model lists.
            for (name, on) in &overridden {
                assert!(*on, "{}: KVM removed {name}", model.name);
                assert!(!model.features.contains(name), "{}: {name}", model.name);
            }
            eprintln!(
                "{}: this KVM ({}) adds {:?} to the model's CPUID; the exact-match check runs on hardware-backed KVM",
                model.name,
                hypervisor::KvmKind::detect(),
                overridden.iter().map(|(n, _)| *n).collect::<Vec<_>>()
            );
            continue;
        }
        for (leaf, subleaf, r, bits) in cpuid::model_registers(model) {
            let Some(e) = get(&held, leaf, subleaf) else {
                assert_eq!(bits, 0, "{}: leaf {leaf:#x}.{subleaf} missing", model.name);
                continue;
            };
            let runtime = cpuid::features::RUNTIME_BITS
                .iter()
                .filter(|(l, s, rr, _)| (*l, *s, *rr) == (leaf, subleaf, r))
                .fold(0u32, |m, (_, _, _, b)| m | 1 << b);
            assert_eq!(
                reg(&e, r) & !runtime,
                bits & !runtime,
                "{}: leaf {leaf:#x}.{subleaf} {r:?}",
                model.name
            );
        }
        let brand: Vec<u8> = (0x8000_0002u32..=0x8000_0004)
            .filter_map(|l| get(&held, l, 0))
            .flat_map(|e| {
                [e.eax, e.ebx, e.ecx, e.edx]
                    .into_iter()
                    .flat_map(u32::to_le_bytes)
            })
            .collect();
        assert!(brand.starts_with(model.brand.as_bytes()), "{}", model.name);
        exact += 1;
    }
    assert!(ran > 0, "the host runs at least the x86-64 baseline");
    eprintln!(
        "{ran} of {} models run on this host; {exact} held by KVM exactly",
        cpuid::MODELS.len()
    );
}

#[test]
fn feature_changes_and_kvm_pv_reach_kvm() {
    if !e2e::host::require_kvm() {
        return;
    }
    let hv = Hypervisor::open().unwrap();
    let mut cpus = CpusConfig::with_boot(1);
    cpus.features = vec!["-x2apic".into(), "-nx".into()];
    cpus.kvm_pv = false;
    let held = held_by_kvm(&hv, &cpus);
    let leaf1 = get(&held, 1, 0).unwrap();
    assert_eq!(leaf1.ecx & (1 << 21), 0, "x2apic hidden");
    assert_eq!(
        get(&held, 0x8000_0001, 0).unwrap().edx & (1 << 20),
        0,
        "nx hidden"
    );
    assert!(held
        .iter()
        .all(|e| !(0x4000_0000..0x4000_0100).contains(&e.function)));
    let held = held_by_kvm(&hv, &CpusConfig::with_boot(1));
    assert!(
        get(&held, 0x4000_0000, 0).is_some(),
        "KVM signature leaf with kvm_pv on"
    );
}
