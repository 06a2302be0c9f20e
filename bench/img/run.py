#!/usr/bin/env python3
"""Image tool benchmark: `fvimg convert` beside `qemu-img convert` on the
same inputs, and random 4 KiB reads through the block crate from a qcow2
image against the raw file it was converted from.

Inputs (made once per run in --dir, removed at the end):
  src.raw    a --size raw image (default 4 GiB), half of it data in 4 MiB
             stretches separated by 4 MiB holes; the data alternates 64 KiB
             of random bytes and 64 KiB of text, so it half compresses
  src.qcow2  src.raw converted by qemu-img (the qcow2 input of both tools)

Rows (each tool --runs times, alternating which goes first, medians and
the fastest run; on this shared host the first writer of a pair is often
slower whichever tool it is, so --runs should be even):
  raw-to-qcow2, qcow2-to-raw, raw-to-qcow2-compressed (zlib, -c)
  and, through crates/block/examples/randread.rs, randread-4k-qcow2 and
  randread-4k-raw (--reads reads at the same offsets);
  alloc-write-4k-flush-64, -flush-1 and -flush-1-lazy-refcounts: 4 KiB
  writes each allocating a fresh cluster of an empty qcow2 image, a flush
  every 64 writes (or every write; or every write with lazy_refcounts=on), through crates/block/examples/allocwrite.rs beside
  `qemu-img bench -w -t writeback -d 1` with the same pattern; each output
  passes qemu-img check and compare. This is the cost of crash-safe
  metadata ordering (refcounts, sync, L2 tables, sync) against QEMU's.

Each convert row is first run once per tool untimed (--no-warmup skips
that); before every timed run os.sync() settles the previous run's
writeback and the source is read whole into the page cache. MiB/s is the input size
over the wall time. The CPU column is user + system time of the tool and
its threads: on a busy shared host it varies less than the wall time.

Both tools run with their defaults: qemu-img convert's destination cache
mode is "unsafe" (no flush), and so is fvimg's. The page cache holds the
inputs after the first run (the machine has the memory); every row reads
warm inputs for both tools alike.

Python 3 standard library only. See bench/img/README.md.
"""

import argparse
import json
import os
import platform
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from benchlib import fmt, fmt_ratio, median, parse_list, ratio, run_process  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MIB = 1 << 20

# name -> (source file, arguments after "convert"); {src}/{dst} filled in.
CONVERT_ROWS = {
    "raw-to-qcow2": ("src.raw", ["-O", "qcow2"]),
    "qcow2-to-raw": ("src.qcow2", ["-O", "raw"]),
    "raw-to-qcow2-compressed": ("src.raw", ["-c", "-O", "qcow2"]),
    "vmdk-stream-to-qcow2": ("src.vmdk", ["-O", "qcow2"]),
}
READ_ROWS = {"randread-4k-qcow2": ("src.qcow2", "qcow2"), "randread-4k-raw": ("src.raw", "raw")}
# name -> (writes, bytes per write, step between offsets, writes per flush,
# qemu-img create -o options): every write allocates a fresh 64 KiB cluster
# of an empty qcow2 image.
# Rows "over-backing" put the image over a raw backing file full of data, so
# each write copies the rest of its cluster (or, with extended_l2, of its
# 2 KiB subclusters) from it.
WRITE_ROWS = {"alloc-write-4k-flush-64": (8192, 4096, 65536, 64, "lazy_refcounts=off"),
              "alloc-write-4k-flush-1": (2048, 4096, 65536, 1, "lazy_refcounts=off"),
              "alloc-write-4k-flush-1-lazy-refcounts": (2048, 4096, 65536, 1, "lazy_refcounts=on"),
              "alloc-write-4k-over-backing-flush-64": (4096, 4096, 65536, 64, "lazy_refcounts=off"),
              "alloc-write-4k-over-backing-extended-l2-flush-64":
                  (4096, 4096, 65536, 64, "extended_l2=on,cluster_size=65536")}
TOOLS = ["fvimg", "qemu-img"]


