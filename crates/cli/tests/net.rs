//! virtio-net end to end, in network namespaces the tests create and
//! delete: the host pings the probe guest, moves data both ways over UDP
//! with checksums on both sides, two guests on one bridge reach each other,
//! multiqueue spreads flows over queue pairs, and malformed frames from the
//! guest are dropped and counted. Addresses are 10.x.y.z/24 inside the
//! namespaces only; nothing routes anywhere else.

mod common;
use common::netlab::{lab_available, NetNs, ProbePeer};
use common::rest::call;
use common::*;
use serde_json::Value;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::Duration;

/// Bytes each way of the transfer test (`FV_NET_BYTES` overrides; the
/// issue's 256 MiB takes long where guest ring 0 is emulated, as under
/// kvm_pvm, where the probe's per-frame work runs at ~1 µs an instruction).
fn transfer_bytes() -> u64 {
    std::env::var("FV_NET_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8 << 20)
}

/// Whether the lab can run; fails loudly under CI when it cannot.
fn require_lab() -> bool {
    if !require_kvm() {
        return false;
    }
    match lab_available() {
        Ok(()) => true,
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true but the network lab cannot run: {why}")
        }
        Err(why) => {
            eprintln!("skipping: {why}");
            false
        }
    }
}

/// Starts ferrovisor inside `ns` on the probe with `cmdline` and `--net` options `nets`.
fn start(ns: &NetNs, cmdline: &str, nets: &[String], api: Option<&Path>) -> VmProcess {
    let mut cmd = ns.command(Path::new(env!("CARGO_BIN_EXE_ferrovisor")));
    cmd.arg("--kernel")
        .arg(probe())
        .args([
            "--debug-exit",
            "--log-level",
            "info",
            "--memory",
            "size=256M",
        ])
        .args(["--cmdline", cmdline]);
    for n in nets {
        cmd.args(["--net", n]);
    }
    if let Some(api) = api {
        cmd.arg("--api-socket").arg(api);
    }
    VmProcess::spawn(cmd)
}

fn peer(ns: &NetNs, host: [u8; 4], guest: [u8; 4]) -> ProbePeer {
    let host = Ipv4Addr::from(host);
    ProbePeer {
        socket: ns.udp(SocketAddrV4::new(host, 0)),
        guest: Ipv4Addr::from(guest),
    }
}

fn counters(api: &Path) -> Value {
    call(api, "GET", "vm.counters", None).json().unwrap()
}

fn finish(vm: VmProcess, p: &ProbePeer) -> Exited {
    let _ = p.socket.send_to(b"BYE", SocketAddrV4::new(p.guest, 9000));
    vm.wait(RUN_TIMEOUT)
}

#[test]
fn host_pings_the_guest_and_data_crosses_both_ways_intact() {
    if !require_lab() {
        return;
    }
    let ns = NetNs::new();
    let dir = TempDir::new("net-xfer");
    let api = dir.join("api.sock");
    let mut vm = start(
        &ns,
        "probe=net ip=10.77.0.2",
        &["tap=fvtap0,ip=10.77.0.1,mask=255.255.255.0,mac=52:54:00:12:34:56".into()],
        Some(&api),
    );
    let line = vm.wait_for_line("probe: net mac=", RUN_TIMEOUT);
    assert!(
        line.contains("mac=52:54:00:12:34:56 status=1 pairs=1"),
        "{line}"
    );
    vm.wait_for_line("probe: net ready", RUN_TIMEOUT);

    let ping = ns
        .command(Path::new("ping"))
        .args(["-c", "3", "-W", "5", "10.77.0.2"])
        .output()
        .expect("run ping");
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );

    let p = peer(&ns, [10, 77, 0, 1], [10, 77, 0, 2]);
    let bytes = transfer_bytes();
    let data: Vec<u8> = (0..65_521u32).map(|i| (i * 31 + i / 7) as u8).collect();
    let to_guest = p.send_to_guest(&data, bytes, 128).expect("host to guest");
    let from_guest = p.receive_from_guest(bytes).expect("guest to host");
    eprintln!(
        "host->guest {:.3} Gbit/s (resent {}), guest->host {:.3} Gbit/s",
        to_guest.gbit_s(),
        to_guest.resent,
        from_guest.gbit_s()
    );
    let c = counters(&api);
    let q = &c["net0"];
    assert!(q["q0.rx_bytes"].as_u64().unwrap() >= bytes, "{c}");
    assert!(q["q0.tx_bytes"].as_u64().unwrap() >= bytes, "{c}");
    assert_eq!(q["q0.tx_malformed"], 0, "{c}");
    let info: Value = call(&api, "GET", "vm.info", None).json().unwrap();
    assert!(info.to_string().contains("virtio-net"), "{info}");
    let out = finish(vm, &p);
    assert_eq!(out.code(), debug_exit(0), "{out:#?}");
}

