//! Guest memory backends end to end: RAM above 4 GiB, transparent
//! hugepages, hugetlbfs, KSM, shared and file-backed RAM, prefaulting, and
//! untouched RAM that costs the host nothing. The probe (`probe=mem`) fills
//! and verifies memory; the host side is read from /proc and /sys.
//!
//! Tests that change host-wide settings (nr_hugepages, KSM) hold a lock file
//! so they never overlap, and restore the settings even when they fail.

mod common;
use common::*;
use std::fs::File;
use std::time::{Duration, Instant};

fn probe_mem(memory: &str, cmdline: &str) -> std::process::Command {
    let mut cmd = ferrovisor(&probe());
    cmd.args(["--memory", memory, "--cmdline", cmdline]);
    cmd
}

/// Serialises the tests that change host-wide memory settings.
struct HostSettingsLock(#[allow(dead_code)] File);

impl HostSettingsLock {
    fn take() -> HostSettingsLock {
        let f = File::create(std::env::temp_dir().join("ferrovisor-host-memory-settings.lock"))
            .unwrap();
        // SAFETY: flock on a descriptor we own; it is released when the file closes.
        let r = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) };
        assert_eq!(r, 0);
        HostSettingsLock(f)
    }
}

/// Writes `value` to a /proc or /sys file and puts the old value back on drop.
struct Setting {
    path: &'static str,
    old: String,
}

impl Setting {
    fn set(path: &'static str, value: &str) -> Setting {
        let old = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        std::fs::write(path, value).unwrap_or_else(|e| panic!("write {path}: {e}"));
        Setting {
            path,
            old: old.trim().to_string(),
        }
    }
}

impl Drop for Setting {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(self.path, &self.old) {
            eprintln!("restoring {}: {e}", self.path);
        }
    }
}

