//! Hostile and careless clients: bad routes, methods, JSON, fields, types,
//! sizes, half-open and many connections. Each gets a 4xx naming what is
//! wrong, and the VM keeps running. Also: socket permissions, config files,
//! `fvctl`, answers that fit the OpenAPI document, and 100 concurrent
//! `vm.info` calls.

mod common;
use common::rest::*;
use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

/// A VMM serving the API with a running probe that ticks.
fn running_vm(tag: &str) -> (TempDir, std::path::PathBuf, VmProcess) {
    let dir = TempDir::new(tag);
    let socket = dir.join("api.sock");
    let mut vm = VmProcess::spawn(ferrovisor_api(&socket));
    let mut config = probe_config(&probe(), "probe=ticks interval_ms=100");
    config["rng"] = json!({});
    expect(&call(&socket, "PUT", "vm.create", Some(&config)), 204);
    expect(&call(&socket, "PUT", "vm.boot", None), 204);
    vm.wait_for_line("probe: ticks ready", RUN_TIMEOUT);
    (dir, socket, vm)
}

/// Method, endpoint, body, expected status, text the error must contain.
type Case<'a> = (&'a str, &'a str, Option<&'a [u8]>, u16, &'a str);

fn still_ticking(vm: &mut VmProcess, socket: &std::path::Path) {
    assert_eq!(state(socket), "running");
    vm.wait_for_line("probe: tick", RUN_TIMEOUT);
}

