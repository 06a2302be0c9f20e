//! Every system call a seccomp filter allows is made by a thread of that kind
//! in these scenarios, run with the filters on and traced by strace: a filter
//! allows nothing the VMM does not use, and (filters on) nothing it uses is
//! missing, or the run dies of SIGSYS.

mod common;
use common::netlab::{lab_available, NetNs, ProbePeer};
use common::rest::{call, ferrovisor_api};
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use sandbox::seccomp::{base_syscalls, own_syscalls, syscall_name, ThreadKind};

/// Calls a filter allows that these scenarios cannot make happen on demand:
/// (thread kind, or any; call; why).
const NOT_EXERCISED: &[(Option<ThreadKind>, &str, &str)] = &[
    (
        None,
        "restart_syscall",
        "a signal landing on a thread in a timed sleep (poll with a timeout)",
    ),
    (
        None,
        "mremap",
        "glibc realloc of a large block; allocation sizes decide",
    ),
    (
        None,
        "sched_yield",
        "the standard library's channels back off under contention",
    ),
    (
        None,
        "clock_nanosleep",
        "sleeps in retry loops (API accept back-off, serial reconnects)",
    ),
    (
        Some(ThreadKind::VirtioNet),
        "eventfd2",
        "the probe's net driver polls: no interrupt, so no irqfd set up by a net worker",
    ),
    (
        Some(ThreadKind::VirtioNet),
        "ioctl",
        "interrupt routes (as eventfd2) and TUNSETOFFLOAD, which the probe never asks for",
    ),
];

/// The kind of a thread by its name (as the kernel truncates it to 15 bytes).
fn kind_of(comm: &str) -> Option<ThreadKind> {
    let kind = match comm {
        c if c.starts_with("vcpu") => ThreadKind::Vcpu,
        "api" | "api-conn" => ThreadKind::Api,
        "signals" => ThreadKind::Signals,
        c if c.starts_with("serial-") => ThreadKind::SerialInput,
        c if c.starts_with("virtio-blk-q") && c.contains("-i") => ThreadKind::BlockIo,
        c if c.starts_with("virtio-blk-q") => ThreadKind::VirtioBlock,
        "virtio-rng" => ThreadKind::VirtioRng,
        "virtio-balloon" => ThreadKind::VirtioBalloon,
        "virtio-console" => ThreadKind::VirtioConsole,
        c if c.starts_with("virtio-net") => ThreadKind::VirtioNet,
        "spawner" | "ferrovisor" => ThreadKind::Vmm,
        _ => return None,
    };
    Some(kind)
}

/// The calls of each kind in one `strace -f -Y` output: a thread's calls
/// count for its kind once it installed its filter; before that, a thread the
/// spawner started runs under the spawner's (the main thread's) filter.
fn calls_by_kind(trace: &str, seen: &mut BTreeMap<ThreadKind, BTreeSet<String>>) {
    let mut filtered = BTreeSet::new();
    let mut spawner: Option<String> = None;
    let mut main: Option<String> = None;
    for line in trace.lines() {
        let Some((tid, rest)) = line.split_once('<') else {
            continue;
        };
        let Some((comm, rest)) = rest.split_once("> ") else {
            continue;
        };
        let call = rest.trim_start_matches("<... ");
        let name: String = call
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() || tid.parse::<u32>().is_err() {
            continue;
        }
        main.get_or_insert_with(|| tid.to_string());
        if comm == "spawner" && spawner.is_none() {
            spawner = Some(tid.to_string());
        }
        let kind = if filtered.contains(tid) {
            kind_of(comm)
        } else if spawner.is_some()
            && spawner.as_deref() != Some(tid)
            && main.as_deref() != Some(tid)
        {
            Some(ThreadKind::Vmm)
        } else {
            None
        };
        if let Some(kind) = kind {
            seen.entry(kind).or_default().insert(name.clone());
        }
        if name == "seccomp" {
            filtered.insert(tid.to_string());
        }
    }
}

struct Traced {
    trace: PathBuf,
}

