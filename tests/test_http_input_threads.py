"""wsgi.input of the bare HttpServer: bodies of unknown length reach
Pyramid views (wsgi.input_terminated), and reading wsgi.input from a thread
other than the loop's is done on the loop, safely."""
import asyncio
import threading

from pyramid.config import Configurator
from pyramid.response import Response

from aiopyramid import _core

from .rawhttp import exchange
from .inprocess import run, serving  # noqa: F401 -- fixture

CHUNKED_HEAD = (b"POST /%s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")


def chunks(*parts):
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


async def coroutine_echo(request):
    return Response(request.body)


def legacy_echo(request):
    return Response(request.body)


def pyramid_app():
    with Configurator() as config:
        config.include("aiopyramid")
        config.add_route("coroutine", "/coroutine")
        config.add_view(coroutine_echo, route_name="coroutine")
        config.add_route("legacy", "/legacy")
        config.add_view(legacy_echo, route_name="legacy")
        return config.make_wsgi_app()


def test_chunked_bodies_reach_pyramid_views(run):
    async def main():
        async with serving(pyramid_app()) as (port, srv):
            out = {}
            for view in ("coroutine", "legacy"):
                (r,), _ = await exchange(
                    port, CHUNKED_HEAD % view.encode(),
                    chunks(b"hello ", b"chunked ", b"world"), delay=0.05)
                out[view] = (r.status, r.body)
            return out

    assert run(main()) == {
        "coroutine": (200, b"hello chunked world"),
        "legacy": (200, b"hello chunked world"),
    }


def thread_reader_app(environ, start_response):
    """Reads the body in an executor thread, while it is still arriving."""
    loop = asyncio.get_running_loop()
    inp = environ["wsgi.input"]
    seen = []

    def read_in_thread():
        seen.append(threading.current_thread())
        first = inp.readline()
        return first + b"".join(iter(inp.readline, b"")) + inp.read()

    body = _core.await_(loop.run_in_executor(None, read_in_thread))
    assert seen[0] is not threading.current_thread()
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return [body]


def test_wsgi_input_read_from_another_thread(run):
    async def main():
        async with serving(thread_reader_app) as (port, srv):
            results = []
            for _ in range(3):
                (r,), _ = await exchange(
                    port, CHUNKED_HEAD % b"x", chunks(b"line one\n")[:-5],
                    chunks(b"line two\n", b"tail")[:-5], b"0\r\n\r\n",
                    delay=0.05)
                results.append((r.status, r.body))
            return results

    assert run(main()) == [(200, b"line one\nline two\ntail")] * 3


def two_readers_app(environ, start_response):
    """Two greenlets of one request wait for the body at once."""
    from aiopyramid.helpers import spawn_greenlet

    inp = environ["wsgi.input"]
    other = asyncio.ensure_future(spawn_greenlet(inp.read, 4))
    _core.await_(asyncio.sleep(0.01))  # the other one waits first
    mine = inp.read(4)
    theirs = _core.await_(asyncio.wait_for(other, 5))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"|".join(sorted([mine, theirs]))]


def test_two_waiters_for_the_body_both_wake(run):
    async def main():
        async with serving(two_readers_app) as (port, srv):
            (r,), _ = await exchange(
                port, b"POST / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                      b"Content-Length: 8\r\n\r\n", b"aaaa", b"bbbb",
                delay=0.05)
            return r.status, r.body

    assert run(main()) == (200, b"aaaa|bbbb")
