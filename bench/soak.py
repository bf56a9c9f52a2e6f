"""Soak: one gunicorn worker with aiopyramid's worker class under a long
mixed load, then a storm of clients that disconnect at random stages.

    .venv/bin/python bench/soak.py [--requests 1000000] [--disconnects 100000]
                                   [--time-limit 600] [--conns 64]

Phase 1 (wrk, runs of 10 s until --requests are answered, bounded by
--time-limit): keep-alive and new connections (one request in 10 asks
`Connection: close`, and each run opens --conns afresh), coroutine and
plain (executor) views, views that wait 1 ms (on the loop, in a thread),
and, one request in 200 each, 1 MiB bodies in (POST, to a coroutine view
and to a plain view) and out (one body, and one streamed from a thread).  The worker's RSS is sampled every
second.  Phase 2 (--disconnects connections, --concurrency at a time,
bounded by --time-limit): each client stops at a random stage (mid-head,
mid-body of a 1 MiB upload, while a coroutine or plain view waits, while a
1 MiB response streams) and closes with a FIN or a reset.

Memory: RSS after the first 10% of phase 1 must not grow by more than
--rss-growth; phase 2's peak is mostly buffers glibc keeps after they are
freed (a malloc_trim gives it back), so there the RSS held after a
malloc_trim must not grow by more than --rss-growth over phase 1's.

After each phase the live counts (HttpRequest, HttpProtocol, HttpInput,
asyncio Tasks, greenlets not idle in the pool) are read from the app's
/_debug, and must be back to their idle values; the worker must still
serve; phase 2 must log at most one line per connection.  Exit status 1 if
any check fails.  Needs wrk and psutil.
"""
import argparse
import asyncio
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

import psutil

from http_bench import free_port, raise_fd_limit  # bench/ is sys.path[0]

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MIB = 1024 * 1024
WORKER = "aiopyramid.gunicorn.worker.AsyncGunicornWorker"

LUA = r"""
local threads = {}
function setup(thread)
  table.insert(threads, thread)
end
function init(args)
  limit = tonumber(args[1])
  answered, bad = 0, 0
  local big = string.rep("u", 1048576)
  local up = {["Content-Type"] = "application/octet-stream"}
  local close = {["Connection"] = "close"}
  local r = {
    co = wrk.format("GET", "/co"), ex = wrk.format("GET", "/ex"),
    co_wait = wrk.format("GET", "/co_wait"), ex_wait = wrk.format("GET", "/ex_wait"),
    co_close = wrk.format("GET", "/co", close), ex_close = wrk.format("GET", "/ex", close),
    co_big = wrk.format("GET", "/co_big"), ex_big = wrk.format("GET", "/ex_big"),
    co_up = wrk.format("POST", "/co_up", up, big), ex_up = wrk.format("POST", "/ex_up", up, big),
  }
  -- of 400 requests: 40 close their connection, 8 carry 1 MiB in or out
  seq = {}
  local plan = {co = 150, ex = 130, co_wait = 36, ex_wait = 36, co_close = 20, ex_close = 20,
                co_big = 2, ex_big = 2, co_up = 2, ex_up = 2}
  for name, n in pairs(plan) do
    for i = 1, n do table.insert(seq, r[name]) end
  end
  math.randomseed(os.time())
  for i = #seq, 2, -1 do
    local j = math.random(i)
    seq[i], seq[j] = seq[j], seq[i]
  end
  i = 0
end
function request()
  i = i + 1
  return seq[(i % #seq) + 1]
end
function response(status, headers, body)
  answered = answered + 1
  if status ~= 200 then bad = bad + 1 end
  if answered >= limit then wrk.thread:stop() end
end
function done(summary, latency, requests)
  local total, nbad = 0, 0
  for _, t in ipairs(threads) do
    total = total + t:get("answered")
    nbad = nbad + t:get("bad")
  end
  io.write(string.format("SOAK responses=%d non200=%d\n", total, nbad))
end
"""


def get(port, path, timeout=10.0):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET %s HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n" % path.encode())
        buf = b""
        while True:
            data = s.recv(65536)
            if not data:
                break
            buf += data
    head, _, body = buf.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def counts(port):
    status, body = get(port, "/_debug")
    assert status == 200, body
    c = json.loads(body)
    c["busy_greenlets"] = c["greenlets"] - c["pool"]["idle"]
    return c


KEYS = ("HttpRequest", "HttpProtocol", "HttpInput", "tasks", "busy_greenlets", "dead_greenlets",
        "gc_garbage")


def held_rss(port, worker):
    """RSS (MiB) once the C allocator has given its free memory back
    (glibc keeps what a peak of buffers needed: RSS alone shows the peak)."""
    get(port, "/_debug?trim=1")
    return worker.memory_info().rss / MIB


