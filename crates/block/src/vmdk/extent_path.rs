//! Where an extent file named in a descriptor lies: inside the descriptor's
//! directory, never elsewhere. A malicious descriptor must not make us read
//! host files we were not pointed at, so absolute names, `..` and symlinks
//! leading out of that directory are refused. The check is made on names
//! first (for clear errors), then the kernel enforces it when the file is
//! opened (openat2 with RESOLVE_BENEATH), so swapping a symlink in between
//! gains nothing.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

/// The directory a descriptor lies in.
fn directory_of(descriptor: &Path) -> &Path {
    match descriptor.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Opens `relative` (read-only, without blocking on FIFOs) beneath `dir`;
/// the kernel refuses any resolution leaving it. `None` when the kernel has
/// no openat2.
fn open_beneath(dir: &File, relative: &Path) -> Option<io::Result<File>> {
    let Ok(name) = CString::new(relative.as_os_str().as_bytes()) else {
        return Some(Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "NUL in an extent file name",
        )));
    };
    // SAFETY: open_how is plain integers; all-zero is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: openat2 reads the NUL-terminated name and `how` (of the size
    // passed), both alive for the call, and returns a new descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            name.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOSYS) => None,
            Some(libc::EXDEV) => Some(Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "vmdk extent file {}: it resolves outside the descriptor's directory",
                    relative.display()
                ),
            ))),
            _ => Some(Err(e)),
        };
    }
    // SAFETY: `fd` is a descriptor openat2 just returned; nothing else owns it.
    Some(Ok(unsafe { File::from_raw_fd(fd as libc::c_int) }))
}

/// Opens extent file `name` of the descriptor at `descriptor`: checked with
/// [`resolve`], then opened beneath the descriptor's directory. Returns the
/// file and its resolved path (for messages).
pub fn open(descriptor: &Path, name: &str) -> io::Result<(File, PathBuf)> {
    let real = resolve(descriptor, name)?;
    let dir = File::open(directory_of(descriptor))?;
    let file = match open_beneath(&dir, Path::new(name)) {
        Some(file) => file?,
        // Old kernels: the name check above, and no symlink at the end.
        None => std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&real)?,
    };
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("vmdk extent file {name:?}: it is not a regular file"),
        ));
    }
    Ok((file, real))
}

/// Resolves extent file `name` from the descriptor at `descriptor`.
pub fn resolve(descriptor: &Path, name: &str) -> io::Result<PathBuf> {
    let refuse = |why: &str| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("vmdk extent file {name:?}: {why}"),
        )
    };
    let relative = Path::new(name);
    if relative.is_absolute() {
        return Err(refuse(
            "absolute paths are refused (extents must lie beside the descriptor)",
        ));
    }
    if relative
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(refuse(
            "names leaving the descriptor's directory are refused",
        ));
    }
    let dir = directory_of(descriptor).canonicalize()?;
    let dir = dir.as_path();
    let joined = dir.join(relative);
    let real = joined.canonicalize().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("vmdk extent file {name:?} ({}): {e}", joined.display()),
        )
    })?;
    if !real.starts_with(dir) {
        return Err(refuse(&format!(
            "it resolves to {}, outside the descriptor's directory {}",
            real.display(),
            dir.display()
        )));
    }
    // Opening a FIFO or a device could block or touch hardware.
    if !real.metadata()?.is_file() {
        return Err(refuse("it is not a regular file"));
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_refuses_escapes_the_name_check_would_miss() {
        let root = std::env::temp_dir().join(format!("ferrovisor-beneath-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let inner = root.join("in");
        std::fs::create_dir_all(&inner).unwrap();
        std::fs::write(root.join("secret"), b"s").unwrap();
        std::fs::write(inner.join("ok"), b"o").unwrap();
        std::os::unix::fs::symlink("../secret", inner.join("out")).unwrap();
        std::os::unix::fs::symlink("ok", inner.join("in-link")).unwrap();
        let dir = File::open(&inner).unwrap();
        // A symlink swapped in after the name check: openat2 itself refuses.
        match open_beneath(&dir, Path::new("out")) {
            Some(Err(e)) => assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}"),
            Some(Ok(_)) => panic!("opened a file outside the directory"),
            None => panic!("this kernel has no openat2 (Linux 5.6+)"),
        }
        assert!(matches!(
            open_beneath(&dir, Path::new("in-link")),
            Some(Ok(_))
        ));
        let descriptor = inner.join("d.vmdk");
        let (file, real) = open(&descriptor, "ok").unwrap();
        assert!(file.metadata().unwrap().is_file());
        assert_eq!(real, inner.canonicalize().unwrap().join("ok"));
        assert!(open(&descriptor, "out").is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
