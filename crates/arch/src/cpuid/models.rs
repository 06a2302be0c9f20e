//! Named CPU models, as data: each fixes the feature bits, vendor,
//! family/model/stepping and brand string the guest sees, so two hosts with
//! different CPUs present the same CPU and a guest can move between them.
//!
//! The x86-64 micro-architecture levels follow the x86-64 psABI (v1: the
//! baseline; v2: CMPXCHG16B, LAHF/SAHF, POPCNT, SSE3, SSSE3, SSE4.1, SSE4.2;
//! v3: AVX, AVX2, BMI1, BMI2, F16C, FMA, LZCNT, MOVBE, XSAVE; v4: AVX512F,
//! AVX512BW, AVX512CD, AVX512DQ, AVX512VL), on top of the platform features
//! every x86-64 guest expects. The vendor models follow QEMU's of the same
//! names without the TSX and speculation-control bits.

/// A CPU vendor, as CPUID leaf 0 spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    /// "GenuineIntel".
    Intel,
    /// "AuthenticAMD".
    Amd,
}

impl Vendor {
    /// The 12-byte vendor string.
    pub fn id(self) -> &'static [u8; 12] {
        match self {
            Vendor::Intel => b"GenuineIntel",
            Vendor::Amd => b"AuthenticAMD",
        }
    }

    /// The vendor of a 12-byte vendor string.
    pub fn from_id(id: &[u8; 12]) -> Option<Vendor> {
        [Vendor::Intel, Vendor::Amd]
            .into_iter()
            .find(|v| v.id() == id)
    }
}

/// Family, model and stepping (decoded values, e.g. family 23 = 17h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signature {
    /// Family.
    pub family: u32,
    /// Model.
    pub model: u32,
    /// Stepping.
    pub stepping: u32,
}

impl Signature {
    /// CPUID.1:EAX for this signature (extended family/model fields as the
    /// SDM and APM define them).
    pub fn eax(self) -> u32 {
        let (family, ext_family) = if self.family > 0xf {
            (0xf, self.family - 0xf)
        } else {
            (self.family, 0)
        };
        (ext_family & 0xff) << 20
            | ((self.model >> 4) & 0xf) << 16
            | (family & 0xf) << 8
            | (self.model & 0xf) << 4
            | (self.stepping & 0xf)
    }
}

/// A named CPU model.
#[derive(Debug, Clone, Copy)]
pub struct CpuModel {
    /// Its name (`x86-64-v3`, `EPYC-Rome`, ...).
    pub name: &'static str,
    /// One line for `--cpu-models`.
    pub description: &'static str,
    /// The vendor it requires (`None`: the host's, for the ABI levels).
    pub vendor: Option<Vendor>,
    /// Signature; for vendor-neutral models, per host vendor.
    pub signature: fn(Vendor) -> Signature,
    /// The brand string (CPUID 0x8000_0002..4).
    pub brand: &'static str,
    /// Its features, by name (see [`super::features::FEATURES`]).
    pub features: &'static [&'static str],
}

/// What every model has: the platform an x86-64 OS expects of a PC, plus
/// the x86-64 baseline (psABI v1).
const PLATFORM: &[&str] = &[
    "fpu",
    "vme",
    "de",
    "pse",
    "tsc",
    "msr",
    "pae",
    "mce",
    "cx8",
    "apic",
    "sep",
    "mtrr",
    "pge",
    "mca",
    "cmov",
    "pat",
    "pse36",
    "clflush",
    "mmx",
    "fxsr",
    "sse",
    "sse2",
    "syscall",
    "nx",
    "lm",
    "x2apic",
    "tsc_deadline",
    "hypervisor",
];

/// psABI x86-64-v2 on top of the baseline.
const V2: &[&str] = &[
    "cx16", "lahf_lm", "popcnt", "sse3", "sse4_1", "sse4_2", "ssse3",
];
/// psABI x86-64-v3 on top of v2.
const V3: &[&str] = &[
    "avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave",
];
/// psABI x86-64-v4 on top of v3.
const V4: &[&str] = &["avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"];

/// The signature of the vendor-neutral models: QEMU's kvm64 on Intel hosts,
/// its qemu64 on AMD hosts (families Linux treats generically).
fn generic(vendor: Vendor) -> Signature {
    match vendor {
        Vendor::Intel => Signature {
            family: 15,
            model: 6,
            stepping: 1,
        },
        Vendor::Amd => Signature {
            family: 15,
            model: 107,
            stepping: 1,
        },
    }
}

fn skylake_server(_: Vendor) -> Signature {
    Signature {
        family: 6,
        model: 85,
        stepping: 4,
    }
}

fn epyc(_: Vendor) -> Signature {
    Signature {
        family: 23,
        model: 1,
        stepping: 2,
    }
}

