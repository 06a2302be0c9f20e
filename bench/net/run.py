#!/usr/bin/env python3
"""Network benchmark: the probe guest's virtio-net driver (`probe=net`)
under Ferrovisor and under QEMU's virtio-net-pci, both on a TAP device
without vhost, inside a network namespace this script creates and deletes.

Per run and VMM (the VMMs alternating run by run):

- host->guest: the host sends --bytes over UDP to the probe's sink port in
  1468-byte datagrams, window --window, go-back-N; the probe checks the
  checksum (FNV-1a 64 over u64 words) and answers `DONE ... ok`;
- guest->host: the probe sends --bytes of its pattern (`SOURCE`); this
  script checks every byte and the probe's checksum;
- latency: --pings UDP echo round trips of 64 bytes; median and p99;
- guest kicks: the queue notifications the probe wrote over the whole run
  (the device's notification suppression at work; each is a VM exit).

Payload Gbit/s (payload bytes * 8 / wall time of the transfer), latency in
microseconds, and the ratios Ferrovisor/QEMU (throughput: higher is better
for Ferrovisor when > 1; latency: lower is better when < 1).

Needs root (namespaces, TAP). Python 3 standard library only.
"""

import argparse
import ctypes
import json
import os
import re
import select
import socket
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from benchlib import fmt, fmt_ratio, median, ratio  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
HOST_IP, GUEST_IP = "10.91.0.1", "10.91.0.2"
TAP = "fvbench0"
CONTROL, SINK, ECHO = 9000, 9001, 7
CHUNK = 1464
CLONE_NEWNET = 0x40000000
LIBC = ctypes.CDLL(None, use_errno=True)


def setns(fd):
    # os.setns is Python 3.12+; Debian 12 has 3.11.
    if LIBC.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")
FNV_START, FNV_PRIME, MASK = 0xcbf29ce484222325, 0x100000001b3, (1 << 64) - 1


def fnv_words(data, h):
    for i in range(0, len(data), 8):
        h ^= int.from_bytes(data[i:i + 8].ljust(8, b"\0"), "little")
        h = (h * FNV_PRIME) & MASK
    return h


def pattern(start, n):
    words = (n + 7) // 8
    first = start // 8
    out = b"".join(((first + i) * 0x9e3779b97f4a7c15 & MASK).to_bytes(8, "little")
                   for i in range(words))
    return out[:n]


def sh(*args, check=True):
    return subprocess.run(args, check=check, capture_output=True)


class Namespace:
    def __init__(self):
        self.name = f"fvbench-{os.getpid()}"
        sh("ip", "netns", "del", self.name, check=False)
        sh("ip", "netns", "add", self.name)
        sh("ip", "-n", self.name, "link", "set", "lo", "up")
        self.fd = os.open(f"/var/run/netns/{self.name}", os.O_RDONLY)

    def socket(self):
        """A UDP socket in the namespace (setns around its creation)."""
        own = os.open("/proc/self/ns/net", os.O_RDONLY)
        setns(self.fd)
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((HOST_IP, 0))
        finally:
            setns(own)
            os.close(own)
        return s

    def close(self):
        os.close(self.fd)
        sh("ip", "netns", "del", self.name, check=False)


def vmm_command(vmm, args, ns):
    cmdline = f"probe=net ip={GUEST_IP} timeout={int(args.timeout)}"
    inside = ["ip", "netns", "exec", ns.name]
    if vmm == "ferrovisor":
        return inside + [args.ferrovisor, "--kernel", args.probe, "--cmdline", cmdline,
                         "--cpus", "boot=1", "--memory", "size=256M", "--serial", "tty",
                         "--debug-exit", "--net", f"tap={TAP},ip={HOST_IP},mask=255.255.255.0"]
    return inside + [args.qemu, "-M", "microvm,rtc=on,pcie=on", "-enable-kvm",
                     "-cpu", "host,-arch-capabilities", "-smp", "1", "-m", "256",
                     "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
                     "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
                     "-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no,vhost=off",
                     "-device", "virtio-net-pci,netdev=n0,disable-legacy=on",
                     "-kernel", args.probe, "-append", cmdline]


