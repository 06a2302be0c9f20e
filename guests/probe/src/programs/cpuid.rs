//! `probe=cpuid`: what the CPU model looks like to the guest: vendor,
//! family/model/stepping, brand string, topology, a fixed list of feature
//! flags, KVM's paravirtual leaves, an out-of-range CPUID leaf, and #GP from
//! an MSR no CPU implements.

use super::Outcome;
use crate::cpus;
use crate::fmtbuf::FmtBuf;
use crate::start_info::StartInfo;
use crate::{bail, idt, say};
use alloc::vec::Vec;
use core::arch::x86_64::{__cpuid_count, CpuidResult};
use core::fmt::{self, Write};

/// First leaf of the extended range.
const EXT_BASE: u32 = 0x8000_0000;
/// The hypervisor range Linux scans for a signature, in steps of 0x100.
const HV_BASE: u32 = 0x4000_0000;
const HV_END: u32 = 0x4001_0000;
const HV_STEP: usize = 0x100;
/// KVM's signature in EBX, ECX, EDX of its base leaf.
const KVM_SIGNATURE: &[u8; 12] = b"KVMKVMKVM\0\0\0";
/// Offset of the KVM feature leaf and of the timing leaf (TSC and APIC bus
/// kHz in EAX and EBX) from the hypervisor base.
const HV_FEATURES: u32 = 0x01;
const HV_TIMING: u32 = 0x10;
/// CPUID.1:ECX bit 31: running under a hypervisor.
const CPUID1_ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:EDX bit 28: EBX[23:16] of leaf 1 is valid.
const CPUID1_EDX_HTT: u32 = 1 << 28;
/// CPUID.0x80000001:ECX bit 22: leaf 0x8000001E is valid.
const EXT1_ECX_TOPOEXT: u32 = 1 << 22;
/// An MSR index no CPU implements, at the end of KVM's paravirtual range
/// (KVM emulates 0x4b564d00-0x4b564d08 only): RDMSR and WRMSR must #GP.
const UNKNOWN_MSR: u32 = 0x4b56_4dff;

/// Leaf 0xB/0x1F level types.
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

#[derive(Clone, Copy)]
enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

/// A feature flag: CPUID leaf, subleaf, register and bit.
struct Feature {
    name: &'static str,
    leaf: u32,
    sub: u32,
    reg: Reg,
    bit: u8,
}

const fn f(name: &'static str, leaf: u32, sub: u32, reg: Reg, bit: u8) -> Feature {
    Feature {
        name,
        leaf,
        sub,
        reg,
        bit,
    }
}

