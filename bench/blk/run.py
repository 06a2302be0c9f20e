#!/usr/bin/env python3
"""Block I/O benchmark: the probe's virtio-blk driver under Ferrovisor and
under QEMU, against the host reading and writing the same image file.

For every row (operation, block size, queue depth) the probe guest runs
`probe=blkbench` --runs times per VMM, the VMMs (and the host measurement)
alternating run by run so that drift on the host hits them all alike. Both
VMMs open the image with O_DIRECT (QEMU `cache=none,aio=threads`, Ferrovisor
`--disk path=IMG,direct=on`). The guest times its requests with the TSC and
prints

  probe: blkbench op=<op> bs=<bs> qd=<qd> bytes=<total> ns=<ns> mib_s=<x.y> iops=<n>

The host figures come from this script reading/writing the image with
O_DIRECT at the same block size, offsets and byte count, one request at a
time (qd=1 even for the qd=32 rows; the table marks them).

A run with an unexpected exit status, without the result line, or killed
by the timeout is reported as failed and left out of the medians.

Python 3 standard library only. See bench/blk/README.md.
"""

import argparse
import json
import mmap
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from benchlib import fmt, fmt_ratio, median, parse_list, ratio, run_process  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

MIB = 1 << 20
IMAGE_SIZE = 1 << 30
# Offsets of the random rows: the probe's xorshift64 and seed, so the host
# touches the same blocks as the guest.
SEED = 0x2545F4914F6CDD1D
MASK64 = (1 << 64) - 1

# name -> (op, bs, qd)
ROWS = {
    "seqread-1m-qd1": ("seqread", MIB, 1),
    "seqwrite-1m-qd1": ("seqwrite", MIB, 1),
    "randread-4k-qd1": ("randread", 4096, 1),
    "randread-4k-qd32": ("randread", 4096, 32),
    "randwrite-4k-qd1": ("randwrite", 4096, 1),
    "randwrite-4k-qd32": ("randwrite", 4096, 32),
}

VMMS = ["ferrovisor", "qemu"]

RESULT_LINE = re.compile(
    rb"probe: blkbench op=(\w+) bs=(\d+) qd=(\d+) bytes=(\d+) ns=(\d+) "
    rb"mib_s=([\d.]+) iops=(\d+)")
STATS_LINE = re.compile(rb"probe: blkbench requests=(\d+) irqs=(\d+) notifies=(\d+) halts=(\d+)")
# The probe exits through isa-debug-exit: 0 after PASS, i.e. status (0 << 1) | 1.
GOOD_STATUS = 1


def qemu_machine(args):
    # microvm with pcie=on: a GPEX host bridge (ECAM, no firmware BAR
    # assignment, the probe assigns them) and qboot, so a run does not pay
    # SeaBIOS's ~3.5 s; the virtio-blk-pci device model is the same as on
    # q35. rtc=on as in the probe's other QEMU runs (microvm has no CMOS
    # RTC with ACPI otherwise).
    return "q35" if args.q35 else "microvm,rtc=on,pcie=on"


def vmm_name(vmm, args):
    return "qemu-q35" if vmm == "qemu" and args.q35 else (
        "qemu-microvm" if vmm == "qemu" else vmm)


def guest_cmdline(args, row):
    op, bs, qd = ROWS[row]
    total = args.seq_total if op.startswith("seq") else args.rand_total
    words = ["probe=blkbench", f"bench={op}", f"bs={bs}", f"qd={qd}", f"total={total}"]
    if args.guest_args:
        words.append(args.guest_args)
    return " ".join(words)


def vmm_command(vmm, args, image, cmdline):
    if vmm == "ferrovisor":
        return [args.ferrovisor, "--kernel", args.probe, "--cmdline", cmdline,
                "--cpus", "boot=1", "--memory", "size=256M",
                "--serial", "tty", "--debug-exit",
                "--disk", f"path={image},direct=on"]
    return [args.qemu, "-M", qemu_machine(args), "-enable-kvm",
            "-cpu", "host,-arch-capabilities", "-smp", "1", "-m", "256",
            "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
            "-drive", f"file={image},format=raw,if=none,id=d0,cache=none,aio=threads",
            "-device", "virtio-blk-pci,drive=d0,disable-legacy=on",
            "-kernel", args.probe, "-append", cmdline]


