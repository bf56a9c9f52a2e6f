"""Where the latency tail comes from: one server of bench/peers.py under one
wrk load, both traced by the kernel (perf's syscall tracepoints, no change
to the server).

    .venv/bin/python bench/tail.py [--only "ours, coroutine view"] [--conns 1000]
                                   [--duration 3] [--no-pin] [--keep DIR]

What it does, so you can judge it:
* the server (a bench/peers.py configuration, one process) on CPU 0 and wrk
  on CPU 1 (as bench/peers.py does; --no-pin: unpinned), warmed up 1 s
  with 10 connections;
* `perf record` on the serving process (gunicorn's worker) and on wrk,
  events sys_enter_{read,write,epoll_wait,epoll_pwait,accept4} only, with
  their file descriptors; tracing costs each side a little, so read the
  shapes, not the rates;
* client side (wrk): a request's latency is the time from wrk's write on a
  connection to its next read on it (wrk times the same span); shown
  overall and by time into the run, with how many of the run's slowest 1%
  fall in each interval (the start of a run: connections accepted, first
  requests waiting for the accepts);
* server side: per request, the time from its read to its response's
  write on the same connection (what the server holds it); per pass of the
  loop (from one epoll wait to the next), how many reads it served, how
  long it took, and how long the reads that started it waited in the
  kernel (the client's write to the server's read is not seen: the two
  sides' descriptors differ);
* the figures wrk prints itself, for comparison.
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import peers  # bench/ is sys.path[0]

EVENTS = ["syscalls:sys_enter_read", "syscalls:sys_enter_write",
          "syscalls:sys_enter_epoll_wait", "syscalls:sys_enter_epoll_pwait",
          "syscalls:sys_enter_accept4"]
LINE = re.compile(r"^\s*(\d+)\s+([\d.]+):\s+syscalls:sys_enter_(\w+):(.*)$")
FD = re.compile(r"fd: (0x[0-9a-f]+)")


def worker_pid(proc):
    """gunicorn's worker (the arbiter's one child), else the process."""
    for _ in range(50):
        out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                             text=True).stdout.split()
        if out:
            return int(out[0])
        with open("/proc/%d/cmdline" % proc.pid, "rb") as f:
            if b"gunicorn" not in f.read():
                return proc.pid
        time.sleep(0.1)
    return proc.pid


def events(path):
    """(tid, t, name, fd or None) of a perf.data file, in time order."""
    out = subprocess.run(["perf", "script", "-i", path, "-F", "tid,time,event,trace"],
                         capture_output=True, text=True).stdout
    for line in out.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        fd = FD.search(m.group(4))
        yield int(m.group(1)), float(m.group(2)), m.group(3), (
            int(fd.group(1), 16) if fd else None)


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100.0))]


def ms(x):
    return "%.2f" % (x * 1e3)


def analyse_client(path):
    """[(time of the write, latency)] of wrk's requests."""
    sent = {}
    reqs = []
    for _, t, name, fd in events(path):
        if name == "write":
            sent[fd] = t
        elif name == "read" and fd in sent:
            t0 = sent.pop(fd)
            reqs.append((t0, t - t0))
    return reqs


def analyse_server(path):
    """[(time of the read, read to write)], [(reads, duration, start) per
    pass], accepts, [(a response's write to the connection's next read,
    that read to its response's write)]."""
    read_at = {}
    wrote_at = {}
    held = []
    cycles = []  # (write to the next read on a connection, read to write)
    passes = []  # (reads, duration, start)
    last_epoll = None
    reads = 0
    accepts = 0
    for _, t, name, fd in events(path):
        if name in ("epoll_wait", "epoll_pwait"):
            if last_epoll is not None:
                passes.append((reads, t - last_epoll, last_epoll))
            last_epoll, reads = t, 0
        elif name == "read":
            reads += 1
            read_at.setdefault(fd, t)
        elif name == "write" and fd in read_at:
            t0 = read_at.pop(fd)
            held.append((t0, t - t0))
            if fd in wrote_at:
                cycles.append((t0 - wrote_at[fd], t - t0))
            wrote_at[fd] = t
        elif name == "accept4":
            accepts += 1
    return held, passes, accepts, cycles


