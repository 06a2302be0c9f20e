#!/usr/bin/env python3
"""vCPU bring-up benchmark: time until the probe guest has started every vCPU.

The probe (probe=boot) starts its application processors with INIT/SIPI
(x2APIC mode past 254 CPUs) and prints "probe: aps started=N-1 ..." once all
checked in. Per run: process spawn -> arrival of that line, for each vCPU
count, under Ferrovisor and under QEMU microvm with -smp N (runs
alternating). QEMU needs interrupt remapping (q35 + intel-iommu, eim=on) for
more than 255 vCPUs; microvm has none, so larger counts are Ferrovisor only.

Python 3 standard library only. See bench/README.md.
"""

import argparse
import json
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from benchlib import fmt, fmt_ratio, median, ratio, run_process  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
QEMU_MAX = 255
STARTED = re.compile(rb"probe: aps started=(\d+) expected=(\d+)")


def command(vmm, args, n, memory):
    if vmm == "ferrovisor":
        return [args.ferrovisor, "--kernel", args.probe, "--cmdline", "probe=boot",
                "--cpus", f"boot={n}", "--memory", f"size={memory}M",
                "--serial", "tty", "--debug-exit"]
    return [args.qemu, "-M", "microvm,isa-serial=on,rtc=on", "-enable-kvm",
            "-cpu", "host,-arch-capabilities", "-smp", str(n), "-m", str(memory),
            "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
            "-kernel", args.probe, "-append", "probe=boot"]


def run_once(vmm, args, n):
    memory = 256 if n <= 64 else 512
    run = run_process(command(vmm, args, n, memory), args.timeout)
    data = bytes(run.out.data) if run.out else b""
    m = STARTED.search(data)
    ok = (run.error is None and not run.timed_out and m is not None
          and int(m.group(1)) == n - 1 and int(m.group(2)) == n - 1)
    if not ok:
        print(f"{vmm} {n} vCPUs failed: status={run.status} error={run.error} "
              f"tail={data[-300:]!r}", file=sys.stderr)
        return None
    return run.ms_until(b"probe: aps started")


def main():
    ap = argparse.ArgumentParser(description="vCPU bring-up: Ferrovisor vs QEMU")
    ap.add_argument("--runs", type=int, default=3, help="runs per count and VMM (3)")
    ap.add_argument("--counts", default="1,8,64,255,288",
                    help="vCPU counts (1,8,64,255,288)")
    ap.add_argument("--ferrovisor", default=os.path.join(REPO, "target/release/ferrovisor"))
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("--probe", default=os.path.join(
        REPO, "guests/probe/target/x86_64-unknown-linux-gnu/release/probe"))
    ap.add_argument("--timeout", type=float, default=300.0, help="per-run timeout in s (300)")
    ap.add_argument("--json", metavar="OUT", help="write the raw numbers as JSON")
    args = ap.parse_args()
    counts = [int(c) for c in args.counts.split(",") if c.strip()]
    results = {}
    for n in counts:
        vmms = ["ferrovisor"] + (["qemu"] if n <= QEMU_MAX else [])
        per = {v: [] for v in vmms}
        for _ in range(args.runs):
            for v in vmms:
                per[v].append(run_once(v, args, n))
        results[n] = per

    print(f"time until every vCPU has started (ms, median of {args.runs}; probe=boot)")
    print(f"{'vCPUs':>6} {'ferrovisor':>12} {'qemu':>12} {'ratio':>8}")
    summary = {}
    failed = False
    for n, per in results.items():
        fv = median(per["ferrovisor"])
        qe = median(per.get("qemu", []))
        failed |= any(v is None for vals in per.values() for v in vals)
        summary[n] = {"ferrovisor": fv, "qemu": qe, "ratio": ratio(fv, qe)}
        q = fmt(qe) if n <= QEMU_MAX else "n/a"
        print(f"{n:>6} {fmt(fv):>12} {q:>12} {fmt_ratio(ratio(fv, qe)):>8}")
    print("ratio = ferrovisor / qemu (below 1: ferrovisor is faster); "
          f"QEMU microvm stops at {QEMU_MAX} vCPUs")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"summary": summary, "runs": results}, out, indent=2)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
