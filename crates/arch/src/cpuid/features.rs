//! CPU feature flags by name: where each lives in CPUID (leaf, subleaf,
//! register, bit), as the Intel SDM (vol. 2A, CPUID) and the AMD APM
//! (vol. 3, appendix E) define them. Names follow Linux's /proc/cpuinfo.

/// A CPUID output register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reg {
    /// EAX.
    Eax,
    /// EBX.
    Ebx,
    /// ECX.
    Ecx,
    /// EDX.
    Edx,
}

/// One feature flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feature {
    /// Its name (`avx2`, `sse4_1`, ...).
    pub name: &'static str,
    /// CPUID leaf (EAX input).
    pub leaf: u32,
    /// Subleaf (ECX input; 0 where the leaf has none).
    pub subleaf: u32,
    /// Output register.
    pub reg: Reg,
    /// Bit number.
    pub bit: u8,
}

const fn f(name: &'static str, leaf: u32, subleaf: u32, reg: Reg, bit: u8) -> Feature {
    Feature {
        name,
        leaf,
        subleaf,
        reg,
        bit,
    }
}

use Reg::*;

/// Every feature a model or `features=` can name.
pub const FEATURES: &[Feature] = &[
    // Leaf 1, EDX.
    f("fpu", 1, 0, Edx, 0),
    f("vme", 1, 0, Edx, 1),
    f("de", 1, 0, Edx, 2),
    f("pse", 1, 0, Edx, 3),
    f("tsc", 1, 0, Edx, 4),
    f("msr", 1, 0, Edx, 5),
    f("pae", 1, 0, Edx, 6),
    f("mce", 1, 0, Edx, 7),
    f("cx8", 1, 0, Edx, 8),
    f("apic", 1, 0, Edx, 9),
    f("sep", 1, 0, Edx, 11),
    f("mtrr", 1, 0, Edx, 12),
    f("pge", 1, 0, Edx, 13),
    f("mca", 1, 0, Edx, 14),
    f("cmov", 1, 0, Edx, 15),
    f("pat", 1, 0, Edx, 16),
    f("pse36", 1, 0, Edx, 17),
    f("clflush", 1, 0, Edx, 19),
    f("mmx", 1, 0, Edx, 23),
    f("fxsr", 1, 0, Edx, 24),
    f("sse", 1, 0, Edx, 25),
    f("sse2", 1, 0, Edx, 26),
    f("ss", 1, 0, Edx, 27),
    f("ht", 1, 0, Edx, 28),
    // Leaf 1, ECX.
    f("sse3", 1, 0, Ecx, 0),
    f("pclmulqdq", 1, 0, Ecx, 1),
    f("monitor", 1, 0, Ecx, 3),
    f("vmx", 1, 0, Ecx, 5),
    f("ssse3", 1, 0, Ecx, 9),
    f("fma", 1, 0, Ecx, 12),
    f("cx16", 1, 0, Ecx, 13),
    f("pdcm", 1, 0, Ecx, 15),
    f("pcid", 1, 0, Ecx, 17),
    f("sse4_1", 1, 0, Ecx, 19),
    f("sse4_2", 1, 0, Ecx, 20),
    f("x2apic", 1, 0, Ecx, 21),
    f("movbe", 1, 0, Ecx, 22),
    f("popcnt", 1, 0, Ecx, 23),
    f("tsc_deadline", 1, 0, Ecx, 24),
    f("aes", 1, 0, Ecx, 25),
    f("xsave", 1, 0, Ecx, 26),
    f("avx", 1, 0, Ecx, 28),
    f("f16c", 1, 0, Ecx, 29),
    f("rdrand", 1, 0, Ecx, 30),
    f("hypervisor", 1, 0, Ecx, 31),
    // Leaf 7 subleaf 0, EBX.
    f("fsgsbase", 7, 0, Ebx, 0),
    f("tsc_adjust", 7, 0, Ebx, 1),
    f("bmi1", 7, 0, Ebx, 3),
    f("hle", 7, 0, Ebx, 4),
    f("avx2", 7, 0, Ebx, 5),
    f("smep", 7, 0, Ebx, 7),
    f("bmi2", 7, 0, Ebx, 8),
    f("erms", 7, 0, Ebx, 9),
    f("invpcid", 7, 0, Ebx, 10),
    f("rtm", 7, 0, Ebx, 11),
    f("mpx", 7, 0, Ebx, 14),
    f("avx512f", 7, 0, Ebx, 16),
    f("avx512dq", 7, 0, Ebx, 17),
    f("rdseed", 7, 0, Ebx, 18),
    f("adx", 7, 0, Ebx, 19),
    f("smap", 7, 0, Ebx, 20),
    f("avx512ifma", 7, 0, Ebx, 21),
    f("clflushopt", 7, 0, Ebx, 23),
    f("clwb", 7, 0, Ebx, 24),
    f("avx512cd", 7, 0, Ebx, 28),
    f("sha_ni", 7, 0, Ebx, 29),
    f("avx512bw", 7, 0, Ebx, 30),
    f("avx512vl", 7, 0, Ebx, 31),
    // Leaf 7 subleaf 0, ECX.
    f("avx512vbmi", 7, 0, Ecx, 1),
    f("umip", 7, 0, Ecx, 2),
    f("pku", 7, 0, Ecx, 3),
    f("waitpkg", 7, 0, Ecx, 5),
    f("avx512_vbmi2", 7, 0, Ecx, 6),
    f("gfni", 7, 0, Ecx, 8),
    f("vaes", 7, 0, Ecx, 9),
    f("vpclmulqdq", 7, 0, Ecx, 10),
    f("avx512_vnni", 7, 0, Ecx, 11),
    f("avx512_bitalg", 7, 0, Ecx, 12),
    f("avx512_vpopcntdq", 7, 0, Ecx, 14),
    f("la57", 7, 0, Ecx, 16),
    f("rdpid", 7, 0, Ecx, 22),
    f("cldemote", 7, 0, Ecx, 25),
    f("movdiri", 7, 0, Ecx, 27),
    f("movdir64b", 7, 0, Ecx, 28),
    // Leaf 7 subleaf 0, EDX.
    f("avx512_4vnniw", 7, 0, Edx, 2),
    f("avx512_4fmaps", 7, 0, Edx, 3),
    f("fsrm", 7, 0, Edx, 4),
    f("avx512_vp2intersect", 7, 0, Edx, 8),
    f("md_clear", 7, 0, Edx, 10),
    f("serialize", 7, 0, Edx, 14),
    f("tsxldtrk", 7, 0, Edx, 16),
    f("amx_bf16", 7, 0, Edx, 22),
    f("avx512_fp16", 7, 0, Edx, 23),
    f("amx_tile", 7, 0, Edx, 24),
    f("amx_int8", 7, 0, Edx, 25),
    f("spec_ctrl", 7, 0, Edx, 26),
    f("stibp", 7, 0, Edx, 27),
    f("flush_l1d", 7, 0, Edx, 28),
    f("arch_capabilities", 7, 0, Edx, 29),
    f("ssbd", 7, 0, Edx, 31),
    // Leaf 7 subleaf 1, EAX.
    f("avx_vnni", 7, 1, Eax, 4),
    f("avx512_bf16", 7, 1, Eax, 5),
    // Leaf 0xD subleaf 1, EAX.
    f("xsaveopt", 0xd, 1, Eax, 0),
    f("xsavec", 0xd, 1, Eax, 1),
    f("xgetbv1", 0xd, 1, Eax, 2),
    f("xsaves", 0xd, 1, Eax, 3),
    // Leaf 0x8000_0001, ECX.
    f("lahf_lm", 0x8000_0001, 0, Ecx, 0),
    f("cmp_legacy", 0x8000_0001, 0, Ecx, 1),
    f("svm", 0x8000_0001, 0, Ecx, 2),
    f("cr8_legacy", 0x8000_0001, 0, Ecx, 4),
    f("abm", 0x8000_0001, 0, Ecx, 5),
    f("sse4a", 0x8000_0001, 0, Ecx, 6),
    f("misalignsse", 0x8000_0001, 0, Ecx, 7),
    f("3dnowprefetch", 0x8000_0001, 0, Ecx, 8),
    f("osvw", 0x8000_0001, 0, Ecx, 9),
    f("xop", 0x8000_0001, 0, Ecx, 11),
    f("fma4", 0x8000_0001, 0, Ecx, 16),
    f("tbm", 0x8000_0001, 0, Ecx, 21),
    f("topoext", 0x8000_0001, 0, Ecx, 22),
    // Leaf 0x8000_0001, EDX.
    f("syscall", 0x8000_0001, 0, Edx, 11),
    f("nx", 0x8000_0001, 0, Edx, 20),
    f("mmxext", 0x8000_0001, 0, Edx, 22),
    f("fxsr_opt", 0x8000_0001, 0, Edx, 25),
    f("pdpe1gb", 0x8000_0001, 0, Edx, 26),
    f("rdtscp", 0x8000_0001, 0, Edx, 27),
    f("lm", 0x8000_0001, 0, Edx, 29),
    // Leaf 0x8000_0007, EDX.
    f("invtsc", 0x8000_0007, 0, Edx, 8),
    // Leaf 0x8000_0008, EBX.
    f("clzero", 0x8000_0008, 0, Ebx, 0),
    f("xsaveerptr", 0x8000_0008, 0, Ebx, 2),
    f("wbnoinvd", 0x8000_0008, 0, Ebx, 9),
    f("amd_ibpb", 0x8000_0008, 0, Ebx, 12),
    f("amd_ibrs", 0x8000_0008, 0, Ebx, 14),
    f("amd_stibp", 0x8000_0008, 0, Ebx, 15),
    f("amd_ssbd", 0x8000_0008, 0, Ebx, 24),
    f("virt_ssbd", 0x8000_0008, 0, Ebx, 25),
];