#[test]
fn bad_requests_get_4xx_naming_the_problem_and_the_vm_runs_on() {
    if !require_kvm() {
        return;
    }
    let (_dir, socket, mut vm) = running_vm("api-bad");
    let cases: Vec<Case> = vec![
        (
            "GET",
            "vm.nonsense",
            None,
            404,
            "unknown endpoint vm.nonsense",
        ),
        ("GET", "vm.boot", None, 405, "vm.boot takes PUT, not GET"),
        ("DELETE", "vm.info", None, 405, "vm.info takes GET"),
        ("PUT", "vm.create", Some(b"{\"payload\": "), 400, "EOF"),
        ("PUT", "vm.create", Some(b"[1,2,3]"), 400, "vm.create"),
        (
            "PUT",
            "vm.create",
            Some(b"{\"payload\":{\"kernel\":\"/k\"},\"turbo\":1}"),
            400,
            "unknown field `turbo`",
        ),
        (
            "PUT",
            "vm.create",
            Some(b"{\"payload\":{\"kernel\":\"/k\"},\"cpus\":{\"boot_vcpus\":\"many\"}}"),
            400,
            "cpus.boot_vcpus",
        ),
        (
            "PUT",
            "vm.create",
            Some(b"{\"payload\":{\"kernel\":\"/k\"},\"memory\":{\"size\":-5}}"),
            400,
            "memory.size",
        ),
        (
            "PUT",
            "vm.create",
            Some(
                b"{\"payload\":{\"kernel\":\"/k\"},\"disks\":[{\"path\":\"/d\",\"queue_size\":3}]}",
            ),
            400,
            "queue_size=3",
        ),
        (
            "PUT",
            "vm.create",
            Some(b"{\"payload\":{\"kernel\":\"/k\"}} trailing"),
            400,
            "trailing",
        ),
        (
            "PUT",
            "vm.create",
            Some(b"{\"payload\":{\"kernel\":\"/k\"}}"),
            409,
            "vm.create is not allowed in state running",
        ),
        (
            "PUT",
            "vm.boot",
            Some(b"{\"now\": true}"),
            400,
            "vm.boot takes no body",
        ),
        (
            "PUT",
            "vm.shutdown",
            Some(b"{\"timeout_ms\": \"soon\"}"),
            400,
            "timeout_ms",
        ),
        (
            "PUT",
            "vm.shutdown",
            Some(b"{\"timeout_ms\": 99999999999}"),
            400,
            "timeout_ms",
        ),
        (
            "PUT",
            "vm.shutdown",
            Some(b"{\"grace\": 1}"),
            400,
            "unknown field `grace`",
        ),
        (
            "PUT",
            "vm.resume",
            None,
            409,
            "vm.resume is not allowed in state running",
        ),
        ("PUT", "vm.snapshot", None, 501, "not implemented yet"),
        (
            "PUT",
            "vm.receive-migration",
            None,
            501,
            "not implemented yet",
        ),
        ("GET", "../../etc/passwd", None, 404, ""),
    ];
    for (method, endpoint, body, status, needle) in cases {
        let r = call_raw(&socket, method, endpoint, body);
        assert_eq!(r.status, status, "{method} {endpoint}: {}", r.text());
        assert!(
            error_of(&r).contains(needle),
            "{method} {endpoint}: {:?} lacks {needle:?}",
            error_of(&r)
        );
    }
    // Every route: the wrong method gets 405; a body where none belongs gets 400.
    for route in api::routes::ROUTES {
        let wrong = if route.method == "GET" { "PUT" } else { "GET" };
        let r = call_raw(&socket, wrong, route.name, None);
        assert_eq!(r.status, 405, "{wrong} {}: {}", route.name, r.text());
        if matches!(
            route.action,
            api::routes::Action::Simple(_) | api::routes::Action::VmmShutdown
        ) {
            let r = call_raw(&socket, route.method, route.name, Some(b"{\"x\": 1}"));
            assert_eq!(r.status, 400, "{}: {}", route.name, r.text());
            assert!(error_of(&r).contains("takes no body"), "{}", route.name);
        }
    }
    // Outside the API prefix.
    let mut c = connect(&socket);
    let r = c.request("GET", "/", None).unwrap();
    assert_eq!(r.status, 404);
    still_ticking(&mut vm, &socket);

    // Raw protocol abuse: a huge declared body is refused before it is sent,
    // chunked bodies are refused, garbage gets 400.
    for (raw, status) in [
        ("PUT /api/v1/vm.create HTTP/1.1\r\nContent-Length: 1000000000\r\n\r\n".to_string(), 413),
        ("PUT /api/v1/vm.create HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_string(), 501),
        ("\x16\x03\x01\x02\x00garbage\r\n\r\n".to_string(), 400),
        (format!("GET /api/v1/vm.info HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20000)), 431),
        ("PUT /api/v1/vm.create HTTP/1.1\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}".to_string(), 415),
    ] {
        let mut s = connect_unix(&socket, Duration::from_secs(5));
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(raw.as_bytes()).unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with(&format!("HTTP/1.1 {status}")), "{raw:.60?} → {text:.200}");
    }
    // A 405 names the allowed method in an Allow header.
    let mut s405 = connect_unix(&socket, Duration::from_secs(5));
    s405.write_all(b"DELETE /api/v1/vm.info HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = s405.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 405") && answer.contains("\r\nAllow: GET\r\n"),
        "{answer}"
    );
    // A half-open request does not block anyone else.
    let mut half = connect_unix(&socket, Duration::from_secs(5));
    half.write_all(b"PUT /api/v1/vm.create HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"pay")
        .unwrap();
    expect(&call(&socket, "GET", "vmm.ping", None), 200);
    // Many idle connections: the ones past the limit are turned away, the VM runs on.
    let idle: Vec<_> = (0..70)
        .map(|_| connect_unix(&socket, Duration::from_secs(5)))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    drop(idle);
    drop(half);
    std::thread::sleep(Duration::from_millis(200));
    expect(&call(&socket, "GET", "vmm.ping", None), 200);
    still_ticking(&mut vm, &socket);
    expect(&call(&socket, "PUT", "vmm.shutdown", None), 204);
    assert_eq!(vm.wait(RUN_TIMEOUT).code(), 0);
}

#[test]
fn a_hundred_concurrent_info_calls_while_the_guest_runs() {
    if !require_kvm() {
        return;
    }
    let (_dir, socket, mut vm) = running_vm("api-many");
    let threads: Vec<_> = (0..100)
        .map(|_| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let r = call(&socket, "GET", "vm.info", None);
                (r.status, r.json::<Value>().map(|v| v["state"].clone()).ok())
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), (200, Some(json!("running"))));
    }
    still_ticking(&mut vm, &socket);
    expect(&call(&socket, "PUT", "vmm.shutdown", None), 204);
    assert_eq!(vm.wait(RUN_TIMEOUT).code(), 0);
}

#[test]
fn answers_fit_the_openapi_document() {
    if !require_kvm() {
        return;
    }
    let doc = api::openapi::document().unwrap();
    let (dir, socket, vm) = running_vm("api-doc");
    let disk = dir.join("d.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    for (endpoint, schema) in [
        ("vmm.ping", "PingInfo"),
        ("vm.info", "VmInfo"),
        ("vm.counters", "Counters"),
    ] {
        let r = call(&socket, "GET", endpoint, None);
        expect(&r, 200);
        api::openapi::check(&doc, schema, &r.json().unwrap())
            .unwrap_or_else(|e| panic!("{endpoint}: {e}"));
    }
    let counters: Value = call(&socket, "GET", "vm.counters", None).json().unwrap();
    assert!(counters["rng0"]["requests"].is_u64(), "{counters}");
    let r = call(&socket, "GET", "vm.nope", None);
    api::openapi::check(&doc, "Error", &r.json().unwrap()).unwrap();
    expect(&call(&socket, "PUT", "vmm.shutdown", None), 204);
    drop(vm);
}

