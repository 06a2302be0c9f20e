#!/usr/bin/env python3
"""The cost of the sandbox: boot time and virtio-blk figures of the probe
guest with isolation off and on, for Ferrovisor and for QEMU beside it.

Configurations, run alternately, --runs times each:

  ferrovisor-off     --seccomp off --landlock off
  ferrovisor-on      the defaults: seccomp filters per thread kind, Landlock
  ferrovisor-jailed  the defaults inside fvjail (namespaces, pivot_root,
                     own uid/gid, cgroup); needs root
  qemu-off           QEMU 7.2 microvm without -sandbox
  qemu-on            -sandbox on,obsolete=deny,elevateprivileges=deny,
                     spawn=deny,resourcecontrol=deny (QEMU's seccomp)

Rows: `boot` (ms from exec to the guest's first output, and to its exit),
`randread-4k-qd32` and `seqread-1m-qd1` (probe=blkbench, O_DIRECT image).
The report gives medians and the on/off ratio per VMM.

Python 3 standard library only. Usage:
  cargo build --release && (cd guests/probe && cargo build --release)
  python3 bench/isolation/run.py [--runs 7]
"""

import argparse
import json
import os
import re
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from benchlib import fmt, fmt_ratio, median, ratio, run_process  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MIB = 1 << 20
JAIL_UID = 64201

ROWS = {
    "boot": "probe=boot",
    "randread-4k-qd32": "probe=blkbench bench=randread bs=4096 qd=32 total=16777216",
    "seqread-1m-qd1": "probe=blkbench bench=seqread bs=1048576 qd=1 total=268435456",
}
CONFIGS = ["ferrovisor-off", "ferrovisor-on", "ferrovisor-jailed", "qemu-off", "qemu-on"]
RESULT = re.compile(rb"probe: blkbench op=\w+ bs=\d+ qd=\d+ bytes=\d+ ns=\d+ mib_s=([\d.]+) iops=(\d+)")
QEMU_SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"


def ferrovisor_args(kernel, image, cmdline):
    return ["--kernel", kernel, "--cmdline", cmdline, "--memory", "size=256M",
            "--serial", "tty", "--debug-exit", "--disk", f"path={image},direct=on"]


def command(config, args, image, cmdline, jail_base):
    if config == "ferrovisor-off":
        return [args.ferrovisor, *ferrovisor_args(args.probe, image, cmdline),
                "--seccomp", "off", "--landlock", "off"]
    if config == "ferrovisor-on":
        return [args.ferrovisor, *ferrovisor_args(args.probe, image, cmdline)]
    if config == "ferrovisor-jailed":
        return [args.fvjail, "--id", f"bench-{os.getpid()}", "--base", jail_base,
                "--uid", str(JAIL_UID), "--gid", str(JAIL_UID), "--exec", args.ferrovisor,
                "--file", f"{args.probe}:probe:ro", "--file", f"{image}:disk.img",
                "--", *ferrovisor_args("/probe", "/disk.img", cmdline)]
    cmd = [args.qemu, "-M", "microvm,rtc=on,pcie=on", "-enable-kvm",
           "-cpu", "host,-arch-capabilities", "-smp", "1", "-m", "256",
           "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
           "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
           "-drive", f"file={image},format=raw,if=none,id=d0,cache=none,aio=threads",
           "-device", "virtio-blk-pci,drive=d0,disable-legacy=on",
           "-kernel", args.probe, "-append", cmdline]
    if config == "qemu-on":
        cmd += ["-sandbox", QEMU_SANDBOX]
    return cmd


def measure(config, args, image, row, jail_base):
    run = run_process(command(config, args, image, ROWS[row], jail_base), args.timeout)
    result = {"config": config, "row": row, "ok": False, "status": run.status}
    if run.error or run.timed_out or run.status not in (1, 3):
        result["error"] = run.error or (b"".join([bytes(run.err.data)[-300:]]).decode(errors="replace"))
        return result
    if row == "boot":
        first = run.ms_until(b"probe: hello")
        result.update(ok=first is not None and run.status == 1, first_ms=first, exit_ms=run.wall_ms)
        return result
    m = RESULT.search(bytes(run.out.data))
    if m and run.status == 1:
        result.update(ok=True, mib_s=float(m.group(1)), iops=int(m.group(2)))
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--ferrovisor", default=os.path.join(REPO, "target/release/ferrovisor"))
    ap.add_argument("--fvjail", default=os.path.join(REPO, "target/release/fvjail"))
    ap.add_argument("--probe", default=os.path.join(
        REPO, "guests/probe/target/x86_64-unknown-linux-gnu/release/probe"))
    ap.add_argument("--qemu", default=shutil.which("qemu-system-x86_64") or "qemu-system-x86_64")
    ap.add_argument("--json", help="also write the raw results here")
    args = ap.parse_args()
    configs = [c for c in CONFIGS if c != "ferrovisor-jailed" or os.geteuid() == 0]

    work = tempfile.mkdtemp(prefix="fv-bench-isolation-", dir="/var/tmp")
    os.chmod(work, 0o755)
    image = os.path.join(work, "disk.img")
    with open(image, "wb") as f:
        chunk = os.urandom(MIB)
        for _ in range(512):
            f.write(chunk)
    jail_base = os.path.join(work, "jails")
    os.mkdir(jail_base)
    results = []
    try:
        for row in ROWS:
            for i in range(args.runs):
                for config in configs:
                    r = measure(config, args, image, row, jail_base)
                    results.append(r)
                    if not r["ok"]:
                        print(f"  {row} {config} run {i}: failed {r}", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def med(config, row, key):
        return median([r[key] for r in results
                       if r["config"] == config and r["row"] == row and r["ok"] and r.get(key) is not None])

    print(f"# sandbox cost ({args.runs} runs, medians)\n")
    print("| row | figure | " + " | ".join(configs) + " | ferrovisor on/off | qemu on/off |")
    print("|---|---|" + "---|" * len(configs) + "---|---|")
    figures = [("boot", "first output ms", "first_ms"), ("boot", "exit ms", "exit_ms"),
               ("randread-4k-qd32", "IOPS", "iops"), ("seqread-1m-qd1", "MiB/s", "mib_s")]
    for row, label, key in figures:
        vals = {c: med(c, row, key) for c in configs}
        cells = " | ".join(fmt(vals[c]) for c in configs)
        f_ratio = fmt_ratio(ratio(vals.get("ferrovisor-on"), vals.get("ferrovisor-off")))
        q_ratio = fmt_ratio(ratio(vals.get("qemu-on"), vals.get("qemu-off")))
        print(f"| {row} | {label} | {cells} | {f_ratio} | {q_ratio} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
