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

  --view hello   the coroutine view answering at once (never suspends)
  --view sleep0  the same after one `await asyncio.sleep(0)` (suspends once)
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


def app():
    with Configurator() as config:
        config.include("aiopyramid")
        config.add_route("hello", "/hello")
        config.add_route("sleep0", "/sleep0")
        config.add_view(hello, route_name="hello")
        config.add_view(sleep0, route_name="sleep0")
        return config.make_wsgi_app()


async def main(path, n):
    loop = asyncio.get_running_loop()
    srv = HttpServer(app(), loop, base_environ={"wsgi.version": (1, 0)})
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
    ap.add_argument("--view", choices=["hello", "sleep0"], default="hello")
    ap.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    ap.add_argument("-n", type=int, default=1000)
    args = ap.parse_args()
    factory = None
    if args.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main(args.view, args.n))
