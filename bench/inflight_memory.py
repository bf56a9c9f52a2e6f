"""Memory per in-flight request: N requests held at once on one worker,
each awaiting a 1 s sleep; the worker's RSS growth divided by N.

    .venv/bin/python bench/inflight_memory.py [-n 10000] [--view coroutine|inline]
        [--loop uvloop|asyncio] [--sleep 1]

What it does, so you can judge it:
* one gunicorn worker with aiopyramid's worker class (--worker-connections
  above N), serving bench/inflight_app.py: /sleep awaits asyncio.sleep(1)
  in a coroutine view, /inline-sleep calls a synchronized asyncio.sleep(1)
  from a plain view with blocking=False;
* the worker is warmed up first (N/10 requests, in flight together, so its
  pools, free lists and allocator arenas exist), then its RSS is read (the
  baseline);
* N clients connect (at most 500 connecting at a time), each sends one
  request and waits for its answer; every 100 ms the app is asked how many
  requests are in flight (it counts them) and the worker's RSS is read;
* it prints (RSS - baseline) / M at the sample with the most requests in
  flight, M (all N unless the machine connects more slowly than the
  sleep: then give a longer --sleep): what one connection with one request in
  flight costs (protocol, read buffer, environ, request, Task, request
  greenlet and its saved stack, Pyramid's request), and checks that every
  request was answered with its own tag (exit 1 otherwise).
Needs psutil (the test extra) and an open-file limit above N (raised when
the hard limit allows).
"""
import argparse
import asyncio
import os
import resource
import signal
import socket
import subprocess
import sys
import time

from http_bench import free_port  # bench/ is sys.path[0]

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORKER = "aiopyramid.gunicorn.worker.AsyncGunicornWorker"


def start(port, n, loop):
    env = dict(os.environ, PYTHONPATH=ROOT, AIOPYRAMID_LOOP=loop,
               PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "gunicorn", "--bind", "127.0.0.1:%d" % port,
           "--workers", "1", "--no-control-socket", "--worker-class", WORKER,
           "--worker-connections", str(n + 100), "--backlog", "4096",
           "--timeout", "120", "--log-level", "warning", "bench.inflight_app:main()"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the server exited with %s" % proc.returncode)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(b"GET /hello HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
                if s.recv(100).startswith(b"HTTP/1.1 200"):
                    return proc
        except OSError:
            pass
        time.sleep(0.1)
    stop(proc)
    raise SystemExit("the server did not answer")


def stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def in_flight(port):
    """(requests in flight now, most at once since last asked)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /stats HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    now, most = data.rsplit(b"\r\n\r\n", 1)[1].split()
    return int(now), int(most)


async def hold(port, n, path, sleep_s, sample=None):
    """n requests in flight at once; how many were answered right."""
    gate = asyncio.Semaphore(500)  # connecting at a time

    async def one(i):
        async with gate:
            for _ in range(10):
                try:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection("127.0.0.1", port), 10)
                    break
                except (OSError, asyncio.TimeoutError):
                    await asyncio.sleep(0.2)
            else:
                return False
            writer.write(b"GET %s?tag=%d&s=%s HTTP/1.1\r\nHost: b\r\n"
                         b"Connection: close\r\n\r\n" % (path.encode(), i, sleep_s))
        try:
            data = await asyncio.wait_for(reader.read(), float(sleep_s) + 120)
            return data.startswith(b"HTTP/1.1 200") and data.endswith(b"\r\n\r\n%d" % i)
        except (OSError, asyncio.TimeoutError):
            return False
        finally:
            writer.close()

    sampler = asyncio.ensure_future(sample()) if sample else None
    try:
        results = await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        if sampler:
            sampler.cancel()
    return sum(results)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=10000)
    ap.add_argument("--view", choices=["coroutine", "inline"], default="coroutine")
    ap.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    ap.add_argument("--sleep", default="1", help="seconds each request awaits (1)")
    args = ap.parse_args()
    sleep_s = args.sleep.encode()
    import psutil

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.n + 1024
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    path = "/sleep" if args.view == "coroutine" else "/inline-sleep"
    port = free_port()
    proc = start(port, args.n, args.loop)
    try:
        worker = psutil.Process(proc.pid).children()[0]
        warm = asyncio.run(hold(port, max(1, args.n // 10), path, b"0.5"))
        time.sleep(0.5)
        base = worker.memory_info().rss
        best = [0, base]  # most in flight seen, RSS then

        async def sample():
            loop = asyncio.get_running_loop()
            while True:
                now, _ = await loop.run_in_executor(None, in_flight, port)
                rss = worker.memory_info().rss
                if now >= best[0]:
                    best[:] = [now, rss]
                await asyncio.sleep(0.1)

        t0 = time.monotonic()
        ok = asyncio.run(hold(port, args.n, path, sleep_s, sample))
        took = time.monotonic() - t0
    finally:
        stop(proc)
    most, rss = best
    per = (rss - base) / max(1, most)
    print("%d requests (%s view, %s), each awaiting asyncio.sleep(%s): %d answered "
          "right (warm-up %d), in %.1f s; worker RSS %.1f MiB, %.1f MiB with %d in "
          "flight at once: %.1f KiB per request in flight" % (
              args.n, args.view, args.loop, args.sleep, ok, warm, took,
              base / 2**20, rss / 2**20, most, per / 1024))
    if most < args.n:
        print("(not all were in flight at once: the machine connects slowly; "
              "give a longer --sleep)")
    if ok != args.n:
        sys.exit(1)


if __name__ == "__main__":
    main()
