//! A control group per VM with CPU, memory, I/O and task limits.
//!
//! cgroup v2 is used for every controller the unified hierarchy offers; a
//! controller still bound to a v1 hierarchy (hosts that mount v1, like the
//! project's test machines) is set up there instead, with the matching v1
//! files. The group is `<hierarchy>/fvjail/<id>` in each.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Limits for one VM's group.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// CPU time, in CPUs (1.5: one and a half CPUs' time per period).
    pub cpus: Option<f64>,
    /// Memory ceiling in bytes (guest RAM plus the VMM's own).
    pub memory: Option<u64>,
    /// Most tasks (threads) in the group.
    pub pids: Option<u64>,
    /// Per-device I/O ceilings.
    pub io: Vec<IoLimit>,
}

/// An I/O ceiling on one block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoLimit {
    /// The device's major number.
    pub major: u32,
    /// The device's minor number.
    pub minor: u32,
    /// Bytes per second read (None: no limit).
    pub read_bps: Option<u64>,
    /// Bytes per second written (None: no limit).
    pub write_bps: Option<u64>,
}

/// The CFS period used for the CPU limit, in microseconds.
const CPU_PERIOD_US: u64 = 100_000;

/// One controller's place: the hierarchy's mount and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Where the hierarchy is mounted.
    pub mount: PathBuf,
    /// Whether it is the unified (v2) hierarchy.
    pub unified: bool,
}

/// The controllers a limit needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Controller {
    Cpu,
    Memory,
    Pids,
    Io,
}

impl Controller {
    fn v2_name(self) -> &'static str {
        match self {
            Controller::Cpu => "cpu",
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Io => "io",
        }
    }

    fn v1_name(self) -> &'static str {
        match self {
            Controller::Io => "blkio",
            other => other.v2_name(),
        }
    }
}

/// Where each controller lives, read from a mountinfo text.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    /// The unified hierarchy's mount and the controllers it offers.
    unified: Option<(PathBuf, Vec<String>)>,
    /// v1 hierarchies: mount and the controllers bound to it.
    v1: Vec<(PathBuf, Vec<String>)>,
}

impl Layout {
    /// The host's layout (`/proc/self/mountinfo`).
    pub fn detect() -> io::Result<Layout> {
        let text = fs::read_to_string("/proc/self/mountinfo")?;
        Ok(Layout::parse(&text, |mount| {
            fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default()
        }))
    }

    /// Parses mountinfo; `controllers` reads a v2 mount's cgroup.controllers.
    pub fn parse(mountinfo: &str, controllers: impl Fn(&Path) -> String) -> Layout {
        let mut layout = Layout::default();
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mount = match left.split(' ').nth(4) {
                Some(m) => PathBuf::from(m),
                None => continue,
            };
            let mut r = right.split(' ');
            let fstype = r.next().unwrap_or("");
            let _source = r.next();
            let options = r.next().unwrap_or("");
            match fstype {
                "cgroup2" if layout.unified.is_none() => {
                    let offered = controllers(&mount)
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect();
                    layout.unified = Some((mount, offered));
                }
                "cgroup" => {
                    let bound = options
                        .split(',')
                        .filter(|o| !matches!(*o, "rw" | "ro") && !o.contains('='))
                        .map(str::to_owned)
                        .collect();
                    layout.v1.push((mount, bound));
                }
                _ => {}
            }
        }
        layout
    }

    fn hierarchy(&self, controller: Controller) -> Option<Hierarchy> {
        if let Some((mount, offered)) = &self.unified {
            if offered.iter().any(|c| c == controller.v2_name()) {
                return Some(Hierarchy {
                    mount: mount.clone(),
                    unified: true,
                });
            }
        }
        self.v1
            .iter()
            .find(|(_, bound)| bound.iter().any(|c| c == controller.v1_name()))
            .map(|(mount, _)| Hierarchy {
                mount: mount.clone(),
                unified: false,
            })
    }
}

/// A VM's groups, removed on drop (after the VM's tasks are gone).
#[derive(Debug)]
pub struct Group {
    dirs: Vec<PathBuf>,
}

/// What a limit writes: (controller, v2 file and value, v1 file and value).
fn settings(limits: &Limits) -> Vec<(Controller, String, String, String, String)> {
    let mut out = Vec::new();
    if let Some(cpus) = limits.cpus {
        let quota = ((cpus * CPU_PERIOD_US as f64).round() as u64).max(1000);
        out.push((
            Controller::Cpu,
            "cpu.max".into(),
            format!("{quota} {CPU_PERIOD_US}"),
            "cpu.cfs_quota_us".into(),
            quota.to_string(),
        ));
    }
    if let Some(bytes) = limits.memory {
        out.push((
            Controller::Memory,
            "memory.max".into(),
            bytes.to_string(),
            "memory.limit_in_bytes".into(),
            bytes.to_string(),
        ));
    }
    if let Some(n) = limits.pids {
        out.push((
            Controller::Pids,
            "pids.max".into(),
            n.to_string(),
            "pids.max".into(),
            n.to_string(),
        ));
    }
    for l in &limits.io {
        let dev = format!("{}:{}", l.major, l.minor);
        let mut v2 = dev.clone();
        if let Some(r) = l.read_bps {
            v2.push_str(&format!(" rbps={r}"));
        }
        if let Some(w) = l.write_bps {
            v2.push_str(&format!(" wbps={w}"));
        }
        if let Some(r) = l.read_bps {
            out.push((
                Controller::Io,
                "io.max".into(),
                v2.clone(),
                "blkio.throttle.read_bps_device".into(),
                format!("{dev} {r}"),
            ));
        }
        if let Some(w) = l.write_bps {
            out.push((
                Controller::Io,
                "io.max".into(),
                v2.clone(),
                "blkio.throttle.write_bps_device".into(),
                format!("{dev} {w}"),
            ));
        }
    }
    out
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("writing {value:?} to {}: {e}", path.display()),
        )
    })
}