#[test]
fn the_socket_is_private_and_its_directory_must_not_be_world_writable() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("api-perm");
    let socket = dir.join("api.sock");
    let vm = VmProcess::spawn(ferrovisor_api(&socket));
    expect(&call(&socket, "GET", "vmm.ping", None), 200);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    expect(&call(&socket, "PUT", "vmm.shutdown", None), 204);
    drop(vm);

    let open = dir.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = run(ferrovisor_api(&open.join("api.sock")));
    assert_eq!(out.code(), 2, "{out:#?}");
    assert!(
        out.log.contains("--api-socket") && out.log.contains("world-writable"),
        "{}",
        out.log
    );
}

#[test]
fn config_files_and_fvctl_info_fed_back() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("api-config");
    let socket = dir.join("api.sock");
    // A TOML config file boots at once.
    let toml_path = dir.join("vm.toml");
    let toml_text = format!(
        "debug_exit = true\n[payload]\nkernel = \"{}\"\ncmdline = \"probe=ticks\"\n[memory]\nsize = \"128M\"\n[cpus]\nboot_vcpus = 2\n",
        probe().display()
    );
    std::fs::write(&toml_path, toml_text).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ferrovisor"));
    cmd.arg("--config")
        .arg(&toml_path)
        .arg("--api-socket")
        .arg(&socket);
    let mut vm = VmProcess::spawn(cmd);
    vm.wait_for_line("probe: ticks ready", RUN_TIMEOUT);

    let out = fvctl(&socket, &["info"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("state: running") && text.contains("vCPUs: 2"),
        "{text}"
    );
    assert!(
        text.contains("serial0") && text.contains("io 0x3f8"),
        "{text}"
    );
    let out = fvctl(&socket, &["--json", "info"]);
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["config"]["cpus"]["boot_vcpus"], 2);
    let saved = dir.join("info.json");
    std::fs::write(&saved, &out.stdout).unwrap();
    let out = fvctl(&socket, &["pause"]);
    assert!(out.status.success());
    let out = fvctl(&socket, &["pause"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("HTTP 409: vm.pause is not allowed in state paused"));
    assert!(fvctl(&socket, &["resume"]).status.success());
    let out = fvctl(&socket, &["counters"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("vcpu1: exits="));
    assert!(fvctl(&socket, &["shutdown-vmm"]).status.success());
    assert_eq!(vm.wait(RUN_TIMEOUT).code(), 0);

    // fvctl info --json output boots the same VM again, through the flag and through vm.create.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ferrovisor"));
    cmd.arg("--config")
        .arg(&saved)
        .arg("--api-socket")
        .arg(&socket);
    let mut vm = VmProcess::spawn(cmd);
    vm.wait_for_line("probe: ticks ready", RUN_TIMEOUT);
    let again: Value = call(&socket, "GET", "vm.info", None).json().unwrap();
    assert_eq!(again["config"], info["config"]);
    assert!(fvctl(&socket, &["delete"]).status.success());
    let out = fvctl(&socket, &["create", saved.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(fvctl(&socket, &["boot"]).status.success());
    vm.wait_for_line("probe: ticks ready", RUN_TIMEOUT);
    assert!(fvctl(&socket, &["shutdown-vmm"]).status.success());
    assert_eq!(vm.wait(RUN_TIMEOUT).code(), 0);

    // --config with VM flags, or a bad file, is refused with status 2.
    let out = run({
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_ferrovisor"));
        c.arg("--config").arg(&toml_path).args(["--cpus", "boot=1"]);
        c
    });
    assert_eq!(out.code(), 2, "{out:#?}");
    std::fs::write(&toml_path, "[payload]\nkernel = 5\n").unwrap();
    let out = run({
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_ferrovisor"));
        c.arg("--config").arg(&toml_path);
        c
    });
    assert_eq!(out.code(), 2, "{out:#?}");
    assert!(out.log.contains("payload.kernel"), "{}", out.log);
}
