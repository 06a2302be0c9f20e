//! What the VMM process may reach once a VM is defined: the Landlock rules
//! made from the VM's config (its kernel, initramfs, disks, memory file,
//! sockets and log files), the devices every VM uses, and the paths the user
//! added with `--landlock-rules`.

use std::path::{Path, PathBuf};

use sandbox::landlock::{self, Permission, Rule, Status};

use crate::config::{ChannelBackend, SerialConfig, VmConfig};
use crate::{ConfigError, Error};

/// The environment variable naming a path the VMM tries to open right after
/// it applied Landlock, logging the result: a probe for tests of the sandbox
/// itself. Nothing else sets it.
pub const TEST_OPEN_PROBE_ENV: &str = "FERROVISOR_TEST_OPEN_PROBE";

/// Host paths every VM may need: KVM, TAP devices, hugepage counters, and the
/// process's own /proc entries (memory statistics).
const SYSTEM_RULES: &[(&str, Permission)] = &[
    ("/dev/kvm", Permission::ReadWrite),
    ("/dev/net/tun", Permission::ReadWrite),
    ("/sys/kernel/mm/hugepages", Permission::ReadOnly),
    ("/proc/self", Permission::ReadOnly),
];

/// A rule for a file the VMM creates or replaces: the file when it exists,
/// else its directory, with the right to create in it.
fn created_file(path: &Path) -> Rule {
    match path.parent() {
        Some(dir) if !path.exists() => Rule::new(non_empty(dir), Permission::CreateIn),
        _ => Rule::new(path, Permission::ReadWrite),
    }
}

/// A rule for a Unix socket the VMM binds (and replaces when stale): its
/// directory, with the right to create and remove entries.
pub fn socket_rule(path: &Path) -> Rule {
    Rule::new(
        non_empty(path.parent().unwrap_or(Path::new("."))),
        Permission::CreateIn,
    )
}

fn non_empty(dir: &Path) -> PathBuf {
    if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir.to_path_buf()
    }
}

/// Every path `config` names, with what the VMM does there.
pub fn rules_for(config: &VmConfig) -> Vec<Rule> {
    let mut rules: Vec<Rule> = SYSTEM_RULES
        .iter()
        .map(|(p, a)| Rule::new(*p, *a))
        .collect();
    rules.push(Rule::new(&config.payload.kernel, Permission::ReadOnly));
    if let Some(initramfs) = &config.payload.initramfs {
        rules.push(Rule::new(initramfs, Permission::ReadOnly));
    }
    for disk in &config.disks {
        let access = if disk.readonly {
            Permission::ReadOnly
        } else {
            Permission::ReadWrite
        };
        rules.push(Rule::new(&disk.path, access));
    }
    if let Some(file) = &config.memory.file {
        rules.push(created_file(file));
    }
    match &config.serial {
        SerialConfig::File { path } => rules.push(created_file(path)),
        SerialConfig::Socket { path } => rules.push(socket_rule(path)),
        SerialConfig::Tty | SerialConfig::Off => {}
    }
    for channel in &config.channels {
        match &channel.backend {
            ChannelBackend::Socket(path) => rules.push(socket_rule(path)),
            ChannelBackend::File(path) => rules.push(created_file(path)),
        }
    }
    rules
}

/// Parses `--landlock-rules path=PATH,access=ro|rw|create`.
pub fn parse_rule(text: &str) -> Result<Rule, ConfigError> {
    let mut path = None;
    let mut access = Permission::ReadOnly;
    for part in text.split(',') {
        match part.split_once('=') {
            Some(("path", p)) if !p.is_empty() => path = Some(PathBuf::from(p)),
            Some(("access", "ro")) => access = Permission::ReadOnly,
            Some(("access", "rw")) => access = Permission::ReadWrite,
            Some(("access", "create")) => access = Permission::CreateIn,
            _ => {
                return Err(ConfigError::new(
                    "--landlock-rules",
                    format!("{part:?}: expected path=PATH or access=ro|rw|create"),
                ))
            }
        }
    }
    let path = path.ok_or_else(|| ConfigError::new("--landlock-rules", "path=PATH is missing"))?;
    Ok(Rule::new(path, access))
}

/// Restricts the VMM (this thread and the thread spawner) to `config`'s
/// paths plus `extra`. Called once the VM's files are open, so a disk's
/// backing files need no rule of their own. Says once in the log when the kernel cannot.
pub fn apply_landlock(config: &VmConfig, extra: &[Rule]) -> Result<(), Error> {
    let mut rules = rules_for(config);
    rules.extend_from_slice(extra);
    let failed = |e: landlock::Error| Error::Internal(e.to_string());
    // One ruleset (each path opened once), applied here and on the spawner.
    let prepared = landlock::prepare(&rules).map_err(failed)?;
    let skipped = prepared.skipped.clone();
    let for_spawner = prepared
        .try_clone()
        .map_err(Error::io("duplicating the Landlock ruleset"))?;
    let status = prepared.restrict_self().map_err(failed)?;
    if let Some(on_spawner) =
        sandbox::thread::run_on_spawner(move || for_spawner.restrict_self().map(|_| ()))
    {
        on_spawner
            .map_err(Error::io("restricting the thread spawner"))?
            .map_err(failed)?;
    }
    match status {
        Status::Full => tracing::info!("landlock: {} rules enforced", rules.len()),
        Status::Partial => tracing::info!(
            "landlock: enforced as far as this kernel's ABI {} allows",
            landlock::kernel_abi()
        ),
        Status::Unsupported => {
            tracing::warn!("landlock: this kernel does not support Landlock; running without it")
        }
    }
    for path in skipped {
        tracing::debug!("landlock: {} does not exist; no rule", path.display());
    }
    Ok(())
}

/// With [`TEST_OPEN_PROBE_ENV`] set, tries to open that path and logs
/// whether the sandbox allowed it.
pub fn run_test_open_probe() {
    if let Some(path) = std::env::var_os(TEST_OPEN_PROBE_ENV) {
        let result = std::fs::File::open(&path);
        tracing::warn!(
            "sandbox test probe: open {}: {}",
            Path::new(&path).display(),
            match result {
                Ok(_) => "allowed".to_string(),
                Err(e) => format!("refused ({e})"),
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_cover_every_path_of_the_config() {
        let mut c = VmConfig::with_kernel("/k/vmlinux".into());
        c.payload.initramfs = Some("/k/initrd".into());
        c.serial = SerialConfig::Socket {
            path: "/run/fv/serial.sock".into(),
        };
        let rules = rules_for(&c);
        assert!(rules.contains(&Rule::new("/k/vmlinux", Permission::ReadOnly)));
        assert!(rules.contains(&Rule::new("/k/initrd", Permission::ReadOnly)));
        assert!(rules.contains(&Rule::new("/run/fv", Permission::CreateIn)));
        assert!(rules.contains(&Rule::new("/dev/kvm", Permission::ReadWrite)));
    }

    #[test]
    fn landlock_rule_flags_parse_and_refuse() {
        assert_eq!(
            parse_rule("path=/srv/iso,access=rw").unwrap(),
            Rule::new("/srv/iso", Permission::ReadWrite)
        );
        assert_eq!(
            parse_rule("path=/a").unwrap(),
            Rule::new("/a", Permission::ReadOnly)
        );
        assert!(parse_rule("access=rw").is_err());
        assert!(parse_rule("path=/a,access=all").is_err());
        assert!(parse_rule("path=").is_err());
    }
}
