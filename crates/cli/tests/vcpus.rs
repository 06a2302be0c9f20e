//! vCPUs: counts up to past 254 (x2APIC), topology in CPUID and APIC IDs,
//! named CPU models, feature changes, KVM's paravirtual leaves, and what a
//! guest gets for CPUID leaves and MSRs nobody implements.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::process::Command;

fn probe_cpus(cpus: &str, cmdline: &str, memory: &str) -> Exited {
    let mut cmd = ferrovisor(&probe());
    cmd.args(["--cmdline", cmdline, "--cpus", cpus, "--memory"])
        .arg(format!("size={memory}"));
    run(cmd)
}

/// `name=0|1` pairs of the probe's `probe: cpuid features` line.
fn features(out: &Exited) -> BTreeMap<String, bool> {
    let line = out
        .line("probe: cpuid features")
        .unwrap_or_else(|| panic!("no features line: {out:#?}"));
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v == "1"))
        .collect()
}

fn passed(out: &Exited) {
    assert_eq!(out.code(), debug_exit(0), "{out:#?}");
    assert!(out.line("probe: PASS").is_some(), "{out:#?}");
}

/// `ferrovisor --cpu-models`: model name → the verdict column.
fn models() -> BTreeMap<String, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_ferrovisor"))
        .arg("--cpu-models")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| {
            let name = l.split_whitespace().next()?.to_string();
            let verdict = if l.contains(" yes") && !l.contains(" no: ") {
                "yes".to_string()
            } else {
                l[l.find(" no: ")? + 1..].to_string()
            };
            Some((name, verdict))
        })
        .collect()
}

fn boot_with(cpus: &str, memory: &str) -> Exited {
    let out = probe_cpus(cpus, "probe=boot", memory);
    passed(&out);
    out
}

fn apic_ids(out: &Exited) -> Vec<u32> {
    out.field("probe: apic", "ids")
        .unwrap()
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect()
}

#[test]
fn topology_shapes_apic_ids_and_cpuid() {
    if !require_kvm() {
        return;
    }
    // 2 sockets x 3 cores x 2 threads: thread bit 0, core bits 1-2, socket bit 3.
    let out = boot_with("boot=12,topology=2:3:2", "256M");
    assert_eq!(out.field("probe: cpus", "count").as_deref(), Some("12"));
    assert_eq!(
        apic_ids(&out),
        [0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13],
        "{out:#?}"
    );
    let out = probe_cpus("boot=12,topology=2:3:2", "probe=cpuid", "256M");
    passed(&out);
    let topo = |k| out.field("probe: cpuid topology", k);
    assert_eq!(topo("threads_per_core").as_deref(), Some("2"), "{out:#?}");
    assert_eq!(topo("cores_per_socket").as_deref(), Some("3"));
    assert_eq!(topo("sockets").as_deref(), Some("2"));
    assert_eq!(topo("logical").as_deref(), Some("12"));
    assert_eq!(topo("apic_id_shift_smt").as_deref(), Some("1"));
    assert_eq!(topo("apic_id_shift_core").as_deref(), Some("3"));
    // max= beyond boot: the extra CPUs are listed but not started.
    let out = boot_with("boot=2,max=4", "256M");
    assert_eq!(out.field("probe: cpus", "count").as_deref(), Some("2"));
    assert_eq!(apic_ids(&out), [0, 1]);
}

#[test]
fn past_254_vcpus_in_x2apic_mode() {
    if !require_kvm() {
        return;
    }
    let n = 288;
    let out = boot_with(&format!("boot={n}"), "512M");
    assert_eq!(out.field("probe: cpus", "source").as_deref(), Some("acpi"));
    assert_eq!(out.field("probe: cpus", "count"), Some(n.to_string()));
    assert_eq!(
        out.field("probe: aps", "started"),
        Some((n - 1).to_string())
    );
    assert_eq!(out.field("probe: aps", "mode").as_deref(), Some("x2apic"));
    assert_eq!(apic_ids(&out), (0..n).collect::<Vec<u32>>());
}

#[test]
fn x2apic_mode_on_request_with_few_vcpus() {
    if !require_kvm() {
        return;
    }
    let out = probe_cpus("boot=4", "probe=boot x2apic=on", "256M");
    passed(&out);
    assert_eq!(out.field("probe: aps", "mode").as_deref(), Some("x2apic"));
    assert_eq!(apic_ids(&out), [0, 1, 2, 3]);
}