impl Traced {
    /// `ferrovisor ARGS` under strace, the trace written beside `dir`.
    fn command(dir: &TempDir, tag: &str, args: Command) -> (Command, Traced) {
        Traced::command_in(dir, tag, args, None)
    }

    /// The same, run inside network namespace `ns` when given.
    fn command_in(
        dir: &TempDir,
        tag: &str,
        args: Command,
        ns: Option<&NetNs>,
    ) -> (Command, Traced) {
        let trace = dir.join(&format!("{tag}.strace"));
        let mut c = match ns {
            Some(ns) => ns.command(std::path::Path::new("strace")),
            None => Command::new("strace"),
        };
        c.args(["-f", "-Y", "-qq", "-o"]).arg(&trace);
        c.arg(args.get_program()).args(args.get_args());
        for (k, v) in args.get_envs() {
            if let Some(v) = v {
                c.env(k, v);
            }
        }
        (c, Traced { trace })
    }

    fn collect(&self, seen: &mut BTreeMap<ThreadKind, BTreeSet<String>>) {
        let text = std::fs::read_to_string(&self.trace).expect("strace output");
        calls_by_kind(&text, seen);
    }
}

fn disk(dir: &TempDir) -> PathBuf {
    let path = dir.join("disk.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    path
}

fn guest(dir: &TempDir, cmdline: &str, extra: &[String]) -> Command {
    let mut cmd = ferrovisor(&probe());
    // Shared memory: a memfd the main thread sizes.
    cmd.args([
        "--cmdline",
        cmdline,
        "--memory",
        "size=256M,shared=on",
        "--rng",
    ]);
    cmd.arg("--disk")
        .arg(format!("path={}", disk(dir).display()));
    cmd.args(["--balloon", "size=16M"]);
    cmd.arg("--channel").arg(format!(
        "name=org.ferrovisor.test,socket={}",
        dir.join("agent.sock").display()
    ));
    cmd.args(extra);
    cmd
}

/// The pid of the VMM strace (`tracer`) runs.
fn tracee(tracer: u32) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/{tracer}/task/{tracer}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Kills the traced VMM if the test fails while it runs: killing strace
/// alone would leave it running, detached.
struct KillTracee(i32);

impl KillTracee {
    /// Waits for strace (`tracer`) to start the VMM.
    fn new(tracer: u32) -> KillTracee {
        for _ in 0..500 {
            if let Some(pid) = tracee(tracer) {
                return KillTracee(pid);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("strace did not start the VMM");
    }
}

impl Drop for KillTracee {
    fn drop(&mut self) {
        // SAFETY: kill(2) of the VMM this test started; it may be gone.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

fn run_traced(
    dir: &TempDir,
    tag: &str,
    cmd: Command,
    seen: &mut BTreeMap<ThreadKind, BTreeSet<String>>,
) -> Exited {
    let (c, traced) = Traced::command(dir, tag, cmd);
    let vm = VmProcess::spawn(c);
    let guard = KillTracee::new(vm.pid());
    let out = vm.wait(RUN_TIMEOUT);
    std::mem::forget(guard);
    traced.collect(seen);
    out
}

#[test]
fn every_call_a_filter_allows_is_made_by_that_kind_of_thread() {
    if !require_kvm() {
        return;
    }
    assert!(
        Command::new("strace").arg("-V").output().is_ok(),
        "strace is missing (scripts/test.sh installs it)"
    );
    let mut seen: BTreeMap<ThreadKind, BTreeSet<String>> = BTreeMap::new();
    let dir = TempDir::new("seccomp-coverage");

    // Disk, entropy and balloon drivers, each with its worker threads.
    // A qcow2 disk: its metadata is read and written with pread64/pwrite64.
    let top = dir.join("top.qcow2");
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&top)
        .arg("64M")
        .status()
        .expect("qemu-img");
    assert!(made.success());
    let mut cmd = ferrovisor(&probe());
    cmd.args(["--cmdline", "probe=blk", "--memory", "size=256M", "--disk"]);
    cmd.arg(format!("path={},image_type=qcow2", top.display()));
    let out = run_traced(&dir, "qcow2", cmd, &mut seen);
    assert_eq!(out.code(), debug_exit(0), "qcow2: {out:#?}");

    for (tag, program) in [
        ("blk", "probe=blk"),
        ("rng", "probe=rng"),
        ("balloon", "probe=balloon pool_mib=32 seconds=1"),
    ] {
        let out = run_traced(&dir, tag, guest(&dir, program, &[]), &mut seen);
        assert_eq!(out.code(), debug_exit(0), "{tag}: {out:#?}");
    }

    // A channel with a host client; COM1 on a socket with a client.
    let serial = dir.join("serial.sock");
    let mut cmd = ferrovisor(&probe());
    cmd.args(["--cmdline", "probe=channel mode=send bytes=65536"]);
    cmd.args(["--memory", "size=256M", "--serial"]);
    cmd.arg(format!("socket={}", serial.display()));
    cmd.arg("--channel").arg(format!(
        "name=org.ferrovisor.test,socket={}",
        dir.join("agent.sock").display()
    ));
    let (c, traced) = Traced::command(&dir, "channel", cmd);
    let vm = VmProcess::spawn(c);
    let guard = KillTracee::new(vm.pid());
    let mut console = connect_unix(&serial, RUN_TIMEOUT);
    console.write_all(b"x").unwrap();
    let mut agent = connect_unix(&dir.join("agent.sock"), RUN_TIMEOUT);
    let mut got = Vec::new();
    agent.read_to_end(&mut got).unwrap();
    let mut printed = String::new();
    console
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = console.read_to_string(&mut printed);
    let out = vm.wait(RUN_TIMEOUT);
    std::mem::forget(guard);
    assert_eq!(out.code(), debug_exit(0), "channel: {printed}\n{out:#?}");
    assert_eq!(got.len(), 65536);
    traced.collect(&mut seen);

    // Host to guest through the channel.
    let cmd = guest(&dir, "probe=channel mode=recv bytes=65536", &[]);
    let (c, traced) = Traced::command(&dir, "channel-recv", cmd);
    let vm = VmProcess::spawn(c);
    let guard = KillTracee::new(vm.pid());
    let mut agent = connect_unix(&dir.join("agent.sock"), RUN_TIMEOUT);
    agent.write_all(&[0x5a; 65536]).unwrap();
    let out = vm.wait(RUN_TIMEOUT);
    std::mem::forget(guard);
    assert_eq!(out.code(), debug_exit(0), "channel-recv: {out:#?}");
    traced.collect(&mut seen);

    // The API: queries, pause and resume, then vmm.shutdown.
    let socket = dir.join("api.sock");
    let mut api = ferrovisor_api(&socket);
    api.arg("--kernel").arg(probe()).args([
        "--cmdline",
        "probe=ticks interval_ms=100",
        "--memory",
        "size=128M",
    ]);
    let (c, traced) = Traced::command(&dir, "api", api);
    let mut vm = VmProcess::spawn(c);
    let guard = KillTracee::new(vm.pid());
    vm.wait_for_line("probe: ticks ready", RUN_TIMEOUT);
    for (method, endpoint) in [
        ("GET", "vmm.ping"),
        ("GET", "vm.info"),
        ("GET", "vm.counters"),
        ("PUT", "vm.pause"),
        ("PUT", "vm.resume"),
    ] {
        let r = call(&socket, method, endpoint, None);
        assert!(r.status < 300, "{endpoint}: {r:?}");
    }
    let r = call(&socket, "PUT", "vmm.shutdown", None);
    assert!(r.status < 300, "vmm.shutdown: {r:?}");
    let out = vm.wait(Duration::from_secs(30));
    std::mem::forget(guard);
    assert_eq!(out.code(), 0, "api: {out:#?}");
    traced.collect(&mut seen);

    // virtio-net: pings both ways through a TAP in a namespace of our own.
    if lab_ready() {
        let ns = NetNs::new();
        let mut cmd = ferrovisor(&probe());
        cmd.args([
            "--cmdline",
            "probe=net ip=10.79.0.2",
            "--memory",
            "size=256M",
        ]);
        cmd.args(["--net", "tap=fvtap0,ip=10.79.0.1,mask=255.255.255.0"]);
        let (c, traced) = Traced::command_in(&dir, "net", cmd, Some(&ns));
        let mut vm = VmProcess::spawn(c);
        let guard = KillTracee::new(vm.pid());
        vm.wait_for_line("probe: net ready", RUN_TIMEOUT);
        let ping = ns
            .command(std::path::Path::new("ping"))
            .args(["-c", "2", "-W", "5", "10.79.0.2"])
            .output()
            .expect("ping");
        assert!(ping.status.success(), "{ping:?}");
        let peer = ProbePeer {
            socket: ns.udp(SocketAddrV4::new(Ipv4Addr::new(10, 79, 0, 1), 0)),
            guest: Ipv4Addr::new(10, 79, 0, 2),
        };
        let _ = peer
            .socket
            .send_to(b"BYE", SocketAddrV4::new(peer.guest, 9000));
        let out = vm.wait(RUN_TIMEOUT);
        std::mem::forget(guard);
        assert_eq!(out.code(), debug_exit(0), "net: {out:#?}");
        traced.collect(&mut seen);
    }

    // A forbidden call from a vCPU: the SIGSYS handler's own calls.
    let mut cmd = guest(&dir, "probe=echo", &[]);
    cmd.env("FERROVISOR_TEST_SECCOMP_TRIGGER", "vcpu");
    let out = run_traced(&dir, "sigsys", cmd, &mut seen);
    assert!(
        out.log.contains("made the forbidden system call"),
        "{out:#?}"
    );

    let exempt_for = |kind: Option<ThreadKind>| -> BTreeSet<&str> {
        NOT_EXERCISED
            .iter()
            .filter(|(k, _, _)| k.is_none() || *k == kind)
            .map(|(_, n, _)| *n)
            .collect()
    };
    let exempt = exempt_for(None);
    let mut missing = Vec::new();
    let anywhere: BTreeSet<&String> = seen.values().flatten().collect();
    for a in base_syscalls() {
        let name = syscall_name(a.nr());
        if !exempt.contains(name) && !anywhere.contains(&name.to_string()) {
            missing.push(format!("base: {name}"));
        }
    }
    for kind in ThreadKind::ALL {
        let made = seen.get(&kind).cloned().unwrap_or_default();
        let exempt = exempt_for(Some(kind));
        for a in own_syscalls(kind) {
            let name = syscall_name(a.nr());
            if !exempt.contains(name) && !made.contains(name) {
                missing.push(format!("{}: {name}", kind.name()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "allowed but never made: {missing:?}\nmade: {seen:#?}"
    );
}

/// Whether the network lab can run here; under CI it must.
fn lab_ready() -> bool {
    match lab_available() {
        Ok(()) => true,
        Err(why) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but the network lab cannot run: {why}"
            );
            eprintln!("virtio-net not traced: {why}");
            false
        }
    }
}

#[test]
fn trace_lines_are_attributed_to_kinds() {
    let trace = "\
100<ferrovisor> openat(AT_FDCWD, \"/x\", O_RDONLY) = 3
100<ferrovisor> seccomp(SECCOMP_SET_MODE_FILTER, 0, {len=10}) = 0
100<ferrovisor> ioctl(3, KVM_CREATE_VM, 0) = 4
101<spawner> seccomp(SECCOMP_SET_MODE_FILTER, 0, {len=10}) = 0
101<spawner> clone3({flags=CLONE_VM}, 88) = 102
102<spawner> rseq(0x7f, 32, 0, 0x53053053) = 0
102<vcpu0> seccomp(SECCOMP_SET_MODE_FILTER, 0, {len=10}) = 0
102<vcpu0> ioctl(5, KVM_RUN, 0 <unfinished ...>
102<vcpu0> <... ioctl resumed>) = 0
";
    let mut seen = BTreeMap::new();
    calls_by_kind(trace, &mut seen);
    let names = |k| {
        seen.get(&k)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(ThreadKind::Vmm),
        vec!["clone3", "ioctl", "rseq", "seccomp"]
    );
    assert_eq!(names(ThreadKind::Vcpu), vec!["ioctl"]);
}