def run_vmm(vmm, args, image, row):
    cmdline = guest_cmdline(args, row)
    cmd = vmm_command(vmm, args, image, cmdline)
    result = {"row": row, "vmm": vmm_name(vmm, args), "ok": False, "status": None,
              "mib_s": None, "iops": None, "ns": None, "bytes": None,
              "irqs": None, "notifies": None, "halts": None, "wall_ms": None,
              "cmdline": cmdline, "error": None}
    run = run_process(cmd, args.timeout)
    if run.error:
        result["error"] = run.error
        return result
    result["wall_ms"] = run.wall_ms
    result["status"] = run.status
    data = bytes(run.out.data)
    m = RESULT_LINE.search(data)
    if m:
        result["ns"] = int(m.group(5))
        result["bytes"] = int(m.group(4))
        result["mib_s"] = float(m.group(6))
        result["iops"] = int(m.group(7))
    s = STATS_LINE.search(data)
    if s:
        result["irqs"], result["notifies"], result["halts"] = (
            int(s.group(2)), int(s.group(3)), int(s.group(4)))
    if run.timed_out:
        result["error"] = f"timeout after {args.timeout:g} s"
    elif run.status != GOOD_STATUS:
        result["error"] = f"exit status {run.status}, expected {GOOD_STATUS}"
    elif not m or b"probe: PASS" not in data:
        result["error"] = "no result line and PASS on the serial console"
    else:
        result["ok"] = True
    if not result["ok"]:
        result["output_tail"] = (data[-400:] + b"\n--- stderr ---\n" +
                                 bytes(run.err.data)[-400:]).decode("utf-8", "replace")
    return result


def xorshift(x):
    x ^= (x << 13) & MASK64
    x ^= x >> 7
    x ^= (x << 17) & MASK64
    return x


def run_host(args, image, row):
    """The image read or written with O_DIRECT from Python, one request at a
    time, at the guest's block size, offsets and byte count."""
    op, bs, qd = ROWS[row]
    total = args.seq_total if op.startswith("seq") else args.rand_total
    write = op.endswith("write")
    result = {"row": row, "vmm": "host", "ok": False, "mib_s": None, "iops": None,
              "ns": None, "bytes": total, "qd": 1, "error": None}
    span = os.path.getsize(image) // bs * bs
    blocks = span // bs
    requests = total // bs
    fd = None
    try:
        fd = os.open(image, (os.O_RDWR if write else os.O_RDONLY) | os.O_DIRECT)
        buf = mmap.mmap(-1, bs)  # page aligned, as O_DIRECT wants
        if write:
            buf.write(b"\xa5" * bs)
        rng = SEED
        t0 = time.perf_counter_ns()
        for i in range(requests):
            if op.startswith("rand"):
                rng = xorshift(rng)
                block = rng % blocks
            else:
                block = i % blocks
            if write:
                n = os.pwritev(fd, [buf], block * bs)
            else:
                n = os.preadv(fd, [buf], block * bs)
            if n != bs:
                raise OSError(f"short transfer: {n} of {bs} bytes at {block * bs}")
        ns = time.perf_counter_ns() - t0
    except OSError as e:
        result["error"] = f"host I/O: {e}"
        return result
    finally:
        if fd is not None:
            os.close(fd)
    result["ns"] = ns
    result["mib_s"] = total / MIB / (ns / 1e9)
    result["iops"] = requests / (ns / 1e9)
    result["ok"] = True
    return result