def make_inputs(d, size):
    src = os.path.join(d, "src.raw")
    text = (b"The quick brown fox jumps over the lazy dog. 0123456789 " * 1200)[:65536]
    stretch = 4 * MIB
    with open(src, "wb") as f:
        f.truncate(size)
        for n, off in enumerate(range(0, size, 2 * stretch)):
            block = b"".join(os.urandom(65536) if (k + n) % 2 else text
                             for k in range(stretch // 65536))
            f.seek(off)
            f.write(block[:max(0, min(stretch, size - off))])
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", src, os.path.join(d, "src.qcow2")],
                   check=True)
    subprocess.run(["qemu-img", "convert", "-O", "vmdk", "-o", "subformat=streamOptimized",
                    src, os.path.join(d, "src.vmdk")], check=True)


def warm(path):
    """Reads `path` whole, so both tools start from a source in the page
    cache (on this host a file not read for a while comes back slowly,
    which would land on whichever tool runs first)."""
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(8 * MIB)
        while f.readinto(buf):
            pass


def convert(tool, args, d, row):
    src, extra = CONVERT_ROWS[row]
    dst = os.path.join(d, "dst.img")
    exe = args.fvimg if tool == "fvimg" else args.qemu_img
    cmd = [exe, "convert"] + extra + [os.path.join(d, src), dst]
    os.sync()  # the previous run's writeback does not land in this one
    warm(os.path.join(d, src))
    run = run_process(cmd, args.timeout)
    result = {"row": row, "tool": tool, "ok": False, "s": None, "cpu_s": run.cpu_s, "mib_s": None,
              "error": None}
    if run.error or run.timed_out or run.status != 0:
        result["error"] = run.error or (f"timeout after {args.timeout} s" if run.timed_out
                                        else f"exit status {run.status}: "
                                        + bytes(run.err.data)[-300:].decode("utf-8", "replace"))
    else:
        result["ok"] = True
        result["s"] = run.wall_ms / 1000
        result["mib_s"] = args.size / MIB / result["s"]
        # Every output is checked against the source (outside the timing).
        cmp = subprocess.run(["qemu-img", "compare", os.path.join(d, src), dst],
                             capture_output=True)
        if cmp.returncode != 0:
            result["ok"] = False
            result["error"] = "output differs from the source: " + cmp.stdout.decode()
    if os.path.exists(dst):
        os.remove(dst)
    return result


def randread(args, d, row):
    src, fmt_ = READ_ROWS[row]
    cmd = [args.randread, os.path.join(d, src), fmt_, str(args.reads)]
    run = run_process(cmd, args.timeout)
    result = {"row": row, "tool": "block crate", "ok": False, "s": None, "iops": None,
              "mib_s": None, "error": None}
    if run.status != 0:
        result["error"] = f"exit status {run.status}"
        return result
    out = json.loads(bytes(run.out.data))
    result["s"] = out["ns"] / 1e9
    result["iops"] = out["reads"] / result["s"]
    result["mib_s"] = out["reads"] * 4096 / MIB / result["s"]
    result["ok"] = True
    return result


def alloc_write(tool, args, d, row):
    """Allocating writes into a fresh qcow2 image made by qemu-img: the
    block crate (examples/allocwrite.rs) or `qemu-img bench -w`, one request
    at a time, cache=writeback, the same pattern and flush interval."""
    count, size, step, interval, opts = WRITE_ROWS[row]
    img = os.path.join(d, "alloc.qcow2")
    base = os.path.join(d, "alloc-base.raw")
    backing = []
    if "over-backing" in row:
        with open(base, "wb") as f:
            chunk = bytes(range(256)) * 4096
            for _ in range(count * step // len(chunk)):
                f.write(chunk)
        backing = ["-b", base, "-F", "raw"]
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", opts] + backing
                   + [img, str(count * step)], check=True)
    if tool == "fvimg":
        cmd = [args.allocwrite, img, "qcow2", str(count), str(size), str(step), str(interval)]
    else:
        cmd = [args.qemu_img, "bench", "-q", "-w", "-f", "qcow2", "-t", "writeback", "-d", "1",
               "--pattern=165", "-c", str(count), "-s", str(size), "-S", str(step),
               f"--flush-interval={interval}", img]
    os.sync()
    run = run_process(cmd, args.timeout)
    result = {"row": row, "tool": tool, "ok": False, "s": None, "cpu_s": run.cpu_s, "iops": None,
              "error": None}
    if run.error or run.timed_out or run.status != 0:
        result["error"] = run.error or f"exit status {run.status}: " + \
            bytes(run.err.data)[-300:].decode("utf-8", "replace")
    else:
        result["s"] = run.wall_ms / 1000
        result["iops"] = count / result["s"]
        result["ok"] = True
        # Outside the timing: the image is consistent and holds the pattern.
        chk = subprocess.run(["qemu-img", "check", img], capture_output=True)
        ref = os.path.join(d, "alloc-ref.raw")
        if backing:
            subprocess.run(["cp", base, ref], check=True)
        with open(ref, "r+b" if backing else "wb") as f:
            f.truncate(count * step)
            for i in range(count):
                f.seek(i * step)
                f.write(b"\xa5" * size)
        cmp = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", ref, img],
                             capture_output=True)
        os.remove(ref)
        if chk.returncode != 0 or cmp.returncode != 0:
            result["ok"] = False
            result["error"] = "image check or content failed: " + (chk.stdout + cmp.stdout).decode()
    os.remove(img)
    if backing:
        os.remove(base)
    return result