/// The features ferrovisor warned that KVM forces into the guest's CPUID
/// ("KVM on this host overrides CPUID bits ... (+sse3 +avx ...)").
fn overridden(out: &Exited) -> Vec<String> {
    out.log
        .lines()
        .find(|l| l.contains("overrides CPUID bits the CPU model fixes"))
        .and_then(|l| Some(l[l.find('(')? + 1..l.find(')')?].to_string()))
        .map(|list| {
            list.split_whitespace()
                .map(|w| w[1..].to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_baseline_model_hides_what_it_does_not_list() {
    if !require_kvm() {
        return;
    }
    let out = probe_cpus("boot=1,model=x86-64-v1", "probe=cpuid", "256M");
    passed(&out);
    let f = features(&out);
    for on in [
        "fpu",
        "sse",
        "sse2",
        "cx8",
        "cmov",
        "x2apic",
        "hypervisor",
        "lm",
        "nx",
        "syscall",
    ] {
        assert!(f[on], "{on} in x86-64-v1: {out:#?}");
    }
    // What KVM forces in (PVM does) ferrovisor names in a warning, and the
    // guest sees exactly that; everything else the model leaves out is hidden.
    let forced = overridden(&out);
    for name in &forced {
        let probe_name = match name.as_str() {
            "sha_ni" => "sha",
            "abm" => "lzcnt",
            "3dnowprefetch" => "prefetchw",
            "avx512_vnni" => "avx512vnni",
            "avx512_bf16" => "avx512bf16",
            "avx512_vbmi2" => "avx512vbmi2",
            "avx512_bitalg" => "avx512bitalg",
            "avx512_vpopcntdq" => "avx512vpopcntdq",
            other => other,
        };
        if let Some(seen) = f.get(probe_name) {
            assert!(seen, "KVM forces {name}, the guest must see it");
        }
    }
    let mut hidden = 0;
    for off in [
        "sse3", "ssse3", "popcnt", "cx16", "avx", "avx2", "avx512f", "aes", "sha", "rdtscp",
    ] {
        let name = if off == "sha" { "sha_ni" } else { off };
        if forced.iter().any(|n| n == name) {
            continue;
        }
        assert!(!f[off], "{off} is not in x86-64-v1");
        hidden += 1;
    }
    if !forced.is_empty() {
        eprintln!("KVM on this host forces {} CPUID bits into every guest; {hidden} of the checked features were hidden", forced.len());
    }
    assert_eq!(
        out.line("probe: cpuid brand="),
        Some("probe: cpuid brand=Ferrovisor x86-64-v1 CPU")
    );
    assert_eq!(
        out.field("probe: cpuid vendor", "family").as_deref(),
        Some("15")
    );
}

#[test]
fn x86_64_v3_shows_avx2_without_avx512_or_is_refused_naming_what_is_missing() {
    if !require_kvm() {
        return;
    }
    let verdict = models()["x86-64-v3"].clone();
    if verdict == "yes" {
        let out = probe_cpus("boot=1,model=x86-64-v3", "probe=cpuid", "256M");
        passed(&out);
        let f = features(&out);
        assert!(f["avx2"] && f["avx"] && f["fma"] && f["bmi2"] && f["movbe"]);
        assert!(!f["avx512f"] && !f["avx512bw"] && !f["sha"]);
    } else {
        // This host's KVM cannot provide the level: refused, naming the features.
        let out = probe_cpus("boot=1,model=x86-64-v3", "probe=cpuid", "256M");
        assert_eq!(out.code(), 2, "{out:#?}");
        let line = out
            .log
            .lines()
            .find(|l| l.contains("--cpus"))
            .unwrap_or_default()
            .to_string();
        assert!(
            line.contains("model x86-64-v3: this host cannot provide") && line.contains("avx2"),
            "{line}"
        );
        assert!(verdict.contains("avx2"), "{verdict}");
        eprintln!("x86-64-v3 is not available on this host ({verdict}); checked the refusal");
    }
}

#[test]
fn models_of_another_vendor_or_unknown_names_are_refused() {
    if !require_kvm() {
        return;
    }
    let m = models();
    assert!(m.contains_key("host") && m.contains_key("EPYC-Rome") && m.contains_key("x86-64-v4"));
    let other = if m["Skylake-Server"].contains("needs an Intel host") {
        "Skylake-Server"
    } else {
        "EPYC"
    };
    let out = probe_cpus(&format!("boot=1,model={other}"), "probe=cpuid", "256M");
    assert_eq!(out.code(), 2, "{out:#?}");
    assert!(
        out.log.contains("host; this host is") || out.log.contains("cannot provide"),
        "{}",
        out.log
    );
    let out = probe_cpus("boot=1,model=Pentium", "probe=cpuid", "256M");
    assert_eq!(out.code(), 2);
    assert!(out.log.contains("model=Pentium: unknown"), "{}", out.log);
    let out = probe_cpus("boot=2000", "probe=boot", "256M");
    assert_eq!(out.code(), 2);
    assert!(
        out.log.contains("KVM on this host allows at most"),
        "{}",
        out.log
    );
}

#[test]
fn host_model_passes_kvm_features_and_changes_apply() {
    if !require_kvm() {
        return;
    }
    let host = probe_cpus("boot=1", "probe=cpuid", "256M");
    passed(&host);
    let f = features(&host);
    assert!(f["x2apic"] && f["hypervisor"] && f["sse2"] && f["lm"]);
    // A feature the host has can be removed; one it lacks cannot be added.
    let out = probe_cpus("boot=1,features=-x2apic,-nx", "probe=cpuid", "256M");
    passed(&out);
    let g = features(&out);
    assert!(!g["x2apic"] && !g["nx"] && g["sse2"]);
    if let Some((missing, _)) = f.iter().find(|(name, on)| !**on && name.as_str() != "ht") {
        let out = probe_cpus(
            &format!("boot=1,features=+{missing}"),
            "probe=cpuid",
            "256M",
        );
        assert_eq!(out.code(), 2, "+{missing}: {out:#?}");
        assert!(out.log.contains("this host cannot provide"), "{}", out.log);
    }
}

#[test]
fn kvm_pv_leaves_appear_and_vanish() {
    if !require_kvm() {
        return;
    }
    let on = probe_cpus("boot=1", "probe=cpuid", "256M");
    passed(&on);
    let kvm = |out: &Exited, k: &str| out.field("probe: cpuid kvm", k);
    assert_eq!(
        kvm(&on, "signature").as_deref(),
        Some("KVMKVMKVM"),
        "{on:#?}"
    );
    for feature in [
        "clocksource2",
        "pv_eoi",
        "pv_unhalt",
        "pv_tlb_flush",
        "pv_sched_yield",
        "steal_time",
    ] {
        assert_eq!(
            kvm(&on, feature).as_deref(),
            Some("1"),
            "{feature}: {on:#?}"
        );
    }
    let tsc: u32 = kvm(&on, "tsc_khz")
        .unwrap()
        .parse()
        .expect("the TSC leaf is exposed");
    assert!(tsc > 100_000, "tsc_khz={tsc}");
    assert_eq!(kvm(&on, "apic_khz").as_deref(), Some("1000000"));
    let off = probe_cpus("boot=1,kvm_pv=off", "probe=cpuid", "256M");
    passed(&off);
    assert_eq!(kvm(&off, "signature").as_deref(), Some("none"), "{off:#?}");
}

#[test]
fn unimplemented_cpuid_and_msrs_behave_like_hardware() {
    if !require_kvm() {
        return;
    }
    let out = probe_cpus("boot=1", "probe=cpuid", "256M");
    passed(&out);
    assert_eq!(
        out.field("probe: msr", "gp").as_deref(),
        Some("1"),
        "{out:#?}"
    );
    let line = out.line("probe: msr").unwrap();
    assert_eq!(
        line.matches("gp=1").count(),
        2,
        "RDMSR and WRMSR fault: {line}"
    );
    // Past the highest basic leaf, Intel CPUs repeat that leaf and AMD ones
    // return zeros; KVM does the same by the guest's vendor.
    let vendor = out.field("probe: cpuid vendor", "vendor").unwrap();
    let key = if vendor == "AuthenticAMD" {
        "zeros"
    } else {
        "same_as_max_basic"
    };
    assert_eq!(
        out.field("probe: cpuid unknown_leaf", key).as_deref(),
        Some("1"),
        "{vendor}: {out:#?}"
    );
}
