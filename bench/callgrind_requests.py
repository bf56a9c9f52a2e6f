"""A fixed number of requests through HttpProtocol, for instruction counts.

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python bench/callgrind_requests.py --view hello -n 1200

Run it twice (two values of -n) and divide the difference in instructions
("Collected" in valgrind's summary) by the difference in requests: that is
the cost of one request, with start-up and imports taken out.  Instruction
counts do not change with the machine's load, wall-clock figures do.

Each request goes over a real socket pair to aiopyramid's HttpServer on a
real loop (asyncio's or uvloop), into bench/hello_app's Pyramid app; the
client reads the whole response before it sends the next request.

  --view hello     the coroutine view answering at once (never suspends)
  --view sleep0    the same after one `await asyncio.sleep(0)` (suspends once)
  --view inline    a plain view with blocking=False, in the request greenlet
  --view executor  a plain view through the executor (the default for
                   plain views): a thread and back per request

    bench/callgrind_requests.py --per-request --view inline --loop uvloop

runs valgrind itself, twice (-n N and 2N), and prints the instructions per
request.

The blocked-loop watchdog's cost (README, "The blocked-loop watchdog"):

  --slow-callback-ms N   with the watchdog on (the setting
                 aiopyramid.slow_callback_ms): its cost is the difference.
                 Its heartbeat and thread cost per second, not per request,
                 and valgrind runs the requests ~50x slower than they run:
                 measure the per-request part with a limit too long to wake
                 during the run (--slow-callback-ms 10000000), and the
                 per-second part apart (--idle)
  --pending-timer  keep a timer pending on the loop, as the gunicorn
                 worker's loop always has one (its 1 s wait for a wake-up):
                 with a timer pending, each loop iteration checks it, which
                 a loop with none skips; compare the watchdog (whose
                 heartbeat is a timer) against this
  --idle S       after the requests, S seconds with the loop idle: with -n 1,
                 (instructions with --idle 5 - with --idle 0) / 5 is the
                 watchdog's cost per second, then divide by a request rate

    bench/callgrind_requests.py --per-request -n 400 --pending-timer \\
        --slow-callback-ms 10000000

The server alone, against bjoern's (the issue's fastest WSGI peer):

  --server-only  only the server runs under valgrind, in a process of its
                 own serving 127.0.0.1 as the gunicorn worker's loop does
                 (uvloop or asyncio, the worker's executor and GC tuning);
                 the client is this process, not counted
  --view plain   ours serving stock Pyramid (no config.include: the plain
                 view runs inline), the "plain app" of bench/peers.py
  --view bjoern  bjoern (build/bench-peers, bench/peers.py installs it)
                 serving that same plain app; implies --server-only
  --vs-bjoern    with --per-request: bjoern's figure and the ratio too
  --cache-sim    valgrind's simulated cache misses per request too (first
                 and last level; a model of a cache, not this CPU's: this
                 VM gives perf no hardware counters)
  --cache-ll SIZE,ASSOC,LINE  with --cache-sim: the last level valgrind
                 simulates (its --LL); by default the host's last level
                 (32 MiB of L3 here, where nothing of a request misses):
                 1048576,8,64 models this CPU's 1 MiB L2 instead, where a
                 working set that outgrows L2 shows
  --conns C      the client keeps C connections busy at once (each sends
                 its next request once its response is in), so a loop
                 iteration serves several requests, as under wrk -c 50;
                 what a server does once per iteration (ours: its
                 batched write flush; both: the poll) is then shared;
                 with -n below C, n connections only (and the accepts
                 counted in the figure): give -n of C or more

    bench/callgrind_requests.py --per-request -n 400 --server-only \\
        --view inline --loop uvloop --vs-bjoern

Every app here has the one route it is measured on (bench/hello_app.py's
plain() for plain and bjoern), so route matching costs the same in all.
--callgrind-out DIR keeps each run's callgrind.out.<view>.<loop>.c<conns>.<n>
for callgrind_annotate (--inclusive=yes: which function costs what, its
callees included); --by-object prints each ELF object's own instructions
per request (libpython: the interpreter and the Python code it runs,
Pyramid's included; _core; uvloop's loop.so with libuv; greenlet; bjoern;
libev; libc).  valgrind counts user space only: what the kernel does per
request is bench/kernel_path.py's.
"""
import argparse
import asyncio
import os
import re
import socket
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]
sys.path.insert(0, os.path.dirname(HERE))