#[test]
fn two_guests_on_one_bridge_reach_each_other() {
    if !require_lab() {
        return;
    }
    let ns = NetNs::new();
    ns.bridge("fvbr0", "10.78.0.1/24");
    ns.tap_on_bridge("fvtapa", "fvbr0", false);
    ns.tap_on_bridge("fvtapb", "fvbr0", false);
    let mut a = start(&ns, "probe=net ip=10.78.0.2", &["tap=fvtapa".into()], None);
    let mut b = start(&ns, "probe=net ip=10.78.0.3", &["tap=fvtapb".into()], None);
    let mac_a = a.wait_for_line("probe: net mac=", RUN_TIMEOUT);
    let mac_b = b.wait_for_line("probe: net mac=", RUN_TIMEOUT);
    assert_ne!(mac_a, mac_b, "derived MACs differ per TAP");
    a.wait_for_line("probe: net ready", RUN_TIMEOUT);
    b.wait_for_line("probe: net ready", RUN_TIMEOUT);
    let pa = peer(&ns, [10, 78, 0, 1], [10, 78, 0, 2]);
    let reply = pa
        .ask(
            "CALL 10.78.0.3 over-the-bridge",
            "CALLED",
            Duration::from_secs(20),
        )
        .expect("guest a calls guest b");
    assert_eq!(reply, "CALLED 10.78.0.3 over-the-bridge");
    let pb = peer(&ns, [10, 78, 0, 1], [10, 78, 0, 3]);
    let reply = pb
        .ask("CALL 10.78.0.2 and-back", "CALLED", Duration::from_secs(20))
        .expect("guest b calls guest a");
    assert_eq!(reply, "CALLED 10.78.0.2 and-back");
    assert_eq!(finish(a, &pa).code(), debug_exit(0));
    assert_eq!(finish(b, &pb).code(), debug_exit(0));
}

#[test]
fn multiqueue_spreads_flows_over_queue_pairs() {
    if !require_lab() {
        return;
    }
    let ns = NetNs::new();
    let dir = TempDir::new("net-mq");
    let api = dir.join("api.sock");
    let mut vm = start(
        &ns,
        "probe=net ip=10.79.0.2 pairs=2",
        &["tap=fvtapmq,ip=10.79.0.1,num_queues=4,queue_size=256".into()],
        Some(&api),
    );
    let line = vm.wait_for_line("probe: net mac=", RUN_TIMEOUT);
    assert!(line.contains("pairs=2"), "{line}");
    vm.wait_for_line("probe: net ready", RUN_TIMEOUT);
    // Sixteen flows (source ports): the TAP hashes them over its queues.
    let peers: Vec<ProbePeer> = (0..16)
        .map(|_| peer(&ns, [10, 79, 0, 1], [10, 79, 0, 2]))
        .collect();
    for p in &peers {
        let times = p.echo_round_trips(20, 64).expect("udp echo");
        assert_eq!(times.len(), 20);
    }
    let stats = peers[0]
        .ask("STATS", "STATS", Duration::from_secs(10))
        .unwrap();
    let per_queue: Vec<u64> = ["q0", "q1"]
        .iter()
        .map(|q| field(&stats, q).and_then(|v| v.parse().ok()).unwrap_or(0))
        .collect();
    assert!(per_queue.iter().all(|&n| n > 0), "{stats}");
    let c = counters(&api);
    for q in [
        "q0.rx_packets",
        "q1.rx_packets",
        "q0.tx_packets",
        "q1.tx_packets",
    ] {
        assert!(c["net0"][q].as_u64().unwrap() > 0, "{q}: {c}");
    }
    assert_eq!(finish(vm, &peers[0]).code(), debug_exit(0));
}

#[test]
fn malformed_guest_frames_are_dropped_and_counted() {
    if !require_lab() {
        return;
    }
    let ns = NetNs::new();
    let dir = TempDir::new("net-hostile");
    let api = dir.join("api.sock");
    let mut vm = start(
        &ns,
        "probe=net ip=10.80.0.2",
        &["tap=fvtaph,ip=10.80.0.1".into()],
        Some(&api),
    );
    vm.wait_for_line("probe: net ready", RUN_TIMEOUT);
    let p = peer(&ns, [10, 80, 0, 1], [10, 80, 0, 2]);
    p.ask("HOSTILE", "HOSTILE sent=3", Duration::from_secs(10))
        .unwrap();
    // The device still works afterwards.
    p.echo_round_trips(5, 100)
        .expect("echo after hostile frames");
    let c = counters(&api);
    assert_eq!(c["net0"]["q0.tx_malformed"], 3, "{c}");
    assert_eq!(finish(vm, &p).code(), debug_exit(0));
}

