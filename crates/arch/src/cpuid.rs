//! Per-vCPU CPUID: KVM's supported set with the APIC ID, the topology leaves
//! and the hypervisor bit filled in for one socket of `count` single-threaded cores.

use kvm_bindings::kvm_cpuid_entry2;

/// The topology of the guest's CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    /// vCPUs in the VM (all in one package, one thread per core).
    pub cpus: u32,
}

impl Topology {
    /// Bits of the APIC ID that number the cores inside the package.
    pub fn core_bits(&self) -> u32 {
        ceil_log2(self.cpus)
    }
}

fn ceil_log2(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_SIZE: u32 = 0x8000_0008;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Rewrites `entries` (KVM's supported CPUID) for the vCPU with `apic_id`.
pub fn patch_for_vcpu(entries: &mut [kvm_cpuid_entry2], apic_id: u32, topo: Topology) {
    let core_bits = topo.core_bits();
    let addressable = 1u32 << core_bits;
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (e.ebx & 0x0000_ffff)
                    | ((apic_id & 0xff) << 24)
                    | ((addressable.min(255)) << 16);
                e.ecx |= ECX_HYPERVISOR;
                if topo.cpus > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS if e.eax & 0x1f != 0 => {
                let cores_minus_one = (addressable - 1).min(63);
                let level = (e.eax >> 5) & 0x7;
                // L1 and L2 are per core; the last level is shared by the package.
                let sharing = if level >= 3 { addressable - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | (sharing.min(0xfff) << 14) | (cores_minus_one << 26);
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                e.edx = apic_id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (LEVEL_SMT << 8) | e.index;
                    }
                    1 => {
                        e.eax = core_bits;
                        e.ebx = topo.cpus;
                        e.ecx = (LEVEL_CORE << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            LEAF_AMD_SIZE => {
                e.ecx = (e.ecx & !0xf0ff) | (core_bits << 12) | (topo.cpus - 1).min(255);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn apic_id_and_topology() {
        let mut t = vec![
            leaf(1, 0),
            leaf(0xb, 0),
            leaf(0xb, 1),
            leaf(0xb, 2),
            leaf(4, 0),
        ];
        t[4].eax = 0x121; // data cache, level 1
        patch_for_vcpu(&mut t, 5, Topology { cpus: 6 });
        assert_eq!(t[0].ebx >> 24, 5);
        assert_eq!((t[0].ebx >> 16) & 0xff, 8);
        assert_ne!(t[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(t[0].edx & EDX_HTT, 0);
        assert_eq!((t[1].ebx, t[1].edx, t[1].ecx >> 8), (1, 5, 1));
        assert_eq!((t[2].eax, t[2].ebx, t[2].ecx >> 8), (3, 6, 2));
        assert_eq!(t[3].ecx >> 8, 0);
        assert_eq!(t[4].eax >> 26, 7);
    }

    #[test]
    fn single_cpu_has_no_htt() {
        let mut t = vec![leaf(1, 0)];
        t[0].edx = EDX_HTT;
        patch_for_vcpu(&mut t, 0, Topology { cpus: 1 });
        assert_eq!(t[0].edx & EDX_HTT, 0);
        assert_eq!(Topology { cpus: 1 }.core_bits(), 0);
        assert_eq!(Topology { cpus: 2 }.core_bits(), 1);
        assert_eq!(Topology { cpus: 254 }.core_bits(), 8);
    }
}