from pyramid.config import Configurator  # noqa: E402
from pyramid.response import Response  # noqa: E402

from aiopyramid import _core  # noqa: E402
from aiopyramid.server import HttpServer  # noqa: E402
from bench.hello_app import BODY, hello, hello_legacy  # noqa: E402


async def sleep0(request):
    await asyncio.sleep(0)
    return Response(BODY, content_type="text/plain")


# the wait views' sleep (--wait-ms): bench/peers_app's 50 ms by default
WAIT = 0.05


async def wait(request):
    # bench/peers_app's coroutine wait view
    await asyncio.sleep(WAIT)
    return Response(BODY, content_type="text/plain")


def inlinewait(request):
    # bench/peers_app's inline wait view: a plain view with blocking=False
    # calling a synchronized asyncio.sleep
    _sync_sleep(WAIT)
    return Response(BODY, content_type="text/plain")


def _sync_sleep(delay):
    from aiopyramid.helpers import synchronize

    global _sync_sleep
    _sync_sleep = synchronize(asyncio.sleep)
    return _sync_sleep(delay)


def app(view, settings=None):
    """Only the measured view's route, so every view costs the same route
    matching."""
    views = {"hello": (hello, {}), "sleep0": (sleep0, {}),
             "inline": (hello_legacy, {"blocking": False}),
             "executor": (hello_legacy, {}),
             "wait": (wait, {}),
             "inlinewait": (inlinewait, {"blocking": False})}
    func, options = views[view]
    with Configurator(settings=settings) as config:
        config.include("aiopyramid")
        config.add_route(view, "/" + view)
        config.add_view(func, route_name=view, **options)
        return config.make_wsgi_app()


async def main(path, n, settings=None, idle=0.0, pending_timer=False):
    loop = asyncio.get_running_loop()
    if pending_timer:
        timer = loop.call_later(3600, lambda: None)
    srv = HttpServer(app(path, settings), loop,
                     base_environ={"wsgi.version": (1, 0)})
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    transport, proto = await loop.connect_accepted_socket(srv, ours)
    req = b"GET /%s HTTP/1.1\r\nHost: bench\r\n\r\n" % path.encode()
    expect = None
    for i in range(n):
        theirs.send(req)
        got = b""
        while expect is None or len(got) < expect:
            data = await loop.sock_recv(theirs, 65536)
            if not data:
                raise SystemExit("server closed the connection")
            got += data
            if expect is None and b"\r\n\r\n" in got:
                head = got.split(b"\r\n\r\n", 1)[0]
                if not head.startswith(b"HTTP/1.1 200 "):
                    raise SystemExit("unexpected answer: %r" % got[:300])
                if got.endswith(BODY):
                    expect = len(got)
    if idle:
        await asyncio.sleep(idle)
    if pending_timer:
        timer.cancel()
    transport.close()
    theirs.close()
    await asyncio.sleep(0)


PEERS_PYTHON = os.path.join(os.path.dirname(HERE), "build", "bench-peers", "bin", "python")

# bjoern, run by the peers venv's python (bench/peers.py installs it): the
# same plain app as ours' --view plain, the port written to a file when
# listening; SIGINT stops it (its loop breaks, the process exits normally)
BJOERN = """
import sys, bjoern
from bench.hello_app import plain
sock = bjoern.listen(plain(), '127.0.0.1', 0)
with open(sys.argv[1] + '.tmp', 'w') as f:
    f.write(str(sock.getsockname()[1]))
import os; os.rename(sys.argv[1] + '.tmp', sys.argv[1])
try:
    bjoern.run()
except KeyboardInterrupt:
    pass
"""


