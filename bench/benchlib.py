"""Shared by the benchmarks in bench/: running a VMM with a timeout while
timing its output as it arrives, sampling its peak RSS, and small statistics
and formatting helpers. Python 3 standard library only."""

import os
import re
import signal
import statistics
import subprocess
import threading
import time


class Reader(threading.Thread):
    """Drains a pipe, recording when each chunk arrived."""

    def __init__(self, fd):
        super().__init__(daemon=True)
        self.fd = fd
        self.data = bytearray()
        self.chunks = []  # (offset of the chunk's first byte, perf_counter_ns)

    def run(self):
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                break
            now = time.perf_counter_ns()
            if not chunk:
                break
            self.chunks.append((len(self.data), now))
            self.data += chunk
        os.close(self.fd)

    def arrival_ns(self, offset):
        """When the byte at `offset` arrived."""
        when = None
        for start, t in self.chunks:
            if start > offset:
                break
            when = t
        return when


class HighWaterMark(threading.Thread):
    """Samples /proc/PID/status VmHWM (peak RSS of the exec'ed image) until
    the process exits. ru_maxrss would include the forking Python's own RSS,
    which is carried over exec."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid = pid
        self.kib = None

    def run(self):
        path = f"/proc/{self.pid}/status"
        while True:
            try:
                with open(path) as f:
                    text = f.read()
            except OSError:
                return
            m = re.search(r"VmHWM:\s+(\d+) kB", text)
            if not m:
                return  # a zombie has no memory lines: it exited
            self.kib = int(m.group(1))
            time.sleep(0.0005)


class Run:
    """One finished process: exit status, timings, output, peak RSS."""

    def __init__(self):
        self.status = None
        self.t0_ns = None
        self.exit_ns = None
        self.out = None
        self.err = None
        self.rss_kib = None
        self.cpu_s = None  # user + system time of the process and its threads
        self.timed_out = False
        self.error = None

    @property
    def wall_ms(self):
        return None if self.exit_ns is None else (self.exit_ns - self.t0_ns) / 1e6

    def ms_until(self, needle):
        """Milliseconds from start until the first byte of `needle` on stdout."""
        pos = bytes(self.out.data).find(needle)
        if pos < 0:
            return None
        return (self.out.arrival_ns(pos) - self.t0_ns) / 1e6


def run_process(cmd, timeout):
    """Runs `cmd` with stdin closed, killing it after `timeout` seconds."""
    run = Run()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        run.t0_ns = time.perf_counter_ns()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out_w,
                                stderr=err_w, close_fds=True)
    except OSError as e:
        os.close(out_r)
        os.close(err_r)
        run.error = f"spawn failed: {e}"
        return run
    finally:
        os.close(out_w)
        os.close(err_w)
    run.out, run.err = Reader(out_r), Reader(err_r)
    run.out.start()
    run.err.start()
    killed = threading.Event()

    def kill():
        killed.set()
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    timer = threading.Timer(timeout, kill)
    timer.start()
    hwm = HighWaterMark(proc.pid)
    hwm.start()
    _, wstatus, rusage = os.wait4(proc.pid, 0)
    run.exit_ns = time.perf_counter_ns()
    run.cpu_s = rusage.ru_utime + rusage.ru_stime
    timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(wstatus)  # reaped: keep Popen quiet
    run.out.join(5)
    run.err.join(5)
    hwm.join(5)
    run.status = proc.returncode
    run.rss_kib = hwm.kib
    run.timed_out = killed.is_set()
    return run


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=1):
    return "-" if v is None else f"{v:.{digits}f}"


def fmt_ratio(v):
    return "-" if v is None else f"{v:.3g}"


def ratio(a, b):
    return None if a is None or not b else a / b


def parse_list(ap, text, known, what):
    """Splits a comma-separated option, refusing names not in `known`."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    for item in items:
        if item not in known:
            ap.error(f"unknown {what} {item!r} (known: {', '.join(known)})")
    return items
