//! Where backing files may be read from. A qcow2 image names its backing
//! file itself, so an image from elsewhere could name `/etc/shadow`,
//! `../../etc/passwd` or a symlink leading out of its directory, and a tool
//! flattening the chain would copy that host file into its output. A
//! [`BackingPolicy`] says which directories backing files may lie in;
//! [`check_backing`] applies it (after following every symlink) to each
//! backing file before it is opened, and always refuses backing files that
//! are neither regular files nor block devices (FIFOs, sockets, `/dev/zero`,
//! `/dev/tty`), whatever the policy.

use std::fmt::Write as _;
use std::fs::FileType;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// Where the backing files of an image chain may be read from. The policy
/// given for an image applies to its whole backing chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum BackingPolicy {
    /// Anywhere the name leads (QEMU's behaviour; the VMM's with
    /// `backing_files=on`, where the operator vouches for the image).
    #[default]
    Anywhere,
    /// Only inside these directories (after following symlinks in both the
    /// directories and the backing file's path). `/` allows anywhere, but
    /// the file type is still checked.
    Within(Vec<PathBuf>),
}

/// Why a backing file was not opened. Converted to an [`io::Error`], it
/// stays inside it whole, so callers can downcast (`io::Error::get_ref`).
#[derive(Debug, thiserror::Error)]
pub enum BackingError {
    /// The backing file cannot be found or examined.
    #[error("backing file {} (named {name:?} by image {}): {source}", .resolved.display(), .image.display())]
    Unreadable {
        /// The image that names the backing file.
        image: PathBuf,
        /// The backing file name as the image writes it.
        name: String,
        /// Where the name points, relative to the image's directory.
        resolved: PathBuf,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// The backing file lies outside every allowed directory.
    #[error(
        "image {} names backing file {name:?}, which resolves to {}, outside the directories backing files may be read from ({}); to allow it, pass --backing-dir {} (or --backing-dir / to follow backing files anywhere)",
        .image.display(),
        .resolved.display(),
        list(.allowed),
        suggest(.resolved)
    )]
    Outside {
        /// The image that names the backing file.
        image: PathBuf,
        /// The backing file name as the image writes it.
        name: String,
        /// Where the name leads, every symlink followed.
        resolved: PathBuf,
        /// The directories allowed (canonical where they exist).
        allowed: Vec<PathBuf>,
    },
    /// The backing file is neither a regular file nor a block device.
    #[error(
        "image {} names backing file {name:?} ({}), which is a {kind}: backing files must be regular files or block devices",
        .image.display(),
        .resolved.display()
    )]
    NotAFile {
        /// The image that names the backing file.
        image: PathBuf,
        /// The backing file name as the image writes it.
        name: String,
        /// Where the name leads.
        resolved: PathBuf,
        /// What it is instead (`FIFO`, `socket`, `character device`, ...).
        kind: &'static str,
    },
}

impl From<BackingError> for io::Error {
    fn from(e: BackingError) -> io::Error {
        let kind = match &e {
            BackingError::Unreadable { source, .. } => source.kind(),
            BackingError::Outside { .. } | BackingError::NotAFile { .. } => {
                io::ErrorKind::PermissionDenied
            }
        };
        // Kept whole, so callers can tell it apart.
        io::Error::new(kind, e)
    }
}

/// The directories of a refusal message, comma-separated.
fn list(dirs: &[PathBuf]) -> String {
    if dirs.is_empty() {
        return "none".into();
    }
    let mut s = String::new();
    for (i, d) in dirs.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "{}", d.display());
    }
    s
}

/// The directory to allow for `resolved`.
fn suggest(resolved: &Path) -> String {
    resolved
        .parent()
        .unwrap_or(Path::new("/"))
        .display()
        .to_string()
}

/// What a file type is, when it is not one a backing file may be.
fn refused_kind(t: FileType) -> Option<&'static str> {
    if t.is_file() || t.is_block_device() {
        None
    } else if t.is_dir() {
        Some("directory")
    } else if t.is_fifo() {
        Some("FIFO")
    } else if t.is_socket() {
        Some("socket")
    } else if t.is_char_device() {
        Some("character device")
    } else {
        Some("special file")
    }
}