/// The `features` line, in this order. Bit positions as in the Intel SDM
/// (vol. 2A, CPUID) and the AMD APM (vol. 3, appendix E), cross-checked
/// with Linux's `arch/x86/include/asm/cpufeatures.h`.
#[rustfmt::skip]
const FEATURES: &[Feature] = &[
    // Leaf 1 EDX.
    f("fpu", 1, 0, Reg::Edx, 0),
    f("tsc", 1, 0, Reg::Edx, 4),
    f("msr", 1, 0, Reg::Edx, 5),
    f("pae", 1, 0, Reg::Edx, 6),
    f("cx8", 1, 0, Reg::Edx, 8),
    f("apic", 1, 0, Reg::Edx, 9),
    f("sep", 1, 0, Reg::Edx, 11),
    f("pge", 1, 0, Reg::Edx, 13),
    f("cmov", 1, 0, Reg::Edx, 15),
    f("pat", 1, 0, Reg::Edx, 16),
    f("clflush", 1, 0, Reg::Edx, 19),
    f("mmx", 1, 0, Reg::Edx, 23),
    f("fxsr", 1, 0, Reg::Edx, 24),
    f("sse", 1, 0, Reg::Edx, 25),
    f("sse2", 1, 0, Reg::Edx, 26),
    f("ht", 1, 0, Reg::Edx, 28),
    // Leaf 1 ECX.
    f("sse3", 1, 0, Reg::Ecx, 0),
    f("pclmulqdq", 1, 0, Reg::Ecx, 1),
    f("ssse3", 1, 0, Reg::Ecx, 9),
    f("fma", 1, 0, Reg::Ecx, 12),
    f("cx16", 1, 0, Reg::Ecx, 13),
    f("pcid", 1, 0, Reg::Ecx, 17),
    f("sse4_1", 1, 0, Reg::Ecx, 19),
    f("sse4_2", 1, 0, Reg::Ecx, 20),
    f("x2apic", 1, 0, Reg::Ecx, 21),
    f("movbe", 1, 0, Reg::Ecx, 22),
    f("popcnt", 1, 0, Reg::Ecx, 23),
    f("tsc_deadline", 1, 0, Reg::Ecx, 24),
    f("aes", 1, 0, Reg::Ecx, 25),
    f("xsave", 1, 0, Reg::Ecx, 26),
    f("avx", 1, 0, Reg::Ecx, 28),
    f("f16c", 1, 0, Reg::Ecx, 29),
    f("rdrand", 1, 0, Reg::Ecx, 30),
    f("hypervisor", 1, 0, Reg::Ecx, 31),
    // Leaf 7 subleaf 0 EBX.
    f("fsgsbase", 7, 0, Reg::Ebx, 0),
    f("bmi1", 7, 0, Reg::Ebx, 3),
    f("avx2", 7, 0, Reg::Ebx, 5),
    f("smep", 7, 0, Reg::Ebx, 7),
    f("bmi2", 7, 0, Reg::Ebx, 8),
    f("erms", 7, 0, Reg::Ebx, 9),
    f("invpcid", 7, 0, Reg::Ebx, 10),
    f("avx512f", 7, 0, Reg::Ebx, 16),
    f("avx512dq", 7, 0, Reg::Ebx, 17),
    f("rdseed", 7, 0, Reg::Ebx, 18),
    f("adx", 7, 0, Reg::Ebx, 19),
    f("smap", 7, 0, Reg::Ebx, 20),
    f("avx512ifma", 7, 0, Reg::Ebx, 21),
    f("clflushopt", 7, 0, Reg::Ebx, 23),
    f("clwb", 7, 0, Reg::Ebx, 24),
    f("avx512cd", 7, 0, Reg::Ebx, 28),
    f("sha", 7, 0, Reg::Ebx, 29),
    f("avx512bw", 7, 0, Reg::Ebx, 30),
    f("avx512vl", 7, 0, Reg::Ebx, 31),
    // Leaf 7 subleaf 0 ECX.
    f("avx512vbmi", 7, 0, Reg::Ecx, 1),
    f("umip", 7, 0, Reg::Ecx, 2),
    f("pku", 7, 0, Reg::Ecx, 3),
    f("avx512vbmi2", 7, 0, Reg::Ecx, 6),
    f("gfni", 7, 0, Reg::Ecx, 8),
    f("vaes", 7, 0, Reg::Ecx, 9),
    f("vpclmulqdq", 7, 0, Reg::Ecx, 10),
    f("avx512vnni", 7, 0, Reg::Ecx, 11),
    f("avx512bitalg", 7, 0, Reg::Ecx, 12),
    f("avx512vpopcntdq", 7, 0, Reg::Ecx, 14),
    f("la57", 7, 0, Reg::Ecx, 16),
    f("rdpid", 7, 0, Reg::Ecx, 22),
    // Leaf 7 subleaf 0 EDX.
    f("fsrm", 7, 0, Reg::Edx, 4),
    f("serialize", 7, 0, Reg::Edx, 14),
    f("amx_tile", 7, 0, Reg::Edx, 24),
    // Leaf 7 subleaf 1 EAX.
    f("avx_vnni", 7, 1, Reg::Eax, 4),
    f("avx512bf16", 7, 1, Reg::Eax, 5),
    // Leaf 0xD subleaf 1 EAX.
    f("xsaveopt", 0xd, 1, Reg::Eax, 0),
    f("xsavec", 0xd, 1, Reg::Eax, 1),
    f("xgetbv1", 0xd, 1, Reg::Eax, 2),
    f("xsaves", 0xd, 1, Reg::Eax, 3),
    // Leaf 0x80000001 ECX.
    f("lahf_lm", 0x8000_0001, 0, Reg::Ecx, 0),
    f("lzcnt", 0x8000_0001, 0, Reg::Ecx, 5),
    f("sse4a", 0x8000_0001, 0, Reg::Ecx, 6),
    f("prefetchw", 0x8000_0001, 0, Reg::Ecx, 8),
    // Leaf 0x80000001 EDX.
    f("syscall", 0x8000_0001, 0, Reg::Edx, 11),
    f("nx", 0x8000_0001, 0, Reg::Edx, 20),
    f("pdpe1gb", 0x8000_0001, 0, Reg::Edx, 26),
    f("rdtscp", 0x8000_0001, 0, Reg::Edx, 27),
    f("lm", 0x8000_0001, 0, Reg::Edx, 29),
    // Leaf 0x80000007 EDX.
    f("invtsc", 0x8000_0007, 0, Reg::Edx, 8),
];

