//! Fixed-capacity text buffer for formatting without an allocator.

use core::fmt;

/// A string of at most `N` bytes; longer writes are truncated (at a UTF-8
/// character boundary) and marked with a trailing `~`.
pub struct FmtBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
    truncated: bool,
}

impl<const N: usize> FmtBuf<N> {
    /// Creates an empty buffer.
    pub const fn new() -> Self {
        Self {
            buf: [0; N],
            len: 0,
            truncated: false,
        }
    }

    /// Formats `args` into a new buffer.
    pub fn from_args(args: fmt::Arguments) -> Self {
        let mut buf = Self::new();
        // Writing into a FmtBuf never fails; overflow only truncates.
        let _ = fmt::write(&mut buf, args);
        buf
    }

    /// The text written so far.
    pub fn as_str(&self) -> &str {
        // `write_str` only ever copies whole characters from `&str`s.
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("<invalid utf-8>")
    }
}

impl<const N: usize> fmt::Write for FmtBuf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = N - self.len;
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.buf[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        if take < s.len() {
            self.truncated = true;
        }
        Ok(())
    }
}

impl<const N: usize> fmt::Display for FmtBuf<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())?;
        if self.truncated {
            f.write_str("~")?;
        }
        Ok(())
    }
}

/// Formats like `format!` into a [`FmtBuf<96>`], without allocating (the
/// prebuilt `alloc::fmt::format` would pull in the unwinder).
#[macro_export]
macro_rules! text {
    ($($arg:tt)*) => {
        $crate::fmtbuf::FmtBuf::<96>::from_args(format_args!($($arg)*))
    };
}