/// Checks backing file `name` of `image`, which points at `resolved`
/// (see [`crate::qcow2::resolve_backing`]), against `policy`; returns the
/// path to open. For [`BackingPolicy::Within`] that is `resolved` with every
/// symlink followed, which must lie inside one of the (canonicalized) roots,
/// component by component (`/a/bc` is not inside `/a/b`); for
/// [`BackingPolicy::Anywhere`] it is `resolved` itself. Under both, the file
/// must exist and be a regular file or a block device.
pub fn check_backing(
    policy: &BackingPolicy,
    image: &Path,
    name: &str,
    resolved: &Path,
) -> Result<PathBuf, BackingError> {
    let unreadable = |source: io::Error| BackingError::Unreadable {
        image: image.to_path_buf(),
        name: name.to_owned(),
        resolved: resolved.to_path_buf(),
        source,
    };
    let target = match policy {
        BackingPolicy::Anywhere => resolved.to_path_buf(),
        BackingPolicy::Within(roots) => {
            let real = resolved.canonicalize().map_err(unreadable)?;
            let allowed: Vec<PathBuf> = roots
                .iter()
                .map(|r| r.canonicalize().unwrap_or_else(|_| r.clone()))
                .collect();
            if !allowed.iter().any(|root| real.starts_with(root)) {
                return Err(BackingError::Outside {
                    image: image.to_path_buf(),
                    name: name.to_owned(),
                    resolved: real,
                    allowed,
                });
            }
            real
        }
    };
    let meta = std::fs::metadata(&target).map_err(unreadable)?;
    if let Some(kind) = refused_kind(meta.file_type()) {
        return Err(BackingError::NotAFile {
            image: image.to_path_buf(),
            name: name.to_owned(),
            resolved: target,
            kind,
        });
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    /// A fresh directory, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Dir {
            let p = std::env::temp_dir()
                .join(format!("ferrovisor-backing-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Checks `name` of image `dir/img.qcow2` as the qcow2 driver does.
    fn check(roots: &[&Path], dir: &Path, name: &str) -> Result<PathBuf, BackingError> {
        let image = dir.join("img.qcow2");
        let resolved = crate::qcow2::resolve_backing(&image, name);
        let policy = BackingPolicy::Within(roots.iter().map(|r| r.to_path_buf()).collect());
        check_backing(&policy, &image, name, &resolved)
    }

    fn refused(r: Result<PathBuf, BackingError>) -> String {
        let e = r.expect_err("refused");
        assert!(matches!(e, BackingError::Outside { .. }), "{e}");
        let io: io::Error = e.into();
        assert_eq!(io.kind(), io::ErrorKind::PermissionDenied);
        let msg = io.to_string();
        assert!(
            matches!(
                io.get_ref().and_then(|e| e.downcast_ref::<BackingError>()),
                Some(BackingError::Outside { .. })
            ),
            "{msg}"
        );
        msg
    }

    #[test]
    fn inside_a_root_is_allowed() {
        let d = Dir::new("inside");
        std::fs::create_dir(d.0.join("sub")).unwrap();
        std::fs::write(d.0.join("sub/base.raw"), b"x").unwrap();
        let got = check(&[&d.0], &d.0, "sub/base.raw").unwrap();
        assert_eq!(got, d.0.canonicalize().unwrap().join("sub/base.raw"));
        // `..` that stays inside is fine.
        assert!(check(&[&d.0], &d.0.join("sub"), "../sub/base.raw").is_ok());
        // Anywhere: returned unchanged.
        let image = d.0.join("img.qcow2");
        let resolved = d.0.join("sub/base.raw");
        assert_eq!(
            check_backing(&BackingPolicy::Anywhere, &image, "sub/base.raw", &resolved).unwrap(),
            resolved
        );
    }

    #[test]
    fn dotdot_escape_is_refused() {
        let d = Dir::new("dotdot");
        let images = d.0.join("images");
        let other = d.0.join("other");
        std::fs::create_dir_all(&images).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("secret"), b"s").unwrap();
        let msg = refused(check(&[&images], &images, "../other/secret"));
        let real = other.canonicalize().unwrap().join("secret");
        for part in [
            "img.qcow2",
            "\"../other/secret\"",
            &real.display().to_string(),
            &images.canonicalize().unwrap().display().to_string(),
            "--backing-dir",
        ] {
            assert!(msg.contains(part), "{part}: {msg}");
        }
        // An absolute name as well.
        refused(check(&[&images], &images, real.to_str().unwrap()));
        // Allowed once its directory is.
        assert!(check(&[&images, &other], &images, "../other/secret").is_ok());
        assert!(check(&[Path::new("/")], &images, "../other/secret").is_ok());
    }

    #[test]
    fn symlink_escape_is_refused() {
        let d = Dir::new("symlink");
        let images = d.0.join("images");
        let other = d.0.join("other");
        std::fs::create_dir_all(&images).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(other.join("secret"), images.join("base.raw")).unwrap();
        let msg = refused(check(&[&images], &images, "base.raw"));
        assert!(msg.contains("secret"), "{msg}");
        // A symlinked directory on the way out, too.
        std::os::unix::fs::symlink(&other, images.join("sub")).unwrap();
        refused(check(&[&images], &images, "sub/secret"));
        // A symlink staying inside is fine.
        std::fs::write(images.join("real.raw"), b"r").unwrap();
        std::os::unix::fs::symlink("real.raw", images.join("alias.raw")).unwrap();
        assert!(check(&[&images], &images, "alias.raw").is_ok());
    }

    #[test]
    fn a_sibling_sharing_the_prefix_is_refused() {
        let d = Dir::new("prefix");
        let b = d.0.join("b");
        let bc = d.0.join("bc");
        std::fs::create_dir_all(&b).unwrap();
        std::fs::create_dir_all(&bc).unwrap();
        std::fs::write(bc.join("secret"), b"s").unwrap();
        refused(check(&[&b], &b, "../bc/secret"));
    }

    #[test]
    fn fifos_and_devices_are_refused_under_both_policies() {
        let d = Dir::new("fifo");
        let fifo = d.0.join("pipe");
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path, alive for the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let image = d.0.join("img.qcow2");
        for policy in [
            BackingPolicy::Anywhere,
            BackingPolicy::Within(vec![d.0.clone()]),
        ] {
            let e = check_backing(&policy, &image, "pipe", &fifo).expect_err("fifo");
            assert!(
                matches!(e, BackingError::NotAFile { kind: "FIFO", .. }),
                "{e}"
            );
            let e = check_backing(&policy, &image, "dir", &d.0).expect_err("directory");
            assert!(matches!(e, BackingError::NotAFile { .. }), "{e}");
        }
        let root = BackingPolicy::Within(vec!["/".into()]);
        let e = check_backing(&root, &image, "/dev/zero", Path::new("/dev/zero"))
            .expect_err("char device");
        assert!(e.to_string().contains("character device"), "{e}");
        let io: io::Error = e.into();
        assert_eq!(io.kind(), io::ErrorKind::PermissionDenied);
    }

    #[test]
    fn a_missing_backing_file_is_named() {
        let d = Dir::new("missing");
        let e = check(&[&d.0], &d.0, "gone.raw").expect_err("missing");
        let io: io::Error = e.into();
        assert_eq!(io.kind(), io::ErrorKind::NotFound);
        let msg = io.to_string();
        assert!(
            msg.contains("gone.raw") && msg.contains("No such file"),
            "{msg}"
        );
    }

    #[test]
    fn a_root_given_as_a_symlink_works() {
        let d = Dir::new("rootlink");
        let real = d.0.join("real");
        std::fs::create_dir_all(&real).unwrap();
        std::fs::write(real.join("base.raw"), b"b").unwrap();
        let link = d.0.join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        // The root through the link, the image through the real path, and
        // the other way round.
        assert!(check(&[&link], &real, "base.raw").is_ok());
        assert!(check(&[&real], &link, "base.raw").is_ok());
        assert!(check(&[&link], &link, "base.raw").is_ok());
    }
}
