//! Tier-4 tests with a real Linux guest built from Debian packages by the
//! guest kit. They need hardware virtualization: on other hosts (such as
//! software PVM KVM) they say so plainly instead of passing silently.

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn base64_matches_rfc4648() {
    assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    assert_eq!(base64(b"fooba"), "Zm9vYmE=");
    assert_eq!(base64(b"foob"), "Zm9vYg==");
}

/// Builds the guest kit and returns (vmlinuz, initramfs).
fn guest_kit() -> (std::path::PathBuf, std::path::PathBuf) {
    let root = e2e::host::repo_root();
    let out = Command::new("bash")
        .arg(root.join("guests/linux-kit/build.sh"))
        .arg(root.join("target/guest-kit"))
        .output()
        .expect("run the guest kit");
    assert!(
        out.status.success(),
        "guest kit failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = std::path::PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("kit prints its directory")
            .trim(),
    );
    (dir.join("vmlinuz"), dir.join("initramfs.cpio.gz"))
}

/// The guest kit, where Linux guests can run; says plainly when they cannot.
fn linux_guest() -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    if !e2e::host::hardware_virtualization() {
        eprintln!("Linux guest tests not run: KVM on this host is not hardware-backed");
        return None;
    }
    assert!(require_kvm());
    Some(guest_kit())
}

/// ferrovisor booting the kit with `script` (run by the kit's /init) and `args`.
fn kit_command(
    kernel: &std::path::Path,
    initramfs: &std::path::Path,
    script: &str,
    args: &[&str],
) -> Command {
    let mut cmd = ferrovisor(kernel);
    cmd.arg("--initramfs")
        .arg(initramfs)
        .args(args)
        .arg("--cmdline")
        .arg(format!(
            "console=ttyS0 reboot=k panic=-1 kit.run={}",
            base64(script.as_bytes())
        ));
    cmd
}

#[test]
fn linux_guest_boots_smp_and_runs_a_script() {
    let Some((kernel, initramfs)) = linux_guest() else {
        return;
    };
    let script = "grep -c ^processor /proc/cpuinfo; cat /proc/cmdline";
    let cmd = kit_command(
        &kernel,
        &initramfs,
        script,
        &["--cpus", "boot=2", "--memory", "size=512M"],
    );
    let mut vm = VmProcess::spawn(cmd);
    vm.wait_for_line("kit: init ok", Duration::from_secs(120));
    vm.wait_for_line("kit: exit=0", Duration::from_secs(60));
    vm.signal(libc::SIGTERM);
    let out = vm.wait(Duration::from_secs(10));
    assert_eq!(out.code(), 0);
    assert!(
        out.serial.iter().any(|l| l.trim() == "2"),
        "two CPUs online: {:#?}",
        out.serial
    );
}

#[test]
fn linux_guest_sees_pci_devices_and_powers_off_through_acpi() {
    let Some((kernel, initramfs)) = linux_guest() else {
        return;
    };
    let dir = TempDir::new("linux-devices");
    let disk = dir.join("disk.img");
    let mut content = vec![0u8; 64 << 20];
    content[..16].copy_from_slice(b"FERROVISOR-DISK!");
    std::fs::write(&disk, content).unwrap();
    let sock = dir.join("agent.sock");
    let script = "cat /sys/block/vda/queue/logical_block_size /sys/block/vda/queue/physical_block_size; \
                  dd if=/dev/vda bs=16 count=1 2>/dev/null; echo; \
                  echo guest-wrote-this | dd of=/dev/vda bs=512 seek=8 conv=sync,fsync 2>/dev/null; \
                  ls /dev/virtio-ports/; head -c 64 /dev/hwrng | wc -c";
    let disk_flag = format!(
        "path={},physical_block_size=4096,serial=linux-disk",
        disk.display()
    );
    let channel_flag = format!("name=org.ferrovisor.agent,socket={}", sock.display());
    let args = [
        "--cpus",
        "boot=2",
        "--memory",
        "size=512M",
        "--rng",
        "--disk",
        &disk_flag,
        "--channel",
        &channel_flag,
    ];
    let mut vm = VmProcess::spawn(kit_command(&kernel, &initramfs, script, &args));
    vm.wait_for_line("kit: init ok", Duration::from_secs(120));
    vm.wait_for_line("kit: exit=0", Duration::from_secs(60));
    // /init powers off: through ACPI S5 now that the tables exist.
    let out = vm.wait(Duration::from_secs(60));
    assert_eq!(out.code(), 0, "{out:#?}");
    for expected in [
        "512",
        "4096",
        "FERROVISOR-DISK!",
        "org.ferrovisor.agent",
        "64",
    ] {
        assert!(
            out.serial.iter().any(|l| l.trim() == expected),
            "{expected}: {:#?}",
            out.serial
        );
    }
    let written = std::fs::read(&disk).unwrap();
    assert_eq!(&written[8 * 512..8 * 512 + 16], b"guest-wrote-this");
}

