//! The control plane end to end with the probe guest: create, boot, pause
//! (the guest's tick counter and clock stop), resume, reboot, power button,
//! shutdown, delete, and the event log that follows it all.

mod common;
use common::rest::*;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const TICK_MS: u64 = 100;

fn guest_ms(line: &str) -> u64 {
    field(line, "guest_ms").unwrap().parse().unwrap()
}

#[test]
fn lifecycle_over_the_socket() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("api-life");
    let socket = dir.join("api.sock");
    let event_log = dir.join("events.jsonl");
    let mut cmd = ferrovisor_api(&socket);
    cmd.arg("--event-log").arg(&event_log);
    let mut vm = VmProcess::spawn(cmd);

    let ping = call(&socket, "GET", "vmm.ping", None);
    expect(&ping, 200);
    assert_eq!(ping.json::<Value>().unwrap()["pid"], vm.pid());
    let none = call(&socket, "GET", "vm.info", None);
    expect(&none, 409);
    let r = call(&socket, "PUT", "vm.boot", None);
    expect(&r, 409);
    assert!(
        error_of(&r).contains("no VM is created"),
        "{}",
        error_of(&r)
    );

    let cmdline = format!("probe=ticks interval_ms={TICK_MS}");
    let mut config = probe_config(&probe(), &cmdline);
    config["rng"] = json!({});
    expect(&call(&socket, "PUT", "vm.create", Some(&config)), 204);
    assert_eq!(state(&socket), "created");
    let r = call(&socket, "PUT", "vm.pause", None);
    expect(&r, 409);
    assert_eq!(error_of(&r), "vm.pause is not allowed in state created");
    expect(&call(&socket, "PUT", "vm.create", Some(&config)), 409);

    expect(&call(&socket, "PUT", "vm.boot", None), 204);
    vm.wait_for_line("probe: ticks ready", RUN_TIMEOUT);
    vm.wait_for_line("probe: tick n=2", RUN_TIMEOUT);
    let info: Value = call(&socket, "GET", "vm.info", None).json().unwrap();
    assert_eq!(info["state"], "running");
    assert_eq!(info["boot_count"], 1);
    let devices = info["devices"].as_array().unwrap();
    let rng = devices
        .iter()
        .find(|d| d["id"] == "rng0")
        .expect("rng0 listed");
    assert_eq!(rng["type"], "virtio-rng");
    assert_eq!(rng["pci_bdf"], "0000:00:01.0");
    assert!(devices
        .iter()
        .any(|d| d["id"] == "serial0" && d["io_port"] == 0x3f8));
    let counters: Value = call(&socket, "GET", "vm.counters", None).json().unwrap();
    assert!(
        counters["vcpu0"]["exits"].as_u64().unwrap() > 0,
        "{counters}"
    );
    assert!(counters["vcpu0"]["io"].as_u64().unwrap() > 0, "{counters}");

    // Pause: no tick for a while, and guest time does not jump over the pause.
    let before = vm.wait_for_line("probe: tick", RUN_TIMEOUT);
    expect(&call(&socket, "PUT", "vm.pause", None), 204);
    assert_eq!(state(&socket), "paused");
    // A tick printed before the pause took hold may still be in the pipe.
    let settled = vm.lines_within(Duration::from_millis(300));
    let last = settled
        .iter()
        .rev()
        .find(|l| l.contains("probe: tick"))
        .map_or_else(|| guest_ms(&before), |l| guest_ms(l));
    let paused_for = Duration::from_millis(1500);
    let during = vm.lines_within(paused_for);
    assert!(
        during.iter().all(|l| !l.contains("probe: tick")),
        "ticks while paused: {during:#?}"
    );
    let r = call(&socket, "PUT", "vm.power-button", None);
    expect(&r, 409);
    assert_eq!(
        error_of(&r),
        "vm.power-button is not allowed in state paused"
    );
    expect(&call(&socket, "PUT", "vm.resume", None), 204);
    let after = guest_ms(&vm.wait_for_line("probe: tick", RUN_TIMEOUT));
    assert!(
        after - last < 1000,
        "guest time advanced {} ms over a {} ms pause",
        after - last,
        paused_for.as_millis()
    );

    // Reboot: a fresh instance boots the same config.
    expect(&call(&socket, "PUT", "vm.reboot", None), 204);
    vm.wait_for_line("probe: hello", RUN_TIMEOUT);
    vm.wait_for_line("probe: ticks ready", RUN_TIMEOUT);
    let info: Value = call(&socket, "GET", "vm.info", None).json().unwrap();
    assert_eq!(
        (info["state"].as_str(), info["boot_count"].as_u64()),
        (Some("running"), Some(2))
    );

    // The power button: the probe powers off, the VMM stays for the API.
    expect(&call(&socket, "PUT", "vm.power-button", None), 204);
    vm.wait_for_line("probe: power button pressed", RUN_TIMEOUT);
    wait_for_state(&socket, "shutdown", RUN_TIMEOUT);
    expect(&call(&socket, "GET", "vm.counters", None), 409);

    // Boot again from shutdown; vm.shutdown waits for the guest's own power-off.
    expect(&call(&socket, "PUT", "vm.boot", None), 204);
    vm.wait_for_line("probe: ticks ready", RUN_TIMEOUT);
    let r = call(
        &socket,
        "PUT",
        "vm.shutdown",
        Some(&json!({"timeout_ms": 30000})),
    );
    expect(&r, 200);
    assert_eq!(r.json::<Value>().unwrap(), json!({"forced": false}));
    assert_eq!(state(&socket), "shutdown");

    expect(&call(&socket, "PUT", "vm.delete", None), 204);
    expect(&call(&socket, "GET", "vm.info", None), 409);
    expect(&call(&socket, "PUT", "vmm.shutdown", None), 204);
    let out = vm.wait(RUN_TIMEOUT);
    assert_eq!(out.code(), 0, "{out:#?}");
    assert!(!socket.exists(), "the socket is removed on exit");

    let seen = events(&event_log);
    for (i, want) in [
        "created",
        "device-added",
        "booted",
        "paused",
        "resumed",
        "booted",
        "power-button",
        "shutdown",
        "booted",
        "power-button",
        "shutdown",
        "device-removed",
        "deleted",
    ]
    .iter()
    .enumerate()
    {
        assert!(
            seen.contains(&want.to_string()),
            "event {i} {want} missing: {seen:?}"
        );
    }
    let first = |name: &str| seen.iter().position(|e| e == name).unwrap();
    assert!(first("created") < first("booted") && first("booted") < first("paused"));
    assert!(first("paused") < first("resumed") && first("resumed") < first("shutdown"));
}

