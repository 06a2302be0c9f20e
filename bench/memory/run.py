#!/usr/bin/env python3
"""Memory benchmark: VMM overhead and KSM sharing, Ferrovisor beside QEMU.

Both VMMs run the probe guest with `probe=mem ... hold=on`: it writes a
pattern over part of its RAM, prints "probe: mem holding" and idles, and the
host is measured while it holds.

  overhead  guests of 128 MiB, 1 GiB and 8 GiB that touch 64 MiB
            (one word per 4 KiB page): the VMM process's peak RSS (VmHWM)
            minus the resident guest RAM (the Rss of its guest RAM mappings,
            what the guest touched as the host backs it) = what the VMM
            itself costs.
  ksm       8 identical 256 MiB guests filling 192 MiB each with the same
            constant, with KSM running (run=1, pages_to_scan=20000,
            sleep_millisecs=10; restored afterwards); Ferrovisor
            `--memory mergeable=on|off`, QEMU `-machine mem-merge=on|off`.
            Host memory = the sum of the 8 processes' PSS (KSM pages are
            split between their mappers), after KSM settles (60 s at most).

Run as root (KSM settings). Python 3 standard library only.
"""

import argparse
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from benchlib import fmt, fmt_ratio, median, ratio  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
KSM = "/sys/kernel/mm/ksm/"


def command(vmm, args, size_mib, cmdline, mergeable):
    if vmm == "ferrovisor":
        memory = f"size={size_mib}M,mergeable={'on' if mergeable else 'off'}"
        return [args.ferrovisor, "--kernel", args.probe, "--cmdline", cmdline,
                "--memory", memory, "--serial", "tty", "--debug-exit"]
    machine = "microvm,isa-serial=on,rtc=on,mem-merge=" + ("on" if mergeable else "off")
    return [args.qemu, "-M", machine, "-enable-kvm", "-cpu", "host,-arch-capabilities",
            "-smp", "1", "-m", str(size_mib), "-nodefaults", "-no-user-config",
            "-nographic", "-serial", "stdio",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
            "-kernel", args.probe, "-append", cmdline]


class Guest:
    """A VMM process holding its probe, with its console collected."""

    def __init__(self, cmd):
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        self.out = bytearray()
        self.cond = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        while True:
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            with self.cond:
                if not chunk:
                    self.cond.notify_all()
                    return
                self.out += chunk
                self.cond.notify_all()

    def wait_holding(self, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while b"probe: mem holding" not in self.out:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise RuntimeError(f"no 'mem holding': {bytes(self.out[-300:])!r}")
                self.cond.wait(min(left, 0.5))

    def status_kib(self, key):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        return None

    def pss_kib(self):
        with open(f"/proc/{self.proc.pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
        return None

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def guest_ram_rss_kib(pid, size_mib):
    """RSS of the mappings that hold guest RAM: those at least as large as
    the guest's RAM below the PCI hole (QEMU maps one block, Ferrovisor one
    per RAM range)."""
    threshold = min(size_mib, 3072) * 1024
    rss, size, total = 0, 0, 0
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if line.startswith("Size:"):
                size = int(line.split()[1])
            elif line.startswith("Rss:") and size >= threshold:
                total += int(line.split()[1])
    return total


def overhead(vmm, args, size_mib):
    g = Guest(command(vmm, args, size_mib, "probe=mem mem_mib=64 touch=page hold=on", False))
    try:
        g.wait_holding(args.timeout)
        time.sleep(0.2)
        return (g.status_kib("VmHWM") - guest_ram_rss_kib(g.proc.pid, size_mib)) / 1024
    finally:
        g.stop()


def read(path):
    with open(path) as f:
        return f.read().strip()


def ksm(vmm, args, mergeable):
    guests = [Guest(command(vmm, args, 256, "probe=mem mem_mib=192 pattern=const hold=on",
                            mergeable)) for _ in range(8)]
    try:
        for g in guests:
            g.wait_holding(args.timeout)
        # KSM merges on its second pass over a page: wait for three full
        # scans after every guest filled its memory, then for PSS to settle.
        scans = int(read(KSM + "full_scans"))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and int(read(KSM + "full_scans")) < scans + 3:
            time.sleep(0.5)
        last = -1
        while time.monotonic() < deadline:
            total = sum(g.pss_kib() for g in guests)
            if last >= 0 and abs(total - last) < 1024:
                break
            last = total
            time.sleep(2)
        return sum(g.pss_kib() for g in guests) / 1024
    finally:
        for g in guests:
            g.stop()


def main():
    ap = argparse.ArgumentParser(description="Ferrovisor vs QEMU: memory overhead and KSM")
    ap.add_argument("--runs", type=int, default=3, help="runs of the overhead rows (3)")
    ap.add_argument("--ferrovisor", default=os.path.join(REPO, "target/release/ferrovisor"))
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("--probe", default=os.path.join(
        REPO, "guests/probe/target/x86_64-unknown-linux-gnu/release/probe"))
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--skip-ksm", action="store_true")
    args = ap.parse_args()

    rows = []
    for size in (128, 1024, 8192):
        fv = median([overhead("ferrovisor", args, size) for _ in range(args.runs)])
        qe = median([overhead("qemu", args, size) for _ in range(args.runs)])
        rows.append((f"overhead, {size} MiB guest (MiB)", fv, qe))
    if not args.skip_ksm:
        saved = {k: read(KSM + k) for k in ("run", "pages_to_scan", "sleep_millisecs")}
        try:
            for k, v in (("run", "1"), ("pages_to_scan", "20000"), ("sleep_millisecs", "10")):
                with open(KSM + k, "w") as f:
                    f.write(v)
            for mergeable in (False, True):
                fv = ksm("ferrovisor", args, mergeable)
                qe = ksm("qemu", args, mergeable)
                label = "on" if mergeable else "off"
                rows.append((f"8 x 256 MiB guests, mergeable={label} (MiB PSS)", fv, qe))
        finally:
            for k, v in saved.items():
                with open(KSM + k, "w") as f:
                    f.write(v)
    print(f"{'row':<46} {'ferrovisor':>11} {'qemu':>9} {'ratio':>7}")
    for name, fv, qe in rows:
        print(f"{name:<46} {fmt(fv):>11} {fmt(qe):>9} {fmt_ratio(ratio(fv, qe)):>7}")
    print("ratio = ferrovisor / qemu (below 1: ferrovisor uses less)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