#[test]
fn linux_guest_through_the_api_pauses_with_its_clock_and_shuts_down() {
    use common::rest::*;
    let Some((kernel, initramfs)) = linux_guest() else {
        return;
    };
    let dir = TempDir::new("linux-api");
    let socket = dir.join("api.sock");
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 16 << 20]).unwrap();
    // Prints the guest's uptime every 200 ms for a minute.
    let script = "i=0; while [ $i -lt 300 ]; do echo uptime $(cut -d' ' -f1 /proc/uptime); \
                  i=$((i+1)); sleep 0.2; done";
    let config = serde_json::json!({
        "payload": {
            "kernel": kernel,
            "initramfs": initramfs,
            "cmdline": format!("console=ttyS0 reboot=k panic=-1 kit.run={}", base64(script.as_bytes())),
        },
        "cpus": {"boot_vcpus": 2},
        "memory": {"size": "512M"},
        "serial": {"mode": "tty"},
        "disks": [{"path": disk}],
    });
    let mut vm = VmProcess::spawn(ferrovisor_api(&socket));
    expect(&call(&socket, "PUT", "vm.create", Some(&config)), 204);
    expect(&call(&socket, "PUT", "vm.boot", None), 204);
    vm.wait_for_line("kit: init ok", Duration::from_secs(120));
    let uptime = |line: &str| -> f64 {
        line.trim()
            .strip_prefix("uptime ")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    vm.wait_for_line("uptime ", Duration::from_secs(60));
    expect(&call(&socket, "PUT", "vm.pause", None), 204);
    let before = vm
        .lines_within(Duration::from_millis(500))
        .iter()
        .rev()
        .find(|l| l.starts_with("uptime "))
        .map(|l| uptime(l));
    let during = vm.lines_within(Duration::from_secs(2));
    assert!(
        during.iter().all(|l| !l.starts_with("uptime ")),
        "{during:#?}"
    );
    expect(&call(&socket, "PUT", "vm.resume", None), 204);
    let after = uptime(&vm.wait_for_line("uptime ", Duration::from_secs(30)));
    if let Some(before) = before {
        assert!(
            after - before < 1.5,
            "uptime jumped {before} -> {after} over a 2 s pause"
        );
    }
    let counters: serde_json::Value = call(&socket, "GET", "vm.counters", None).json().unwrap();
    assert!(
        counters["disk0"]["read_ops"].as_u64().unwrap() > 0,
        "{counters}"
    );
    // Linux without acpid may ignore the button: either way the VM ends in shutdown.
    let r = call(
        &socket,
        "PUT",
        "vm.shutdown",
        Some(&serde_json::json!({"timeout_ms": 5000})),
    );
    expect(&r, 200);
    assert_eq!(state(&socket), "shutdown");
    expect(&call(&socket, "PUT", "vmm.shutdown", None), 204);
    assert_eq!(vm.wait(Duration::from_secs(30)).code(), 0);
}