/// Opens TAP `name` inside `ns` (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR) and
/// returns its descriptor, inheritable (no CLOEXEC).
fn open_tap_fd(ns: &NetNs, name: &'static str) -> std::os::fd::OwnedFd {
    ns.run_inside(move || {
        use std::os::fd::{FromRawFd, OwnedFd};
        // SAFETY: open(2) of a constant path; the result is checked.
        let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR) };
        assert!(fd >= 0, "open /dev/net/tun");
        // SAFETY: `fd` was just opened and is owned by nothing else.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut req = [0u8; 40];
        req[..name.len()].copy_from_slice(name.as_bytes());
        let flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
        req[16..18].copy_from_slice(&flags.to_ne_bytes());
        // SAFETY: TUNSETIFF reads and writes a 40-byte ifreq, which `req` is.
        let r = unsafe { libc::ioctl(fd, libc::TUNSETIFF, req.as_mut_ptr()) };
        assert_eq!(r, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
        owned
    })
}

#[test]
fn an_inherited_tap_descriptor_carries_the_nic() {
    if !require_lab() {
        return;
    }
    use std::os::fd::AsRawFd;
    let ns = NetNs::new();
    let tap = open_tap_fd(&ns, "fvtapfd");
    let fd = tap.as_raw_fd();
    let mut vm = start(
        &ns,
        "probe=net ip=10.82.0.2",
        &[format!("fd={fd},ip=10.82.0.1")],
        None,
    );
    // The child has its own copy now.
    drop(tap);
    vm.wait_for_line("probe: net ready", RUN_TIMEOUT);
    let p = peer(&ns, [10, 82, 0, 1], [10, 82, 0, 2]);
    let times = p.echo_round_trips(10, 200).expect("udp echo over the fd");
    assert_eq!(times.len(), 10);
    assert_eq!(finish(vm, &p).code(), debug_exit(0));
}

/// Two NICs in one guest: two TAPs, two PCI functions with their own ids,
/// MACs and counters; the probe drives the first and answers on it.
#[test]
fn a_guest_with_two_nics() {
    if !require_lab() {
        return;
    }
    let ns = NetNs::new();
    let dir = TempDir::new("net-two");
    let api = dir.join("api.sock");
    let mut vm = start(
        &ns,
        "probe=net ip=10.81.0.2",
        &[
            "tap=fvtap0,ip=10.81.0.1,mask=255.255.255.0,mac=52:54:00:00:81:01,id=lan".into(),
            "tap=fvtap1,ip=10.82.0.1,mask=255.255.255.0,mac=52:54:00:00:82:01,id=wan".into(),
        ],
        Some(&api),
    );
    let line = vm.wait_for_line("probe: net mac=", RUN_TIMEOUT);
    assert!(line.contains("mac=52:54:00:00:81:01"), "{line}");
    vm.wait_for_line("probe: net ready", RUN_TIMEOUT);
    let ping = ns
        .command(Path::new("ping"))
        .args(["-c", "2", "-W", "5", "10.81.0.2"])
        .output()
        .expect("run ping");
    assert!(ping.status.success(), "{ping:?}");

    let info: Value = call(&api, "GET", "vm.info", None).json().unwrap();
    let nics: Vec<&Value> = info["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .filter(|d| d["type"] == "virtio-net")
        .collect();
    assert_eq!(nics.len(), 2, "{info}");
    assert_eq!(nics[0]["id"], "lan", "{info}");
    assert_eq!(nics[1]["id"], "wan", "{info}");
    assert_ne!(nics[0]["pci_bdf"], nics[1]["pci_bdf"], "{info}");
    let c = counters(&api);
    assert!(c["lan"]["q0.rx_packets"].as_u64().unwrap() > 0, "{c}");
    assert_eq!(
        c["wan"]["q0.tx_packets"], 0,
        "the probe drives one NIC: {c}"
    );
    // Both TAPs exist in the namespace, each with its host address.
    let addrs = ns
        .command(Path::new("ip"))
        .args(["-4", "-o", "addr"])
        .output()
        .unwrap();
    let addrs = String::from_utf8_lossy(&addrs.stdout);
    assert!(
        addrs.contains("fvtap0") && addrs.contains("10.81.0.1"),
        "{addrs}"
    );
    assert!(
        addrs.contains("fvtap1") && addrs.contains("10.82.0.1"),
        "{addrs}"
    );
    let p = peer(&ns, [10, 81, 0, 1], [10, 81, 0, 2]);
    let out = finish(vm, &p);
    assert_eq!(out.code(), debug_exit(0), "{out:#?}");
}