def serve(view, loop_kind, portfile, conns=1):
    """Serve `view` on 127.0.0.1 as the gunicorn worker does (its loop,
    executor, base environ, GC tuning following the requests in flight,
    idle greenlets kept for `conns` connections) until SIGINT; the port goes to `portfile`
    once listening, the collector's counts (gc.get_stats()) to
    `portfile`.gc at the end."""
    import gc
    import json
    import signal

    from aiopyramid import _executor
    from aiopyramid.gunicorn import worker
    from bench.hello_app import plain

    wsgi = plain() if view == "plain" else app(view)
    loop = worker._new_loop(loop_kind)
    asyncio.set_event_loop(loop)
    # the worker's environ keys (wsgi.errors: a stand-in, never written)
    base = {"wsgi.version": (1, 0), "wsgi.errors": sys.stderr,
            "wsgi.multithread": True, "wsgi.multiprocess": False,
            "wsgi.run_once": False, "wsgi.input_terminated": True,
            "SERVER_SOFTWARE": "aiopyramid bench", "SCRIPT_NAME": ""}
    # as the worker's acceptor does with `conns` connections open: the
    # young threshold and the idle greenlets kept follow them
    gc_pacer = worker._tune_gc()
    if getattr(worker, "_pool_pacer", None) is not None:  # older builds: none
        worker._pool_pacer().raise_for(conns)

    async def run():
        stop = loop.create_future()
        loop.add_signal_handler(signal.SIGINT, stop.set_result, None)
        srv = HttpServer(wsgi, loop, base_environ=base)
        if hasattr(gc_pacer, "raise_for"):  # older builds: per connection
            gc_pacer.raise_for(conns)
        elif hasattr(gc_pacer, "watching"):
            # the threshold follows requests in flight, raised only while
            # the pacer's look is due soon: started, and followed once a
            # second, as the worker's loop does
            gc_pacer.start(srv, loop)

            def follow():
                gc_pacer.follow()
                loop.call_later(1.0, follow)
            follow()
        elif gc_pacer is not None:  # older builds: no start()
            gc_pacer.server = srv
        # gunicorn's default backlog: --conns opens them all at once
        server = await loop.create_server(srv, "127.0.0.1", 0, backlog=2048)
        with open(portfile + ".tmp", "w") as f:
            f.write(str(server.sockets[0].getsockname()[1]))
        os.rename(portfile + ".tmp", portfile)
        await stop
        if hasattr(gc_pacer, "watching"):
            gc_pacer.stop()
        server.close()

    try:
        loop.set_default_executor(_executor.Executor())
        loop.run_until_complete(run())
    finally:
        loop.close()
        with open(portfile + ".gc", "w") as f:
            json.dump({"stats": gc.get_stats(), "threshold": gc.get_threshold(),
                       "greenlets": _core.pool_stats()["created"]}, f)