#[test]
fn linux_guest_sees_the_topology_and_the_cpu_model() {
    let Some((kernel, initramfs)) = linux_guest() else {
        return;
    };
    // /proc/cpuinfo of the first CPU of each core and the flags of CPU 0.
    let script =
        "grep -E '^(physical id|core id|siblings|cpu cores)' /proc/cpuinfo | sort | uniq -c; \
                  grep -m1 '^flags' /proc/cpuinfo; grep -m1 '^model name' /proc/cpuinfo; \
                  grep -c ^processor /proc/cpuinfo";
    let cmd = kit_command(
        &kernel,
        &initramfs,
        script,
        &[
            "--cpus",
            "boot=8,topology=2:2:2,model=x86-64-v2",
            "--memory",
            "size=512M",
        ],
    );
    let mut vm = VmProcess::spawn(cmd);
    vm.wait_for_line("kit: init ok", Duration::from_secs(120));
    vm.wait_for_line("kit: exit=0", Duration::from_secs(60));
    vm.signal(libc::SIGTERM);
    let out = vm.wait(Duration::from_secs(10));
    let text = out.serial.join("\n");
    assert!(
        text.contains("siblings\t: 4"),
        "2 cores x 2 threads per socket: {text}"
    );
    assert!(text.contains("cpu cores\t: 2"), "{text}");
    assert!(text.contains("physical id\t: 1"), "two sockets: {text}");
    assert!(
        out.serial.iter().any(|l| l.trim() == "8"),
        "8 CPUs online: {text}"
    );
    let flags = out
        .serial
        .iter()
        .find(|l| l.starts_with("flags"))
        .expect("a flags line");
    for on in [" sse4_2", " popcnt", " cx16", " x2apic", " hypervisor"] {
        assert!(flags.contains(on), "{on} in x86-64-v2: {flags}");
    }
    for off in [" avx ", " avx2", " avx512f", " sha_ni"] {
        assert!(!flags.contains(off), "{off} not in x86-64-v2: {flags}");
    }
    assert!(text.contains("Ferrovisor x86-64-v2 CPU"), "{text}");
}

#[test]
fn linux_guest_networks_over_a_multiqueue_tap() {
    use common::netlab::{lab_available, NetNs};
    let Some((kernel, initramfs)) = linux_guest() else {
        return;
    };
    lab_available().expect("the network lab");
    let ns = NetNs::new();
    // The guest sends 16 MiB of random bytes to a listener inside the
    // namespace and prints their md5sum.
    let script = "ip link set eth0 up && ip addr add 10.81.0.2/24 dev eth0 && \
                  cat /sys/class/net/eth0/address && ping -c 3 10.81.0.1 >/dev/null && echo ping-ok && \
                  head -c 16777216 /dev/urandom > /tmp/blob && md5sum /tmp/blob && \
                  nc 10.81.0.1 PORT < /tmp/blob && echo sent-ok";
    let net = "tap=fvltap0,ip=10.81.0.1,num_queues=4,mac=52:54:00:00:81:02";
    let mut cmd = ns.command(std::path::Path::new(env!("CARGO_BIN_EXE_ferrovisor")));
    // The TAP gets its address when ferrovisor starts: the listener binds after that.
    let port = 5601;
    let script = script.replace("PORT", &port.to_string());
    cmd.arg("--kernel")
        .arg(&kernel)
        .arg("--initramfs")
        .arg(&initramfs)
        .args(["--cpus", "boot=2", "--memory", "size=512M", "--net", net])
        .arg("--cmdline")
        .arg(format!(
            "console=ttyS0 reboot=k panic=-1 kit.run={}",
            base64(script.as_bytes())
        ));
    let mut vm = VmProcess::spawn(cmd);
    vm.wait_for_line("kit: init ok", Duration::from_secs(120));
    let received = ns.run_inside(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let listener = loop {
            match std::net::TcpListener::bind(("10.81.0.1", port)) {
                Ok(l) => break l,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => panic!("listen: {e}"),
            }
        };
        let (mut conn, _) = listener.accept().expect("the guest connects");
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut conn, &mut data).expect("read");
        data
    });
    vm.wait_for_line("kit: exit=0", Duration::from_secs(120));
    let out = vm.wait(Duration::from_secs(60));
    assert!(
        out.serial.iter().any(|l| l.trim() == "52:54:00:00:81:02"),
        "{out:#?}"
    );
    assert!(out.serial.iter().any(|l| l.trim() == "ping-ok"), "{out:#?}");
    assert_eq!(received.len(), 16 << 20);
    let dir = TempDir::new("linux-net");
    let blob = dir.join("blob");
    std::fs::write(&blob, &received).unwrap();
    let sum = Command::new("md5sum").arg(&blob).output().unwrap();
    let sum = String::from_utf8_lossy(&sum.stdout);
    let sum = sum.split_whitespace().next().unwrap();
    assert!(
        out.serial.iter().any(|l| l.starts_with(sum)),
        "the guest's md5sum {sum}: {out:#?}"
    );
}
