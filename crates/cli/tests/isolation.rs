//! The sandbox end to end: every thread kind's seccomp filter kills the
//! process on a forbidden call (and only logs in log mode), Landlock keeps the
//! VMM to its own files, and two jailed VMs run side by side without reaching
//! each other's disks.

mod common;
use common::*;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const TRIGGER: &str = "FERROVISOR_TEST_SECCOMP_TRIGGER";
const OPEN_PROBE: &str = "FERROVISOR_TEST_OPEN_PROBE";

fn disk(dir: &TempDir, name: &str) -> PathBuf {
    let path = dir.join(name);
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(64 << 20).unwrap();
    path
}

/// A VM whose configuration starts threads of every kind but the API's.
fn every_device(dir: &TempDir, cmdline: &str) -> Command {
    let mut cmd = ferrovisor(&probe());
    cmd.args(["--cmdline", cmdline, "--memory", "size=256M", "--rng"]);
    cmd.arg("--disk")
        .arg(format!("path={}", disk(dir, "disk.img").display()));
    cmd.args(["--balloon", "size=0"]);
    cmd.arg("--channel").arg(format!(
        "name=agent,socket={}",
        dir.join("agent.sock").display()
    ));
    cmd
}

/// The kind, the guest program that makes such a thread start, and extra flags.
const KINDS: &[(&str, &str, &[&str])] = &[
    ("vmm", "probe=echo", &[]),
    ("vcpu", "probe=echo", &[]),
    ("signals", "probe=echo", &[]),
    ("api", "probe=echo", &["--api-socket"]),
    ("serial-input", "probe=echo", &["--serial"]),
    ("virtio-blk", "probe=blk", &[]),
    ("blk-io", "probe=blk", &[]),
    ("virtio-rng", "probe=rng", &[]),
    ("virtio-console", "probe=channel mode=send bytes=4096", &[]),
    ("virtio-balloon", "probe=balloon pool_mib=8 seconds=1", &[]),
];

#[test]
fn a_forbidden_call_from_any_thread_kind_kills_the_vmm_with_sigsys() {
    if !require_kvm() {
        return;
    }
    for (kind, cmdline, extra) in KINDS {
        let dir = TempDir::new(&format!("seccomp-{kind}"));
        let mut cmd = every_device(&dir, cmdline);
        cmd.env(TRIGGER, kind);
        match extra {
            ["--api-socket"] => {
                cmd.arg("--api-socket").arg(dir.join("api.sock"));
            }
            ["--serial"] => {
                cmd.arg("--serial")
                    .arg(format!("socket={}", dir.join("serial.sock").display()));
            }
            _ => {}
        }
        let out = run(cmd);
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGSYS),
            "{kind}: {:?}\n{}",
            out.status,
            out.log
        );
        let line =
            format!("seccomp: a {kind} thread made the forbidden system call personality (135)");
        assert!(
            out.log.contains(&line),
            "{kind}: no {line:?} in\n{}",
            out.log
        );
    }
}

/// The virtio-net workers: a NIC on a TAP inside a namespace of the test's own.
#[test]
fn a_forbidden_call_from_a_virtio_net_worker_kills_the_vmm_with_sigsys() {
    if !require_kvm() {
        return;
    }
    if let Err(why) = common::netlab::lab_available() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but the network lab cannot run: {why}"
        );
        eprintln!("not run: {why}");
        return;
    }
    let ns = common::netlab::NetNs::new();
    let mut cmd = ns.command(Path::new(env!("CARGO_BIN_EXE_ferrovisor")));
    cmd.arg("--kernel").arg(probe());
    cmd.args([
        "--debug-exit",
        "--log-level",
        "info",
        "--memory",
        "size=256M",
    ]);
    cmd.args(["--cmdline", "probe=net ip=10.80.0.2"]);
    cmd.args(["--net", "tap=fvtap0,ip=10.80.0.1,mask=255.255.255.0"]);
    cmd.env(TRIGGER, "virtio-net");
    let out = run(cmd);
    assert_eq!(out.status.signal(), Some(libc::SIGSYS), "{out:#?}");
    assert!(
        out.log.contains(
            "seccomp: a virtio-net thread made the forbidden system call personality (135)"
        ),
        "{}",
        out.log
    );
}

#[test]
fn log_mode_lets_a_forbidden_call_through() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("seccomp-log");
    let mut cmd = every_device(&dir, "probe=blk");
    cmd.env(TRIGGER, "blk-io").args(["--seccomp", "log"]);
    let out = run(cmd);
    assert_eq!(out.code(), debug_exit(0), "{out:#?}");
    assert!(
        out.log.contains("blk-io: making a forbidden call"),
        "{}",
        out.log
    );
    assert!(!out.log.contains("made the forbidden"), "{}", out.log);
}

