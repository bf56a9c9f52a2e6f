"""ATTACK (attack-exec): a plain view (run in the executor) that streams
its response from a generator doing blocking work between pieces (rows
from a database cursor, a file being made).

/stream     (plain) yields "first", then waits (at most 10 s) until /go
            has run, then yields "released" (or "timed out")
/go         (coroutine) lets /stream go on
/long       (plain) 40 pieces of 64 KiB, 20 ms apart; counts its
            generators closed (their `finally` run)
/closed     (inline) how many /long generators were closed
/hello      ready check
"""
import threading
import time

from pyramid.config import Configurator
from pyramid.response import Response

go = threading.Event()


def stream(request):
    go.clear()

    def pieces():
        yield b"first\n"
        yield b"released\n" if go.wait(10) else b"timed out\n"

    return Response(app_iter=pieces(), content_type="text/plain")


closed = []


def long(request):
    def pieces():
        try:
            for _ in range(40):
                time.sleep(0.02)
                yield b"x" * 65536
        finally:
            closed.append(1)

    return Response(app_iter=pieces(), content_type="text/plain")


def closed_count(request):
    return Response(b"%d" % len(closed))


async def go_view(request):
    go.set()
    return Response(b"went")


def hello(request):
    return Response(b"Hello, world!")


def main(global_config=None, **settings):
    with Configurator(settings=settings) as config:
        config.include("aiopyramid")
        for name, view, options in [
                ("stream", stream, {}), ("go", go_view, {}), ("hello", hello, {}),
                ("long", long, {}), ("closed", closed_count, {"blocking": False})]:
            config.add_route(name, "/" + name)
            config.add_view(view, route_name=name, **options)
        return config.make_wsgi_app()
