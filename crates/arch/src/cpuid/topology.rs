//! CPU topology: sockets × cores × threads, the APIC ID of each vCPU
//! (socket, core and thread fields of widths rounded up to powers of two, as
//! hardware numbers them), and the per-vCPU CPUID leaves that describe it:
//! 1 (APIC ID, logical count, HTT), 4 (cores and cache sharing), 0xB and
//! 0x1F (x2APIC topology), and AMD's 0x8000_0008 and 0x8000_001E.

use kvm_bindings::kvm_cpuid_entry2;

/// How the guest's CPUs are arranged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    /// Packages.
    pub sockets: u32,
    /// Cores per package.
    pub cores: u32,
    /// Threads per core.
    pub threads: u32,
}

fn ceil_log2(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

impl Topology {
    /// One socket of `cpus` single-threaded cores.
    pub fn single_socket(cpus: u32) -> Topology {
        Topology {
            sockets: 1,
            cores: cpus.max(1),
            threads: 1,
        }
    }

    /// Logical CPUs in all (saturating).
    pub fn cpus(&self) -> u32 {
        self.sockets
            .saturating_mul(self.cores)
            .saturating_mul(self.threads)
    }

    /// Bits of the APIC ID that number threads inside a core.
    pub fn thread_bits(&self) -> u32 {
        ceil_log2(self.threads)
    }

    /// Bits of the APIC ID that number cores inside a package.
    pub fn core_bits(&self) -> u32 {
        ceil_log2(self.cores)
    }

    /// The APIC ID of logical CPU `index` (0-based, threads first).
    pub fn apic_id(&self, index: u32) -> u32 {
        let threads = self.threads.max(1);
        let cores = self.cores.max(1);
        let thread = index % threads;
        let core = (index / threads) % cores;
        let socket = index / (threads * cores);
        socket << (self.thread_bits() + self.core_bits()) | core << self.thread_bits() | thread
    }
}

const LEAF_MAX_BASIC: u32 = 0x0;
const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_SIZE: u32 = 0x8000_0008;
const LEAF_AMD_TOPOLOGY: u32 = 0x8000_001e;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Makes sure leaf 0xB has its SMT, core and terminating subleaves (guests
/// read x2APIC IDs from it, also on AMD hosts whose KVM may not list it).
pub fn ensure_topology_leaf(entries: &mut Vec<kvm_cpuid_entry2>) {
    for index in 0..3 {
        if !entries
            .iter()
            .any(|e| e.function == LEAF_TOPOLOGY && e.index == index)
        {
            entries.push(kvm_cpuid_entry2 {
                function: LEAF_TOPOLOGY,
                index,
                flags: kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                ..Default::default()
            });
        }
    }
    if let Some(e) = entries.iter_mut().find(|e| e.function == LEAF_MAX_BASIC) {
        e.eax = e.eax.max(LEAF_TOPOLOGY);
    }
}

/// Rewrites `entries` (the VM's CPUID) for logical CPU `index`.
pub fn patch_for_vcpu(entries: &mut [kvm_cpuid_entry2], index: u32, topo: Topology) {
    let apic_id = topo.apic_id(index);
    let (tb, cb) = (topo.thread_bits(), topo.core_bits());
    let per_package = topo.cores * topo.threads;
    let addressable = 1u32 << (tb + cb);
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx =
                    (e.ebx & 0x0000_ffff) | ((apic_id & 0xff) << 24) | (addressable.min(255) << 16);
                e.ecx |= ECX_HYPERVISOR;
                if per_package > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS if e.eax & 0x1f != 0 => {
                let cores_minus_one = ((1u32 << cb) - 1).min(63);
                let level = (e.eax >> 5) & 0x7;
                // L1 and L2 belong to a core (its threads share them); the
                // last level is shared by the package.
                let sharing = if level >= 3 {
                    addressable - 1
                } else {
                    (1u32 << tb) - 1
                };
                e.eax = (e.eax & 0x3fff) | (sharing.min(0xfff) << 14) | (cores_minus_one << 26);
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                e.edx = apic_id;
                match e.index {
                    0 => {
                        e.eax = tb;
                        e.ebx = topo.threads;
                        e.ecx = (LEVEL_SMT << 8) | e.index;
                    }
                    1 => {
                        e.eax = tb + cb;
                        e.ebx = per_package;
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
                e.ecx = (e.ecx & !0xf0ff) | ((tb + cb) << 12) | (per_package - 1).min(255);
            }
            LEAF_AMD_TOPOLOGY => {
                let core = (index / topo.threads.max(1)) % topo.cores.max(1);
                let socket = index / per_package.max(1);
                e.eax = apic_id;
                e.ebx = ((topo.threads - 1).min(0xff) << 8) | (core & 0xff);
                e.ecx = socket & 0xff;
                e.edx = 0;
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
    fn apic_ids_follow_the_topology() {
        let t = Topology {
            sockets: 2,
            cores: 3,
            threads: 2,
        };
        assert_eq!((t.thread_bits(), t.core_bits()), (1, 2));
        let ids: Vec<u32> = (0..t.cpus()).map(|i| t.apic_id(i)).collect();
        assert_eq!(ids, [0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13]);
        assert_eq!(Topology::single_socket(6).apic_id(5), 5);
    }

    #[test]
    fn leaves_describe_the_topology() {
        let mut t = vec![
            leaf(1, 0),
            leaf(0xb, 0),
            leaf(0xb, 1),
            leaf(0xb, 2),
            leaf(4, 0),
            leaf(4, 3),
            leaf(0x8000_001e, 0),
        ];
        t[4].eax = 0x121; // data cache, level 1
        t[5].eax = 0x163; // unified cache, level 3
        let topo = Topology {
            sockets: 2,
            cores: 6,
            threads: 2,
        };
        // CPU 13: socket 1, core 0, thread 1 → APIC ID 1<<4 | 0<<1 | 1.
        patch_for_vcpu(&mut t, 13, topo);
        assert_eq!(t[0].ebx >> 24, 17);
        assert_eq!((t[0].ebx >> 16) & 0xff, 16);
        assert_ne!(t[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(t[0].edx & EDX_HTT, 0);
        assert_eq!((t[1].eax, t[1].ebx, t[1].ecx >> 8, t[1].edx), (1, 2, 1, 17));
        assert_eq!((t[2].eax, t[2].ebx, t[2].ecx >> 8), (4, 12, 2));
        assert_eq!(t[3].ecx >> 8, 0);
        assert_eq!(t[4].eax >> 26, 7);
        assert_eq!(
            (t[4].eax >> 14) & 0xfff,
            1,
            "L1 shared by the core's threads"
        );
        assert_eq!((t[5].eax >> 14) & 0xfff, 15, "L3 shared by the package");
        assert_eq!((t[6].eax, t[6].ebx, t[6].ecx), (17, 0x100, 1));
    }

    #[test]
    fn single_cpu_has_no_htt_and_the_leaf_is_added() {
        let mut t = vec![leaf(0, 0), leaf(1, 0)];
        t[0].eax = 7;
        t[1].edx = EDX_HTT;
        ensure_topology_leaf(&mut t);
        assert_eq!(t[0].eax, 0xb);
        assert_eq!(t.iter().filter(|e| e.function == 0xb).count(), 3);
        patch_for_vcpu(&mut t, 0, Topology::single_socket(1));
        assert_eq!(t[1].edx & EDX_HTT, 0);
    }
}
