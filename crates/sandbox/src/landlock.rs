//! Landlock: after it is applied, the process can reach only the paths it was
//! given, with the access it was given.
//!
//! Best effort by kernel ABI: rights the kernel does not know are dropped and
//! the status says so ([`Status`]). Landlock restricts the calling thread and
//! the threads it starts later, so apply it before the threads that should
//! be restricted exist (see `thread::start_spawner`, which is told too).

use std::path::PathBuf;

use landlock::{
    Access, AccessFs, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreated, RulesetCreatedAttr, RulesetStatus, ABI,
};

/// The newest Landlock ABI these rules know.
const TARGET_ABI: ABI = ABI::V7;

/// What a rule allows beneath its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Read files (and list directories) beneath the path.
    ReadOnly,
    /// Read and write files beneath the path (no creating or removing).
    ReadWrite,
    /// A directory in which the process creates files and Unix sockets and
    /// removes the ones it replaces, besides reading and writing.
    CreateIn,
}

/// One path and what the process may do beneath it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// A file or a directory (then everything beneath it).
    pub path: PathBuf,
    /// What is allowed.
    pub access: Permission,
}

impl Rule {
    /// A rule for `path` with `access`.
    pub fn new(path: impl Into<PathBuf>, access: Permission) -> Rule {
        Rule {
            path: path.into(),
            access,
        }
    }
}

/// How far the kernel enforces the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Every right is enforced.
    Full,
    /// The kernel's ABI lacks some rights; the others are enforced.
    Partial,
    /// The kernel has no Landlock (not built in, or not enabled at boot).
    Unsupported,
}

/// Why the rules could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A rule's path could not be opened.
    #[error("landlock rule {path}: {source}")]
    Path {
        /// The path of the rule.
        path: PathBuf,
        /// Why it could not be opened.
        source: std::io::Error,
    },
    /// The kernel refused the ruleset.
    #[error("landlock: {0}")]
    Ruleset(String),
}

fn rights(access: Permission, directory: bool) -> BitFlags<AccessFs> {
    let read = AccessFs::from_read(TARGET_ABI);
    let file_rights = AccessFs::from_file(TARGET_ABI);
    let rw = read | AccessFs::WriteFile | AccessFs::Truncate | AccessFs::IoctlDev;
    let wanted = match access {
        Permission::ReadOnly => read | AccessFs::IoctlDev,
        Permission::ReadWrite => rw,
        Permission::CreateIn => rw | AccessFs::MakeReg | AccessFs::MakeSock | AccessFs::RemoveFile,
    };
    if directory {
        wanted
    } else {
        wanted & file_rights
    }
}

/// A ruleset built from rules, ready to restrict threads: built once (every
/// rule's path opened once), applied to as many threads as need it.
pub struct Prepared {
    ruleset: RulesetCreated,
    /// Rule paths that did not exist, so got no rule.
    pub skipped: Vec<PathBuf>,
}

/// Builds the ruleset of `rules`. Paths that do not exist are skipped.
pub fn prepare(rules: &[Rule]) -> Result<Prepared, Error> {
    let mut skipped = Vec::new();
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(TARGET_ABI))
        .map_err(|e| Error::Ruleset(e.to_string()))?
        .create()
        .map_err(|e| Error::Ruleset(e.to_string()))?;
    for rule in rules {
        let fd = match PathFd::new(&rule.path) {
            Ok(fd) => fd,
            Err(_) if !rule.path.exists() => {
                skipped.push(rule.path.clone());
                continue;
            }
            Err(e) => {
                return Err(Error::Path {
                    path: rule.path.clone(),
                    source: std::io::Error::other(e.to_string()),
                })
            }
        };
        let directory = rule.path.is_dir();
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, rights(rule.access, directory)))
            .map_err(|e| Error::Ruleset(format!("{}: {e}", rule.path.display())))?;
    }
    Ok(Prepared { ruleset, skipped })
}

impl Prepared {
    /// The same ruleset, for another thread.
    pub fn try_clone(&self) -> std::io::Result<Prepared> {
        Ok(Prepared {
            ruleset: self.ruleset.try_clone()?,
            skipped: self.skipped.clone(),
        })
    }

    /// Restricts the calling thread (and the threads it starts from now on).
    pub fn restrict_self(self) -> Result<Status, Error> {
        let status = self
            .ruleset
            .restrict_self()
            .map_err(|e| Error::Ruleset(e.to_string()))?;
        Ok(match status.ruleset {
            RulesetStatus::FullyEnforced => Status::Full,
            RulesetStatus::PartiallyEnforced => Status::Partial,
            RulesetStatus::NotEnforced => Status::Unsupported,
        })
    }
}

/// Restricts the calling thread (and the threads it starts from now on) to
/// `rules`. Paths that do not exist are skipped (`skipped` lists them).
pub fn restrict_self(rules: &[Rule]) -> Result<(Status, Vec<PathBuf>), Error> {
    let prepared = prepare(rules)?;
    let skipped = prepared.skipped.clone();
    Ok((prepared.restrict_self()?, skipped))
}

/// The Landlock ABI version of the running kernel (0: none).
pub fn kernel_abi() -> i32 {
    // SAFETY: landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    // only returns the ABI version; it reads no memory.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32,
        )
    };
    i32::try_from(r).unwrap_or(0).max(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_rules_drop_directory_rights() {
        let file = rights(Permission::CreateIn, false);
        assert!(!file.contains(AccessFs::MakeSock));
        assert!(file.contains(AccessFs::WriteFile));
        let dir = rights(Permission::CreateIn, true);
        assert!(dir.contains(AccessFs::MakeSock) && dir.contains(AccessFs::RemoveFile));
        let ro = rights(Permission::ReadOnly, true);
        assert!(!ro.contains(AccessFs::WriteFile) && ro.contains(AccessFs::ReadFile));
    }

    /// Landlock in a child thread: the thread cannot open what the rules
    /// leave out, and can open what they name. The rest of the test process
    /// is not restricted (Landlock binds the thread that applies it).
    #[test]
    fn a_restricted_thread_reaches_only_its_paths() {
        if kernel_abi() == 0 {
            assert!(
                std::env::var_os("CI").is_none(),
                "Landlock is missing on this CI kernel"
            );
            eprintln!("landlock: not supported by this kernel; test not run");
            return;
        }
        let dir = std::env::temp_dir().join(format!("fv-landlock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let allowed = dir.join("allowed");
        let denied = dir.join("denied");
        std::fs::write(&allowed, b"a").unwrap();
        std::fs::write(&denied, b"d").unwrap();
        let (a, d) = (allowed.clone(), denied.clone());
        let result = std::thread::spawn(move || {
            let (status, skipped) = restrict_self(&[
                Rule::new(&a, Permission::ReadOnly),
                Rule::new("/nonexistent-fv", Permission::ReadOnly),
            ])
            .unwrap();
            (
                status,
                skipped,
                std::fs::read(&a).map_err(|e| e.kind()),
                std::fs::read(&d).map_err(|e| e.kind()),
                std::fs::write(&a, b"x").map_err(|e| e.kind()),
            )
        })
        .join()
        .unwrap();
        assert_ne!(result.0, Status::Unsupported);
        assert_eq!(result.1, vec![PathBuf::from("/nonexistent-fv")]);
        assert_eq!(result.2, Ok(b"a".to_vec()));
        assert_eq!(result.3, Err(std::io::ErrorKind::PermissionDenied));
        assert_eq!(result.4, Err(std::io::ErrorKind::PermissionDenied));
        assert_eq!(
            std::fs::read(&denied).unwrap(),
            b"d",
            "other threads are free"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