def settled(port, idle, timeout=60.0):
    """The counts once they are back to `idle` (or the last ones read)."""
    deadline = time.monotonic() + timeout
    while True:
        c = counts(port)
        if all(c[k] == idle[k] for k in KEYS) or time.monotonic() > deadline:
            return c
        time.sleep(0.5)


class Sampler(threading.Thread):
    """The worker's RSS every second."""

    def __init__(self, proc):
        super().__init__(daemon=True)
        self.proc = proc
        self.samples = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                self.samples.append((time.monotonic(), self.proc.memory_info().rss / MIB))
            except psutil.Error:
                return
            self.stop.wait(1.0)


def start_server(port, log_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, ROOT]))
    cmd = [sys.executable, "-m", "gunicorn", "--bind", "127.0.0.1:%d" % port, "--workers", "1",
           "--worker-class", WORKER, "--no-control-socket", "--worker-connections", "4000",
           "--backlog", "4096", "--keep-alive", "5", "--timeout", "30",
           "--error-logfile", log_path, "soak_app:main()"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=HERE, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if get(port, "/co", timeout=2)[0] == 200:
                break
        except OSError:
            time.sleep(0.1)
    else:
        stop_server(proc)
        raise RuntimeError("server not ready")
    master = psutil.Process(proc.pid)
    kids = master.children()
    assert len(kids) == 1, kids
    return proc, kids[0]


def stop_server(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def phase_load(port, requests, conns, threads, time_limit, lua_path, chunk=10):
    """wrk runs of `chunk` seconds (each thread stops at its share of what
    is left) until `requests` are answered or time_limit is spent."""
    t0 = time.monotonic()
    total = bad = 0
    errors = []
    while total < requests and time.monotonic() - t0 < time_limit:
        left = requests - total
        secs = max(1, min(chunk, int(time_limit - (time.monotonic() - t0))))
        out = subprocess.run(
            ["wrk", "-t%d" % threads, "-c%d" % conns, "-d%ds" % secs, "--timeout", "10s",
             "-s", lua_path, "http://127.0.0.1:%d" % port, "--", str(-(-left // threads))],
            capture_output=True, text=True, timeout=secs + 60).stdout
        line = [ln for ln in out.splitlines() if ln.startswith("SOAK ")]
        if not line:
            raise RuntimeError("wrk said:\n" + out)
        fields = dict(kv.split("=") for kv in line[0].split()[1:])
        total += int(fields["responses"])
        bad += int(fields["non200"])
        errors += [ln.strip() for ln in out.splitlines() if "Socket errors" in ln]
    return total, bad, errors, time.monotonic() - t0


STAGES = ("mid-head", "mid-body", "coroutine-waits", "thread-waits", "response-streams")


async def one_disconnect(port, rng, tally, stages=STAGES):
    stage = rng.choice(stages)
    how = rng.choice(("fin", "reset"))
    tally[stage] = tally.get(stage, 0) + 1
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if stage == "mid-head":
            head = b"GET /co HTTP/1.1\r\nHost: s\r\nX-Pad: " + b"p" * rng.randrange(0, 2000)
            writer.write(head[:rng.randrange(1, len(head))])
        elif stage == "mid-body":
            path = rng.choice((b"/co_up", b"/ex_up"))
            writer.write(b"POST %s HTTP/1.1\r\nHost: s\r\nContent-Length: %d\r\n\r\n" % (path, MIB))
            writer.write(b"u" * rng.randrange(0, 256 * 1024))
        elif stage in ("coroutine-waits", "thread-waits"):
            # (a plain view's thread cannot be stopped: one that a FIN-closed
            # client leaves runs to its end, so it waits less, or the
            # default executor's few threads would queue them for minutes)
            path = b"/co_wait?s=0.05" if stage == "coroutine-waits" else b"/ex_wait?s=0.005"
            writer.write(b"GET %s HTTP/1.1\r\nHost: s\r\n\r\n" % path)
        else:
            path = rng.choice((b"/co_big", b"/ex_big"))
            writer.write(b"GET %s HTTP/1.1\r\nHost: s\r\n\r\n" % path)
        await writer.drain()
        if stage == "response-streams":
            await asyncio.wait_for(reader.read(rng.randrange(1, 65536)), 10)
        elif stage in ("coroutine-waits", "thread-waits"):
            await asyncio.sleep(rng.random() * 0.03)
        else:
            await asyncio.sleep(rng.random() * 0.005)
    finally:
        if how == "reset":
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


async def phase_disconnects(port, total, concurrency, time_limit, seed, stages=STAGES):
    rng = random.Random(seed)
    tally = {}
    failures = []
    deadline = time.monotonic() + time_limit
    started = 0

    async def client():
        nonlocal started
        while started < total and time.monotonic() < deadline:
            started += 1
            try:
                await one_disconnect(port, rng, tally, stages)
            except (OSError, asyncio.TimeoutError) as e:
                failures.append(repr(e))

    t0 = time.monotonic()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return started, tally, failures, time.monotonic() - t0


def log_lines(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace").splitlines()
    except FileNotFoundError:
        return []


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--disconnects", type=int, default=100_000)
    ap.add_argument("--time-limit", type=int, default=600, help="seconds, per phase")
    ap.add_argument("--conns", type=int, default=64, help="wrk connections")
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--concurrency", type=int, default=100, help="phase 2 clients at a time")
    ap.add_argument("--rss-growth", type=float, default=32.0,
                    help="MiB the RSS may grow after the first 10%% of phase 1")
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--stages", default=",".join(STAGES),
                    help="phase 2's stages, of: " + ", ".join(STAGES))
    args = ap.parse_args()
    raise_fd_limit()
    ok = True
    tmp = tempfile.mkdtemp(prefix="aiopyramid-soak-")
    lua = os.path.join(tmp, "soak.lua")
    with open(lua, "w") as f:
        f.write(LUA)
    log = os.path.join(tmp, "error.log")
    port = free_port()
    proc, worker = start_server(port, log)
    try:
        # warm-up: every view once, a few times
        for _ in range(3):
            for path in ("/co", "/ex", "/co_wait", "/ex_wait", "/co_big", "/ex_big"):
                get(port, path)
        idle = counts(port)
        print("idle counts:", {k: idle[k] for k in KEYS}, "pool:", idle["pool"])
        sampler = Sampler(worker)
        sampler.start()
        n, non200, errors, took = phase_load(port, args.requests, args.conns, args.threads,
                                                  args.time_limit, lua)
        sampler.stop.set()
        sampler.join(5)
        rss = [m for _, m in sampler.samples] or [worker.memory_info().rss / MIB]
        after = settled(port, idle)
        warm = rss[max(0, len(rss) // 10)] if rss else float("nan")
        growth = (max(rss[len(rss) // 10:]) - warm) if rss else float("nan")
        print("phase 1: %d responses in %.0f s (%.0f/s), non-200: %d, %s"
              % (n, took, n / took if took else 0, non200, "; ".join(errors) or "no socket errors"))
        print("  RSS MiB: start %.1f, after the first 10%% %.1f, max %.1f, end %.1f "
              "(%d samples); growth after warm-up %.1f MiB (bound %.0f)"
              % (rss[0], warm, max(rss), rss[-1], len(rss), growth, args.rss_growth))
        print("  counts after:", {k: after[k] for k in KEYS}, "pool:", after["pool"])
        if not rss or n < args.requests:
            print("  FAIL: %d of %d requests in the time limit" % (n, args.requests))
            ok = False
        if non200:
            print("  FAIL: non-200 answers")
            ok = False
        if growth > args.rss_growth:
            print("  FAIL: RSS grew")
            ok = False
        if any(after[k] != idle[k] for k in KEYS):
            print("  FAIL: live counts not back to idle")
            ok = False

        held1 = held_rss(port, worker)
        print("  RSS MiB after malloc_trim: %.1f" % held1)
        lines_before = len(log_lines(log))
        sampler = Sampler(worker)
        sampler.start()
        started, tally, failures, took = asyncio.run(phase_disconnects(
            port, args.disconnects, args.concurrency, args.time_limit, args.seed,
            tuple(args.stages.split(","))))
        sampler.stop.set()
        sampler.join(5)
        rss2 = [m for _, m in sampler.samples]
        after2 = settled(port, idle)
        new_lines = log_lines(log)[lines_before:]
        serving = get(port, "/co") == (200, b"co")
        print("phase 2: %d connections in %.0f s, each gone at a random stage %s; "
              "client-side errors %d" % (started, took, tally, len(failures)))
        warm2 = rss2[len(rss2) // 10]
        growth2 = max(rss2[len(rss2) // 10:]) - warm2
        print("  RSS MiB: start %.1f, after the first 10%% %.1f, max %.1f, end %.1f (%d samples); "
              "growth after warm-up %.1f MiB (bound %.0f); log lines %d; still serving: %s"
              % (rss2[0], warm2, max(rss2), rss2[-1], len(rss2), growth2, args.rss_growth,
                 len(new_lines), serving))
        print("  counts after:", {k: after2[k] for k in KEYS}, "pool:", after2["pool"])
        for ln in new_lines[:5]:
            print("  log:", ln)
        if started < args.disconnects:
            print("  FAIL: %d of %d connections in the time limit" % (started, args.disconnects))
            ok = False
        if len(new_lines) > started or not serving:
            print("  FAIL: log lines or not serving")
            ok = False
        if any(after2[k] != idle[k] for k in KEYS):
            print("  FAIL: live counts not back to idle")
            ok = False
        held2 = held_rss(port, worker)
        print("  RSS MiB after malloc_trim: %.1f (%+.1f over phase 1's)" % (held2, held2 - held1))
        if held2 - held1 > args.rss_growth:
            print("  FAIL: RSS grew in phase 2")
            ok = False
    finally:
        stop_server(proc)
    print("soak:", "ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