#[test]
fn with_filters_off_the_forbidden_call_is_harmless() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("seccomp-off");
    let mut cmd = every_device(&dir, "probe=blk");
    cmd.env(TRIGGER, "vcpu").args(["--seccomp", "off"]);
    let out = run(cmd);
    assert_eq!(out.code(), debug_exit(0), "{out:#?}");
    assert!(!out.log.contains("made the forbidden"), "{}", out.log);
}

fn open_probe(dir: &TempDir, target: &Path, landlock: &str) -> Exited {
    let mut cmd = ferrovisor(&probe());
    cmd.args(["--cmdline", "probe=blk", "--memory", "size=256M"]);
    cmd.arg("--disk")
        .arg(format!("path={}", disk(dir, "disk.img").display()));
    cmd.args(["--landlock", landlock]).env(OPEN_PROBE, target);
    run(cmd)
}

#[test]
fn landlock_keeps_the_vmm_to_its_own_files() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("landlock");
    let secret = dir.join("other-vm.img");
    std::fs::write(&secret, b"not yours").unwrap();
    let out = open_probe(&dir, &secret, "on");
    assert_eq!(out.code(), debug_exit(0), "the guest runs: {out:#?}");
    let expected = format!(
        "sandbox test probe: open {}: refused (Permission denied",
        secret.display()
    );
    assert!(out.log.contains(&expected), "{}", out.log);
    assert!(out.log.contains("landlock: "), "{}", out.log);

    let own = dir.join("disk.img");
    let out = open_probe(&dir, &own, "on");
    let expected = format!("sandbox test probe: open {}: allowed", own.display());
    assert!(out.log.contains(&expected), "{}", out.log);

    // The probe is real: without Landlock the same open succeeds.
    let out = open_probe(&dir, &secret, "off");
    let expected = format!("sandbox test probe: open {}: allowed", secret.display());
    assert!(out.log.contains(&expected), "{}", out.log);
}

/// A network namespace (`ip netns add`), deleted on drop.
struct NetNs(String);

