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

/// The value of `key` as a number: decimal, or hex with `0x`, optionally
/// followed by `K`, `M` or `G` (binary multiples: `4K` = 4096). `None` if
/// the key is absent; FAIL on anything else.
pub fn number(cmdline: &str, key: &str) -> Result<Option<u64>, Reason> {
    let Some(text) = value(cmdline, key) else {
        return Ok(None);
    };
    let (digits, shift) = match text.as_bytes().last() {
        Some(b'k' | b'K') => (&text[..text.len() - 1], 10),
        Some(b'm' | b'M') => (&text[..text.len() - 1], 20),
        Some(b'g' | b'G') => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    let parsed = match digits.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => digits.parse::<u64>(),
    };
    match parsed.ok().and_then(|n| n.checked_mul(1 << shift)) {
        Some(n) => Ok(Some(n)),
        None => Err(fail_reason!("bad number {}={}", key, text)),
    }
}
