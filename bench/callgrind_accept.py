"""What one accepted connection costs the gunicorn worker: instructions
(callgrind) or CPU time and system calls (perf stat), per connection.

    .venv/bin/python bench/callgrind_accept.py [-n 2000] [--wave 100]
    .venv/bin/python bench/callgrind_accept.py --perf [-n 20000]

One gunicorn worker of ours (bench/peers_app.py's aio(), uvloop unless
AIOPYRAMID_LOOP says otherwise) serves /hello.  A client in another
process (not measured) runs two phases against it, in waves of --wave
clients at once (a burst, as wrk's 1,000 connections arrive):

  connections  n connections, each opened, one GET /hello, the answer
               read, closed by the client;
  requests     n GET /hello over --wave kept-alive connections (opened
               before the phase starts).

Only the worker is measured, and only during each phase: under callgrind
(valgrind cannot be controlled in a forked child, so the worker runs as
gunicorn's arbiter would run it after the fork, in a process of its own
under `valgrind --tool=callgrind`: --serve), `callgrind_control` zeroes
its counters before a phase and dumps them after; with --perf, `perf stat -p` counts
task-clock and system calls in the worker (load changes the time, not the
counts).  Per connection = connections / n; its accept path = that minus
the per-request figure (the one request each connection made).
Instruction counts do not change with the machine's load.
"""
import argparse
import glob
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

from http_bench import perf_counts, perf_stat  # bench/ is sys.path[0]

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
AIO_WORKER = "aiopyramid.gunicorn.worker.AsyncGunicornWorker"
REQUEST = b"GET /hello HTTP/1.1\r\nHost: bench\r\n\r\n"
BODY = b"Hello, world!"
PERF_EVENTS = [
    "task-clock", "syscalls:sys_enter_accept4", "syscalls:sys_enter_accept",
    "syscalls:sys_enter_epoll_ctl", "syscalls:sys_enter_epoll_wait",
    "syscalls:sys_enter_epoll_pwait", "syscalls:sys_enter_close",
    "syscalls:sys_enter_setsockopt", "syscalls:sys_enter_getsockopt",
    "syscalls:sys_enter_getsockname", "syscalls:sys_enter_getpeername",
    "syscalls:sys_enter_fcntl", "syscalls:sys_enter_ioctl",
    "syscalls:sys_enter_read", "syscalls:sys_enter_recvfrom",
    "syscalls:sys_enter_write", "syscalls:sys_enter_writev",
    "syscalls:sys_enter_sendto", "syscalls:sys_enter_shutdown",
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_answer(s):
    got = b""
    while not got.endswith(BODY):
        data = s.recv(65536)
        if not data:
            raise SystemExit("the server closed a connection: %r" % got[:200])
        got += data
    if not got.startswith(b"HTTP/1.1 200 "):
        raise SystemExit("unexpected answer: %r" % got[:200])


def connections(port, n, wave):
    """n connections, --wave at a time: open, one request, read, close."""
    done = 0
    while done < n:
        k = min(wave, n - done)
        socks = [socket.create_connection(("127.0.0.1", port), timeout=60)
                 for _ in range(k)]
        for s in socks:
            s.sendall(REQUEST)
        for s in socks:
            read_answer(s)
            s.close()
        done += k


def requests(socks, n):
    done = 0
    while done < n:
        k = min(len(socks), n - done)
        for s in socks[:k]:
            s.sendall(REQUEST)
        for s in socks[:k]:
            read_answer(s)
        done += k


def wait_ready(port, proc, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the server exited with %s" % proc.returncode)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                s.sendall(REQUEST)
                read_answer(s)
                return
        except (OSError, SystemExit):
            time.sleep(0.5)
    raise SystemExit("the server did not answer within %d s" % timeout)


def worker_of(pid):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)],
                         capture_output=True, text=True).stdout.split()
    if len(out) != 1:
        raise SystemExit("expected one worker under %d, found %r" % (pid, out))
    return int(out[0])


GUNICORN_ARGS = ["--workers", "1", "--no-control-socket", "--worker-connections", "4000",
                 "--backlog", "4096", "--keep-alive", "60", "--timeout", "600",
                 "--log-level", "warning", "-k", AIO_WORKER, "bench.peers_app:aio()"]


def serve(port):
    """The worker, as gunicorn's arbiter runs it after forking, in this
    process (no arbiter: its heartbeat file is not watched)."""
    from gunicorn import sock
    from gunicorn.app.wsgiapp import WSGIApplication

    sys.argv = ["gunicorn", "--bind", "127.0.0.1:%d" % port, *GUNICORN_ARGS]
    app = WSGIApplication()
    log = app.cfg.logger_class(app.cfg)
    listeners = sock.create_sockets(app.cfg, log)
    worker = app.cfg.worker_class(1, os.getppid(), listeners, app,
                                  app.cfg.timeout / 2.0, app.cfg, log)
    worker.pid = os.getpid()
    worker.init_process()


