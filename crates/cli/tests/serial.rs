//! The serial console's backends: terminal (stdio), file, Unix socket, off;
//! no input byte is lost or duplicated.

mod common;
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;

fn echo_cmd(serial: &str) -> std::process::Command {
    let mut cmd = ferrovisor(&probe());
    cmd.args([
        "--cmdline",
        "probe=echo",
        "--memory",
        "size=64M",
        "--serial",
        serial,
    ]);
    cmd
}

#[test]
fn stdin_input_is_echoed_without_loss() {
    if !require_kvm() {
        return;
    }
    let mut vm = VmProcess::spawn(echo_cmd("tty"));
    vm.wait_for_line("probe: echo ready", RUN_TIMEOUT);
    // More than the 64-byte receive FIFO at once: the pump must wait, not drop.
    let mut input = String::new();
    for i in 0..40 {
        input.push_str(&format!("line {i:02} of the serial echo test\n"));
    }
    input.push_str("quit\n");
    vm.send(input.as_bytes());
    vm.wait_for_line("probe: echo done", RUN_TIMEOUT);
    let out = vm.wait(RUN_TIMEOUT);
    assert_eq!(out.code(), debug_exit(0), "{out:#?}");
    assert_eq!(
        out.field("probe: echo done", "bytes"),
        Some(input.len().to_string())
    );
    for i in 0..40 {
        let line = format!("line {i:02} of the serial echo test");
        assert_eq!(
            out.serial.iter().filter(|l| **l == line).count(),
            1,
            "{line} echoed once"
        );
    }
}

#[test]
fn file_backend_receives_the_output() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("serial-file");
    let path = dir.join("console.log");
    let mut cmd = ferrovisor(&probe());
    cmd.args(["--cmdline", "probe=boot", "--serial"])
        .arg(format!("file={}", path.display()));
    let out = run(cmd);
    assert_eq!(out.code(), debug_exit(0), "{out:#?}");
    assert!(
        out.serial.is_empty(),
        "nothing on stdout with a file backend"
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("probe: hello"), "{text}");
    assert!(text.contains("probe: PASS"), "{text}");
}

#[test]
fn off_backend_discards_output() {
    if !require_kvm() {
        return;
    }
    let mut cmd = ferrovisor(&probe());
    cmd.args(["--cmdline", "probe=boot", "--serial", "off"]);
    let out = run(cmd);
    assert_eq!(out.code(), debug_exit(0), "{out:#?}");
    assert!(out.serial.is_empty());
}

fn connect(path: &std::path::Path) -> UnixStream {
    connect_unix(path, RUN_TIMEOUT)
}

#[test]
fn socket_backend_serves_reconnecting_clients() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("serial-socket");
    let path = dir.join("console.sock");
    // The probe says "echo ready" before a client may be connected, so
    // the test does not wait for it: it talks and reads the echo.
    let vm = VmProcess::spawn(echo_cmd(&format!("socket={}", path.display())));
    let mut first = connect(&path);
    first.write_all(b"from the first client\n").unwrap();
    let mut reader = BufReader::new(first.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    while !line.contains("from the first client") {
        line.clear();
        reader.read_line(&mut line).unwrap();
    }
    drop(reader);
    drop(first);
    let mut second = connect(&path);
    second.write_all(b"second\nquit\n").unwrap();
    let reader = BufReader::new(second);
    let mut seen = Vec::new();
    for l in reader.lines() {
        let l = l.unwrap();
        let done = l.starts_with("probe: PASS");
        seen.push(l);
        if done {
            break;
        }
    }
    let out = vm.wait(RUN_TIMEOUT);
    assert_eq!(out.code(), debug_exit(0), "{out:#?} {seen:#?}");
    let bytes = "from the first client\nsecond\nquit\n".len();
    assert!(
        seen.iter()
            .any(|l| l.trim_end() == format!("probe: echo done bytes={bytes}")),
        "{seen:#?}"
    );
}