/// KVM_FEATURE_* bits of leaf 0x40000001 EAX (Linux uapi asm/kvm_para.h).
const KVM_FEATURES: &[(&str, u8)] = &[
    ("clocksource", 0),
    ("clocksource2", 3),
    ("async_pf", 4),
    ("steal_time", 5),
    ("pv_eoi", 6),
    ("pv_unhalt", 7),
    ("pv_tlb_flush", 9),
    ("pv_send_ipi", 11),
    ("pv_sched_yield", 13),
    ("msi_ext_dest_id", 15),
    ("stable", 24),
];

fn cpuid(leaf: u32, sub: u32) -> CpuidResult {
    __cpuid_count(leaf, sub)
}

fn reg(result: &CpuidResult, reg: Reg) -> u32 {
    match reg {
        Reg::Eax => result.eax,
        Reg::Ebx => result.ebx,
        Reg::Ecx => result.ecx,
        Reg::Edx => result.edx,
    }
}

fn is_zero(r: &CpuidResult) -> bool {
    r.eax == 0 && r.ebx == 0 && r.ecx == 0 && r.edx == 0
}

fn same(a: &CpuidResult, b: &CpuidResult) -> bool {
    a.eax == b.eax && a.ebx == b.ebx && a.ecx == b.ecx && a.edx == b.edx
}

/// The highest basic and extended leaves, and which leaves may be read.
struct Limits {
    max_basic: u32,
    max_ext: u32,
    /// Highest subleaf of leaf 7 (0 when leaf 7 is absent).
    max_leaf7_sub: u32,
}

impl Limits {
    fn read() -> Self {
        let max_basic = cpuid(0, 0).eax;
        let max_ext = cpuid(EXT_BASE, 0).eax;
        let max_leaf7_sub = if max_basic >= 7 { cpuid(7, 0).eax } else { 0 };
        Limits {
            max_basic,
            max_ext,
            max_leaf7_sub,
        }
    }

    /// `leaf`/`sub`, or zeros if the CPU does not have that leaf.
    fn get(&self, leaf: u32, sub: u32) -> CpuidResult {
        let present = if leaf >= EXT_BASE {
            self.max_ext >= EXT_BASE && leaf <= self.max_ext
        } else {
            leaf <= self.max_basic && !(leaf == 7 && sub > self.max_leaf7_sub)
        };
        if present {
            cpuid(leaf, sub)
        } else {
            CpuidResult {
                eax: 0,
                ebx: 0,
                ecx: 0,
                edx: 0,
            }
        }
    }
}

/// CPUID register bytes as one word: leading and trailing NULs and spaces
/// dropped, other bytes outside printable ASCII (and inner spaces) as `_`;
/// `none` if nothing is left.
struct Token<'a>(&'a [u8]);

impl fmt::Display for Token<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let trimmed = trim(self.0);
        if trimmed.is_empty() {
            return f.write_str("none");
        }
        for &byte in trimmed {
            f.write_char(if byte.is_ascii_graphic() {
                char::from(byte)
            } else {
                '_'
            })?;
        }
        Ok(())
    }
}

/// Like [`Token`], but keeps inner spaces (for the brand string, which ends
/// its line) and shows other unprintable bytes as `?`.
struct Text<'a>(&'a [u8]);

