//! `fvjail`: runs one `ferrovisor` in a jail of its own: fresh mount, PID,
//! IPC and UTS namespaces (and a network namespace when given), its root
//! pivoted into `<base>/<id>/root` holding only that VM's files, every
//! capability dropped, an unprivileged uid/gid, and a cgroup with limits.
//!
//! Paths in the VMM's arguments are the jail's: a file given as
//! `--file /srv/images/a.img:disk.img` is `/disk.img` inside.
//!
//! Exit status: the VMM's (128 + N when signal N ended it); 2 for bad
//! arguments; 1 when the jail could not be built.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sandbox::cgroup::{parse_size, IoLimit, Limits};
use sandbox::jail::{self, JailFile, JailSpec};

/// Run ferrovisor in a jail: namespaces, pivot_root, no capabilities, its own uid/gid and cgroup.
#[derive(Debug, Parser)]
#[command(name = "fvjail", version, about)]
struct Cli {
    /// The VM's name: its jail directory, hostname and cgroup.
    #[arg(long)]
    id: String,
    /// The uid the VMM runs as (one per VM; not 0).
    #[arg(long)]
    uid: u32,
    /// The gid the VMM runs as (not 0).
    #[arg(long)]
    gid: u32,
    /// Directory holding the jails.
    #[arg(long, default_value = "/srv/fvjail")]
    base: PathBuf,
    /// The ferrovisor binary (default: the one beside fvjail).
    #[arg(long)]
    exec: Option<PathBuf>,
    /// A host file for the VM: HOST_PATH[:NAME[:ro]] appears as /NAME in the jail (default:
    /// its file name). Read-write files are handed to the VM's uid/gid; `ro` ones are bound
    /// read-only and keep their owner. Repeatable.
    #[arg(long, value_name = "HOST_PATH[:NAME[:ro]]")]
    file: Vec<String>,
    /// Join this network namespace (e.g. /run/netns/NAME).
    #[arg(long)]
    netns: Option<PathBuf>,
    /// cgroup CPU limit, in CPUs (e.g. 1.5).
    #[arg(long)]
    cpu_limit: Option<f64>,
    /// cgroup memory limit (K, M, G suffixes).
    #[arg(long)]
    memory_limit: Option<String>,
    /// cgroup task limit.
    #[arg(long)]
    pids_limit: Option<u64>,
    /// cgroup I/O limit: MAJOR:MINOR[,rbps=N][,wbps=N]. Repeatable.
    #[arg(long, value_name = "MAJOR:MINOR,rbps=N,wbps=N")]
    io_limit: Vec<String>,
    /// Arguments for ferrovisor (after `--`).
    #[arg(last = true)]
    args: Vec<OsString>,
}

fn parse_io(text: &str) -> Result<IoLimit, String> {
    let mut parts = text.split(',');
    let dev = parts.next().unwrap_or("");
    let (major, minor) = dev
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .ok_or_else(|| format!("--io-limit {text:?}: expected MAJOR:MINOR first"))?;
    let mut limit = IoLimit {
        major,
        minor,
        read_bps: None,
        write_bps: None,
    };
    for part in parts {
        match part.split_once('=') {
            Some(("rbps", v)) => limit.read_bps = parse_size(v),
            Some(("wbps", v)) => limit.write_bps = parse_size(v),
            _ => return Err(format!("--io-limit {text:?}: unknown {part:?}")),
        }
    }
    Ok(limit)
}

/// `HOST_PATH[:NAME[:ro]]`.
fn parse_file(text: &str) -> Result<JailFile, String> {
    let mut parts = text.split(':');
    let host = PathBuf::from(parts.next().unwrap_or(""));
    let name = match parts.next() {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => host
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    let read_only = match parts.next() {
        None => false,
        Some("ro") => true,
        Some(other) => return Err(format!("--file {text:?}: {other:?} is not ro")),
    };
    if parts.next().is_some() {
        return Err(format!("--file {text:?}: expected HOST_PATH[:NAME[:ro]]"));
    }
    Ok(JailFile {
        host,
        name,
        read_only,
    })
}

fn spec(cli: Cli) -> Result<JailSpec, String> {
    let exec = match cli.exec {
        Some(e) => e,
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("ferrovisor"),
    };
    let files = cli
        .file
        .iter()
        .map(|f| parse_file(f))
        .collect::<Result<_, _>>()?;
    let memory = match &cli.memory_limit {
        Some(m) => Some(parse_size(m).ok_or_else(|| format!("--memory-limit {m:?}: not a size"))?),
        None => None,
    };
    if cli.cpu_limit.is_some_and(|c| !(c > 0.0 && c <= 4096.0)) {
        return Err("--cpu-limit: expected a number of CPUs above 0".into());
    }
    Ok(JailSpec {
        id: cli.id,
        base: cli.base,
        uid: cli.uid,
        gid: cli.gid,
        exec,
        files,
        netns: cli.netns,
        limits: Limits {
            cpus: cli.cpu_limit,
            memory,
            pids: cli.pids_limit,
            io: cli
                .io_limit
                .iter()
                .map(|l| parse_io(l))
                .collect::<Result<_, _>>()?,
        },
        args: cli.args,
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let spec = match spec(cli) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fvjail: {e}");
            return ExitCode::from(2);
        }
    };
    if !sandbox::selinux::enabled() {
        eprintln!(
            "fvjail: SELinux is not enabled on this host: no per-VM MCS labels; namespaces, uid/gid, cgroups, seccomp and Landlock apply"
        );
    }
    match jail::run(&spec, |pid| {
        eprintln!("fvjail: {} started as pid {pid}", spec.id)
    }) {
        Ok(status) => ExitCode::from(status.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("fvjail: {}: {e}", spec.id);
            ExitCode::from(if e.kind() == std::io::ErrorKind::InvalidInput {
                2
            } else {
                1
            })
        }
    }
}
