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
"""
import argparse
import asyncio
import os
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


def app(view, settings=None):
    """Only the measured view's route, so every view costs the same route
    matching."""
    views = {"hello": (hello, {}), "sleep0": (sleep0, {}),
             "inline": (hello_legacy, {"blocking": False}),
             "executor": (hello_legacy, {})}
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


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--view", choices=["hello", "sleep0", "inline", "executor"],
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
    args = ap.parse_args()
    if args.per_request:
        import re
        import subprocess

        options = ["--view", args.view, "--loop", args.loop]
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
