"""HTTP benchmark: wrk against one gunicorn worker serving Pyramid's
hello-world.

    .venv/bin/python bench/http_bench.py [--duration 5] [--rounds 3] [--conns 50,1000]

Needs wrk (Debian: ``apt-get install wrk``) and, for the gevent worker,
gevent (``pip install gevent``); configurations whose worker is missing are
left out.  It installs nothing itself.

Benchmarks are hard.  What this does, so you can judge it:
* every server is one gunicorn worker on 127.0.0.1, started fresh for each
  run, warmed up for 1 s, then measured by one wrk thread for --duration
  seconds; the machine's other core runs wrk;
* configurations are interleaved, round after round, and each figure is
  the median of the rounds;
* ours: aiopyramid's worker, the coroutine view and the legacy view (which
  runs in the executor, a thread), on uvloop and on asyncio's loop;
  theirs: gunicorn's sync, gthread (4 threads) and gevent workers serving
  the same app without aiopyramid (a plain view); and our app under
  uWSGI's asyncio loop (one worker, --asyncio 1000 --greenlet, as the
  original guide's ini; needs a uwsgi with both plugins: make uwsgi);
* p99 is wrk's latency percentile (wrk measures from request sent, with
  coordinated omission: treat high-percentile figures as indicative);
* Pyramid's own cost per request is measured in-process: the WSGI app
  called directly with a prebuilt environ (copied per call) and no server.

    .venv/bin/python bench/http_bench.py --inflight 10000

instead holds N requests in flight on one worker (each awaits a 1 s
asyncio.sleep), checks that every one is answered, and reports the time
taken and the worker's memory per request in flight (needs psutil and an
open file limit above N).
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

import argparse  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

ROOT = os.path.dirname(HERE)
AIO_WORKER = "aiopyramid.gunicorn.worker.AsyncGunicornWorker"

CONFIGS = [
    # name, worker args, app, path, env
    ("aiopyramid coroutine, uvloop", ["-k", AIO_WORKER], "bench.hello_app:aio()", "/hello",
     {"AIOPYRAMID_LOOP": "uvloop"}),
    ("aiopyramid coroutine, asyncio", ["-k", AIO_WORKER], "bench.hello_app:aio()", "/hello",
     {"AIOPYRAMID_LOOP": "asyncio"}),
    ("aiopyramid legacy, uvloop", ["-k", AIO_WORKER], "bench.hello_app:aio()", "/hello-legacy",
     {"AIOPYRAMID_LOOP": "uvloop"}),
    ("aiopyramid legacy, asyncio", ["-k", AIO_WORKER], "bench.hello_app:aio()", "/hello-legacy",
     {"AIOPYRAMID_LOOP": "asyncio"}),
    ("gunicorn sync", ["-k", "sync"], "bench.hello_app:plain()", "/hello", {}),
    ("gunicorn gthread (4 threads)", ["-k", "gthread", "--threads", "4"], "bench.hello_app:plain()",
     "/hello", {}),
    ("gunicorn gevent", ["-k", "gevent"], "bench.hello_app:plain()", "/hello", {}),
    # the same app under uWSGI's asyncio loop (greenlet per request), as the
    # original guide's ini runs it; needs a uwsgi with both plugins (make uwsgi)
    ("aiopyramid coroutine, uWSGI asyncio", ["uwsgi"], "bench.uwsgi_hello:application", "/hello", {}),
    ("aiopyramid legacy, uWSGI asyncio", ["uwsgi"], "bench.uwsgi_hello:application", "/hello-legacy",
     {}),
]

UWSGI = os.path.join(os.path.dirname(sys.executable), "uwsgi")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_fd_limit(n=65536):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n if hard == resource.RLIM_INFINITY else min(n, hard)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def wait_ready(port, path, proc, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited with %s" % proc.returncode)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(b"GET %s HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"
                          % path.encode())
                if s.recv(100).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("server not ready")


def uwsgi_command(app, port, cores=1000):
    module, _, callable_ = app.partition(":")
    return [UWSGI, "--http-socket", "127.0.0.1:%d" % port, "--workers", "1",
            "--asyncio", str(cores), "--greenlet", "--listen", "4096",
            "--module", module, "--callable", callable_, "--disable-logging",
            "--die-on-term"]


def start(config, port):
    name, args, app, path, env = config
    full_env = dict(os.environ, PYTHONPATH=ROOT, **env)
    if args == ["uwsgi"]:
        cmd = uwsgi_command(app, port)
    else:
        cmd = [sys.executable, "-m", "gunicorn", "--bind", "127.0.0.1:%d" % port,
               "--workers", "1", "--no-control-socket", "--worker-connections", "4000",
               "--backlog", "4096", "--keep-alive", "30", "--log-level", "warning",
               *args, app]
    proc = subprocess.Popen(cmd, env=full_env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_ready(port, path, proc)
    except Exception:
        stop(proc)
        raise
    return proc


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT if UWSGI in proc.args else signal.SIGQUIT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def cpu_times():
    """(steal, total) jiffies of every CPU so far, from /proc/stat; None
    where there is none (not Linux)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal (guest time is in user)
    return fields[7], sum(fields[:8])