impl NetNs {
    fn add(name: &str) -> NetNs {
        let ok = Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip netns add {name}");
        NetNs(name.to_string())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

/// uids and gids for the two jailed VMs (unused on CI machines).
const JAIL_IDS: [u32; 2] = [64_101, 64_102];

fn fvjail(
    base: &Path,
    id: &str,
    owner: u32,
    disk: &Path,
    cmdline: &str,
    limits: &[&str],
) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fvjail"));
    c.arg("--id").arg(id).arg("--base").arg(base);
    c.args(["--uid", &owner.to_string(), "--gid", &owner.to_string()]);
    c.arg("--exec").arg(env!("CARGO_BIN_EXE_ferrovisor"));
    c.arg("--file")
        .arg(format!("{}:probe:ro", probe().display()));
    c.arg("--file").arg(format!("{}:disk.img", disk.display()));
    c.args(limits);
    c.args([
        "--",
        "--kernel",
        "/probe",
        "--debug-exit",
        "--log-level",
        "info",
        "--memory",
        "size=128M",
        "--disk",
        "path=/disk.img",
        "--cmdline",
        cmdline,
    ]);
    c
}

fn status_field(pid: u32, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

/// The VMM's host pid: the child fvjail started (fvjail's only child).
fn vmm_pid(jailer: u32) -> u32 {
    let children =
        std::fs::read_to_string(format!("/proc/{jailer}/task/{jailer}/children")).unwrap();
    children.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn two_jailed_vms_run_without_reaching_each_others_disks() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("jail");
    let base = dir.join("jails");
    std::fs::create_dir(&base).unwrap();
    let disk_a = disk(&dir, "a.img");
    let disk_b = disk(&dir, "b.img");
    for d in [&disk_a, &disk_b] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let id_a = format!("fv-a-{}", std::process::id());
    let id_b = format!("fv-b-{}", std::process::id());

    // VM A keeps running in a network namespace of its own; VM B does disk
    // I/O and tries to open A's disk.
    let netns = NetNs::add(&format!("fvjail-{}", std::process::id()));
    let netns_path = format!("/run/netns/{}", netns.0);
    let mut a = fvjail(
        &base,
        &id_a,
        JAIL_IDS[0],
        &disk_a,
        "probe=ticks interval_ms=200",
        &[
            "--memory-limit",
            "1G",
            "--cpu-limit",
            "1.5",
            "--pids-limit",
            "512",
            "--netns",
            &netns_path,
        ],
    );
    a.env(OPEN_PROBE, "/disk.img");
    let mut vm_a = VmProcess::spawn(a);
    vm_a.wait_for_line("probe: ticks ready", RUN_TIMEOUT);
    let pid = vmm_pid(vm_a.pid());

    let mut b = fvjail(&base, &id_b, JAIL_IDS[1], &disk_b, "probe=blk", &[]);
    // A's disk as a path B could name: on the host, and through A's root.
    b.env(OPEN_PROBE, &disk_a);
    let out_b = VmProcess::spawn(b).wait(RUN_TIMEOUT);
    assert_eq!(
        out_b.code(),
        debug_exit(0),
        "VM B runs its disk test: {out_b:#?}"
    );
    assert!(out_b
        .line("probe: blk write+read bytes=1048576 ok")
        .is_some());
    let refused = format!(
        "sandbox test probe: open {}: refused (No such file",
        disk_a.display()
    );
    assert!(
        out_b.log.contains(&refused),
        "B cannot see A's disk: {}",
        out_b.log
    );

    // A's VMM: its own uid, no capabilities, pid 1 of its namespace.
    let uid = JAIL_IDS[0].to_string();
    assert!(
        status_field(pid, "Uid:").starts_with(&uid),
        "{}",
        status_field(pid, "Uid:")
    );
    assert_eq!(status_field(pid, "CapEff:"), "0000000000000000");
    assert_eq!(status_field(pid, "CapPrm:"), "0000000000000000");
    assert_eq!(status_field(pid, "CapBnd:"), "0000000000000000");
    assert_eq!(status_field(pid, "NoNewPrivs:"), "1");
    assert!(
        status_field(pid, "NSpid:").ends_with("\t1"),
        "{}",
        status_field(pid, "NSpid:")
    );
    for ns in ["mnt", "pid", "ipc", "uts", "net"] {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "{ns} namespace");
    }
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .unwrap()
            .ino(),
        std::fs::metadata(&netns_path).unwrap().ino(),
        "A joined the network namespace it was given"
    );
    // Its root holds only its own files.
    let root = std::fs::read_dir(format!("/proc/{pid}/root")).unwrap();
    let mut names: Vec<String> = root
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for expected in ["dev", "disk.img", "ferrovisor", "probe", "proc"] {
        assert!(names.contains(&expected.to_string()), "{names:?}");
    }
    assert!(
        !names
            .iter()
            .any(|n| n == "b.img" || n == "tmp" || n == "home"),
        "{names:?}"
    );
    // Its cgroup, with the limits.
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(cgroups.contains(&format!("fvjail/{id_a}")), "{cgroups}");
    // The limits, in the v1 files on hosts that bind the controllers to v1
    // hierarchies (this project's), else in the unified hierarchy's.
    let v1 = |controller: &str, file: &str| {
        Path::new("/sys/fs/cgroup")
            .join(controller)
            .join("fvjail")
            .join(&id_a)
            .join(file)
    };
    let v2 = |file: &str| {
        Path::new("/sys/fs/cgroup/unified/fvjail")
            .join(&id_a)
            .join(file)
    };
    let read_limit = |v1_path: PathBuf, v2_path: PathBuf| {
        std::fs::read_to_string(&v1_path)
            .or_else(|_| std::fs::read_to_string(&v2_path))
            .unwrap_or_else(|e| panic!("{} / {}: {e}", v1_path.display(), v2_path.display()))
            .trim()
            .to_string()
    };
    let memory = read_limit(v1("memory", "memory.limit_in_bytes"), v2("memory.max"));
    assert_eq!(memory, "1073741824");
    let cpu = read_limit(v1("cpu", "cpu.cfs_quota_us"), v2("cpu.max"));
    assert!(cpu == "150000" || cpu == "150000 100000", "{cpu}");
    assert_eq!(read_limit(v1("pids", "pids.max"), v2("pids.max")), "512");
    // A's own disk was reachable to A; B's uid cannot read A's disk on the host.
    let probe_line = "sandbox test probe: open /disk.img: allowed";
    assert!(vm_a.log().contains(probe_line), "{}", vm_a.log());
    let as_b = Command::new("setpriv")
        .args(["--reuid", &JAIL_IDS[1].to_string()])
        .args(["--regid", &JAIL_IDS[1].to_string(), "--clear-groups", "cat"])
        .arg(&disk_a)
        .output()
        .unwrap();
    assert!(!as_b.status.success(), "B's uid read A's disk");
    assert!(String::from_utf8_lossy(&as_b.stderr).contains("Permission denied"));

    // SIGTERM to fvjail reaches the VMM, which stops cleanly; the jail goes.
    vm_a.signal(libc::SIGTERM);
    let out_a = vm_a.wait(Duration::from_secs(20));
    assert_eq!(out_a.code(), 0, "{out_a:#?}");
    assert!(!base.join(&id_a).exists(), "the jail directory is removed");
    assert!(!Path::new("/sys/fs/cgroup/memory/fvjail")
        .join(&id_a)
        .exists());
}