fn epyc_rome(_: Vendor) -> Signature {
    Signature {
        family: 23,
        model: 49,
        stepping: 0,
    }
}

macro_rules! features {
    ($($part:expr),* ; $($name:literal),* $(,)?) => {{
        const PARTS: &[&[&str]] = &[$($part),*];
        const EXTRA: &[&str] = &[$($name),*];
        const LEN: usize = {
            let mut n = EXTRA.len();
            let mut i = 0;
            while i < PARTS.len() {
                n += PARTS[i].len();
                i += 1;
            }
            n
        };
        const ALL: [&str; LEN] = {
            let mut out = [""; LEN];
            let mut k = 0;
            let mut i = 0;
            while i < PARTS.len() {
                let mut j = 0;
                while j < PARTS[i].len() {
                    out[k] = PARTS[i][j];
                    k += 1;
                    j += 1;
                }
                i += 1;
            }
            let mut j = 0;
            while j < EXTRA.len() {
                out[k] = EXTRA[j];
                k += 1;
                j += 1;
            }
            out
        };
        &ALL
    }};
}

/// Every named model, in the order `--cpu-models` lists them.
pub const MODELS: &[CpuModel] = &[
    CpuModel {
        name: "x86-64-v1",
        description: "x86-64 baseline (psABI v1)",
        vendor: None,
        signature: generic,
        brand: "Ferrovisor x86-64-v1 CPU",
        features: features!(PLATFORM;),
    },
    CpuModel {
        name: "x86-64-v2",
        description: "x86-64-v2: + CMPXCHG16B, LAHF/SAHF, POPCNT, SSE3, SSSE3, SSE4.1, SSE4.2",
        vendor: None,
        signature: generic,
        brand: "Ferrovisor x86-64-v2 CPU",
        features: features!(PLATFORM, V2;),
    },
    CpuModel {
        name: "x86-64-v3",
        description: "x86-64-v3: + AVX, AVX2, BMI1, BMI2, F16C, FMA, LZCNT, MOVBE, XSAVE",
        vendor: None,
        signature: generic,
        brand: "Ferrovisor x86-64-v3 CPU",
        features: features!(PLATFORM, V2, V3;),
    },
    CpuModel {
        name: "x86-64-v4",
        description: "x86-64-v4: + AVX512F, AVX512BW, AVX512CD, AVX512DQ, AVX512VL",
        vendor: None,
        signature: generic,
        brand: "Ferrovisor x86-64-v4 CPU",
        features: features!(PLATFORM, V2, V3, V4;),
    },
    CpuModel {
        name: "Skylake-Server",
        description: "Intel Xeon Scalable (Skylake-SP), without TSX",
        vendor: Some(Vendor::Intel),
        signature: skylake_server,
        brand: "Intel Xeon Processor (Skylake, no TSX)",
        features: features!(PLATFORM, V2, V3, V4;
            "pclmulqdq", "pcid", "aes", "rdrand", "fsgsbase", "smep", "erms", "invpcid",
            "rdseed", "adx", "smap", "clflushopt", "clwb", "pku", "xsaveopt", "xsavec",
            "xgetbv1", "3dnowprefetch", "pdpe1gb", "rdtscp"),
    },
    CpuModel {
        name: "EPYC",
        description: "AMD EPYC 7001 (Zen, Naples)",
        vendor: Some(Vendor::Amd),
        signature: epyc,
        brand: "AMD EPYC Processor",
        features: features!(PLATFORM, V2, V3;
            "pclmulqdq", "aes", "rdrand", "fsgsbase", "smep", "rdseed", "adx", "smap",
            "clflushopt", "sha_ni", "xsaveopt", "xsavec", "xgetbv1", "cr8_legacy", "sse4a",
            "misalignsse", "3dnowprefetch", "osvw", "mmxext", "fxsr_opt", "pdpe1gb", "rdtscp"),
    },
    CpuModel {
        name: "EPYC-Rome",
        description: "AMD EPYC 7002 (Zen 2, Rome)",
        vendor: Some(Vendor::Amd),
        signature: epyc_rome,
        brand: "AMD EPYC-Rome Processor",
        features: features!(PLATFORM, V2, V3;
            "pclmulqdq", "aes", "rdrand", "fsgsbase", "smep", "rdseed", "adx", "smap",
            "clflushopt", "clwb", "sha_ni", "umip", "rdpid", "xsaveopt", "xsavec", "xgetbv1",
            "cr8_legacy", "sse4a", "misalignsse", "3dnowprefetch", "osvw", "mmxext", "fxsr_opt",
            "pdpe1gb", "rdtscp", "clzero", "xsaveerptr", "wbnoinvd"),
    },
];

/// The model called `name`.
pub fn by_name(name: &str) -> Option<&'static CpuModel> {
    MODELS.iter().find(|m| m.name == name)
}