def make_image(path, size):
    """A sparse file, then every block written once with zeros (so reads
    hit allocated blocks, not holes), synced."""
    chunk = bytes(MIB)
    with open(path, "wb") as f:
        f.truncate(size)
        for _ in range(size // MIB):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())


def row_label(row):
    op, bs, qd = ROWS[row]
    size = f"{bs // MIB}M" if bs >= MIB else f"{bs // 1024}K"
    return f"{op} {size} qd{qd}"


def main():
    ap = argparse.ArgumentParser(description="Ferrovisor vs QEMU vs host block I/O benchmark")
    ap.add_argument("--runs", type=int, default=3, help="runs per row and VMM (3)")
    ap.add_argument("--vmms", default=",".join(VMMS),
                    help="comma-separated subset of " + ",".join(VMMS))
    ap.add_argument("--q35", action="store_true",
                    help="QEMU machine q35 (SeaBIOS, ~3.5 s a boot) instead of microvm")
    ap.add_argument("--skip-host", action="store_true", help="no host O_DIRECT baseline")
    ap.add_argument("--rows", default=",".join(ROWS),
                    help="comma-separated subset of " + ",".join(ROWS))
    ap.add_argument("--image", help="raw image to use as is (default: a new zero-filled "
                    "1 GiB image in --tmpdir, removed afterwards); it is written to")
    ap.add_argument("--tmpdir", default="/var/tmp",
                    help="where the image is created (/var/tmp; must support O_DIRECT, "
                    "so not tmpfs)")
    ap.add_argument("--seq-total", type=int, default=64 * MIB,
                    help="bytes per sequential run (64 MiB)")
    ap.add_argument("--rand-total", type=int, default=16 * MIB,
                    help="bytes per random run (16 MiB)")
    ap.add_argument("--guest-args", default="",
                    help="extra probe options, e.g. 'wait=poll' or 'ring=crate'")
    ap.add_argument("--ferrovisor", default=os.path.join(REPO, "target/release/ferrovisor"))
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("--probe", default=os.path.join(
        REPO, "guests/probe/target/x86_64-unknown-linux-gnu/release/probe"))
    ap.add_argument("--timeout", type=float, default=120.0, help="per-run timeout in s (120)")
    ap.add_argument("--json", metavar="OUT", help="write the raw numbers as JSON")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every run")
    args = ap.parse_args()

    vmms = parse_list(ap, args.vmms, VMMS, "VMM")
    rows = parse_list(ap, args.rows, ROWS, "row")
    if not rows or args.runs < 1 or not (vmms or not args.skip_host):
        ap.error("nothing to run")
    for total in (args.seq_total, args.rand_total):
        for r in rows:
            if total % ROWS[r][1]:
                ap.error("--seq-total/--rand-total must be multiples of the block sizes")
    if "ferrovisor" in vmms and not os.access(args.ferrovisor, os.X_OK):
        sys.exit(f"run.py: {args.ferrovisor} not found: cargo build --release, "
                 "or leave it out with --vmms")
    if vmms and not os.path.exists(args.probe):
        sys.exit(f"run.py: {args.probe} not found: cd guests/probe && cargo build --release")

    created = None
    if args.image:
        image = os.path.abspath(args.image)
        if not os.path.exists(image):
            sys.exit(f"run.py: {image} does not exist")
    else:
        fd, image = tempfile.mkstemp(prefix="ferrovisor-blk-", suffix=".img", dir=args.tmpdir)
        os.close(fd)
        created = image
        print(f"run.py: writing a {IMAGE_SIZE >> 20} MiB image {image} ...", file=sys.stderr)
        make_image(image, IMAGE_SIZE)

    participants = [(v, vmm_name(v, args)) for v in vmms]
    if not args.skip_host:
        participants.append(("host", "host"))
    runs = []
    total = args.runs * len(rows) * len(participants)
    done = 0
    try:
        for row in rows:
            for i in range(args.runs):
                # Alternate, and rotate who goes first.
                k = i % len(participants)
                for vmm, name in participants[k:] + participants[:k]:
                    if vmm == "host":
                        r = run_host(args, image, row)
                    else:
                        r = run_vmm(vmm, args, image, row)
                    r["run"] = i
                    runs.append(r)
                    done += 1
                    if args.verbose or not r["ok"]:
                        state = "ok" if r["ok"] else "FAILED: " + r["error"]
                        print(f"[{done}/{total}] {row} {name} run {i}: "
                              f"{fmt(r['mib_s'])} MiB/s {fmt(r['iops'], 0)} IOPS {state}",
                              file=sys.stderr)
                        if not r["ok"] and args.verbose and "output_tail" in r:
                            print(r["output_tail"], file=sys.stderr)
    finally:
        if created:
            os.unlink(created)

    # ---- summary ----
    names = [name for _, name in participants]
    summary = {}
    for row in rows:
        for name in names:
            rs = [r for r in runs if r["row"] == row and r["vmm"] == name]
            ok = [r for r in rs if r["ok"]]
            summary[(row, name)] = {
                "row": row, "vmm": name, "runs": len(rs), "ok": len(ok),
                "mib_s": median([r["mib_s"] for r in ok]),
                "iops": median([r["iops"] for r in ok]),
            }

    host_note = False
    head = (f"{'row':<20} {'vmm':<13} {'ok':>6} {'MiB/s':>9} {'IOPS':>9} {'vs host':>8}")
    print(head)
    print("-" * len(head))
    for row in rows:
        host = summary.get((row, "host"))
        for name in names:
            s = summary[(row, name)]
            vs_host = "" if name == "host" else fmt_ratio(
                ratio(s["mib_s"], host["mib_s"] if host else None))
            mark = ""
            if name == "host" and ROWS[row][2] > 1:
                mark = " *"
                host_note = True
            print(f"{row_label(row):<20} {name + mark:<13} {s['ok']:>2}/{s['runs']:<3} "
                  f"{fmt(s['mib_s']):>9} {fmt(s['iops'], 0):>9} {vs_host:>8}")
    if host_note:
        print("* host figures are at qd=1 (one synchronous O_DIRECT request at a time)")

    ratios = []
    qemu_name = vmm_name("qemu", args)
    if "ferrovisor" in vmms and "qemu" in vmms:
        print()
        print(f"ratios ferrovisor / {qemu_name} (> 1: ferrovisor is faster; "
              "MiB/s and IOPS ratios are equal at equal bs)")
        for row in rows:
            f, q = summary[(row, "ferrovisor")], summary[(row, qemu_name)]
            r = ratio(f["mib_s"], q["mib_s"])
            ratios.append({"row": row, "vs": qemu_name, "throughput": r})
            print(f"{row_label(row):<20} {fmt_ratio(r):>7}")

    failed = sum(1 for r in runs if not r["ok"])
    if failed:
        print(f"\n{failed} of {len(runs)} runs failed (left out of the medians)")

    if args.json:
        meta = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": platform.node(), "kernel": platform.release(),
            "cpus": os.cpu_count(), "args": vars(args), "image": image,
            "vmms": names, "rows": {r: ROWS[r] for r in rows},
        }
        try:
            meta["qemu_version"] = subprocess.run(
                [args.qemu, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
        except (OSError, IndexError):
            pass
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "runs": runs, "summary": list(summary.values()),
                       "ratios": ratios}, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
