//! Shared helpers of the ferrovisor end-to-end tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

pub use e2e::*;

/// Generous bound for a tiny guest's whole run (the host may be emulating ring 0).
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// `ferrovisor --kernel KERNEL --debug-exit --log-level info` with the console on stdout.
pub fn ferrovisor(kernel: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferrovisor"));
    c.arg("--kernel")
        .arg(kernel)
        .arg("--debug-exit")
        .args(["--log-level", "info"]);
    c
}

/// Runs a command to completion with the console captured.
pub fn run(command: Command) -> Exited {
    VmProcess::spawn(command).wait(RUN_TIMEOUT)
}

/// The exit status of a guest that wrote `v` to the debug-exit port.
pub fn debug_exit(v: i32) -> i32 {
    (v << 1) | 1
}

pub mod rest;
