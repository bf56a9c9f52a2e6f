"""The app tests/test_write_batching_attacks.py runs under gunicorn: bodies
whose every byte says which request made them (so a lost, reordered,
duplicated or corrupted response shows), made every way the server sends
a body, by coroutine views, legacy views (the executor) and a raw WSGI
app (the write() callable)."""
import asyncio
import io

from pyramid.config import Configurator
from pyramid.response import Response


def pattern(tag, size):
    """`size` bytes that repeat `tag:`: each request's own."""
    unit = b"%s:" % tag.encode()
    return (unit * (size // len(unit) + 1))[:size]


def _chunks(body, chunk):
    sizes = [int(c) for c in chunk.split(",") if c] or [len(body) or 1]
    i = k = 0
    while i < len(body):
        n = sizes[k % len(sizes)]
        k += 1
        yield body[i:i + n]
        i += n


def _response(request, body):
    mode = request.params.get("mode", "list")
    chunk = request.params.get("chunk", "")
    if mode == "list":
        return Response(body, content_type="application/octet-stream")
    if mode == "gen":
        r = Response(content_type="application/octet-stream")
        r.app_iter = _chunks(body, chunk)
        return r
    if mode == "fw":
        r = Response(content_type="application/octet-stream")
        blk = int(chunk.split(",")[0] or 8192)
        r.app_iter = request.environ["wsgi.file_wrapper"](io.BytesIO(body), blk)
        return r
    raise ValueError(mode)


async def coro(request):
    tag = request.matchdict["tag"]
    size = int(request.matchdict["size"])
    wait = float(request.params.get("wait", "0"))
    if wait:
        await asyncio.sleep(wait)
    return _response(request, pattern(tag, size))


def legacy(request):
    tag = request.matchdict["tag"]
    size = int(request.matchdict["size"])
    return _response(request, pattern(tag, size))


async def echo(request):
    return Response(request.body, content_type="application/octet-stream")


def legacy_echo(request):
    return Response(request.body, content_type="application/octet-stream")


def main(global_config=None, **settings):
    with Configurator(settings=settings) as config:
        config.include("aiopyramid")
        config.add_route("hello", "/hello")
        config.add_view(lambda r: Response(b"hi"), route_name="hello")
        config.add_route("coro", "/c/{tag}/{size}")
        config.add_view(coro, route_name="coro")
        config.add_route("legacy", "/l/{tag}/{size}")
        config.add_view(legacy, route_name="legacy")
        config.add_route("echo", "/e")
        config.add_view(echo, route_name="echo")
        config.add_route("legacy_echo", "/le")
        config.add_view(legacy_echo, route_name="legacy_echo")
        pyramid_app = config.make_wsgi_app()

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path.startswith("/w/"):
            # /w/<tag>/<size>?chunk=..: the legacy write() callable
            _, _, tag, size = path.split("/")
            body = pattern(tag, int(size))
            qs = dict(p.split("=", 1) for p in
                      environ.get("QUERY_STRING", "").split("&") if "=" in p)
            write = start_response("200 OK", [
                ("Content-Type", "application/octet-stream"),
                ("Content-Length", str(len(body)))])
            for piece in _chunks(body, qs.get("chunk", "")):
                write(piece)
            if qs.get("fail"):
                raise RuntimeError("the app fails after writing")
            return []
        if path.startswith("/r/"):
            # /r/<tag>/<size>?at=n: n bytes of a body, then the app raises
            _, _, tag, size = path.split("/")
            body = pattern(tag, int(size))
            at = int(environ.get("QUERY_STRING", "at=0").split("=")[1])
            start_response("200 OK", [
                ("Content-Type", "application/octet-stream"),
                ("Content-Length", str(len(body)))])

            def gen():
                yield body[:at]
                raise RuntimeError("the app fails mid-body")
            return gen()
        return pyramid_app(environ, start_response)

    return app
