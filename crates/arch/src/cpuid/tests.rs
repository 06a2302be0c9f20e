//! Tests of model application, and the pinned CPUID of every named model.

use super::*;

/// A CPUID entry flagged index-significant (lookups of leaves without
/// subleaves ask for index 0, so the flag is harmless there).
fn entry(function: u32, index: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function,
        index,
        flags: kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax,
        ebx,
        ecx,
        edx,
        ..Default::default()
    }
}

/// A host that supports every named feature (AMD vendor string).
fn rich_host(vendor: &[u8; 12]) -> Vec<kvm_cpuid_entry2> {
    let w = |i: usize| u32::from_le_bytes([vendor[i], vendor[i + 1], vendor[i + 2], vendor[i + 3]]);
    let mut e = vec![
        entry(0, 0, 0xd, w(0), w(8), w(4)),
        entry(1, 0, 0x00a0_0f11, 0, 0, 0),
        entry(7, 0, 1, 0, 0, 0),
        entry(7, 1, 0, 0, 0, 0),
        // XSAVE: x87, SSE, AVX, AVX-512 (5-7), PKRU supported.
        entry(0xd, 0, 0x2e7, 0x340, 0x988, 0),
        entry(0xd, 1, 0, 0, 0, 0),
        entry(0xd, 2, 0x100, 0x240, 0, 0),
        entry(0xd, 5, 0x40, 0x340, 0, 0),
        entry(0xd, 6, 0x200, 0x380, 0, 0),
        entry(0xd, 7, 0x400, 0x580, 0, 0),
        entry(0xd, 9, 0x8, 0x980, 0, 0),
        entry(0x4000_0000, 0, 0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d),
        entry(0x4000_0001, 0, 0x0100_7afb, 0, 0, 0),
        entry(0x8000_0000, 0, 0x8000_0021, w(0), w(8), w(4)),
        entry(0x8000_0001, 0, 0, 0, 0, 0),
        entry(0x8000_0002, 0, 0, 0, 0, 0),
        entry(0x8000_0003, 0, 0, 0, 0, 0),
        entry(0x8000_0004, 0, 0, 0, 0, 0),
        entry(0x8000_0007, 0, 0, 0, 0, 0),
        entry(0x8000_0008, 0, 0, 0, 0, 0),
    ];
    for f in features::FEATURES {
        if let Some(x) = find_mut(&mut e, f.leaf, f.subleaf) {
            *reg_mut(x, f.reg) |= 1 << f.bit;
        }
    }
    e
}

fn get(e: &[kvm_cpuid_entry2], leaf: u32, subleaf: u32) -> kvm_cpuid_entry2 {
    *find(e, leaf, subleaf).unwrap()
}

fn spec(model: &str) -> CpuSpec {
    CpuSpec {
        model: model.into(),
        changes: Vec::new(),
        pv: PvOptions {
            kvm_pv: true,
            tsc_khz: None,
        },
    }
}

#[test]
fn x86_64_v3_has_avx2_and_no_avx512() {
    let host = rich_host(b"AuthenticAMD");
    let e = build(&host, &spec("x86-64-v3")).unwrap();
    let avx2 = features::by_name("avx2").unwrap();
    let avx512f = features::by_name("avx512f").unwrap();
    assert!(supports(&e, avx2));
    assert!(!supports(&e, avx512f));
    assert!(!supports(&e, features::by_name("sha_ni").unwrap()));
    // XCR0: x87, SSE, AVX only; the AVX-512 subleaves are gone; the size follows.
    let d0 = get(&e, 0xd, 0);
    assert_eq!(d0.eax, 0x7);
    assert_eq!(d0.ecx, 0x340);
    assert_eq!(get(&e, 0xd, 5).eax, 0);
    // Vendor stays the host's, the signature and brand are the model's.
    assert_eq!(&vendor_id(&e), b"AuthenticAMD");
    assert_eq!(
        get(&e, 1, 0).eax,
        models::by_name("x86-64-v3")
            .map(|m| (m.signature)(Vendor::Amd).eax())
            .unwrap()
    );
    let brand: Vec<u8> = (0x8000_0002u32..=0x8000_0004)
        .flat_map(|l| {
            let x = get(&e, l, 0);
            [x.eax, x.ebx, x.ecx, x.edx]
                .into_iter()
                .flat_map(u32::to_le_bytes)
        })
        .collect();
    assert!(brand.starts_with(b"Ferrovisor x86-64-v3 CPU\0"));
}

#[test]
fn host_model_passes_features_through_and_changes_apply() {
    let host = rich_host(b"AuthenticAMD");
    let mut s = spec("host");
    s.changes = vec![
        FeatureChange::parse("-avx512f").unwrap(),
        FeatureChange::parse("-x2apic").unwrap(),
    ];
    let e = build(&host, &s).unwrap();
    assert!(supports(&e, features::by_name("sha_ni").unwrap()));
    assert!(!supports(&e, features::by_name("avx512f").unwrap()));
    assert!(!supports(&e, features::by_name("x2apic").unwrap()));
    assert_eq!(
        get(&e, 0xd, 0).eax & 0xe0,
        0,
        "AVX-512 state hidden with avx512f"
    );
    assert!(FeatureChange::parse("avx").is_err());
    assert!(FeatureChange::parse("+warp_drive")
        .unwrap_err()
        .contains("unknown"));
    assert_eq!(FeatureChange::parse("+lzcnt").unwrap().text(), "+abm");
}