/// Other names for a feature, as other tools spell it.
const ALIASES: &[(&str, &str)] = &[
    ("lzcnt", "abm"),
    ("sha", "sha_ni"),
    ("prefetchw", "3dnowprefetch"),
    ("sse4.1", "sse4_1"),
    ("sse4.2", "sse4_2"),
    ("pclmul", "pclmulqdq"),
    ("avx512vnni", "avx512_vnni"),
    ("avx512bf16", "avx512_bf16"),
    ("tsc-deadline", "tsc_deadline"),
];

/// The feature called `name` (or one of its aliases).
pub fn by_name(name: &str) -> Option<&'static Feature> {
    let name = ALIASES
        .iter()
        .find(|(alias, _)| *alias == name)
        .map_or(name, |(_, real)| real);
    FEATURES.iter().find(|f| f.name == name)
}

/// The registers that hold the features above: a named model decides each
/// of their bits; everything else in them is cleared.
pub const FEATURE_REGISTERS: &[(u32, u32, Reg)] = &[
    (1, 0, Ecx),
    (1, 0, Edx),
    (7, 0, Ebx),
    (7, 0, Ecx),
    (7, 0, Edx),
    (7, 1, Eax),
    (0xd, 1, Eax),
    (0x8000_0001, 0, Ecx),
    (0x8000_0001, 0, Edx),
    (0x8000_0007, 0, Edx),
    (0x8000_0008, 0, Ebx),
];