def steal_percent(before, after):
    """The share of CPU time the hypervisor took between two cpu_times(): on
    a VM whose host is busy, rates fall by that much or more, for every
    server alike but not in the same rounds; None when unknown."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return 100.0 * (after[0] - before[0]) / (after[1] - before[1])


def fmt_steal(steal):
    return "-" if steal is None else "%.0f%%" % steal


def pinned_cpus(no_pin=False):
    """(server CPU, wrk CPU): the first two this process may use, or (None,
    None) with --no-pin or fewer than two CPUs (see bench/peers.py)."""
    cpus = sorted(os.sched_getaffinity(0))
    return (None, None) if no_pin or len(cpus) < 2 else tuple(cpus[:2])


def taskset(cpu):
    """The command prefix that runs a command on CPU `cpu` (and its
    children and threads, which inherit it); none for None."""
    return [] if cpu is None else ["taskset", "-c", str(cpu)]


def wrk(url, conns, duration, cpu=None):
    """wrk -t1's figures; on CPU `cpu` when given."""
    out = subprocess.run(
        taskset(cpu) + ["wrk", "-t1", "-c%d" % conns, "-d%ds" % duration, "--latency",
                        "--timeout", "10s", url],
        capture_output=True, text=True, timeout=duration + 60).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    rps = float(m.group(1)) if m else 0.0

    def pct(p):
        m = re.search(r"^\s+%s%%\s+([\d.]+)(us|ms|s)\s*$" % p, out, re.M)
        if not m or rps == 0:
            return float("nan")  # no answer at all: no latency to show
        return float(m.group(1)) * UNITS[m.group(2)]

    errors = re.search(r"Socket errors: (.*)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50": pct(50), "p99": pct(99),
            "errors": errors.group(1) if errors else "",
            "non2xx": int(non2xx.group(1)) if non2xx else 0}


def perf_stat(pid, events, *extra):
    """`perf stat` counting `events` in process `pid` (extra: more of perf's
    arguments, e.g. a --filter); stop it with perf_counts()."""
    target = list(extra) if extra else ["-p", str(pid)]
    return subprocess.Popen(["perf", "stat", "-x", ",", "-e", ",".join(events)] + target,
                            stderr=subprocess.PIPE, text=True)


def perf_counts(*procs):
    """Stop perf_stat() processes; their counts by event name, summed."""
    for p in procs:
        p.send_signal(signal.SIGINT)
    counts = {}
    for p in procs:
        _, err = p.communicate(timeout=30)
        for line in err.splitlines():  # CSV: value,unit,event,...
            parts = line.split(",")
            if len(parts) > 2:
                try:
                    counts[parts[2]] = counts.get(parts[2], 0) + float(parts[0])
                except ValueError:  # <not counted>, <not supported>
                    pass
    return counts


def available(config):
    if config[1] == ["uwsgi"]:
        return os.path.exists(UWSGI)
    if "gevent" in config[1]:
        try:
            import gevent  # noqa: F401
        except ImportError:
            return False
    return True


def inprocess_cost(n=20000):
    """µs per request of the app called directly, no server."""
    sys.path.insert(0, ROOT)
    import asyncio
    import io

    from bench import hello_app
    from aiopyramid import _core

    base = {
        "REQUEST_METHOD": "GET", "PATH_INFO": "/hello", "SCRIPT_NAME": "", "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1", "wsgi.version": (1, 0), "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""), "wsgi.errors": sys.stderr, "wsgi.multithread": False,
        "wsgi.multiprocess": False, "wsgi.run_once": False,
    }

    def start_response(status, headers, exc_info=None):
        return None

    def call(app, path):
        env = dict(base, PATH_INFO=path)
        result = app(env, start_response)
        b"".join(result)
        getattr(result, "close", lambda: None)()

    out = {}
    plain = hello_app.plain()
    copy_cost = min(timeit_loop(lambda: dict(base, PATH_INFO="/hello"), n) for _ in range(3))
    out["Pyramid, plain view (no aiopyramid)"] = min(
        timeit_loop(lambda: call(plain, "/hello"), n) for _ in range(3)) - copy_cost

    aio = hello_app.aio()

    async def in_greenlets():
        # each call in a pooled request greenlet, as the server runs it
        t0 = time.perf_counter()
        for _ in range(n):
            await _core.spawn_greenlet(call, aio, "/hello")
        return (time.perf_counter() - t0) / n * 1e6

    out["Pyramid + aiopyramid, coroutine view, in a request greenlet"] = min(
        asyncio.run(in_greenlets()) for _ in range(3)) - copy_cost
    return out


