#!/usr/bin/env python3
"""VMDK/VHD read throughput: converting an image to raw through the block
crate (crates/block/examples/image_to_raw.rs) beside `qemu-img convert -O raw`
of the same image, alternating run by run; medians and the ratio.

The block crate is also timed reading alone (OUT `-`: the same reads and
zero checks, no writes). The source is a raw file of --size MiB, half of it
data (noise and pieces of a program binary in alternating MiB, every other
MiB a hole), converted by qemu-img to each format of --formats. Both
converters write a sparse raw file on the same filesystem, and each output
is checked equal to the source (`cmp`).

Build first: cargo build --release -p block --example image_to_raw

Python 3 standard library only.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from benchlib import fmt, fmt_ratio, median, ratio  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MIB = 1 << 20
FORMATS = {
    "vmdk-streamOptimized": ("vmdk", "subformat=streamOptimized"),
    "vmdk-monolithicSparse": ("vmdk", "subformat=monolithicSparse"),
    "vmdk-monolithicFlat": ("vmdk", "subformat=monolithicFlat"),
    "vhd-dynamic": ("vpc", "subformat=dynamic"),
}


def program_bytes():
    """Up to 32 MiB of a large binary: data that compresses like a disk's
    files do (about 2-3x), unlike noise or repeated text."""
    for candidate in ("/usr/bin/qemu-system-x86_64", sys.executable):
        try:
            with open(os.path.realpath(candidate), "rb") as f:
                data = f.read(32 * MIB)
            if len(data) >= MIB:
                return data
        except OSError:
            pass
    raise SystemExit("no binary to take compressible data from")


def make_source(path, size_mib):
    program = program_bytes()
    chunks = len(program) // MIB
    with open(path, "wb") as f:
        f.truncate(size_mib * MIB)
        for i in range(0, size_mib, 2):
            f.seek(i * MIB)
            if i % 4 == 0:
                f.write(os.urandom(MIB))
            else:
                c = (i // 4) % chunks
                f.write(program[c * MIB:(c + 1) * MIB])


def timed(cmd):
    # Write back what the previous run left dirty, so no run pays for another's.
    os.sync()
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512, help="source size in MiB (512)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--threads", type=int, default=0, help="image_to_raw threads (0: all CPUs)")
    ap.add_argument("--ours", default=os.path.join(REPO, "target/release/examples/image_to_raw"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR", "/var/tmp")) as tmp:
        src = os.path.join(tmp, "src.raw")
        make_source(src, args.size)
        print(f"source: {args.size} MiB, half data; {args.runs} runs each, alternating")
        print(f"{'image':24} {'qemu-img s':>10} {'block s':>10} {'qemu MiB/s':>11} {'block MiB/s':>12} {'qemu/block':>11} {'read-only s':>12} {'read MiB/s':>11}")
        for name in args.formats.split(","):
            fmt_name, opts = FORMATS[name]
            img = os.path.join(tmp, f"img.{fmt_name}")
            subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", fmt_name, "-o", opts, src, img], check=True)
            qemu, ours, reads = [], [], []
            threads = [str(args.threads)] if args.threads else []
            for _ in range(args.runs):
                out = os.path.join(tmp, "out.raw")
                qemu.append(timed(["qemu-img", "convert", "-f", fmt_name, "-O", "raw", img, out]))
                subprocess.run(["cmp", "-n", str(args.size * MIB), src, out], check=True)
                os.unlink(out)
                ours.append(timed([args.ours, img, out] + threads))
                subprocess.run(["cmp", "-n", str(args.size * MIB), src, out], check=True)
                os.unlink(out)
                reads.append(timed([args.ours, img, "-"] + threads))
            q, o, r = median(qemu), median(ours), median(reads)
            print(f"{name:24} {fmt(q, 3):>10} {fmt(o, 3):>10} {fmt(args.size / q):>11} {fmt(args.size / o):>12} {fmt_ratio(ratio(q, o)):>11} {fmt(r, 3):>12} {fmt(args.size / r):>11}")
            for f in os.listdir(tmp):
                if f.startswith("img"):
                    os.unlink(os.path.join(tmp, f))


if __name__ == "__main__":
    main()
