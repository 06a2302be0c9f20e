//! sVirt-style SELinux labels: where SELinux is enabled, each jailed VM runs
//! in the `svirt_t` domain with an MCS category pair of its own, and its
//! files get `svirt_image_t` with the same pair, so the policy keeps one VM's
//! process away from another VM's files even when DAC would allow it.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Where the kernel exposes SELinux.
const SELINUXFS: &str = "/sys/fs/selinux";

/// Categories are picked from `c0..c1023`, the usual MCS range.
const CATEGORIES: u32 = 1024;

/// Whether SELinux is enabled on this host.
pub fn enabled() -> bool {
    Path::new(SELINUXFS).join("enforce").exists()
}

/// A distinct pair of MCS categories for VM `id`, stable for the id
/// (`s0:cA,cB` with A < B).
pub fn categories(id: &str) -> String {
    // FNV-1a: stable across runs and releases, unlike the std hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let a = (h % u64::from(CATEGORIES)) as u32;
    let mut b = ((h >> 32) % u64::from(CATEGORIES)) as u32;
    if b == a {
        b = (a + 1) % CATEGORIES;
    }
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    format!("s0:c{lo},c{hi}")
}

/// The process label of VM `id`.
pub fn process_label(id: &str) -> String {
    format!("system_u:system_r:svirt_t:{}", categories(id))
}

/// The file label of VM `id`'s images.
pub fn file_label(id: &str) -> String {
    format!("system_u:object_r:svirt_image_t:{}", categories(id))
}

/// Labels `path` for VM `id` (setxattr `security.selinux`).
pub fn label_file(path: &Path, id: &str) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    let label = file_label(id);
    let name = c"security.selinux";
    // SAFETY: setxattr with NUL-terminated path and name and a buffer of
    // `label.len()` bytes, all alive for the call.
    let r = unsafe {
        libc::setxattr(
            c_path.as_ptr(),
            name.as_ptr(),
            label.as_ptr().cast(),
            label.len(),
            0,
        )
    };
    if r != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("labelling {} {label}: {e}", path.display()),
        ));
    }
    Ok(())
}

/// Makes the next `execve` of this thread run with VM `id`'s process label.
pub fn set_exec_label(id: &str) -> io::Result<()> {
    std::fs::write("/proc/thread-self/attr/exec", process_label(id))
        .map_err(|e| io::Error::new(e.kind(), format!("setting the exec label: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_are_stable_distinct_pairs() {
        let a = categories("vm-a");
        assert_eq!(a, categories("vm-a"));
        assert_ne!(a, categories("vm-b"));
        let pair: Vec<u32> = a
            .trim_start_matches("s0:")
            .split(',')
            .map(|c| c.trim_start_matches('c').parse().unwrap())
            .collect();
        assert!(pair[0] < pair[1] && pair[1] < CATEGORIES, "{a}");
        assert!(process_label("x").starts_with("system_u:system_r:svirt_t:s0:c"));
        assert!(file_label("x").ends_with(&categories("x")));
    }
}
