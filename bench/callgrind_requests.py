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


def app(view):
    """Only the measured view's route, so every view costs the same route
    matching."""
    views = {"hello": (hello, {}), "sleep0": (sleep0, {}),
             "inline": (hello_legacy, {"blocking": False}),
             "executor": (hello_legacy, {})}
    func, options = views[view]
    with Configurator() as config:
        config.include("aiopyramid")
        config.add_route(view, "/" + view)
        config.add_view(func, route_name=view, **options)
        return config.make_wsgi_app()


async def main(path, n):
    loop = asyncio.get_running_loop()
    srv = HttpServer(app(path), loop, base_environ={"wsgi.version": (1, 0)})
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
    args = ap.parse_args()
    if args.per_request:
        import re
        import subprocess

        counts = []
        for n in (args.n, 2 * args.n):
            out = subprocess.run(
                ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                 sys.executable, os.path.abspath(__file__), "--view", args.view,
                 "--loop", args.loop, "-n", str(n)],
                capture_output=True, text=True, check=True,
                # the same string hashes in both runs: dicts probe alike
                env=dict(os.environ, PYTHONHASHSEED="0")).stderr
            counts.append(int(re.search(r"Collected : (\d+)", out).group(1)))
        print("%s view, %s loop: %.0f instructions per request" % (
            args.view, args.loop, (counts[1] - counts[0]) / args.n))
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

    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main(args.view, args.n))
