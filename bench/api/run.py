#!/usr/bin/env python3
"""Control-plane benchmark: Ferrovisor's REST API beside QEMU's QMP.

Both VMMs run the probe guest (probe=echo: it boots, prints
"probe: echo ready" and idles in hlt), and both are driven over a Unix
socket by this script, with the same client code (raw sockets, one
keep-alive connection, so client overhead is alike).

Figures (each the median of --runs fresh processes, configurations
alternating run by run):

  info_us_median / info_us_p99
      round trip of one status query on a running VM, --queries per run:
      ferrovisor GET /api/v1/vm.info (state, config, devices) beside QEMU
      QMP {"execute": "query-status"} (state only).
  api_boot_ms
      ferrovisor: PUT vm.create + PUT vm.boot sent -> "probe: hello" on the
      serial console (the VM is built from nothing on vm.boot);
      QEMU: started with -S (machine already built, vCPUs stopped),
      {"execute": "cont"} sent -> "probe: hello".
  cli_boot_ms
      process spawn -> "probe: hello" with the VM on the command line.

Python 3 standard library only. See bench/README.md.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from benchlib import fmt, fmt_ratio, median, ratio  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
HELLO = b"probe: hello"
READY = b"probe: echo ready"


class Console:
    """Reads a process's stdout on a thread, timestamping each needle's arrival."""

    def __init__(self, proc):
        self.data = bytearray()
        self.cond = threading.Condition()
        self.arrivals = []  # (offset, ns)
        self.thread = threading.Thread(target=self._pump, args=(proc.stdout,), daemon=True)
        self.thread.start()

    def _pump(self, pipe):
        while True:
            chunk = os.read(pipe.fileno(), 65536)
            now = time.perf_counter_ns()
            with self.cond:
                if not chunk:
                    self.cond.notify_all()
                    return
                self.arrivals.append((len(self.data), now))
                self.data += chunk
                self.cond.notify_all()

    def wait_for(self, needle, timeout):
        """The perf_counter_ns at which `needle` arrived (None on timeout)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                pos = self.data.find(needle)
                if pos >= 0:
                    end = pos + len(needle) - 1
                    return max(ns for off, ns in self.arrivals if off <= end)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)


def connect(path, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except OSError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)


class Http:
    """A keep-alive HTTP/1.1 client over a Unix socket."""

    def __init__(self, path):
        self.sock = connect(path)
        self.buf = b""

    def call(self, method, endpoint, body=None):
        data = b"" if body is None else json.dumps(body).encode()
        head = f"{method} /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\n"
        if body is not None:
            head += "Content-Type: application/json\r\n"
        head += f"Content-Length: {len(data)}\r\n\r\n"
        self.sock.sendall(head.encode() + data)
        while b"\r\n\r\n" not in self.buf:
            self.buf += self._recv()
        header, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status = int(header.split(b" ", 2)[1])
        length = 0
        for line in header.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(self.buf) < length:
            self.buf += self._recv()
        payload, self.buf = self.buf[:length], self.buf[length:]
        if status >= 300:
            raise RuntimeError(f"{endpoint}: HTTP {status} {payload!r}")
        return payload

    def _recv(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed")
        return chunk


class Qmp:
    """A QMP client: one JSON object per line."""

    def __init__(self, path):
        self.sock = connect(path)
        self.file = self.sock.makefile("rb")
        self._read()  # greeting
        self.call("qmp_capabilities")

    def _read(self):
        while True:
            line = self.file.readline()
            if not line:
                raise RuntimeError("QMP closed")
            msg = json.loads(line)
            if "event" not in msg:
                return msg

    def send(self, command):
        self.sock.sendall(json.dumps({"execute": command}).encode() + b"\n")

    def call(self, command):
        self.send(command)
        reply = self._read()
        if "error" in reply:
            raise RuntimeError(f"{command}: {reply['error']}")
        return reply


def percentile(values, p):
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]


def ferrovisor_cmd(args, sock=None, vm=True):
    cmd = [args.ferrovisor, "--log-level", "warn"]
    if sock:
        cmd += ["--api-socket", sock]
    if vm:
        cmd += ["--kernel", args.probe, "--cmdline", "probe=echo", "--memory",
                "size=128M", "--serial", "tty"]
    return cmd


def qemu_cmd(args, qmp=None, stopped=False):
    cmd = [args.qemu, "-M", "microvm,isa-serial=on,rtc=on", "-enable-kvm",
           "-cpu", "host,-arch-capabilities", "-smp", "1", "-m", "128",
           "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
           "-kernel", args.probe, "-append", "probe=echo"]
    if qmp:
        cmd += ["-qmp", f"unix:{qmp},server=on,wait=off"]
    if stopped:
        cmd += ["-S"]
    return cmd


