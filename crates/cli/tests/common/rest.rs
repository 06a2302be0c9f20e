//! Helpers for tests that drive ferrovisor over its API socket.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use api::client::{Client, ClientResponse};
use serde_json::{json, Value};

/// `ferrovisor --api-socket SOCKET --log-level info` and nothing else.
pub fn ferrovisor_api(socket: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferrovisor"));
    c.arg("--api-socket")
        .arg(socket)
        .args(["--log-level", "info"]);
    c
}

/// `fvctl --api-socket SOCKET ARGS...`.
pub fn fvctl(socket: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fvctl"))
        .arg("--api-socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("run fvctl")
}

/// One API request on a fresh connection.
pub fn call(socket: &Path, method: &str, endpoint: &str, body: Option<&Value>) -> ClientResponse {
    call_raw(
        socket,
        method,
        endpoint,
        body.map(|b| b.to_string().into_bytes()).as_deref(),
    )
}

/// One API request with a raw body.
pub fn call_raw(
    socket: &Path,
    method: &str,
    endpoint: &str,
    body: Option<&[u8]>,
) -> ClientResponse {
    let mut client = connect(socket);
    client
        .request(method, &format!("/api/v1/{endpoint}"), body)
        .unwrap_or_else(|e| panic!("{method} {endpoint}: {e}"))
}

/// A client, once the VMM has created its socket.
pub fn connect(socket: &Path) -> Client {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Client::connect(socket) {
            Ok(mut c) => {
                c.set_timeout(Some(Duration::from_secs(60))).unwrap();
                return c;
            }
            Err(e) if Instant::now() > deadline => panic!("connect {}: {e}", socket.display()),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Asserts an answer's status, showing its body otherwise.
pub fn expect(response: &ClientResponse, status: u16) {
    assert_eq!(response.status, status, "body: {}", response.text());
}

/// The `error` message of an error answer.
pub fn error_of(response: &ClientResponse) -> String {
    response.json::<Value>().unwrap()["error"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The VM's state from vm.info.
pub fn state(socket: &Path) -> String {
    let r = call(socket, "GET", "vm.info", None);
    expect(&r, 200);
    r.json::<Value>().unwrap()["state"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Polls vm.info until the state is `want`.
pub fn wait_for_state(socket: &Path, want: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let s = state(socket);
        if s == want {
            return;
        }
        assert!(Instant::now() < deadline, "state {s}, waited for {want}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A probe VM config with the console on the VMM's stdout.
pub fn probe_config(kernel: &Path, cmdline: &str) -> Value {
    json!({
        "payload": {"kernel": kernel, "cmdline": cmdline},
        "memory": {"size": "128M"},
        "serial": {"mode": "tty"},
        "debug_exit": true,
    })
}

/// The events written to the event log, by name.
pub fn events(path: &PathBuf) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("an event is one JSON object");
            v["event"].as_str().unwrap().to_string()
        })
        .collect()
}