/// Bits of feature registers that KVM maintains at run time (OSXSAVE,
/// OSPKE, the APIC enable bit): models leave them as KVM sets them.
pub const RUNTIME_BITS: &[(u32, u32, Reg, u8)] = &[(1, 0, Ecx, 27), (1, 0, Edx, 9), (7, 0, Ecx, 4)];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_places_are_unique() {
        for (i, a) in FEATURES.iter().enumerate() {
            for b in &FEATURES[i + 1..] {
                assert_ne!(a.name, b.name);
                assert!(
                    (a.leaf, a.subleaf, a.reg, a.bit) != (b.leaf, b.subleaf, b.reg, b.bit),
                    "{} and {} share a bit",
                    a.name,
                    b.name
                );
            }
            assert!(
                FEATURE_REGISTERS.contains(&(a.leaf, a.subleaf, a.reg)),
                "{} is in a register models do not control",
                a.name
            );
        }
    }

    #[test]
    fn aliases_resolve() {
        assert_eq!(by_name("lzcnt").unwrap().name, "abm");
        assert_eq!(by_name("avx2").unwrap().bit, 5);
        assert!(by_name("turbo").is_none());
        for (alias, real) in ALIASES {
            assert!(by_name(alias).is_some_and(|f| f.name == *real), "{alias}");
        }
    }
}
