"""The Pyramid app the end-to-end server tests run under gunicorn."""
import asyncio
import hashlib
import json
import os

from pyramid.config import Configurator
from pyramid.response import Response


async def hello(request):
    return Response(b"Hello, world!", content_type="text/plain")


def legacy(request):
    return Response(b"legacy", content_type="text/plain")


SLEEPING = 0


async def sleep(request):
    global SLEEPING
    SLEEPING += 1
    try:
        await asyncio.sleep(float(request.params.get("s", "0.1")))
    finally:
        SLEEPING -= 1
    return Response(request.params.get("tag", "slept"), content_type="text/plain")


async def sleeping(request):
    """How many /sleep requests are in flight in this worker."""
    return Response(str(SLEEPING), content_type="text/plain")


async def echo(request):
    return Response(request.body, content_type="application/octet-stream")


def env(request):
    e = request.environ
    out = {k: v for k, v in e.items() if isinstance(v, str)}
    out["pid"] = os.getpid()
    return Response(json.dumps(out).encode(), content_type="application/json")


def main(global_config=None, **settings):
    with Configurator(settings=settings) as config:
        config.include("aiopyramid")
        for name, view in [("hello", hello), ("legacy", legacy), ("sleep", sleep),
                           ("echo", echo), ("env", env), ("sleeping", sleeping)]:
            config.add_route(name, "/" + name)
            config.add_view(view, route_name=name)
        return config.make_wsgi_app()


# -- for tests/test_hostile_clients.py ------------------------------------

MIB = 1024 * 1024
STREAMED = 0  # chunks produced by /endless and /zerofile since the start


async def big(request):
    """mb MiB (1 by default) of body, made afresh for each response."""
    n = int(float(request.params.get("mb", "1")) * MIB)
    return Response(b"x" * n, content_type="application/octet-stream")


def _endless():
    global STREAMED
    chunk = b"e" * 65536
    while True:
        STREAMED += 1
        yield chunk


async def endless(request):
    """A body that never ends, iterated inline (the view never waits)."""
    response = Response(content_type="application/octet-stream")
    response.app_iter = _endless()
    return response


class _Zeros:
    """An endless file, as a huge FileResponse would be."""

    def read(self, n):
        global STREAMED
        STREAMED += 1
        return b"\0" * n

    def close(self):
        pass


async def zerofile(request):
    response = Response(content_type="application/octet-stream")
    response.app_iter = request.environ["wsgi.file_wrapper"](_Zeros(), 65536)
    return response


async def streamed(request):
    return Response(str(STREAMED), content_type="text/plain")


async def die(request):
    """Raises SystemExit(code) or KeyboardInterrupt, before or after an
    await."""
    if request.params.get("after"):
        await asyncio.sleep(0.01)
    if request.params.get("kind") == "kbi":
        raise KeyboardInterrupt
    raise SystemExit(int(request.params.get("code", "3")))


def die_legacy(request):
    """The same in a plain view, run in the executor."""
    if request.params.get("kind") == "kbi":
        raise KeyboardInterrupt
    raise SystemExit(int(request.params.get("code", "3")))


def hostile_main(global_config=None, **settings):
    """The e2e app plus the views above, and raw WSGI answers under /raw/
    (hop-by-hop headers and statuses Pyramid would not let through)."""
    with Configurator(settings=settings) as config:
        config.include("aiopyramid")
        for name, view in [("hello", hello), ("env", env), ("sleep", sleep),
                           ("big", big), ("endless", endless), ("zerofile", zerofile),
                           ("streamed", streamed), ("die", die),
                           ("die_legacy", die_legacy)]:
            config.add_route(name, "/" + name)
            config.add_view(view, route_name=name)
        pyramid_app = config.make_wsgi_app()

    def app(environ, start_response):
        global STREAMED
        path = environ["PATH_INFO"]
        if not path.startswith("/raw/"):
            return pyramid_app(environ, start_response)
        if path == "/raw/writer":
            # the legacy write() callable, for ever
            write = start_response("200 OK", [("Content-Type", "text/plain")])
            chunk = b"w" * 65536
            while True:
                STREAMED += 1
                write(chunk)
        qs = dict(p.split("=", 1) for p in environ["QUERY_STRING"].split("&") if "=" in p)
        if path == "/raw/count":
            # the body read in small pieces of `n` bytes, as a streaming
            # upload handler does; answers how many bytes came
            # (work=k: k hashes of each piece, a reader slower than the client)
            size, total = int(qs.get("n", "1000")), 0
            work = int(qs.get("work", "0"))
            read = environ["wsgi.input"].read
            while True:
                data = read(size)
                if not data:
                    break
                for _ in range(work):
                    hashlib.sha256(data).digest()
                total += len(data)
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [str(total).encode()]
        status = qs.get("status", "200").replace("+", " ")
        if " " not in status:
            status += " Whatever"
        headers = [("Content-Type", "text/plain")]
        for name in qs.get("h", "").split(","):
            if name:
                headers.append({
                    "te": ("Transfer-Encoding", "chunked"),
                    "cl": ("Content-Length", "5"),
                    "conn": ("Connection", "keep-alive"),
                    "ka": ("Keep-Alive", "timeout=5"),
                    "up": ("Upgrade", "h2c"),
                }[name])
        start_response(status, headers)
        if qs.get("gen"):
            return iter([b"he", b"llo"])
        return [b"hello"]

    return app
