//! KVM's paravirtual CPUID leaves (0x4000_0000: the "KVMKVMKVM" signature;
//! 0x4000_0001: kvmclock, PV EOI, PV TLB flush, PV sched yield, steal time,
//! PV unhalt, ...) and the TSC frequency leaf 0x4000_0010.

use kvm_bindings::kvm_cpuid_entry2;

/// The first and last leaf of the hypervisor range.
const HYPERVISOR_LEAVES: std::ops::RangeInclusive<u32> = 0x4000_0000..=0x4000_00ff;
/// The leaf with the TSC and APIC bus frequencies in kHz (as VMware, QEMU
/// and others define it).
pub const LEAF_TIMING: u32 = 0x4000_0010;
/// KVM's local APIC timer runs at 1 GHz (one bus cycle per nanosecond).
pub const APIC_BUS_KHZ: u32 = 1_000_000;

/// The paravirtual interface the guest gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PvOptions {
    /// Keep KVM's signature and PV feature leaves.
    pub kvm_pv: bool,
    /// The TSC frequency, when the TSC is invariant and known.
    pub tsc_khz: Option<u32>,
}

/// Removes the hypervisor leaves when `kvm_pv` is off; otherwise adds the
/// timing leaf when the TSC frequency is known.
pub fn apply_kvm_pv(entries: &mut Vec<kvm_cpuid_entry2>, options: &PvOptions) {
    if !options.kvm_pv {
        entries.retain(|e| !HYPERVISOR_LEAVES.contains(&e.function));
        return;
    }
    let Some(khz) = options.tsc_khz else {
        return;
    };
    let Some(base) = entries.iter_mut().find(|e| e.function == 0x4000_0000) else {
        return;
    };
    base.eax = base.eax.max(LEAF_TIMING);
    entries.retain(|e| e.function != LEAF_TIMING);
    entries.push(kvm_cpuid_entry2 {
        function: LEAF_TIMING,
        eax: khz,
        ebx: APIC_BUS_KHZ,
        ..Default::default()
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kvm_leaves() -> Vec<kvm_cpuid_entry2> {
        vec![
            kvm_cpuid_entry2 {
                function: 1,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0x4000_0000,
                eax: 0x4000_0001,
                ebx: u32::from_le_bytes(*b"KVMK"),
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0x4000_0001,
                eax: 0x0100_7afb,
                ..Default::default()
            },
        ]
    }

    #[test]
    fn off_removes_the_hypervisor_leaves() {
        let mut e = kvm_leaves();
        apply_kvm_pv(
            &mut e,
            &PvOptions {
                kvm_pv: false,
                tsc_khz: Some(2_000_000),
            },
        );
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].function, 1);
    }

    #[test]
    fn the_timing_leaf_follows_a_known_tsc() {
        let mut e = kvm_leaves();
        apply_kvm_pv(
            &mut e,
            &PvOptions {
                kvm_pv: true,
                tsc_khz: Some(2_596_098),
            },
        );
        assert_eq!(e[1].eax, LEAF_TIMING);
        let t = e.iter().find(|e| e.function == LEAF_TIMING).unwrap();
        assert_eq!((t.eax, t.ebx), (2_596_098, APIC_BUS_KHZ));
        let mut e = kvm_leaves();
        apply_kvm_pv(
            &mut e,
            &PvOptions {
                kvm_pv: true,
                tsc_khz: None,
            },
        );
        assert_eq!(e[1].eax, 0x4000_0001);
    }
}
