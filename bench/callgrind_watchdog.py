"""The blocked-loop watchdog's cost, in instructions: bench/callgrind_requests.py's
request loop with aiopyramid.slow_callback_ms on or off.

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python bench/callgrind_watchdog.py --pending-timer -n 1200 \\
        --slow-callback-ms 10000000

Run it twice (two values of -n) and divide the difference in instructions
("Collected" in valgrind's summary) by the difference in requests: that is
the cost of one request, with start-up and imports taken out.  Instruction
counts do not change with the machine's load, wall-clock figures do.

Each request goes over a real socket pair to aiopyramid's HttpServer on a
real loop (asyncio's or uvloop), into bench/hello_app's Pyramid app; the
client reads the whole response before it sends the next request.

  --view hello   the coroutine view answering at once (never suspends)
  --view sleep0  the same after one `await asyncio.sleep(0)` (suspends once)
  --slow-callback-ms N   with the blocked-loop watchdog on (the setting
                 aiopyramid.slow_callback_ms): its cost is the difference.
                 Its heartbeat and thread cost per second, not per request,
                 and valgrind runs the requests ~50x slower than they run:
                 measure the per-request part with a limit too long to wake
                 during the run (--slow-callback-ms 10000000), and the
                 per-second part apart (below)
  --pending-timer  keep a timer pending on the loop, as the gunicorn
                 worker's loop always has one (its 1 s wait for a wake-up):
                 with a timer pending, each loop iteration checks it, which
                 a loop with none skips; compare the watchdog (whose
                 heartbeat is a timer) against this
  --idle S       after the requests, S seconds with the loop idle: with -n 1,
                 (instructions with --idle 5 - with --idle 0) / 5 is the
                 watchdog's cost per second, then divide by a request rate
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
from bench.hello_app import BODY, hello  # noqa: E402


async def sleep0(request):
    await asyncio.sleep(0)
    return Response(BODY, content_type="text/plain")


def app(settings=None):
    with Configurator(settings=settings) as config:
        config.include("aiopyramid")
        config.add_route("hello", "/hello")
        config.add_route("sleep0", "/sleep0")
        config.add_view(hello, route_name="hello")
        config.add_view(sleep0, route_name="sleep0")
        return config.make_wsgi_app()


async def main(path, n, settings=None, idle=0.0, pending_timer=False):
    loop = asyncio.get_running_loop()
    if pending_timer:
        timer = loop.call_later(3600, lambda: None)
    srv = HttpServer(app(settings), loop, base_environ={"wsgi.version": (1, 0)})
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
    ap.add_argument("--view", choices=["hello", "sleep0"], default="hello")
    ap.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--slow-callback-ms", default=None)
    ap.add_argument("--idle", type=float, default=0.0)
    ap.add_argument("--pending-timer", action="store_true")
    args = ap.parse_args()
    settings = {}
    if args.slow_callback_ms is not None:
        settings["aiopyramid.slow_callback_ms"] = args.slow_callback_ms
    factory = None
    if args.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main(args.view, args.n, settings, args.idle, args.pending_timer))