impl fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let trimmed = trim(self.0);
        if trimmed.is_empty() {
            return f.write_str("none");
        }
        for &byte in trimmed {
            let printable = byte.is_ascii_graphic() || byte == b' ';
            f.write_char(if printable { char::from(byte) } else { '?' })?;
        }
        Ok(())
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let blank = |b: &u8| *b == 0 || *b == b' ';
    let start = bytes.iter().position(|b| !blank(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !blank(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// EBX, EDX, ECX of leaf 0 (or EBX, ECX, EDX of a hypervisor leaf) as bytes.
fn signature(a: u32, b: u32, c: u32) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[..4].copy_from_slice(&a.to_le_bytes());
    out[4..8].copy_from_slice(&b.to_le_bytes());
    out[8..].copy_from_slice(&c.to_le_bytes());
    out
}

/// An optional number, `none` when absent.
struct Opt(Option<u32>);

impl fmt::Display for Opt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(value) => write!(f, "{}", value),
            None => f.write_str("none"),
        }
    }
}

pub fn run(info: &StartInfo) -> Outcome {
    let limits = Limits::read();
    let vendor = {
        let leaf0 = cpuid(0, 0);
        signature(leaf0.ebx, leaf0.edx, leaf0.ecx)
    };
    let amd_like = &vendor == b"AuthenticAMD" || &vendor == b"HygonGenuine";
    report_ident(&limits, &vendor, amd_like);

    let cpus = cpus::discover(info)?;
    report_topology(&limits, amd_like, cpus.ids().len() as u32);
    report_features(&limits);
    report_hypervisor(&limits);
    report_unknown_leaf(&limits);
    check_unknown_msr()
}

fn report_ident(limits: &Limits, vendor: &[u8; 12], amd_like: bool) {
    let eax = limits.get(1, 0).eax;
    let stepping = eax & 0xf;
    let base_model = (eax >> 4) & 0xf;
    let base_family = (eax >> 8) & 0xf;
    let ext_model = (eax >> 16) & 0xf;
    let ext_family = (eax >> 20) & 0xff;
    // SDM: DisplayFamily adds the extended family for family 0xF only;
    // DisplayModel adds the extended model for families 6 and 0xF. The APM
    // uses the extended fields for family 0xF only.
    let family = if base_family == 0xf {
        base_family + ext_family
    } else {
        base_family
    };
    let model = if base_family == 0xf || (base_family == 6 && !amd_like) {
        (ext_model << 4) | base_model
    } else {
        base_model
    };
    say!(
        "cpuid vendor={} family={} model={} stepping={} max_leaf={:#x} max_ext_leaf={:#x}",
        Token(vendor),
        family,
        model,
        stepping,
        limits.max_basic,
        limits.max_ext
    );

    let mut brand = [0u8; 48];
    if limits.max_ext >= EXT_BASE + 4 {
        for (i, chunk) in brand.chunks_mut(16).enumerate() {
            let r = cpuid(EXT_BASE + 2 + i as u32, 0);
            for (j, word) in [r.eax, r.ebx, r.ecx, r.edx].iter().enumerate() {
                chunk[j * 4..j * 4 + 4].copy_from_slice(&word.to_le_bytes());
            }
        }
    }
    say!("cpuid brand={}", Text(&brand));
}

/// One level of leaf 0xB or 0x1F.
#[derive(Clone, Copy)]
struct Level {
    kind: u32,
    shift: u32,
    count: u32,
}

/// The levels of extended topology leaf `leaf` (0xB or 0x1F) and the x2APIC
/// ID it reports, or `None` if the CPU lacks the leaf (SDM: the leaf
/// exists when the maximum leaf reaches it and subleaf 0's EBX[15:0] is not
/// zero).
fn topology_levels(limits: &Limits, leaf: u32) -> Option<(Vec<Level>, u32)> {
    let first = limits.get(leaf, 0);
    if limits.max_basic < leaf || first.ebx & 0xffff == 0 {
        return None;
    }
    let mut levels = Vec::new();
    for sub in 0..32 {
        let r = limits.get(leaf, sub);
        let kind = (r.ecx >> 8) & 0xff;
        if kind == 0 {
            break;
        }
        levels.push(Level {
            kind,
            shift: r.eax & 0x1f,
            count: r.ebx & 0xffff,
        });
    }
    Some((levels, first.edx))
}