def client(port, path, n, conns=1):
    """n requests on `conns` keep-alive connections at once, each sending
    its next request when it has read its last response whole (so with
    conns > 1 the server has requests of several connections to serve in
    one loop iteration, as under wrk -c)."""
    import selectors

    req = b"GET /%s HTTP/1.1\r\nHost: bench\r\n\r\n" % path.encode()
    socks = [socket.create_connection(("127.0.0.1", port), timeout=60)
             for _ in range(min(conns, n))]
    sel = selectors.DefaultSelector()
    bufs = {}
    sent = done = 0
    # A server under valgrind accepts one connection per loop iteration, and
    # serves the requests of those accepted meanwhile in the same passes: with
    # every connection sending on at once, all n requests went by in those
    # ~C passes of a few requests each (callgrind's calls: 1,010 epoll_pwait
    # for 2,000 and for 4,000 requests at --conns 1000), never the passes
    # of hundreds that wrk -c 1000 makes.  The connections' second requests
    # wait for the first round (its accepts) to end, then go together.
    held = [] if len(socks) > 1 else None
    try:
        for s in socks:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
            bufs[s] = b""
            s.send(req)
            sent += 1
        while done < n:
            events = sel.select(timeout=120)
            if not events:
                raise SystemExit("no response in 120 s")
            for key, _ in events:
                s = key.fileobj
                data = s.recv(65536)
                if not data:
                    raise SystemExit("server closed the connection")
                buf = bufs[s] + data
                while b"\r\n\r\n" in buf:
                    head, rest = buf.split(b"\r\n\r\n", 1)
                    if not head.startswith(b"HTTP/1.1 200 "):
                        raise SystemExit("unexpected answer: %r" % head[:300])
                    length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)",
                                           head).group(1))
                    if len(rest) < length:
                        break
                    if rest[:length] != BODY:
                        raise SystemExit("unexpected body: %r" % rest[:length])
                    buf = rest[length:]
                    done += 1
                    if held is not None:
                        # the first round: every connection's next request
                        # waits until the server has answered them all
                        held.append(s)
                        if len(held) == len(socks):
                            for h in held:
                                if sent < n:
                                    h.send(req)
                                    sent += 1
                            held = None
                    elif sent < n:
                        s.send(req)
                        sent += 1
                bufs[s] = buf
    finally:
        sel.close()
        for s in socks:
            s.close()


def server_only_count(view, loop_kind, n, out_dir=None, conns=1, cache_sim=False,
                      wait_ms=None, cache_ll=None):
    """{event: count} valgrind counts in the server's process serving n
    requests (start-up and shutdown included): Ir, the instructions, and
    with cache_sim its simulated cache misses too (D1mr, DLmr, ...); for
    ours also gc0, gc1, gc2: the collections of each generation."""
    import signal
    import subprocess
    import tempfile
    import time

    with tempfile.TemporaryDirectory() as tmp:
        portfile = os.path.join(tmp, "port")
        out = "/dev/null"
        if out_dir:
            out = os.path.join(os.path.abspath(out_dir),
                               "callgrind.out.%s.%s.c%d.%d" % (view, loop_kind, conns, n))
        valgrind = ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out,
                    "--cache-sim=" + ("yes" if cache_sim else "no")]
        if cache_sim and cache_ll:
            valgrind.append("--LL=" + cache_ll)
        if view == "bjoern":
            if not os.path.exists(PEERS_PYTHON):
                raise SystemExit("no %s: run bench/peers.py once to install the peers"
                                 % PEERS_PYTHON)
            cmd = valgrind + [PEERS_PYTHON, "-c", BJOERN, portfile]
        else:
            cmd = valgrind + [sys.executable, os.path.abspath(__file__), "--serve", portfile,
                              "--view", view, "--loop", loop_kind, "--conns", str(conns)]
            if wait_ms is not None:
                cmd += ["--wait-ms", str(wait_ms)]
        env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=os.path.dirname(HERE))
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 300
            while not os.path.exists(portfile):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the server did not start: %s" % proc.stderr.read())
                time.sleep(0.2)
            with open(portfile) as f:
                port = int(f.read())
            client(port, "hello" if view in ("plain", "bjoern") else view, n, conns)
            proc.send_signal(signal.SIGINT)
            err = proc.communicate(timeout=300)[1]
            gc_stats = None
            if os.path.exists(portfile + ".gc"):
                import json

                with open(portfile + ".gc") as f:
                    gc_stats = json.load(f)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    events = re.search(r"Events *: ([\w ]+)", err).group(1).split()
    counts = re.search(r"Collected *: ([\d ]+)", err).group(1).split()
    result = dict(zip(events, map(int, counts)))
    if gc_stats is not None:
        for gen, stats in enumerate(gc_stats["stats"]):
            result["gc%d" % gen] = stats["collections"]
        result["greenlets"] = gc_stats["greenlets"]
    return result


