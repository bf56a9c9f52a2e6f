"""The app of tests/test_http_edges.py (issue 12): half-closed clients,
asterisk targets, chunk extensions, raw bytes in targets, uploads to plain
views.  Pyramid views under /, a raw WSGI answer for the asterisk form."""
import asyncio
import json
import os

from pyramid.config import Configurator
from pyramid.response import Response

STATE = {"slept": 0, "cancelled": 0}


async def hello(request):
    return Response(b"Hello, world!", content_type="text/plain")


async def sleep(request):
    """Waits s seconds (0.2 by default) before it answers its tag."""
    try:
        await asyncio.sleep(float(request.params.get("s", "0.2")))
    except asyncio.CancelledError:
        STATE["cancelled"] += 1
        raise
    STATE["slept"] += 1
    return Response(request.params.get("tag", "slept"), content_type="text/plain")


async def big(request):
    """mb MiB of body."""
    return Response(b"x" * int(float(request.params.get("mb", "1")) * 1024 * 1024),
                    content_type="application/octet-stream")


async def state(request):
    return Response(json.dumps(STATE).encode(), content_type="application/json")


async def echo(request):
    return Response(request.body, content_type="application/octet-stream")


def env(request):
    """The environ's str values (a plain view: run in the executor)."""
    out = {k: v for k, v in request.environ.items() if isinstance(v, str)}
    out["pid"] = os.getpid()
    return Response(json.dumps(out).encode(), content_type="application/json")


def upload(request):
    """A plain view (run in the executor) reading wsgi.input in 64 KiB
    pieces, as a streaming upload handler does; answers the byte count."""
    read = request.environ["wsgi.input"].read
    total = 0
    while True:
        data = read(65536)
        if not data:
            break
        total += len(data)
    return Response(str(total), content_type="text/plain")


def upload_first(request):
    """Reads the first 64 KiB of the body (is_body_seekable tells whether
    the body was read before the view's thread started)."""
    data = request.environ["wsgi.input"].read(65536)
    return Response("%d %s" % (len(data), request.is_body_seekable), content_type="text/plain")


def upload_post(request):
    """A form through WebOb's request.POST, in the view's thread."""
    f = request.POST["file"]
    total = 0
    while True:
        data = f.file.read(65536)
        if not data:
            break
        total += len(data)
    return Response("%s %d" % (f.filename, total), content_type="text/plain")


def upload_body_file(request):
    """The same through WebOb's request.body_file."""
    f = request.body_file
    total = 0
    while True:
        data = f.read(65536)
        if not data:
            break
        total += len(data)
    return Response(str(total), content_type="text/plain")


def main(global_config=None, **settings):
    with Configurator(settings=settings) as config:
        config.include("aiopyramid")
        for name, view in [("hello", hello), ("sleep", sleep), ("state", state), ("big", big),
                           ("echo", echo), ("env", env), ("upload", upload),
                           ("upload_body_file", upload_body_file),
                           ("upload_first", upload_first), ("upload_post", upload_post)]:
            config.add_route(name, "/" + name)
            config.add_view(view, route_name=name)
        config.add_route("any", "/*rest")
        config.add_view(env, route_name="any")
        pyramid_app = config.make_wsgi_app()

    def app(environ, start_response):
        if environ["PATH_INFO"].startswith("/raw"):
            # the environ as the server made it, before Pyramid decodes it
            body = json.dumps({k: v for k, v in environ.items() if isinstance(v, str)}).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        if environ.get("RAW_URI") == "*":
            body = json.dumps({"method": environ["REQUEST_METHOD"],
                               "path": environ["PATH_INFO"],
                               "script": environ["SCRIPT_NAME"],
                               "query": environ["QUERY_STRING"]}).encode()
            start_response("200 OK", [("Content-Type", "application/json"),
                                      ("Allow", "GET, POST, OPTIONS")])
            return [body]
        return pyramid_app(environ, start_response)

    return app


def main_stream(global_config=None, **settings):
    """main() with bodies past body_preread streamed to plain views' threads."""
    settings["aiopyramid.stream_bodies"] = "true"
    return main(global_config, **settings)


def main_stream_all(global_config=None, **settings):
    """main() with every body streamed to plain views' threads."""
    settings["aiopyramid.body_preread"] = "0"
    return main_stream(global_config, **settings)


def main_two_threads(global_config=None, **settings):
    """main() with a pool of 2 threads for plain views."""
    settings["aiopyramid.executor_threads"] = "2"
    return main(global_config, **settings)