fn report_topology(limits: &Limits, amd_like: bool, logical: u32) {
    let leaf_1f = topology_levels(limits, 0x1f);
    let leaf_b = topology_levels(limits, 0xb);
    let x2apic_id = leaf_b.as_ref().or(leaf_1f.as_ref()).map(|(_, id)| *id);
    let extended = leaf_1f
        .map(|(levels, _)| (levels, "leaf1f"))
        .or(leaf_b.map(|(levels, _)| (levels, "leafb")));
    let (threads, per_package, source, shift_smt, shift_core) =
        if let Some((levels, source)) = extended {
            let smt = levels.iter().find(|l| l.kind == LEVEL_SMT);
            let core = levels.iter().find(|l| l.kind == LEVEL_CORE);
            // The highest level's count is the package's logical
            // processors (the core level's, when it is the highest, as on
            // every CPU without module/tile/die levels).
            let package = levels.last().map_or(1, |l| l.count);
            (
                smt.map_or(1, |l| l.count),
                package,
                source,
                Some(smt.map_or(0, |l| l.shift)),
                core.map(|l| l.shift),
            )
        } else if amd_like && limits.max_ext >= EXT_BASE + 8 {
            let topoext = limits.get(EXT_BASE + 1, 0).ecx & EXT1_ECX_TOPOEXT != 0;
            let threads = if topoext && limits.max_ext >= EXT_BASE + 0x1e {
                ((limits.get(EXT_BASE + 0x1e, 0).ebx >> 8) & 0xff) + 1
            } else {
                1
            };
            let per_package = (limits.get(EXT_BASE + 8, 0).ecx & 0xff) + 1;
            (threads, per_package, "amd", None, None)
        } else {
            let leaf1 = limits.get(1, 0);
            let per_package = if leaf1.edx & CPUID1_EDX_HTT != 0 {
                ((leaf1.ebx >> 16) & 0xff).max(1)
            } else {
                1
            };
            // Intel leaf 4: EAX[31:26] + 1 cores per package (when the
            // first cache level is described at all).
            let leaf4 = limits.get(4, 0);
            let cores = if !amd_like && leaf4.eax & 0x1f != 0 {
                (leaf4.eax >> 26) + 1
            } else {
                per_package
            };
            (
                (per_package / cores).max(1),
                per_package,
                "legacy",
                None,
                None,
            )
        };
    let threads = threads.max(1);
    let cores = (per_package / threads).max(1);
    let sockets = logical.div_ceil(threads * cores);
    say!(
        "cpuid topology threads_per_core={} cores_per_socket={} sockets={} logical={} source={} \
         apic_id_shift_smt={} apic_id_shift_core={} x2apic_id={}",
        threads,
        cores,
        sockets,
        logical,
        source,
        Opt(shift_smt),
        Opt(shift_core),
        Opt(x2apic_id)
    );
}

/// `name=0|1` for each of [`FEATURES`].
struct FeatureList<'a>(&'a Limits);

impl fmt::Display for FeatureList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut cached: Option<(u32, u32, CpuidResult)> = None;
        for feature in FEATURES {
            let result = match cached {
                Some((leaf, sub, result)) if leaf == feature.leaf && sub == feature.sub => result,
                _ => {
                    let result = self.0.get(feature.leaf, feature.sub);
                    cached = Some((feature.leaf, feature.sub, result));
                    result
                }
            };
            let set = (reg(&result, feature.reg) >> feature.bit) & 1;
            write!(f, " {}={}", feature.name, set)?;
        }
        Ok(())
    }
}

/// The leaves [`FEATURES`] reads, raw: ` leaf.sub=eax,ebx,ecx,edx` each.
struct RawLeaves<'a>(&'a Limits);

impl fmt::Display for RawLeaves<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut last = None;
        for feature in FEATURES {
            if last == Some((feature.leaf, feature.sub)) {
                continue;
            }
            last = Some((feature.leaf, feature.sub));
            let r = self.0.get(feature.leaf, feature.sub);
            write!(
                f,
                " {:#x}.{}={:#010x},{:#010x},{:#010x},{:#010x}",
                feature.leaf, feature.sub, r.eax, r.ebx, r.ecx, r.edx
            )?;
        }
        Ok(())
    }
}

fn report_features(limits: &Limits) {
    say!("cpuid features{}", FeatureList(limits));
    say!("cpuid raw{}", RawLeaves(limits));
}