def self_cost_by_object(path):
    """{ELF object: instructions spent in its own code} from a callgrind
    out file (the costs of calls are charged to the callee's object)."""
    costs = {}
    names = {}
    obj = None
    after_calls = False
    with open(path) as f:
        for line in f:
            c = line[:1]
            if c.isdigit() or c in "+-*":
                if after_calls:  # the inclusive cost of a call: not ours
                    after_calls = False
                    continue
                parts = line.split()
                if len(parts) > 1:
                    costs[obj] = costs.get(obj, 0) + int(parts[1])
            elif line.startswith(("ob=", "cob=")):
                m = re.match(r"c?ob=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
                if m:
                    if m.group(2) is not None:
                        names[m.group(1)] = m.group(2)
                    name = names.get(m.group(1))
                else:
                    name = line.split("=", 1)[1].rstrip("\n")
                if c == "o":
                    obj = name
            elif line.startswith("calls="):
                after_calls = True
    return costs


def print_by_object(files, n):
    """Per request: (cost at 2n - cost at n) / n, for each ELF object."""
    small, big = (self_cost_by_object(f) for f in files)
    rows = sorted(((big.get(o, 0) - small.get(o, 0)) / n, o) for o in set(small) | set(big))
    for cost, obj in reversed(rows):
        if abs(cost) >= 50:
            print("    %9.0f  %s" % (cost, os.path.basename(obj or "?")))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--view", choices=["hello", "sleep0", "inline", "executor",
                                       "wait", "inlinewait", "plain", "bjoern"],
                    default="hello")
    ap.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--per-request", action="store_true",
                    help="run under valgrind at -n and 2n; print instructions per request")
    ap.add_argument("--slow-callback-ms", default=None,
                    help="the setting aiopyramid.slow_callback_ms (the watchdog on)")
    ap.add_argument("--idle", type=float, default=0.0,
                    help="seconds with the loop idle after the requests")
    ap.add_argument("--pending-timer", action="store_true",
                    help="keep a timer pending, as the gunicorn worker's loop does")
    ap.add_argument("--server-only", action="store_true",
                    help="count only a server process, the client outside valgrind")
    ap.add_argument("--vs-bjoern", action="store_true",
                    help="with --per-request: bjoern's instructions per request too")
    ap.add_argument("--callgrind-out", metavar="DIR",
                    help="with --server-only: keep the callgrind.out files in DIR")
    ap.add_argument("--conns", type=int, default=1,
                    help="with --server-only: connections the client keeps busy at once")
    ap.add_argument("--by-object", action="store_true",
                    help="with --server-only: instructions per request by ELF object too")
    ap.add_argument("--cache-sim", action="store_true",
                    help="with --server-only: valgrind's simulated cache misses per request too")
    ap.add_argument("--cache-ll", metavar="SIZE,ASSOC,LINE",
                    help="with --cache-sim: the simulated last level (valgrind's --LL),"
                    " e.g. 1048576,8,64 for this CPU's L2")
    ap.add_argument("--wait-ms", type=float, default=None,
                    help="the wait views' sleep in ms (default 50)")
    ap.add_argument("--serve", metavar="PORTFILE", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.wait_ms is not None:
        if args.wait_ms < 0:
            ap.error("--wait-ms must be 0 or more")
        WAIT = args.wait_ms / 1000
    if args.serve:
        serve(args.view, args.loop, args.serve, args.conns)
        sys.exit(0)
    if args.view in ("plain", "bjoern"):
        args.server_only = True
    if args.server_only:
        if not args.per_request:
            ap.error("--server-only is a mode of --per-request")
        if args.conns < 1:
            ap.error("--conns must be 1 or more")
        if args.cache_ll and not args.cache_sim:
            ap.error("--cache-ll is a setting of --cache-sim")
        if args.idle or args.slow_callback_ms is not None or args.pending_timer:
            ap.error("--server-only takes no --idle, --slow-callback-ms or --pending-timer")
        views = [args.view] + (["bjoern"] if args.vs_bjoern and args.view != "bjoern" else [])
        figures = {}
        import tempfile

        keep = args.callgrind_out
        if args.by_object and not keep:
            scratch = tempfile.TemporaryDirectory()
            keep = scratch.name
        for view in views:
            counts = [server_only_count(view, args.loop, n, keep, args.conns,
                                        args.cache_sim, args.wait_ms, args.cache_ll)
                      for n in (args.n, 2 * args.n)]
            per = {e: (counts[1][e] - counts[0][e]) / args.n for e in counts[0]}
            figures[view] = per["Ir"]
            misses = ""
            if args.cache_sim:
                # valgrind's simulated caches (first level, last level)
                misses = ("; L1 misses %.0f (data %.0f), last-level misses %.0f"
                          " (data %.0f)") % (
                    per["I1mr"] + per["D1mr"] + per["D1mw"], per["D1mr"] + per["D1mw"],
                    per["ILmr"] + per["DLmr"] + per["DLmw"], per["DLmr"] + per["DLmw"])
            print("%s, server only, %d connection%s: %.0f instructions per request%s" % (
                view if view == "bjoern" else "ours, %s view, %s loop" % (view, args.loop),
                args.conns, "" if args.conns == 1 else "s", figures[view], misses), flush=True)
            if "gc0" in per:
                print("  per 1,000 requests: collections young %.1f, middle %.1f, old %.1f;"
                      " request greenlets created %.1f"
                      % (1000 * per["gc0"], 1000 * per["gc1"], 1000 * per["gc2"],
                         1000 * per["greenlets"]))
            if args.by_object:
                print("  by ELF object, in its own code (callees charged to theirs):")
                print_by_object([os.path.join(keep, "callgrind.out.%s.%s.c%d.%d" % (
                    view, args.loop, args.conns, n)) for n in (args.n, 2 * args.n)], args.n)
        if len(views) == 2:
            print("ours / bjoern: %.2fx the instructions per request"
                  % (figures[args.view] / figures["bjoern"]))
        sys.exit(0)
    if args.vs_bjoern:
        ap.error("--vs-bjoern needs --server-only (bjoern is measured alone)")
    if args.per_request:
        import subprocess

        options = ["--view", args.view, "--loop", args.loop]
        if args.wait_ms is not None:
            options += ["--wait-ms", str(args.wait_ms)]
        if args.idle:
            options += ["--idle", str(args.idle)]
        if args.slow_callback_ms is not None:
            options += ["--slow-callback-ms", args.slow_callback_ms]
        if args.pending_timer:
            options.append("--pending-timer")
        counts = []
        for n in (args.n, 2 * args.n):
            out = subprocess.run(
                ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                 sys.executable, os.path.abspath(__file__), *options, "-n", str(n)],
                capture_output=True, text=True, check=True,
                # the same string hashes in both runs: dicts probe alike
                env=dict(os.environ, PYTHONHASHSEED="0")).stderr
            counts.append(int(re.search(r"Collected : (\d+)", out).group(1)))
        print("%s view, %s loop%s: %.0f instructions per request" % (
            args.view, args.loop, "".join(" " + o for o in options[4:]),
            (counts[1] - counts[0]) / args.n))
        sys.exit(0)
    # the loop and its default executor as the gunicorn worker makes them
    from aiopyramid import _executor

    def factory():
        if args.loop == "uvloop":
            import uvloop

            make = getattr(_executor, "tracking_loop_class", lambda c: c)(uvloop.Loop)
            loop = make()
        else:
            loop = asyncio.new_event_loop()
        loop.set_default_executor(_executor.Executor())
        return loop

    settings = {}
    if args.slow_callback_ms is not None:
        settings["aiopyramid.slow_callback_ms"] = args.slow_callback_ms
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main(args.view, args.n, settings, args.idle, args.pending_timer))
