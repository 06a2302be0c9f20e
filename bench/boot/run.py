#!/usr/bin/env python3
"""Boot benchmark: the same guests under Ferrovisor and under QEMU.

For every guest and VMM configuration the guest is booted --runs times, the
configurations alternating run by run (so drift on the host hits them all
alike). Per run:

  first_ms  process start (just before spawn) -> arrival of the first byte of
            the guest's first output containing the expected text
            ("probe: hello" / "hello") on the serial console (stdout)
  exit_ms   process start -> process exit (os.wait4)
  rss_kib   the process's peak RSS (VmHWM sampled every 0.5 ms until exit,
            KiB; includes the guest RAM the VMM touched)
  own_kib   Ferrovisor only: its own memory, from its stderr line
            "memory rss_kib=.. guest_kib=.. own_kib=.." (--log-level info)

A run with an unexpected exit status, without the expected output, or
killed by the timeout is reported as failed and left out of the medians.

Python 3 standard library only. See bench/README.md.
"""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from benchlib import fmt, fmt_ratio, median, parse_list, ratio, run_process  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

VMMS = ["ferrovisor", "qemu-microvm", "qemu-q35"]

# Guests: kernel path (resolved later), command line, expected first text,
# accepted exit statuses.
#  - probe: PVH ELF written in Rust; ends with "probe: PASS" and a debug-exit
#    write of 0, i.e. exit status (0 << 1) | 1 = 1.
#  - pvh-hello: guests/asm/pvh-hello.S; ACPI power-off (status 0) where
#    port 0x604 exists, debug-exit 0 (status 1) otherwise; on q35 the
#    debug-exit write that follows the power-off request usually wins.
GUESTS = {
    "probe": {"cmdline": "probe=boot", "expect": b"probe: hello", "statuses": [1]},
    "pvh-hello": {"cmdline": "", "expect": b"hello", "statuses": [0, 1]},
}

MEMORY_LINE = re.compile(
    rb"memory rss_kib=(\d+) guest_kib=(\d+) own_kib=(\d+)")


def vmm_command(vmm, args, kernel, cmdline):
    if vmm == "ferrovisor":
        cmd = [args.ferrovisor, "--kernel", kernel, "--cmdline", cmdline,
               "--cpus", "boot=1", "--memory", "size=512M",
               "--serial", "tty", "--debug-exit", "--log-level", "info"]
        return cmd
    machine = {"qemu-microvm": "microvm", "qemu-q35": "q35"}[vmm]
    # microvm has an ISA bus with COM1 (isa-serial=on is its default; spelled
    # out here) and takes -device isa-debug-exit like q35. Its CMOS RTC is
    # off by default when ACPI is on; the probe checks for it, so turn it on.
    if machine == "microvm":
        machine += ",isa-serial=on,rtc=on"
    cmd = [args.qemu, "-M", machine, "-enable-kvm",
           "-cpu", "host,-arch-capabilities", "-smp", "1", "-m", "512",
           "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
           "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
           "-kernel", kernel]
    if cmdline:
        cmd += ["-append", cmdline]
    return cmd


def run_once(vmm, args, guest, kernel):
    g = GUESTS[guest]
    cmd = vmm_command(vmm, args, kernel, g["cmdline"])
    result = {"guest": guest, "vmm": vmm, "ok": False, "status": None,
              "first_ms": None, "exit_ms": None, "rss_kib": None,
              "own_kib": None, "guest_kib": None, "error": None}
    run = run_process(cmd, args.timeout)
    if run.error:
        result["error"] = run.error
        return result
    result["status"] = run.status
    result["exit_ms"] = run.wall_ms
    result["rss_kib"] = run.rss_kib
    result["first_ms"] = run.ms_until(g["expect"])
    m = MEMORY_LINE.search(bytes(run.err.data))
    if m:
        result["own_kib"] = int(m.group(3))
        result["guest_kib"] = int(m.group(2))

    if run.timed_out:
        result["error"] = f"timeout after {args.timeout:g} s"
    elif run.status not in g["statuses"]:
        result["error"] = f"exit status {run.status}, expected {g['statuses']}"
    elif result["first_ms"] is None:
        result["error"] = f"no {g['expect'].decode()!r} on the serial console"
    else:
        result["ok"] = True
    if not result["ok"]:
        tail = (bytes(run.out.data)[-300:] + b"\n--- stderr ---\n" +
                bytes(run.err.data)[-300:]).decode("utf-8", "replace")
        result["output_tail"] = tail
    return result


def build_pvh_hello(outdir):
    subprocess.run([os.path.join(REPO, "guests/asm/build.sh"), outdir], check=True)
    return os.path.join(outdir, "pvh-hello.elf")