/// The hypervisor leaves: KVM's (found like Linux's
/// `hypervisor_cpuid_base`), or another hypervisor's signature at
/// 0x40000000, or `signature=none` without CPUID.1:ECX.hypervisor.
fn report_hypervisor(limits: &Limits) {
    if limits.get(1, 0).ecx & CPUID1_ECX_HYPERVISOR == 0 {
        say!("cpuid kvm signature=none");
        return;
    }
    let kvm = (HV_BASE..HV_END).step_by(HV_STEP).find(|&base| {
        let r = cpuid(base, 0);
        &signature(r.ebx, r.ecx, r.edx) == KVM_SIGNATURE && r.eax >= base + HV_FEATURES
    });
    let Some(base) = kvm else {
        // Another hypervisor's signature, if 0x40000000 holds one: a
        // maximum leaf in the hypervisor range and printable ASCII (KVM
        // without its leaves answers with zeros, or for Intel guests with
        // the highest basic leaf's data).
        let r = cpuid(HV_BASE, 0);
        let other = signature(r.ebx, r.ecx, r.edx);
        let printable = other.iter().all(|&b| b == 0 || (0x20..0x7f).contains(&b));
        let in_range = (HV_BASE..HV_BASE + 0x1000_0000).contains(&r.eax);
        if printable && in_range {
            say!("cpuid kvm signature={}", Token(&other));
        } else {
            say!("cpuid kvm signature=none");
        }
        return;
    };
    let max = cpuid(base, 0).eax;
    let features = cpuid(base + HV_FEATURES, 0).eax;
    let mut line = FmtBuf::<512>::new();
    let _ = write!(
        line,
        "signature={} max_leaf={:#x} features={:#010x}",
        Token(KVM_SIGNATURE),
        max,
        features
    );
    for (name, bit) in KVM_FEATURES {
        let _ = write!(line, " {}={}", name, (features >> bit) & 1);
    }
    if max >= base + HV_TIMING {
        let timing = cpuid(base + HV_TIMING, 0);
        let _ = write!(line, " tsc_khz={} apic_khz={}", timing.eax, timing.ebx);
    } else {
        let _ = write!(line, " tsc_khz=none");
    }
    say!("cpuid kvm {} base={:#x}", line, base);
}

/// CPUID with a leaf above the highest basic leaf (but below the
/// hypervisor range): Intel CPUs return the highest basic leaf's data, AMD
/// CPUs zeros (KVM follows the guest's vendor).
fn report_unknown_leaf(limits: &Limits) {
    let leaf = limits.max_basic.saturating_add(0x100).min(HV_BASE - 1);
    let unknown = cpuid(leaf, 0);
    let max = cpuid(limits.max_basic, 0);
    say!(
        "cpuid unknown_leaf={:#x} same_as_max_basic={} zeros={}",
        leaf,
        u8::from(same(&unknown, &max)),
        u8::from(is_zero(&unknown))
    );
}

/// RDMSR and WRMSR of [`UNKNOWN_MSR`] must raise #GP.
fn check_unknown_msr() -> Outcome {
    let (_, read_gp) = idt::with_gp_skip(|| {
        let (lo, hi): (u32, u32);
        // SAFETY: reading an MSR has no side effects; the #GP it should
        // raise is skipped by the handler `with_gp_skip` installs.
        unsafe {
            core::arch::asm!("rdmsr", in("ecx") UNKNOWN_MSR, out("eax") lo, out("edx") hi,
                             options(nostack, preserves_flags));
        }
        (lo, hi)
    });
    let (_, write_gp) = idt::with_gp_skip(|| {
        // SAFETY: no CPU implements this MSR, so the write either raises
        // #GP (skipped by the handler) or is dropped.
        unsafe {
            core::arch::asm!("wrmsr", in("ecx") UNKNOWN_MSR, in("eax") 0u32, in("edx") 0u32,
                             options(nostack, preserves_flags));
        }
    });
    say!(
        "msr rdmsr={:#x} gp={} wrmsr={:#x} gp={}",
        UNKNOWN_MSR,
        read_gp,
        UNKNOWN_MSR,
        write_gp
    );
    if read_gp == 0 {
        bail!("rdmsr {:#x} raised no #GP", UNKNOWN_MSR);
    }
    if write_gp == 0 {
        bail!("wrmsr {:#x} raised no #GP", UNKNOWN_MSR);
    }
    Ok(())
}
