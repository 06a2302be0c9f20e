//! The test guests, built on first use: the probe (`guests/probe`, a `no_std`
//! Rust kernel) and the assembly loader-format guests (`guests/asm`).

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use crate::host::repo_root;

/// Builds the probe guest (once per test process) and returns its path.
pub fn probe() -> PathBuf {
    static PROBE: OnceLock<PathBuf> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            let dir = repo_root().join("guests/probe");
            let status = Command::new(env!("CARGO"))
                .args(["build", "--release", "--quiet"])
                .current_dir(&dir)
                .env_remove("RUSTFLAGS")
                .env_remove("CARGO_TARGET_DIR")
                .env_remove("CARGO_BUILD_TARGET")
                .status()
                .expect("run cargo for the probe guest");
            assert!(status.success(), "building the probe guest failed");
            dir.join("target/x86_64-unknown-linux-gnu/release/probe")
        })
        .clone()
}

/// One of the assembly guests.
#[derive(Debug, Clone, Copy)]
pub enum AsmGuest {
    /// 32-bit multiboot v1 ELF that prints its multiboot info.
    Multiboot,
    /// ELF64 vmlinux-style guest entered through the Linux 64-bit boot protocol.
    LinuxElf,
    /// The same guest wrapped as a bzImage.
    BzImage,
    /// A minimal PVH guest: prints "hello" and powers off.
    PvhHello,
}

/// Builds the assembly guests (once per test process) and returns the path of `guest`.
pub fn asm_guest(guest: AsmGuest) -> PathBuf {
    static OUT: OnceLock<PathBuf> = OnceLock::new();
    let out = OUT.get_or_init(|| {
        let root = repo_root();
        let out = root.join("target/e2e-guests/asm");
        let status = Command::new("bash")
            .arg(root.join("guests/asm/build.sh"))
            .arg(&out)
            .status()
            .expect("run guests/asm/build.sh");
        assert!(status.success(), "building the assembly guests failed");
        out
    });
    out.join(match guest {
        AsmGuest::Multiboot => "multiboot.elf",
        AsmGuest::LinuxElf => "linux64.elf",
        AsmGuest::BzImage => "linux64.bzImage",
        AsmGuest::PvhHello => "pvh-hello.elf",
    })
}
