"""System calls, wake-ups and context switches per request, ours against
bjoern, under the same wrk load: what the kernel does for each server.

    .venv/bin/python bench/kernel_path.py [--duration 3] [--conns 50] [--view hello]

Needs perf (Debian: linux-perf) with tracepoints readable (root, or
perf_event_paranoid <= -1) and bench/peers.py's virtualenv (for bjoern; run
bench/peers.py once).  For each server (one process on 127.0.0.1, serving
the Pyramid hello-world of bench/peers_app.py, or with --view wait its
50 ms wait, ours only: bjoern's would stop its worker), wrk -t1 runs --duration
seconds while `perf stat -p` counts, in the server process only:

* read/recvfrom, write/sendto/writev, epoll_wait (libuv: epoll_pwait),
  epoll_ctl system calls;
* sched:sched_wakeup events raised by the server: the tasks it wakes,
  wrk's thread on each reply that finds it asleep;
* sched:sched_switch: the server's own context switches (it sleeping in
  epoll_wait when there is nothing to do);
* wakeups of the server itself (sched_waking of the server's pid, counted
  system-wide: what the client's writes cost on the other side);

each divided by the requests wrk completed in the same window, and the mean
number of requests answered per epoll_wait.  A second table gives, per
request and over all the server's threads, its CPU time (task-clock), its
context switches and CPU migrations (software events) and its futex calls
(threads waiting for and handing over the GIL and locks).

    .venv/bin/python bench/kernel_path.py --only "executor,inline"

measures the servers whose names contain one of the comma-separated words
(default: ours with a coroutine view, ours inline, bjoern).  --pin puts
every thread of the server on CPU 0 and wrk on CPU 1: a threaded server's
counts (the executor's) depend on where the scheduler puts its threads.
"""
import argparse
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import peers  # noqa: E402
from http_bench import perf_counts, perf_stat  # noqa: E402

EVENTS = [
    "syscalls:sys_enter_read", "syscalls:sys_enter_recvfrom",
    "syscalls:sys_enter_write", "syscalls:sys_enter_sendto",
    "syscalls:sys_enter_writev", "syscalls:sys_enter_epoll_wait",
    "syscalls:sys_exit_epoll_wait", "syscalls:sys_enter_epoll_pwait",
    "syscalls:sys_exit_epoll_pwait", "syscalls:sys_enter_epoll_ctl",
    "sched:sched_wakeup", "sched:sched_switch",
    "syscalls:sys_enter_futex", "task-clock", "context-switches", "cpu-migrations",
]


def worker_pid(proc):
    """The process that serves: gunicorn's one worker, else the process."""
    try:
        import psutil
    except ImportError:
        return proc.pid
    for _ in range(50):
        kids = psutil.Process(proc.pid).children()
        if kids:
            return kids[0].pid
        if "gunicorn" not in " ".join(psutil.Process(proc.pid).cmdline()):
            return proc.pid
        time.sleep(0.1)
    return proc.pid


def measure(config, duration, conns, view="hello", pin=False):
    port = peers.free_port()
    with open(os.devnull, "wb") as log:
        proc = peers.start(config, port, log)
    try:
        pid = worker_pid(proc)
        url = "http://127.0.0.1:%d%s" % (port, config[2][view])
        peers.wrk(url, conns, 1)  # warm: the pool has its threads
        if pin:  # every thread of the server on CPU 0 (new ones inherit it)
            subprocess.run(["taskset", "-a", "-p", "-c", "0", str(pid)],
                           check=True, capture_output=True)
        perf = perf_stat(pid, EVENTS)
        # the server being woken: counted system-wide, filtered on its pid
        waking = perf_stat(pid, ["sched:sched_waking"], "-a", "--filter", "pid == %d" % pid)
        time.sleep(0.2)
        out = subprocess.run(
            (["taskset", "-c", "1"] if pin else [])
            + ["wrk", "-t1", "-c%d" % conns, "-d%ds" % duration, url],
            capture_output=True, text=True, timeout=duration + 60).stdout
        counts = perf_counts(perf, waking)
        m = re.search(r"(\d+) requests in", out)
        return (int(m.group(1)) if m else 0), counts
    finally:
        peers.stop(proc)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=3)
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--view", choices=["hello", "wait"], default="hello")
    ap.add_argument("--only", help="comma-separated substrings of the server names")
    ap.add_argument("--pin", action="store_true",
                    help="the server's threads on CPU 0, wrk on CPU 1 (where the "
                    "scheduler puts a threaded server's threads changes its counts)")
    args = ap.parse_args()
    peers.raise_fd_limit()
    if args.only:
        cfgs = [c for c in peers.configs()
                if any(o.strip() in c[0] for o in args.only.split(","))]
    else:
        cfgs = [c for c in peers.configs()
                if c[0] in ("ours, coroutine view", "ours, plain view inline (blocking=False)",
                            "bjoern")]
    if args.view == "wait":  # the peers serve hello only here
        cfgs = [c for c in cfgs if c[0].startswith("ours")]
    rows = []
    for config in cfgs:
        n, c = measure(config, args.duration, args.conns, args.view, args.pin)
        if not n:
            print("%s: no requests completed" % config[0], file=sys.stderr)
            continue

        def per(*names):
            return sum(c.get(x, 0) for x in names) / n

        epoll_waits = (c.get("syscalls:sys_exit_epoll_wait", 0) +
                       c.get("syscalls:sys_exit_epoll_pwait", 0))
        rows.append((config[0], n, per("syscalls:sys_enter_read", "syscalls:sys_enter_recvfrom"),
                     per("syscalls:sys_enter_write", "syscalls:sys_enter_sendto",
                         "syscalls:sys_enter_writev"),
                     per("syscalls:sys_enter_epoll_wait", "syscalls:sys_enter_epoll_pwait"),
                     per("syscalls:sys_enter_epoll_ctl"),
                     per("sched:sched_wakeup"), per("sched:sched_switch"),
                     per("sched:sched_waking"),
                     n / epoll_waits if epoll_waits else float("nan"),
                     # task-clock is in ms (perf stat -x)
                     c.get("task-clock", 0) * 1000 / n, per("context-switches"),
                     per("cpu-migrations"), per("syscalls:sys_enter_futex")))
    print("wrk -t1 -c%d, %d s, %s%s; per request, in the server process (perf stat -p):"
          % (args.conns, args.duration, args.view,
             ", server on CPU 0 and wrk on CPU 1" if args.pin else ""))
    print()
    print("| server | requests | reads | writes | epoll_wait | epoll_ctl | wakeups it "
          "raises | its context switches | times it is woken | requests per epoll_wait |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print("| %s | %d | %.2f | %.2f | %.3f | %.3f | %.3f | %.3f | %.3f | %.1f |" % r[:10])
    print()
    print("| server | CPU µs (task-clock) | context switches | CPU migrations | futex calls |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print("| %s | %.1f | %.3f | %.3f | %.3f |" % ((r[0],) + r[10:]))


if __name__ == "__main__":
    main()