def wait_line(proc, needle, timeout):
    deadline = time.time() + timeout
    buf = b""
    while time.time() < deadline:
        r, _, _ = select.select([proc.stdout], [], [], 0.5)
        if r:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
            if needle in buf:
                return buf
    raise RuntimeError(f"no {needle!r} from the guest: {buf[-400:]!r}")


def ask(s, text, expect, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        s.sendto(text.encode(), (GUEST_IP, CONTROL))
        s.settimeout(0.5)
        try:
            while True:
                m, _ = s.recvfrom(2048)
                if m.startswith(expect.encode()):
                    return m.decode()
        except socket.timeout:
            pass
    raise RuntimeError(f"no {expect} reply to {text}")


def to_guest(s, total, window):
    data = bytes((i * 7) & 255 for i in range(CHUNK))
    count = (total + CHUNK - 1) // CHUNK
    h = FNV_START
    for q in range(count):
        h = fnv_words(data[:min(CHUNK, total - q * CHUNK)], h)
    ask(s, f"SINK {total} {h:016x}", "READY")
    s.setblocking(False)
    t0 = time.perf_counter()
    nxt = acked = resent = 0
    last = time.perf_counter()
    while True:
        while nxt < count and nxt < acked + window:
            try:
                s.sendto(struct.pack("<I", nxt) + data[:min(CHUNK, total - nxt * CHUNK)],
                         (GUEST_IP, SINK))
            except BlockingIOError:
                break
            nxt += 1
        r, _, _ = select.select([s], [], [], 0.005)
        if r:
            m, _ = s.recvfrom(2048)
            if m.startswith(b"ACK "):
                a = int(m.split()[1])
                if a > acked:
                    acked, last = a, time.perf_counter()
            elif m.startswith(b"DONE "):
                if b" ok" not in m:
                    raise RuntimeError(f"guest checksum differs: {m!r}")
                s.setblocking(True)
                return time.perf_counter() - t0, resent
        elif time.perf_counter() - last > 0.2:
            resent += nxt - acked
            nxt, last = acked, time.perf_counter()


def from_guest(s, total):
    chunk = CHUNK
    count = (total + chunk - 1) // chunk
    s.setblocking(False)
    t0 = time.perf_counter()
    s.sendto(f"SOURCE {total} {chunk + 4}".encode(), (GUEST_IP, CONTROL))
    nxt, h, since, last = 0, FNV_START, 0, time.perf_counter()
    while True:
        r, _, _ = select.select([s], [], [], 0.005)
        if not r:
            s.sendto(f"ACK {nxt}".encode(), (GUEST_IP, CONTROL))
            if time.perf_counter() - last > 30:
                raise RuntimeError(f"silence at {nxt}/{count}")
            continue
        m, addr = s.recvfrom(2048)
        last = time.perf_counter()
        if addr[1] == CONTROL:
            if m.startswith(b"DONE "):
                theirs = m.split()[2].decode()
                if nxt != count or theirs != f"{h:016x}":
                    raise RuntimeError(f"got {nxt}/{count}, fnv {h:016x}; guest {m!r}")
                s.setblocking(True)
                return time.perf_counter() - t0
            continue
        seq = struct.unpack_from("<I", m)[0]
        if seq == nxt:
            body = m[4:]
            if body != pattern(seq * chunk, len(body)):
                raise RuntimeError(f"datagram {seq} differs")
            h = fnv_words(body, h)
            nxt += 1
            since += 1
        if since >= 16 or seq != nxt - 1 or nxt == count:
            since = 0
            s.sendto(f"ACK {nxt}".encode(), (GUEST_IP, CONTROL))


def latency(s, n):
    s.settimeout(2)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        s.sendto(b"x" * 64, (GUEST_IP, ECHO))
        while True:
            m, addr = s.recvfrom(2048)
            if addr[1] == ECHO:
                break
        times.append((time.perf_counter() - t) * 1e6)
    times.sort()
    return median(times), times[min(len(times) - 1, int(len(times) * 0.99))]


def one_run(vmm, args):
    ns = Namespace()
    proc = None
    try:
        if vmm == "qemu":
            sh("ip", "-n", ns.name, "tuntap", "add", "dev", TAP, "mode", "tap", "vnet_hdr")
            sh("ip", "-n", ns.name, "addr", "add", f"{HOST_IP}/24", "dev", TAP)
            sh("ip", "-n", ns.name, "link", "set", TAP, "up")
        proc = subprocess.Popen(vmm_command(vmm, args, ns), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_line(proc, b"probe: net ready", 60)
        s = ns.socket()
        up = to_guest(s, args.bytes, args.window)
        down = from_guest(s, args.bytes)
        lat = latency(s, args.pings)
        s.sendto(b"BYE", (GUEST_IP, CONTROL))
        proc.wait(30)
        rest = proc.stdout.read()
        m = re.search(rb"probe: net done ms=\d+ kicks=(\d+)", rest)
        kicks = int(m.group(1)) if m else None
        return {"kicks": kicks,"h2g_gbit": args.bytes * 8 / up[0] / 1e9, "h2g_resent": up[1],
                "g2h_gbit": args.bytes * 8 / down / 1e9,
                "lat_med_us": lat[0], "lat_p99_us": lat[1]}
    finally:
        if proc and proc.poll() is None:
            proc.kill()
            proc.wait()
        ns.close()


def main():
    ap = argparse.ArgumentParser(description="Ferrovisor vs QEMU virtio-net (TAP, no vhost)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--vmms", default="ferrovisor,qemu")
    ap.add_argument("--bytes", type=int, default=4 << 20, help="bytes each way (4 MiB)")
    ap.add_argument("--window", type=int, default=64, help="host->guest window in datagrams")
    ap.add_argument("--pings", type=int, default=200)
    ap.add_argument("--ferrovisor", default=os.path.join(REPO, "target/release/ferrovisor"))
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("--probe", default=os.path.join(
        REPO, "guests/probe/target/x86_64-unknown-linux-gnu/release/probe"))
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--json", metavar="OUT")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    vmms = [v for v in args.vmms.split(",") if v]
    results = {v: [] for v in vmms}
    for r in range(args.runs):
        for vmm in vmms:
            try:
                res = one_run(vmm, args)
            except Exception as e:  # a failed run is reported, left out of the medians
                print(f"run {r} {vmm}: FAILED {e}", file=sys.stderr)
                continue
            results[vmm].append(res)
            if args.verbose:
                print(f"run {r} {vmm}: {res}", file=sys.stderr)
    keys = ["h2g_gbit", "g2h_gbit", "lat_med_us", "lat_p99_us", "kicks"]
    med = {v: {k: median([x[k] for x in results[v]]) for k in keys} for v in vmms}
    print(f"bytes each way {args.bytes}, runs {args.runs}, window {args.window}")
    print(f"{'vmm':<12} {'h2g Gbit/s':>11} {'g2h Gbit/s':>11} {'lat med us':>11} "
          f"{'lat p99 us':>11} {'guest kicks':>11}")
    for v in vmms:
        m = med[v]
        print(f"{v:<12} {fmt(m['h2g_gbit'], 4):>11} {fmt(m['g2h_gbit'], 4):>11} "
              f"{fmt(m['lat_med_us'], 0):>11} {fmt(m['lat_p99_us'], 0):>11} "
              f"{fmt(m['kicks'], 0):>11}")
    if "ferrovisor" in med and "qemu" in med:
        f, q = med["ferrovisor"], med["qemu"]
        print(f"{'fv/qemu':<12} {fmt_ratio(ratio(f['h2g_gbit'], q['h2g_gbit'])):>11} "
              f"{fmt_ratio(ratio(f['g2h_gbit'], q['g2h_gbit'])):>11} "
              f"{fmt_ratio(ratio(f['lat_med_us'], q['lat_med_us'])):>11} "
              f"{fmt_ratio(ratio(f['lat_p99_us'], q['lat_p99_us'])):>11} "
              f"{fmt_ratio(ratio(f['kicks'], q['kicks'])):>11}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"args": vars(args), "runs": results, "medians": med}, out, indent=1)


if __name__ == "__main__":
    main()
