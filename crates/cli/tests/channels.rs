//! virtio-serial channels: named ports in the guest, Unix sockets on the
//! host, transfers checked end to end, a host reconnect mid-stream loses and
//! duplicates nothing.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::Duration;

const NAME: &str = "org.ferrovisor.test";

/// The probe's checksum: little-endian u64 words (the last zero-padded),
/// h = (rotl(h, 5) ^ w) * 0x100000001b3 from 0xcbf29ce484222325.
fn channel_sum(data: &[u8]) -> u64 {
    data.chunks(8).fold(0xcbf2_9ce4_8422_2325u64, |h, c| {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The probe's send pattern: word i is i * 0x9E3779B97F4A7C15.
fn channel_pattern(n: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..n.div_ceil(8) as u64)
        .flat_map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes())
        .collect();
    v.truncate(n);
    v
}

#[test]
fn checksum_matches_the_probe_definition() {
    assert_eq!(channel_sum(&[]), 0xcbf2_9ce4_8422_2325);
    assert_eq!(
        channel_sum(&channel_pattern(1 << 20)),
        0xd20a_cc8f_ac4f_625c
    );
    assert_eq!(
        channel_sum(&channel_pattern(100_003)),
        0x7182_3d20_b24e_8553
    );
}

fn connect(path: &std::path::Path) -> UnixStream {
    connect_unix(path, RUN_TIMEOUT)
}

fn start(dir: &TempDir, cmdline: &str) -> (VmProcess, std::path::PathBuf) {
    let sock = dir.join("agent.sock");
    let mut cmd = ferrovisor(&probe());
    cmd.args(["--cmdline", cmdline, "--memory", "size=256M", "--channel"]);
    cmd.arg(format!("name={NAME},socket={}", sock.display()));
    (VmProcess::spawn(cmd), sock)
}

#[test]
fn host_to_guest_transfer() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("chan-recv");
    let bytes = 2 << 20;
    let (mut vm, sock) = start(&dir, &format!("probe=channel mode=recv bytes={bytes}"));
    let mut s = connect(&sock);
    let data = channel_pattern(bytes);
    s.write_all(&data).unwrap();
    let line = vm.wait_for_line("probe: channel recv", RUN_TIMEOUT);
    assert_eq!(
        field(&line, "sum"),
        Some(format!("0x{:016x}", channel_sum(&data))),
        "{line}"
    );
    let out = vm.wait(RUN_TIMEOUT);
    assert_eq!(out.code(), debug_exit(0), "{out:#?}");
    assert_eq!(
        out.line("probe: channel ports="),
        Some("probe: channel ports=1 names=0:org.ferrovisor.test target=0")
    );
}

#[test]
fn guest_to_host_with_a_reconnect_mid_stream() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("chan-send");
    let bytes = 2 << 20;
    let (vm, sock) = start(&dir, &format!("probe=channel mode=send bytes={bytes}"));
    let mut received = Vec::new();
    // First client: take about a third, then hand over without losing what
    // the kernel already buffered for us (stop reading new data, drain, close).
    let mut first = connect(&sock);
    let mut buf = vec![0u8; 64 << 10];
    while received.len() < bytes / 3 {
        let n = first.read(&mut buf).unwrap();
        assert!(n > 0, "stream ended early");
        received.extend_from_slice(&buf[..n]);
    }
    first.shutdown(Shutdown::Read).unwrap();
    first
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    while let Ok(n) = first.read(&mut buf) {
        if n == 0 {
            break;
        }
        received.extend_from_slice(&buf[..n]);
    }
    drop(first);
    // Second client: the rest, exactly once.
    let mut second = connect(&sock);
    second.set_read_timeout(Some(RUN_TIMEOUT)).unwrap();
    while received.len() < bytes {
        let n = second.read(&mut buf).unwrap();
        assert!(n > 0, "stream ended after {} bytes", received.len());
        received.extend_from_slice(&buf[..n]);
    }
    let out = vm.wait(RUN_TIMEOUT);
    assert_eq!(out.code(), debug_exit(0), "{out:#?}");
    assert_eq!(received.len(), bytes, "nothing duplicated");
    assert!(
        received == channel_pattern(bytes),
        "the bytes arrived in order, none lost"
    );
    let sum = out.field("probe: channel send", "sum").unwrap();
    assert_eq!(sum, format!("0x{:016x}", channel_sum(&received)));
}

#[test]
fn file_backend_and_bad_channels() {
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_ferrovisor"))
        .arg("--kernel")
        .arg(asm_guest(AsmGuest::PvhHello))
        .args(["--channel", "name=x,socket=/nonexistent-dir/x.sock"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--channel"));
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("chan-file");
    let log = dir.join("out.bin");
    let mut cmd = ferrovisor(&probe());
    cmd.args([
        "--cmdline",
        "probe=channel mode=send bytes=65536",
        "--memory",
        "size=256M",
        "--channel",
    ]);
    cmd.arg(format!("name={NAME},path={}", log.display()));
    let out = run(cmd);
    assert_eq!(out.code(), debug_exit(0), "{out:#?}");
    assert!(std::fs::read(&log).unwrap() == channel_pattern(65536));
}