def timeit_loop(fn, n):
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def inflight(n):
    """n requests in flight at once, each sleeping 1 s in a coroutine view."""
    import asyncio

    import psutil

    raise_fd_limit(n + 1024)
    port = free_port()
    config = ("aiopyramid coroutine, uvloop", ["-k", AIO_WORKER, "--timeout", "120",
              "--worker-connections", str(n + 100)], "tests.http_e2e_app:main()", "/hello",
              {"AIOPYRAMID_LOOP": "uvloop"})
    proc = start(config, port)
    try:
        worker = psutil.Process(proc.pid).children()[0]
        rss0 = worker.memory_info().rss

        async def one(i):
            for _ in range(5):
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    break
                except OSError:
                    await asyncio.sleep(0.5)
            else:
                raise ConnectionError("could not connect")
            try:
                writer.write(b"GET /sleep?s=1&tag=%d HTTP/1.1\r\nHost: b\r\n"
                             b"Connection: close\r\n\r\n" % i)
                data = await asyncio.wait_for(reader.read(), 120)
                return data.endswith(b"\r\n\r\n%d" % i)
            finally:
                writer.close()

        async def run():
            peak = [rss0]

            async def sample():
                while True:
                    peak[0] = max(peak[0], worker.memory_info().rss)
                    await asyncio.sleep(0.1)

            sampler = asyncio.ensure_future(sample())
            t0 = time.monotonic()
            results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
            took = time.monotonic() - t0
            sampler.cancel()
            return results, took, peak[0]

        results, took, peak = asyncio.run(run())
        ok = sum(1 for r in results if r is True)
        print("%d requests in flight on one worker, each awaiting asyncio.sleep(1): "
              "%d answered correctly, %d failed, in %.1f s; worker RSS %.0f MB -> %.0f MB "
              "peak, %.1f KB per request in flight" % (
                  n, ok, n - ok, took, rss0 / 1e6, peak / 1e6, (peak - rss0) / n / 1e3))
    finally:
        stop(proc)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--inflight", type=int, metavar="N",
                    help="hold N sleeping requests in flight instead of running wrk")
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", default="50,1000")
    ap.add_argument("--only", help="substring of the configurations to run")
    args = ap.parse_args()
    if args.inflight:
        return inflight(args.inflight)
    if shutil.which("wrk") is None:
        sys.exit("bench/http_bench.py needs wrk: apt-get install wrk (Debian/Ubuntu)")
    raise_fd_limit()
    conns = [int(c) for c in args.conns.split(",")]
    configs = [c for c in CONFIGS if available(c) and (not args.only or args.only in c[0])]
    missing = [c[0] for c in CONFIGS if not available(c)]
    if missing:
        print("left out (worker not installed): %s" % ", ".join(missing), file=sys.stderr)
    results = {}  # (name, conns) -> list of (rps, p99)
    for rnd in range(args.rounds):
        for config in configs:
            port = free_port()
            proc = start(config, port)
            try:
                url = "http://127.0.0.1:%d%s" % (port, config[3])
                wrk(url, 10, 1)  # warm-up
                for c in conns:
                    r = wrk(url, c, args.duration)
                    results.setdefault((config[0], c), []).append((r["rps"], r["p99"]))
                    print("round %d %-32s c=%-5d %10.0f req/s  p99 %8.2f ms %s%s" % (
                        rnd + 1, config[0], c, r["rps"], r["p99"], r["errors"],
                        " non-2xx: %d" % r["non2xx"] if r["non2xx"] else ""),
                        file=sys.stderr, flush=True)
            finally:
                stop(proc)

    med = {k: (statistics.median(r for r, _ in v), statistics.median(p for _, p in v))
           for k, v in results.items()}
    print()
    print("One gunicorn worker, Pyramid hello-world, wrk -t1, %d s x %d interleaved rounds "
          "(medians); Python %s." % (args.duration, args.rounds, sys.version.split()[0]))
    print()
    ref = {c: med.get(("gunicorn gevent", c)) for c in conns}
    sync = {c: med.get(("gunicorn sync", c)) for c in conns}
    print("| server | conns | req/s | p99 (ms) | req/s vs gevent | req/s vs sync | p99 vs gevent |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for config in configs:
        for c in conns:
            rps, p99 = med[(config[0], c)]
            g, s = ref.get(c), sync.get(c)
            print("| %s | %d | %.0f | %.2f | %s | %s | %s |" % (
                config[0], c, rps, p99,
                "%.2fx" % (rps / g[0]) if g else "-",
                "%.2fx" % (rps / s[0]) if s else "-",
                "%.2fx" % (p99 / g[1]) if g and g[1] else "-"))
    print()
    costs = inprocess_cost()
    print("| in-process, no server | µs per request |")
    print("| --- | ---: |")
    for k, v in costs.items():
        print("| %s | %.1f |" % (k, v))
    print()
    name = "aiopyramid coroutine, uvloop"
    if (name, conns[0]) in med:
        per_req = 1e6 / med[(name, conns[0])][0]
        pyr = costs["Pyramid + aiopyramid, coroutine view, in a request greenlet"]
        print("Server's share (%s, %d conns): %.1f µs per request in all, of which "
              "Pyramid+aiopyramid in-process %.1f µs, the server and loop %.1f µs." % (
                  name, conns[0], per_req, pyr, per_req - pyr))


if __name__ == "__main__":
    main()