#[test]
fn what_the_host_lacks_is_refused_by_name() {
    let mut host = rich_host(b"AuthenticAMD");
    for e in host.iter_mut().filter(|e| e.function == 7 && e.index == 0) {
        e.ebx &= !(1 << 16 | 1 << 30); // no avx512f, avx512bw
    }
    let err = build(&host, &spec("x86-64-v4")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "model x86-64-v4: this host cannot provide avx512f, avx512bw"
    );
    let mut s = spec("host");
    s.changes = vec![FeatureChange::parse("+avx512f").unwrap()];
    assert!(build(&host, &s)
        .unwrap_err()
        .to_string()
        .contains("features=: this host cannot provide avx512f"));
    let err = build(&host, &spec("Skylake-Server")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "model Skylake-Server needs an Intel host; this host is AuthenticAMD"
    );
    assert!(matches!(
        build(&host, &spec("Pentium")),
        Err(CpuidError::UnknownModel(_))
    ));
}

#[test]
fn kvm_pv_off_hides_the_signature() {
    let host = rich_host(b"GenuineIntel");
    let mut s = spec("host");
    s.pv.kvm_pv = false;
    let e = build(&host, &s).unwrap();
    assert!(e
        .iter()
        .all(|x| !(0x4000_0000..0x4000_0100).contains(&x.function)));
    s.pv = PvOptions {
        kvm_pv: true,
        tsc_khz: Some(3_000_000),
    };
    let e = build(&host, &s).unwrap();
    assert_eq!(get(&e, 0x4000_0000, 0).eax, 0x4000_0010);
    assert_eq!(get(&e, 0x4000_0010, 0).eax, 3_000_000);
}

#[test]
fn signatures_encode_extended_fields() {
    let s = |family, model, stepping| {
        Signature {
            family,
            model,
            stepping,
        }
        .eax()
    };
    assert_eq!(s(6, 85, 4), 0x0005_0654);
    assert_eq!(s(23, 49, 0), 0x0083_0f10);
    assert_eq!(s(15, 107, 1), 0x0006_0fb1);
}

/// Every named model's feature registers, pinned: a change here changes the
/// guest ABI of that model and must be a deliberate, new model instead.
#[test]
fn model_cpuid_is_pinned() {
    let pinned: &[(&str, [u32; 11])] = &[
        // leaf1.ecx, leaf1.edx, 7.ebx, 7.ecx, 7.edx, 7.1.eax, 0xd.1.eax,
        // 0x8000_0001.ecx, 0x8000_0001.edx, 0x8000_0007.edx, 0x8000_0008.ebx
        (
            "x86-64-v1",
            [
                0x8120_0000,
                0x078b_fbff,
                0,
                0,
                0,
                0,
                0,
                0,
                0x2010_0800,
                0,
                0,
            ],
        ),
        (
            "x86-64-v2",
            [
                0x81b8_2201,
                0x078b_fbff,
                0,
                0,
                0,
                0,
                0,
                0x1,
                0x2010_0800,
                0,
                0,
            ],
        ),
        (
            "x86-64-v3",
            [
                0xb5f8_3201,
                0x078b_fbff,
                0x128,
                0,
                0,
                0,
                0,
                0x21,
                0x2010_0800,
                0,
                0,
            ],
        ),
        (
            "x86-64-v4",
            [
                0xb5f8_3201,
                0x078b_fbff,
                0xd003_0128,
                0,
                0,
                0,
                0,
                0x21,
                0x2010_0800,
                0,
                0,
            ],
        ),
        (
            "Skylake-Server",
            [
                0xf7fa_3203,
                0x078b_fbff,
                0xd19f_07a9,
                0x8,
                0,
                0,
                0x7,
                0x121,
                0x2c10_0800,
                0,
                0,
            ],
        ),
        (
            "EPYC",
            [
                0xf7f8_3203,
                0x078b_fbff,
                0x209c_01a9,
                0,
                0,
                0,
                0x7,
                0x3f1,
                0x2e50_0800,
                0,
                0,
            ],
        ),
        (
            "EPYC-Rome",
            [
                0xf7f8_3203,
                0x078b_fbff,
                0x219c_01a9,
                0x0040_0004,
                0,
                0,
                0x7,
                0x3f1,
                0x2e50_0800,
                0,
                0x205,
            ],
        ),
    ];
    assert_eq!(pinned.len(), MODELS.len(), "every model is pinned");
    for (name, regs) in pinned {
        let model = models::by_name(name).unwrap();
        let got: Vec<u32> = model_registers(model).iter().map(|r| r.3).collect();
        assert_eq!(
            got,
            regs.to_vec(),
            "{name}: {}",
            got.iter()
                .map(|v| format!("{v:#x}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

#[test]
fn every_model_names_only_known_features_once() {
    for m in MODELS {
        for (i, name) in m.features.iter().enumerate() {
            assert!(features::by_name(name).is_some(), "{}: {name}", m.name);
            assert!(
                !m.features[i + 1..].contains(name),
                "{}: {name} twice",
                m.name
            );
        }
    }
}
