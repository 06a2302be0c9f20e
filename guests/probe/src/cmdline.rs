//! Kernel command line options: whitespace-separated `key=value` words.

use crate::exit::{ExitMode, Reason};
use crate::fail_reason;

/// Options the probe understands. Unknown keys are ignored.
pub struct Options<'a> {
    /// `probe=NAME`, default `boot`.
    pub program: &'a str,
    /// `exit=debug|poweroff|halt`, default `debug`.
    pub exit: ExitMode,
    /// Set when an option has an invalid value; the probe then fails.
    pub error: Option<Reason>,
}

impl<'a> Options<'a> {
    /// Parses the options from `cmdline`.
    pub fn parse(cmdline: &'a str) -> Self {
        let mut options = Options {
            program: value(cmdline, "probe").unwrap_or("boot"),
            exit: ExitMode::Debug,
            error: None,
        };
        match value(cmdline, "exit") {
            None | Some("debug") => {}
            Some("poweroff") => options.exit = ExitMode::Poweroff,
            Some("halt") => options.exit = ExitMode::Halt,
            Some(other) => options.error = Some(fail_reason!("unknown exit mode {}", other)),
        }
        options
    }
}

/// The value of the last `key=value` word for `key` (later words win).
pub fn value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|word| word.split_once('='))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .next_back()
}