def start(port, prefix, env):
    python = os.path.join(ROOT, ".venv", "bin", "python")
    if prefix:
        cmd = [python, os.path.abspath(__file__), "--serve", str(port)]
    else:
        cmd = [python, "-m", "gunicorn", "--bind", "127.0.0.1:%d" % port, *GUNICORN_ARGS]
    full_env = dict(os.environ, PYTHONPATH=ROOT, PYTHONHASHSEED="0", **env)
    full_env.setdefault("AIOPYRAMID_LOOP", "uvloop")
    return subprocess.Popen(prefix + cmd, env=full_env, cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=None)


def stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def phases(port, n, wave, measure):
    """measure(name, run) around each phase; the kept-alive clients of the
    requests phase are opened (and answered once) before it."""
    connections(port, wave, wave)  # warm-up: the paths run once
    socks = [socket.create_connection(("127.0.0.1", port), timeout=60)
             for _ in range(wave)]
    try:
        requests(socks, wave)
        measure("requests", lambda: requests(socks, n))
    finally:
        for s in socks:
            s.close()
    time.sleep(0.5)  # their closing done before the next phase
    measure("connections", lambda: connections(port, n, wave))


def callgrind(n, wave):
    port = free_port()
    out_dir = tempfile.mkdtemp(prefix="callgrind-accept-")
    proc = start(port, ["valgrind", "--tool=callgrind", "-q",
                        "--callgrind-out-file=%s/cg.%%p" % out_dir], {})
    results = {}
    try:
        wait_ready(port, proc, 600)
        worker = proc.pid

        def control(*args):
            subprocess.run(["callgrind_control", *args, str(worker)], check=True,
                           capture_output=True, timeout=120)

        def measure(name, run):
            control("-z")
            run()
            before = set(glob.glob("%s/cg.%d*" % (out_dir, worker)))
            control("--dump=" + name)
            deadline = time.monotonic() + 120
            while True:  # the worker writes it when it next runs
                new = set(glob.glob("%s/cg.%d*" % (out_dir, worker))) - before
                if new or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            (dump,) = new
            time.sleep(1)  # written whole
            with open(dump) as f:
                m = re.search(r"^(?:summary|totals): (\d+)", f.read(), re.M)
            results[name] = int(m.group(1))

        phases(port, n, wave, measure)
    finally:
        stop(proc)
    req, conn = results["requests"] / n, results["connections"] / n
    print("worker instructions (callgrind), %s loop, n=%d, waves of %d:" % (
        os.environ.get("AIOPYRAMID_LOOP", "uvloop"), n, wave))
    print("  per request on a kept-alive connection: %9.0f" % req)
    print("  per connection (open, 1 request, close): %8.0f" % conn)
    print("  the connection's own part (difference):  %8.0f" % (conn - req))


def perf(n, wave):
    port = free_port()
    proc = start(port, [], {})
    results = {}
    try:
        wait_ready(port, proc, 60)
        worker = worker_of(proc.pid)

        def measure(name, run):
            p = perf_stat(worker, PERF_EVENTS)
            time.sleep(0.3)
            run()
            time.sleep(0.2)
            results[name] = perf_counts(p)

        phases(port, n, wave, measure)
    finally:
        stop(proc)
    print("worker, perf stat -p, %s loop, n=%d, waves of %d (per connection | per request):"
          % (os.environ.get("AIOPYRAMID_LOOP", "uvloop"), n, wave))
    for ev in PERF_EVENTS:
        c = results["connections"].get(ev, 0) / n
        r = results["requests"].get(ev, 0) / n
        if ev == "task-clock":  # ms
            print("  %-34s %8.1f µs | %8.1f µs" % (ev, c * 1000, r * 1000))
        elif c or r:
            print("  %-34s %8.3f | %8.3f" % (ev.split(":")[-1], c, r))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=None,
                    help="connections (and requests); 2000 under callgrind, 20000 with --perf")
    ap.add_argument("--wave", type=int, default=100, help="clients at once")
    ap.add_argument("--perf", action="store_true", help="perf stat instead of callgrind")
    ap.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args.serve)
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    if args.perf:
        perf(args.n or 20000, args.wave)
    else:
        callgrind(args.n or 2000, args.wave)


if __name__ == "__main__":
    main()