def report(reqs, held, passes, accepts, cycles, wrk_out, buckets):
    print("wrk's own report:")
    for line in wrk_out.splitlines():
        if re.match(r"\s+(Latency|Req/Sec|50%|75%|90%|99%)|.*requests in|Requests/sec", line):
            print("   ", line.strip())
    print()
    if not reqs:
        print("no requests traced")
        return
    t0 = min(t for t, _ in reqs)
    lat = [lt for _, lt in reqs]
    cut = pct(lat, 99)
    print("client (wrk, traced): %d requests, p50 %s ms, p90 %s ms, p99 %s ms, "
          "max %s ms" % (len(lat), ms(pct(lat, 50)), ms(pct(lat, 90)), ms(cut),
                         ms(max(lat))))
    print()
    print("| requests sent at (s into the run) | requests | p50 (ms) | p99 (ms) | "
          "of the run's slowest 1% |")
    print("| --- | ---: | ---: | ---: | ---: |")
    slow = sum(1 for x in lat if x >= cut)
    edges = buckets + [float("inf")]
    lo = 0.0
    for hi in edges:
        part = [lt for t, lt in reqs if lo <= t - t0 < hi]
        if part:
            print("| %s-%s | %d | %s | %s | %.0f%% |" % (
                "%g" % lo, "end" if hi == float("inf") else "%g" % hi, len(part),
                ms(pct(part, 50)), ms(pct(part, 99)),
                100.0 * sum(1 for x in part if x >= cut) / slow))
        lo = hi
    print()
    h = [x for _, x in held]
    if h:
        print("server: %d accepts; %d requests, time from the read to the response's "
              "write p50 %s ms, p99 %s ms, max %s ms" % (
                  accepts, len(h), ms(pct(h, 50)), ms(pct(h, 99)), ms(max(h))))
    if cycles:
        # a request's latency, seen from the server: its connection's last
        # response written to this response written (wrk's turn-around
        # included): the wait before its read, then the server's hold
        tot = sorted(cycles, key=lambda c: c[0] + c[1])
        tail = tot[int(len(tot) * 0.99):]
        mid = tot[int(len(tot) * 0.45):int(len(tot) * 0.55)]
        print("server's view of a request (a connection's previous write to this "
              "write): p50 %s ms, p99 %s ms; at the median, %s ms waiting to be read "
              "+ %s ms held; in the slowest 1%%, %s + %s ms" % (
                  ms(pct([a + b for a, b in cycles], 50)),
                  ms(pct([a + b for a, b in cycles], 99)),
                  ms(statistics.mean(a for a, _ in mid)), ms(statistics.mean(b for _, b in mid)),
                  ms(statistics.mean(a for a, _ in tail)),
                  ms(statistics.mean(b for _, b in tail))))
    busy = [p for p in passes if p[0]]
    if busy:
        sizes = [p[0] for p in busy]
        durs = [p[1] for p in busy]
        print("passes of the loop that read anything: %d; reads per pass p50 %d, p90 %d, "
              "p99 %d, max %d; duration p50 %s ms, p90 %s ms, p99 %s ms, max %s ms" % (
                  len(busy), pct(sizes, 50), pct(sizes, 90), pct(sizes, 99), max(sizes),
                  ms(pct(durs, 50)), ms(pct(durs, 90)), ms(pct(durs, 99)), ms(max(durs))))
        # requests weighted: the pass a request is read in
        w = sorted((n for n in sizes for _ in range(n)))
        print("a request is read in a pass of p50 %d, p90 %d, p99 %d reads" % (
            pct(w, 50), pct(w, 90), pct(w, 99)))
        long = sorted(busy, key=lambda p: -p[1])[:5]
        print("longest passes (reads, ms, s into the trace): " + ", ".join(
            "(%d, %s, %.2f)" % (n, ms(d), s - passes[0][2]) for n, d, s in long))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="ours, coroutine view",
                    help="a bench/peers.py server name (exact)")
    ap.add_argument("--view", default="hello")
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--duration", type=int, default=3)
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="an environment variable for the server (repeatable)")
    ap.add_argument("--keep", help="keep the perf.data files in this directory")
    ap.add_argument("--buckets", default="0.05,0.1,0.2,0.5,1,2",
                    help="edges (s into the run) of the intervals shown")
    args = ap.parse_args()
    if shutil.which("perf") is None:
        sys.exit("bench/tail.py needs perf (linux-perf)")
    peers.raise_fd_limit()
    cfg = [c for c in peers.configs() if c[0] == args.only]
    if not cfg:
        sys.exit("no server named %r; names: %s" % (
            args.only, ", ".join(c[0] for c in peers.configs())))
    name, cmd, paths, env, ours = cfg[0]
    cfg = (name, cmd, paths, dict(env, **dict(e.split("=", 1) for e in args.env)), ours)
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, wrk_cpu = (None, None) if args.no_pin or len(cpus) < 2 else cpus[:2]
    tmp = args.keep or tempfile.mkdtemp(prefix="tail-")
    os.makedirs(tmp, exist_ok=True)
    sdata, cdata = os.path.join(tmp, "server.data"), os.path.join(tmp, "wrk.data")
    port = peers.free_port()
    with open(os.devnull, "w") as log:
        proc = peers.start(cfg, port, log, server_cpu)
    try:
        url = "http://127.0.0.1:%d%s" % (port, cfg[2][args.view])
        peers.wrk(url, 10, 1, wrk_cpu)
        pid = worker_pid(proc)
        ev = ["-e", ",".join(EVENTS)]
        sperf = subprocess.Popen(["perf", "record", "-q", "-o", sdata, *ev, "-p", str(pid)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # attached
        wrk_out = subprocess.run(
            ["perf", "record", "-q", "-o", cdata, *ev, "--",
             *peers.taskset(wrk_cpu), "wrk", "-t1", "-c%d" % args.conns,
             "-d%ds" % args.duration, "--latency", "--timeout", "10s", url],
            capture_output=True, text=True, timeout=args.duration + 120).stdout
        sperf.send_signal(2)
        sperf.wait(60)
    finally:
        peers.stop(proc)
    reqs = analyse_client(cdata)
    held, passes, accepts, cycles = analyse_server(sdata)
    print("%s%s, %s, %d connections, %d s, %s" % (
        cfg[0], "".join(" " + e for e in args.env), args.view, args.conns, args.duration,
        "unpinned" if server_cpu is None else
        "server on CPU %d, wrk on CPU %d" % (server_cpu, wrk_cpu)))
    report(reqs, held, passes, accepts, cycles, wrk_out,
           [float(b) for b in args.buckets.split(",")])
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