#[test]
fn shutdown_forces_a_guest_that_ignores_the_button() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("api-force");
    let socket = dir.join("api.sock");
    let mut vm = VmProcess::spawn(ferrovisor_api(&socket));
    // probe=echo never arms the power button.
    let config = probe_config(&probe(), "probe=echo");
    expect(&call(&socket, "PUT", "vm.create", Some(&config)), 204);
    expect(&call(&socket, "PUT", "vm.boot", None), 204);
    vm.wait_for_line("probe: echo ready", RUN_TIMEOUT);
    let r = call(
        &socket,
        "PUT",
        "vm.shutdown",
        Some(&json!({"timeout_ms": 300})),
    );
    expect(&r, 200);
    assert_eq!(r.json::<Value>().unwrap(), json!({"forced": true}));
    assert_eq!(state(&socket), "shutdown");
    // A paused VM is stopped at once.
    expect(&call(&socket, "PUT", "vm.boot", None), 204);
    expect(&call(&socket, "PUT", "vm.pause", None), 204);
    let r = call(&socket, "PUT", "vm.shutdown", None);
    assert_eq!(r.json::<Value>().unwrap(), json!({"forced": true}));
    expect(&call(&socket, "PUT", "vmm.shutdown", None), 204);
    assert_eq!(vm.wait(RUN_TIMEOUT).code(), 0);
}

#[test]
fn a_command_line_vm_boots_at_once_and_serves_the_api() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("api-cli");
    let socket = dir.join("api.sock");
    let mut cmd = ferrovisor(&probe());
    cmd.args([
        "--cmdline",
        "probe=ticks",
        "--memory",
        "size=128M",
        "--api-socket",
    ])
    .arg(&socket);
    let mut vm = VmProcess::spawn(cmd);
    vm.wait_for_line("probe: ticks ready", RUN_TIMEOUT);
    let info: Value = call(&socket, "GET", "vm.info", None).json().unwrap();
    assert_eq!(info["state"], "running");
    assert_eq!(info["config"]["payload"]["cmdline"], "probe=ticks");
    // The guest's power-off leaves the VMM serving the API.
    expect(&call(&socket, "PUT", "vm.power-button", None), 204);
    wait_for_state(&socket, "shutdown", RUN_TIMEOUT);
    expect(&call(&socket, "PUT", "vmm.shutdown", None), 204);
    assert_eq!(vm.wait(RUN_TIMEOUT).code(), 0);
}

#[test]
fn sigterm_ends_a_vmm_serving_the_api() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("api-term");
    let socket = dir.join("api.sock");
    let mut vm = VmProcess::spawn(ferrovisor_api(&socket));
    expect(&call(&socket, "GET", "vmm.ping", None), 200);
    let config = probe_config(&probe(), "probe=ticks");
    expect(&call(&socket, "PUT", "vm.create", Some(&config)), 204);
    expect(&call(&socket, "PUT", "vm.boot", None), 204);
    vm.wait_for_line("probe: ticks ready", RUN_TIMEOUT);
    vm.signal(libc::SIGTERM);
    assert_eq!(vm.wait(RUN_TIMEOUT).code(), 0);
    assert!(!socket.exists());
}