def warm_up(args, d, rows):
    """One untimed run of every convert row with each tool: the first
    writer after the inputs were made pays for page cache and writeback
    work that no later run sees."""
    for row in rows:
        if row in CONVERT_ROWS:
            for tool in TOOLS:
                r = convert(tool, args, d, row)
                print(f"warm-up {row} {tool}: {fmt(r['s'], 2)} s {r['error'] or ''}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=4,
                    help="an even number lets each tool go first equally often")
    ap.add_argument("--size", type=int, default=4 << 30, help="bytes of the raw input")
    ap.add_argument("--reads", type=int, default=200000, help="reads per randread run")
    ap.add_argument("--rows", default=",".join(list(CONVERT_ROWS) + list(READ_ROWS) + list(WRITE_ROWS)))
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--fvimg", default=os.path.join(REPO, "target/release/fvimg"))
    ap.add_argument("--randread", default=os.path.join(REPO, "target/release/examples/randread"))
    ap.add_argument("--allocwrite", default=os.path.join(REPO, "target/release/examples/allocwrite"))
    ap.add_argument("--qemu-img", default="qemu-img")
    ap.add_argument("--json", help="write every run here")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--no-warmup", dest="warmup", action="store_false")
    args = ap.parse_args()
    rows = parse_list(ap, args.rows, list(CONVERT_ROWS) + list(READ_ROWS) + list(WRITE_ROWS), "row")
    if not args.no_build:
        subprocess.run(["cargo", "build", "-j", "1", "--release", "-p", "fvimg"], cwd=REPO, check=True)
        subprocess.run(["cargo", "build", "-j", "1", "--release", "-p", "block", "--example", "randread",
                        "--example", "allocwrite"], cwd=REPO, check=True)
    d = os.path.join(args.dir, f"fv-bench-img-{os.getpid()}")
    os.makedirs(d)
    results = []
    try:
        print(f"making inputs in {d} ({args.size / MIB:.0f} MiB raw) ...", file=sys.stderr)
        make_inputs(d, args.size)
        if args.warmup:
            warm_up(args, d, rows)
        for i in range(args.runs):
            for row in rows:
                if row in CONVERT_ROWS:
                    order = TOOLS if i % 2 == 0 else TOOLS[::-1]
                    for tool in order:
                        r = convert(tool, args, d, row)
                        results.append(r)
                        print(f"run {i + 1} {row} {tool}: {fmt(r['s'], 2)} s "
                              f"(CPU {fmt(r['cpu_s'], 2)} s) {r['error'] or ''}", file=sys.stderr)
                elif row in WRITE_ROWS:
                    order = TOOLS if i % 2 == 0 else TOOLS[::-1]
                    for tool in order:
                        r = alloc_write(tool, args, d, row)
                        results.append(r)
                        print(f"run {i + 1} {row} {tool}: {fmt(r['iops'], 0)} IOPS "
                              f"(CPU {fmt(r['cpu_s'], 2)} s) {r['error'] or ''}", file=sys.stderr)
                else:
                    r = randread(args, d, row)
                    results.append(r)
                    print(f"run {i + 1} {row}: {fmt(r['iops'], 0)} IOPS {r['error'] or ''}",
                          file=sys.stderr)
    finally:
        for name in os.listdir(d):
            os.remove(os.path.join(d, name))
        os.rmdir(d)
    print(f"\nhost: {platform.node()} {os.cpu_count()} CPUs; input {args.size / MIB:.0f} MiB, "
          f"{args.runs} runs, medians\n")
    if any(r in CONVERT_ROWS for r in rows):
        print("| row | fvimg s | qemu-img s | fvimg MiB/s | qemu-img MiB/s | qemu-img / fvimg time "
              "| fastest: fvimg s | fastest: qemu-img s | fvimg CPU s | qemu-img CPU s |")
        print("|---|---|---|---|---|---|---|---|---|---|")
    for row in [r for r in rows if r in CONVERT_ROWS]:
        f = [r for r in results if r["row"] == row and r["tool"] == "fvimg" and r["ok"]]
        q = [r for r in results if r["row"] == row and r["tool"] == "qemu-img" and r["ok"]]
        fs, qs = median([r["s"] for r in f]), median([r["s"] for r in q])
        print(f"| {row} | {fmt(fs, 2)} | {fmt(qs, 2)} | {fmt(median([r['mib_s'] for r in f]), 0)} | "
              f"{fmt(median([r['mib_s'] for r in q]), 0)} | {fmt_ratio(ratio(qs, fs))} | "
              f"{fmt(min([r['s'] for r in f], default=None), 2)} | "
              f"{fmt(min([r['s'] for r in q], default=None), 2)} | "
              f"{fmt(median([r['cpu_s'] for r in f]), 2)} | {fmt(median([r['cpu_s'] for r in q]), 2)} |")
    reads = [r for r in rows if r in READ_ROWS]
    if reads:
        print("\n| row (block crate) | IOPS | MiB/s |")
        print("|---|---|---|")
        iops = {}
        for row in reads:
            rs = [r for r in results if r["row"] == row and r["ok"]]
            iops[row] = median([r["iops"] for r in rs])
            print(f"| {row} | {fmt(iops[row], 0)} | {fmt(median([r['mib_s'] for r in rs]), 1)} |")
        if len(iops) == 2:
            print(f"\nqcow2 / raw IOPS: {fmt_ratio(ratio(iops['randread-4k-qcow2'], iops['randread-4k-raw']))}")
    writes = [r for r in rows if r in WRITE_ROWS]
    if writes:
        print("\n| row (fresh qcow2, one request at a time) | block crate IOPS | qemu-img bench IOPS "
              "| ours / qemu | block crate CPU s | qemu-img CPU s |")
        print("|---|---|---|---|---|---|")
        for row in writes:
            f = [r for r in results if r["row"] == row and r["tool"] == "fvimg" and r["ok"]]
            q = [r for r in results if r["row"] == row and r["tool"] == "qemu-img" and r["ok"]]
            fi, qi = median([r["iops"] for r in f]), median([r["iops"] for r in q])
            print(f"| {row} | {fmt(fi, 0)} | {fmt(qi, 0)} | {fmt_ratio(ratio(fi, qi))} | "
                  f"{fmt(median([r['cpu_s'] for r in f]), 2)} | {fmt(median([r['cpu_s'] for r in q]), 2)} |")
    failed = [r for r in results if not r["ok"]]
    for r in failed:
        print(f"FAILED {r['row']} {r['tool']}: {r['error']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