def spawn(cmd):
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, close_fds=True)


def stop(proc):
    proc.kill()
    proc.wait()


def time_queries(call, n):
    times = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        call()
        times.append((time.perf_counter_ns() - t0) / 1000)
    return times


def measure(args, api_cmd, connect_api, cli_cmd):
    """One run of one VMM: boot through its API (`connect_api(sock)` gives
    the client's boot and status-query calls), time the queries, then boot
    from the command line."""
    r = {}
    proc = spawn(api_cmd)
    try:
        console = Console(proc)
        boot, query = connect_api()
        t0 = time.perf_counter_ns()
        boot()
        hello = console.wait_for(HELLO, args.timeout)
        if hello is None or console.wait_for(READY, args.timeout) is None:
            raise RuntimeError("the probe did not boot through the API")
        r["api_boot_ms"] = (hello - t0) / 1e6
        times = time_queries(query, args.queries)
        r["info_us_median"] = statistics.median(times)
        r["info_us_p99"] = percentile(times, 99)
    finally:
        stop(proc)
    t0 = time.perf_counter_ns()
    proc = spawn(cli_cmd)
    try:
        hello = Console(proc).wait_for(HELLO, args.timeout)
        r["cli_boot_ms"] = None if hello is None else (hello - t0) / 1e6
    finally:
        stop(proc)
    return r


def run_ferrovisor(args, tmp):
    sock = os.path.join(tmp, "api.sock")
    config = {"payload": {"kernel": args.probe, "cmdline": "probe=echo"},
              "memory": {"size": "128M"}, "serial": {"mode": "tty"}}

    def connect():
        http = Http(sock)

        def boot():
            http.call("PUT", "vm.create", config)
            http.call("PUT", "vm.boot")
        return boot, lambda: http.call("GET", "vm.info")
    return measure(args, ferrovisor_cmd(args, sock, vm=False), connect, ferrovisor_cmd(args))


def run_qemu(args, tmp):
    sock = os.path.join(tmp, "qmp.sock")

    def connect():
        qmp = Qmp(sock)
        return lambda: qmp.call("cont"), lambda: qmp.call("query-status")
    return measure(args, qemu_cmd(args, sock, stopped=True), connect, qemu_cmd(args))


FIGURES = ["info_us_median", "info_us_p99", "api_boot_ms", "cli_boot_ms"]


def main():
    ap = argparse.ArgumentParser(description="Ferrovisor REST API vs QEMU QMP")
    ap.add_argument("--runs", type=int, default=5, help="fresh processes per VMM (5)")
    ap.add_argument("--queries", type=int, default=2000, help="status queries per run (2000)")
    ap.add_argument("--ferrovisor", default=os.path.join(REPO, "target/release/ferrovisor"))
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("--probe", default=os.path.join(
        REPO, "guests/probe/target/x86_64-unknown-linux-gnu/release/probe"))
    ap.add_argument("--timeout", type=float, default=60.0, help="per-step timeout in s (60)")
    ap.add_argument("--json", metavar="OUT", help="write the raw numbers as JSON")
    args = ap.parse_args()
    for path in (args.ferrovisor, args.probe):
        if not os.path.exists(path):
            ap.error(f"{path} is missing; build it first (see bench/README.md)")

    results = {"ferrovisor": [], "qemu": []}
    with tempfile.TemporaryDirectory(prefix="fv-bench-api-") as tmp:
        os.chmod(tmp, 0o700)
        for i in range(args.runs):
            for vmm, fn in (("ferrovisor", run_ferrovisor), ("qemu", run_qemu)):
                try:
                    results[vmm].append(fn(args, tmp))
                except (RuntimeError, OSError) as e:
                    print(f"run {i + 1} {vmm}: failed: {e}", file=sys.stderr)

    print(f"control plane: {args.runs} runs, {args.queries} queries each "
          f"(ferrovisor vm.info vs QEMU QMP query-status; microvm, probe=echo)")
    print(f"{'figure':<16} {'ferrovisor':>12} {'qemu':>12} {'ratio':>8}")
    summary = {}
    for f in FIGURES:
        fv = median([r.get(f) for r in results["ferrovisor"]])
        qe = median([r.get(f) for r in results["qemu"]])
        summary[f] = {"ferrovisor": fv, "qemu": qe, "ratio": ratio(fv, qe)}
        print(f"{f:<16} {fmt(fv):>12} {fmt(qe):>12} {fmt_ratio(ratio(fv, qe)):>8}")
    print("ratio = ferrovisor / qemu (below 1: ferrovisor is faster)")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"summary": summary, "runs": results}, out, indent=2)
    ok = all(results.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