fn read_u64(path: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn meminfo(key: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{key} in /proc/meminfo"))
}

/// `(size_kib, AnonHugePages_kib)` of the VMM's largest mapping (guest RAM).
fn guest_ram_thp(pid: u32) -> (u64, u64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut best = (0, 0);
    let mut size = 0;
    for line in smaps.lines() {
        let value = |l: &str| -> u64 {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        if line.starts_with("Size:") {
            size = value(line);
        } else if line.starts_with("AnonHugePages:") && size > best.0 {
            best = (size, value(line));
        }
    }
    best
}

#[test]
fn ram_above_4g_holds_a_pattern_everywhere() {
    if !require_kvm() {
        return;
    }
    let out = run(probe_mem("size=6G", "probe=mem"));
    assert_eq!(out.code(), debug_exit(0), "{out:#?}");
    let covered: u64 = out
        .field("probe: mem ranges", "covered_mib")
        .unwrap()
        .parse()
        .unwrap();
    assert!(covered > 6 * 1024 - 64, "covered {covered} MiB of 6 GiB");
    let last = out.field("probe: mem ranges", "last").unwrap();
    assert_eq!(last, "0x1bfffffff", "the top of RAM above 4 GiB");
    assert_eq!(
        out.field("probe: mem verified_mib", "errors").as_deref(),
        Some("0")
    );
    assert!(out.line("probe: PASS").is_some());
}

#[test]
fn transparent_hugepages_back_touched_memory() {
    if !require_kvm() {
        return;
    }
    for (thp, expect_huge) in [("on", true), ("off", false)] {
        let mut vm = VmProcess::spawn(probe_mem(
            &format!("size=1G,thp={thp}"),
            "probe=mem mem_mib=512 touch=hugepage hold=on",
        ));
        vm.wait_for_line("probe: mem holding", RUN_TIMEOUT);
        let (size, huge) = guest_ram_thp(vm.pid());
        assert!(size >= 1 << 20, "guest RAM mapping of {size} KiB");
        if expect_huge {
            assert!(
                huge >= 512 * 1024 * 9 / 10,
                "thp=on: {huge} KiB of 512 MiB in hugepages"
            );
        } else {
            assert_eq!(huge, 0, "thp=off: {huge} KiB in hugepages");
        }
        vm.signal(libc::SIGTERM);
        assert_eq!(vm.wait(RUN_TIMEOUT).code(), 0);
    }
}

#[test]
fn hugetlbfs_pages_back_the_guest_and_a_shortage_is_refused() {
    if !require_kvm() {
        return;
    }
    let _lock = HostSettingsLock::take();
    const NR: &str = "/proc/sys/vm/nr_hugepages";
    let base = read_u64(NR);
    // Too few: refused before the guest starts, naming the numbers.
    let out = run(probe_mem(
        &format!("size={}M,hugepages=on", (base + 1024) * 2),
        "probe=boot",
    ));
    assert_eq!(out.code(), 2, "{out:#?}");
    assert!(
        out.log.contains("hugepages=on: the guest needs"),
        "{}",
        out.log
    );

    let pages = 256; // 512 MiB of 2 MiB pages
    let _reserve = Setting::set(NR, &(base + pages).to_string());
    let got = read_u64(NR);
    assert!(
        got >= base + pages,
        "the kernel gave {got} hugepages, {} asked",
        base + pages
    );
    let free_before = meminfo("HugePages_Free");
    // prefault=on: every page is taken at start, so Free falls by the size.
    let mut vm = VmProcess::spawn(probe_mem(
        "size=512M,hugepages=on,hugepage_size=2M,prefault=on",
        "probe=mem mem_mib=64 hold=on",
    ));
    vm.wait_for_line("probe: mem holding", RUN_TIMEOUT);
    assert_eq!(
        free_before - meminfo("HugePages_Free"),
        pages,
        "HugePages_Free fell by the guest's size"
    );
    vm.signal(libc::SIGTERM);
    assert_eq!(vm.wait(RUN_TIMEOUT).code(), 0);
    assert_eq!(
        meminfo("HugePages_Free"),
        free_before,
        "pages come back at exit"
    );
}

#[test]
fn ksm_merges_identical_guests_only_when_mergeable() {
    if !require_kvm() {
        return;
    }
    let _lock = HostSettingsLock::take();
    let _run = Setting::set("/sys/kernel/mm/ksm/run", "1");
    let _scan = Setting::set("/sys/kernel/mm/ksm/pages_to_scan", "20000");
    let _sleep = Setting::set("/sys/kernel/mm/ksm/sleep_millisecs", "10");
    const SHARING: &str = "/sys/kernel/mm/ksm/pages_sharing";
    let mib = 128u64;
    let pages_per_guest = mib * 256;
    // Returns the pages sharing and how long KSM took to get there.
    let sharing_with = |mergeable: &str, limit: Duration| -> (u64, Duration) {
        let before = read_u64(SHARING);
        let mut vms: Vec<VmProcess> = (0..4)
            .map(|_| {
                VmProcess::spawn(probe_mem(
                    &format!("size=256M,mergeable={mergeable},thp=off"),
                    &format!("probe=mem mem_mib={mib} pattern=const hold=on"),
                ))
            })
            .collect();
        for vm in &mut vms {
            vm.wait_for_line("probe: mem holding", RUN_TIMEOUT);
        }
        // Wait for KSM to get through the guests (or give up at the limit).
        let goal = pages_per_guest * 4 * 7 / 10;
        let started = Instant::now();
        let deadline = started + limit;
        let mut shared = 0;
        while Instant::now() < deadline {
            shared = read_u64(SHARING).saturating_sub(before);
            if shared >= goal {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        for vm in vms {
            vm.signal(libc::SIGTERM);
            assert_eq!(vm.wait(RUN_TIMEOUT).code(), 0);
        }
        (shared, started.elapsed())
    };
    let (merged, took) = sharing_with("on", Duration::from_secs(60));
    assert!(
        merged >= pages_per_guest * 4 * 7 / 10,
        "mergeable=on: {merged} pages sharing of {} identical",
        pages_per_guest * 4
    );
    // Unmergeable guests get the same scanning time, and twice more.
    let (unmerged, _) = sharing_with("off", (took * 3).max(Duration::from_secs(2)));
    assert!(
        unmerged < pages_per_guest / 10,
        "mergeable=off: {unmerged} pages sharing"
    );
}

#[test]
fn shared_file_backed_and_prefaulted_ram() {
    if !require_kvm() {
        return;
    }
    let out = run(probe_mem("size=256M,shared=on", "probe=mem mem_mib=64"));
    assert_eq!(out.code(), debug_exit(0), "{out:#?}");
    let dir = TempDir::new("ram-file");
    let file = dir.join("guest.ram");
    let out = run(probe_mem(
        &format!("size=256M,file={}", file.display()),
        "probe=mem mem_mib=64 pattern=const value=0x0123456789abcdef",
    ));
    assert_eq!(out.code(), debug_exit(0), "{out:#?}");
    let first = out.field("probe: mem ranges", "first").unwrap();
    let first = u64::from_str_radix(first.trim_start_matches("0x"), 16).unwrap();
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(bytes.len(), 256 << 20);
    let at = first as usize;
    assert_eq!(
        &bytes[at..at + 8],
        &0x0123_4567_89ab_cdefu64.to_le_bytes(),
        "guest writes reach the file"
    );
    let out = run(probe_mem("size=256M,prefault=on", "probe=boot"));
    assert_eq!(out.code(), debug_exit(0), "{out:#?}");
    assert!(
        out.log.contains("prefaulted 256 MiB of guest RAM in"),
        "{}",
        out.log
    );
}

#[test]
fn untouched_guest_ram_costs_the_host_nothing() {
    if !require_kvm() {
        return;
    }
    let out = run(probe_mem("size=16G", "probe=boot"));
    assert_eq!(out.code(), debug_exit(0), "{out:#?}");
    let line = out
        .log
        .lines()
        .find(|l| l.contains("memory rss_kib="))
        .unwrap()
        .to_string();
    let guest: u64 = field(&line, "guest_kib").unwrap().parse().unwrap();
    assert!(
        guest < 64 << 10,
        "a 16 GiB guest that touched little: {guest} KiB resident"
    );
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn the_balloon_gives_memory_back_and_returns_it() {
    use common::rest::*;
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("balloon");
    let socket = dir.join("api.sock");
    let mut cmd = probe_mem("size=512M", "probe=balloon report=on pool_mib=384");
    cmd.args([
        "--balloon",
        "size=0,deflate_on_oom=on,free_page_reporting=on",
        "--api-socket",
    ])
    .arg(&socket);
    let mut vm = VmProcess::spawn(cmd);
    vm.wait_for_line("probe: balloon ready", RUN_TIMEOUT);
    vm.wait_for_line("probe: balloon reported_mib=", RUN_TIMEOUT);
    let before = vm_rss_kib(vm.pid());

    let r = call(
        &socket,
        "PUT",
        "vm.resize",
        Some(&serde_json::json!({"desired_balloon": 256u64 << 20})),
    );
    expect(&r, 204);
    vm.wait_for_line("probe: balloon actual_pages=65536", RUN_TIMEOUT);
    std::thread::sleep(Duration::from_millis(200));
    let inflated = vm_rss_kib(vm.pid());
    assert!(
        before.saturating_sub(inflated) >= 200 << 10,
        "inflating by 256 MiB: RSS {before} KiB -> {inflated} KiB"
    );
    let counters: serde_json::Value = call(&socket, "GET", "vm.counters", None).json().unwrap();
    let b = &counters["balloon0"];
    assert_eq!(b["inflated_pages"], 65536, "{counters}");
    assert_eq!(b["actual_pages"], 65536);
    assert!(
        b["reported_bytes"].as_u64().unwrap() >= 32 << 20,
        "{counters}"
    );

    // Deflate: the guest takes its pages back (they read as zero) and uses them.
    let r = call(
        &socket,
        "PUT",
        "vm.resize",
        Some(&serde_json::json!({"desired_balloon": 0})),
    );
    expect(&r, 204);
    vm.wait_for_line("probe: balloon actual_pages=0", RUN_TIMEOUT);
    let counters: serde_json::Value = call(&socket, "GET", "vm.counters", None).json().unwrap();
    assert_eq!(counters["balloon0"]["deflated_pages"], 65536, "{counters}");
    // Statistics arrive (the counters call above asked for fresh ones).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let c: serde_json::Value = call(&socket, "GET", "vm.counters", None).json().unwrap();
        if c["balloon0"]["stat_total_memory"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no balloon statistics: {c}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // A balloon as large as the guest is refused, and so is vCPU resize (not built).
    let r = call(
        &socket,
        "PUT",
        "vm.resize",
        Some(&serde_json::json!({"desired_balloon": 512u64 << 20})),
    );
    expect(&r, 400);
    let r = call(
        &socket,
        "PUT",
        "vm.resize",
        Some(&serde_json::json!({"desired_vcpus": 4})),
    );
    expect(&r, 400);
    expect(&call(&socket, "PUT", "vmm.shutdown", None), 204);
    assert_eq!(vm.wait(RUN_TIMEOUT).code(), 0);
}
