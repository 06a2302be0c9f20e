//! Where an extent file named in a descriptor lies: inside the descriptor's
//! directory, never elsewhere. A malicious descriptor must not make us read
//! host files we were not pointed at, so absolute names, `..` and symlinks
//! leading out of that directory are refused.

use std::io;
use std::path::{Component, Path, PathBuf};

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
    let parent = match descriptor.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = parent.canonicalize()?;
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