def main():
    ap = argparse.ArgumentParser(description="Ferrovisor vs QEMU boot benchmark")
    ap.add_argument("--runs", type=int, default=10, help="runs per guest and VMM (10)")
    ap.add_argument("--vmms", default=",".join(VMMS),
                    help="comma-separated subset of " + ",".join(VMMS))
    ap.add_argument("--skip-q35", action="store_true", help="leave out qemu-q35 (slow: SeaBIOS)")
    ap.add_argument("--guests", default="probe,pvh-hello",
                    help="comma-separated subset of " + ",".join(GUESTS))
    ap.add_argument("--ferrovisor", default=os.path.join(REPO, "target/release/ferrovisor"))
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("--probe", default=os.path.join(
        REPO, "guests/probe/target/x86_64-unknown-linux-gnu/release/probe"))
    ap.add_argument("--pvh-hello", default=None,
                    help="pvh-hello.elf (default: built with guests/asm/build.sh "
                         "into target/asm-guests)")
    ap.add_argument("--timeout", type=float, default=60.0, help="per-run timeout in s (60)")
    ap.add_argument("--json", metavar="OUT", help="write the raw numbers as JSON")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every run")
    args = ap.parse_args()

    vmms = parse_list(ap, args.vmms, VMMS, "VMM")
    if args.skip_q35:
        vmms = [v for v in vmms if v != "qemu-q35"]
    guests = parse_list(ap, args.guests, GUESTS, "guest")
    if not vmms or not guests or args.runs < 1:
        ap.error("nothing to run")

    if "ferrovisor" in vmms and not os.access(args.ferrovisor, os.X_OK):
        sys.exit(f"run.py: {args.ferrovisor} not found: cargo build --release, "
                 "or leave it out with --vmms")
    kernels = {}
    if "probe" in guests:
        if not os.path.exists(args.probe):
            sys.exit(f"run.py: {args.probe} not found: cd guests/probe && "
                     "cargo build --release, or leave it out with --guests")
        kernels["probe"] = args.probe
    if "pvh-hello" in guests:
        kernels["pvh-hello"] = args.pvh_hello or build_pvh_hello(
            os.path.join(REPO, "target/asm-guests"))

    runs = []
    total = args.runs * len(guests) * len(vmms)
    done = 0
    for guest in guests:
        for i in range(args.runs):
            # Alternate, and rotate who goes first, so no VMM always runs
            # right after the same other one.
            order = vmms[i % len(vmms):] + vmms[:i % len(vmms)]
            for vmm in order:
                r = run_once(vmm, args, guest, kernels[guest])
                r["run"] = i
                runs.append(r)
                done += 1
                if args.verbose or not r["ok"]:
                    state = "ok" if r["ok"] else "FAILED: " + r["error"]
                    print(f"[{done}/{total}] {guest} {vmm} run {i}: first={fmt(r['first_ms'])} ms "
                          f"exit={fmt(r['exit_ms'])} ms rss={r['rss_kib']} KiB {state}",
                          file=sys.stderr)
                    if not r["ok"] and args.verbose:
                        print(r.get("output_tail", ""), file=sys.stderr)

    # ---- summary ----
    summary = {}
    for guest in guests:
        for vmm in vmms:
            rs = [r for r in runs if r["guest"] == guest and r["vmm"] == vmm]
            ok = [r for r in rs if r["ok"]]
            own = median([r["own_kib"] for r in ok])
            rss = median([r["rss_kib"] for r in ok])
            summary[(guest, vmm)] = {
                "guest": guest, "vmm": vmm, "runs": len(rs), "ok": len(ok),
                "first_ms": median([r["first_ms"] for r in ok]),
                "exit_ms": median([r["exit_ms"] for r in ok]),
                "rss_mib": None if rss is None else rss / 1024,
                "own_mib": None if own is None else own / 1024,
            }

    head = (f"{'guest':<10} {'vmm':<13} {'ok':>6} {'first ms':>9} {'exit ms':>9} "
            f"{'peak RSS MiB':>13} {'VMM own MiB':>12}")
    print(head)
    print("-" * len(head))
    for (guest, vmm), s in summary.items():
        print(f"{guest:<10} {vmm:<13} {s['ok']:>2}/{s['runs']:<3} {fmt(s['first_ms']):>9} "
              f"{fmt(s['exit_ms']):>9} {fmt(s['rss_mib']):>13} {fmt(s['own_mib']):>12}")

    ratios = []
    if "ferrovisor" in vmms:
        for guest in guests:
            f = summary[(guest, "ferrovisor")]
            for other in ("qemu-microvm", "qemu-q35"):
                if other not in vmms:
                    continue
                q = summary[(guest, other)]
                ratios.append({
                    "guest": guest, "vs": other,
                    "first": ratio(f["first_ms"], q["first_ms"]),
                    "exit": ratio(f["exit_ms"], q["exit_ms"]),
                    "rss": ratio(f["rss_mib"], q["rss_mib"]),
                })
    if ratios:
        print()
        print("ratios ferrovisor / QEMU (< 1: ferrovisor is faster / smaller)")
        print(f"{'guest':<10} {'vs':<13} {'first':>7} {'exit':>7} {'RSS':>7}")
        for r in ratios:
            print(f"{r['guest']:<10} {r['vs']:<13} {fmt_ratio(r['first']):>7} "
                  f"{fmt_ratio(r['exit']):>7} {fmt_ratio(r['rss']):>7}")

    failed = sum(1 for r in runs if not r["ok"])
    if failed:
        print(f"\n{failed} of {len(runs)} runs failed (left out of the medians)")

    if args.json:
        meta = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": platform.node(), "kernel": platform.release(),
            "cpus": os.cpu_count(), "args": vars(args),
            "vmms": vmms, "guests": guests, "kernels": kernels,
        }
        try:
            meta["qemu_version"] = subprocess.run(
                [args.qemu, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
        except (OSError, IndexError):
            pass
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "runs": runs,
                       "summary": list(summary.values()), "ratios": ratios}, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