impl Group {
    /// Creates group `fvjail/<id>` in every hierarchy a limit needs, with
    /// the limits written. Nothing is created when there are no limits.
    pub fn create(layout: &Layout, id: &str, limits: &Limits) -> io::Result<Group> {
        let mut group = Group { dirs: Vec::new() };
        for (controller, v2_file, v2_value, v1_file, v1_value) in settings(limits) {
            let hierarchy = layout.hierarchy(controller).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!(
                        "cgroup controller {} is not mounted on this host",
                        controller.v2_name()
                    ),
                )
            })?;
            let parent = hierarchy.mount.join("fvjail");
            let dir = parent.join(id);
            if !group.dirs.contains(&dir) {
                fs::create_dir_all(&dir)
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
                group.dirs.push(dir.clone());
            }
            if hierarchy.unified {
                // Delegate every controller used down to the VM's group, from
                // the root (each one: the root enables only what it is told).
                let enable = format!("+{}", controller.v2_name());
                write(&hierarchy.mount.join("cgroup.subtree_control"), &enable)?;
                write(&parent.join("cgroup.subtree_control"), &enable)?;
            }
            if hierarchy.unified {
                write(&dir.join(v2_file), &v2_value)?;
            } else {
                if controller == Controller::Cpu {
                    write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                }
                write(&dir.join(v1_file), &v1_value)?;
            }
        }
        Ok(group)
    }

    /// Moves process `pid` (all its threads) into every group.
    pub fn add(&self, pid: u32) -> io::Result<()> {
        for dir in &self.dirs {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// The group directories, one per hierarchy.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        for dir in &self.dirs {
            if let Err(e) = fs::remove_dir(dir) {
                tracing::debug!("removing cgroup {}: {e}", dir.display());
            }
        }
    }
}

/// Parses a size with an optional K, M, G or T suffix (powers of 1024).
pub fn parse_size(text: &str) -> Option<u64> {
    let (digits, shift) = match text.char_indices().last()? {
        (i, 'k' | 'K') => (&text[..i], 10),
        (i, 'm' | 'M') => (&text[..i], 20),
        (i, 'g' | 'G') => (&text[..i], 30),
        (i, 't' | 'T') => (&text[..i], 40),
        _ => (text, 0),
    };
    digits.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_HOST: &str = "\
30 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
33 30 0:29 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
34 30 0:30 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
35 30 0:31 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
36 30 0:32 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn controllers_are_found_in_v1_when_v2_offers_none() {
        let layout = Layout::parse(V1_HOST, |_| "hugetlb\n".into());
        let cpu = layout.hierarchy(Controller::Cpu).unwrap();
        assert_eq!(cpu.mount, PathBuf::from("/sys/fs/cgroup/cpu"));
        assert!(!cpu.unified);
        assert_eq!(
            layout.hierarchy(Controller::Io).unwrap().mount,
            PathBuf::from("/sys/fs/cgroup/blkio")
        );
    }

    #[test]
    fn a_unified_host_uses_v2_files() {
        let root = std::env::temp_dir().join(format!("fv-cg2-{}", std::process::id()));
        fs::create_dir_all(&root).unwrap();
        let info = format!("40 1 0:33 / {} rw - cgroup2 cgroup2 rw\n", root.display());
        let layout = Layout::parse(&info, |_| "cpu io memory pids".into());
        let limits = Limits {
            cpus: Some(1.5),
            memory: Some(512 << 20),
            pids: Some(64),
            io: vec![IoLimit {
                major: 8,
                minor: 0,
                read_bps: Some(1_000_000),
                write_bps: Some(2_000_000),
            }],
        };
        let group = Group::create(&layout, "vm1", &limits).unwrap();
        let dir = root.join("fvjail/vm1");
        assert_eq!(group.dirs(), std::slice::from_ref(&dir));
        let read = |f: &str| fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(read("cpu.max"), "150000 100000");
        assert_eq!(read("memory.max"), (512u64 << 20).to_string());
        assert_eq!(read("pids.max"), "64");
        assert_eq!(read("io.max"), "8:0 rbps=1000000 wbps=2000000");
        assert_eq!(
            fs::read_to_string(root.join("fvjail/cgroup.subtree_control")).unwrap(),
            "+io",
            "the last controller enabled (a real cgroupfs keeps them all)"
        );
        group.add(4242).unwrap();
        assert_eq!(read("cgroup.procs"), "4242");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn missing_controllers_are_named() {
        let layout = Layout::parse("", |_| String::new());
        let e = Group::create(
            &layout,
            "x",
            &Limits {
                memory: Some(1),
                ..Limits::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("memory"), "{e}");
    }

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("2g"), Some(2 << 30));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("99999999999T"), None);
    }
}
