"""What the request path's shortcuts must keep: close() of a body that is a
list or tuple subclass (only exact lists and tuples skip the lookup), and
PATH_INFO / RAW_URI whatever form the target takes (a plain path shares
RAW_URI's str)."""
import asyncio
import json

import pytest

from aiopyramid.server import HttpServer

from .inprocess import run, serving  # noqa: F401 -- fixture
from .rawhttp import exchange


class ClosingList(list):
    def __init__(self, items, closed):
        super().__init__(items)
        self.closed = closed

    def close(self):
        self.closed.append(type(self).__name__)


class ClosingTuple(tuple):
    closed = None

    def close(self):
        self.closed.append(type(self).__name__)


@pytest.mark.parametrize("kind", ["list", "tuple", "list subclass", "tuple subclass"])
def test_close_is_called_on_a_sequence_subclass_body(run, kind):
    closed = []

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        if kind == "list":
            return [b"he", b"llo"]
        if kind == "tuple":
            return (b"he", b"llo")
        if kind == "list subclass":
            return ClosingList([b"he", b"llo"], closed)
        body = ClosingTuple((b"he", b"llo"))
        body.closed = closed
        return body

    async def main():
        async with serving(app) as (port, srv):
            return await exchange(
                port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 2, count=2)
    rs, closed_conn = run(main())
    assert [r.body for r in rs] == [b"hello", b"hello"] and not closed_conn
    expect = {"list subclass": ["ClosingList"] * 2,
              "tuple subclass": ["ClosingTuple"] * 2}.get(kind, [])
    assert closed == expect


def env_app(environ, start_response):
    out = {k: environ[k] for k in ("PATH_INFO", "RAW_URI", "QUERY_STRING", "SCRIPT_NAME")}
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(out).encode()]


TARGETS = [
    # target, PATH_INFO, QUERY_STRING
    (b"/plain/path", "/plain/path", ""),
    (b"/", "/", ""),
    (b"/p%20q", "/p q", ""),
    (b"/p?", "/p", ""),
    (b"/p?a=1", "/p", "a=1"),
    (b"/p#frag", "/p", ""),
    (b"/caf\xc3\xa9", "/caf\xc3\xa9", ""),
    (b"http://h.example/abs/x", "/abs/x", ""),
    (b"http://h.example", "/", ""),
]


@pytest.mark.parametrize("target,path,query", TARGETS)
def test_path_info_and_raw_uri(run, target, path, query):
    async def main():
        async with serving(env_app) as (port, srv):
            (r,), _ = await exchange(
                port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n", count=1)
            return json.loads(r.body)
    env = run(main())
    assert env["RAW_URI"] == target.decode("latin-1")
    assert env["PATH_INFO"] == path and env["QUERY_STRING"] == query
    assert env["SCRIPT_NAME"] == ""


@pytest.mark.parametrize("target,path", [
    (b"/app/x", "/x"), (b"/app", ""), (b"/application", "/application"),
    (b"/app/x%2Fy", "/x/y"), (b"/other", "/other"),
])
def test_path_info_under_a_script_name(run, target, path):
    async def main():
        loop = asyncio.get_running_loop()
        srv = HttpServer(env_app, loop,
                         base_environ={"SCRIPT_NAME": "/app", "wsgi.version": (1, 0)})
        server = await loop.create_server(srv, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            (r,), _ = await exchange(
                port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n", count=1)
            return json.loads(r.body)
        finally:
            server.close()
            srv.abort()
            await server.wait_closed()
    env = run(main())
    assert env["RAW_URI"] == target.decode("latin-1")
    assert env["PATH_INFO"] == path and env["SCRIPT_NAME"] == "/app"


class Held:
    pass


def test_a_request_context_is_not_kept_after_the_request(run):
    """What a request set in its contextvars context goes with it: the
    server keeps nothing of that context once the request is over (on 3.11
    one dict of the server's carries each request's context into Task())."""
    import contextvars
    import gc
    import weakref

    var = contextvars.ContextVar("held")
    refs = []

    def app(environ, start_response):
        held = Held()
        refs.append(weakref.ref(held))
        var.set(held)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    async def main():
        async with serving(app) as (port, srv):
            (r,), _ = await exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", count=1)
            # the Task's scheduled step (3.11) runs in the next iterations
            for _ in range(5):
                await asyncio.sleep(0)
            gc.collect()
            return r, [ref() is None for ref in refs]
    r, freed = run(main())
    assert r.status == 200 and r.body == b"ok"
    assert freed == [True]
