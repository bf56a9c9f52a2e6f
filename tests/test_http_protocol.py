"""aiopyramid._core.HttpServer in-process: a real asyncio server on
127.0.0.1 (asyncio's loop and uvloop), raw bytes in, parsed responses out."""
import asyncio
import gc
import io
import json
import socket
import struct

import pytest

from aiopyramid import _core
from aiopyramid.server import HttpServer

from .inprocess import run, serving  # noqa: F401 -- fixture
from .rawhttp import exchange, parse_all

def text_app(body=b"hello", status="200 OK", headers=None):
    def app(environ, start_response):
        start_response(status, headers or [("Content-Type", "text/plain")])
        return [body]
    return app


def env_app(environ, start_response):
    out = {k: v for k, v in environ.items() if isinstance(v, str)}
    out["wsgi.version"] = list(environ["wsgi.version"])
    out["has_input"] = hasattr(environ["wsgi.input"], "read")
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(out).encode()]


def echo_app(environ, start_response):
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return [body]


def sleepy_app(environ, start_response):
    delay = float(environ.get("QUERY_STRING") or 0)
    if delay:
        _core.await_(asyncio.sleep(delay))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [environ["PATH_INFO"].encode()]


def test_environ(run):
    async def main():
        async with serving(env_app) as (port, srv):
            (r,), closed = await exchange(
                port,
                b"GET /caf%C3%A9/%E9%20x?a=1&b=%20#frag HTTP/1.1\r\n"
                b"Host: example.com:8080\r\nX-Multi: 1\r\nx-multi: 2\r\n"
                b"Content-Type: text/plain\r\nX_Under: dropped\r\n"
                b"User-Agent:   spaced   \r\n\r\n",
                count=1,
            )
            return r, closed, port
    r, closed, port = run(main())
    assert r.status == 200 and not closed
    env = json.loads(r.body)
    assert env["REQUEST_METHOD"] == "GET"
    assert env["PATH_INFO"] == "/caf\xc3\xa9/\xe9 x"  # bytes as latin-1
    assert env["RAW_URI"] == "/caf%C3%A9/%E9%20x?a=1&b=%20#frag"
    assert env["QUERY_STRING"] == "a=1&b=%20"
    assert env["SCRIPT_NAME"] == ""
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["HTTP_HOST"] == "example.com:8080"
    assert env["HTTP_X_MULTI"] == "1,2"
    assert env["CONTENT_TYPE"] == "text/plain"
    assert "HTTP_CONTENT_TYPE" not in env
    assert "HTTP_X_UNDER" not in env
    assert env["HTTP_USER_AGENT"] == "spaced"
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["REMOTE_PORT"].isdigit()
    assert env["SERVER_NAME"] == "127.0.0.1"
    assert env["SERVER_PORT"] == str(port)
    assert env["wsgi.url_scheme"] == "http"
    assert env["wsgi.version"] == [1, 0]
    assert env["has_input"]
    assert r.header("date", "").endswith("GMT")
    assert r.header("content-length") == str(len(r.body))


def forging_app(environ, start_response):
    # reports what its environ says of the connection, then spoils it
    seen = "%s %s %s %s %s" % (
        environ.get("REMOTE_ADDR"), environ.get("REMOTE_PORT"),
        environ.get("SERVER_PORT"), environ.get("wsgi.url_scheme"),
        "x.leak" in environ)
    del environ["REMOTE_ADDR"]
    environ["REMOTE_PORT"] = "forged"
    environ["wsgi.url_scheme"] = "gopher"
    environ["x.leak"] = True
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [seen.encode()]


def test_each_request_sees_its_own_connection(run):
    # every request's environ is the server's one template copied with its
    # connection's addresses set in it: two keep-alive connections, their
    # requests interleaved, each sees its own port and nothing a previous
    # request (its own connection's or the other's) did to its environ
    async def main():
        async with serving(forging_app) as (port, srv):
            conns = [await asyncio.open_connection("127.0.0.1", port)
                     for _ in range(2)]
            seen = []
            for _ in range(3):
                for reader, writer in conns:
                    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    head = await reader.readuntil(b"\r\n\r\n")
                    n = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    body = (await reader.readexactly(n)).decode()
                    seen.append((writer.get_extra_info("sockname")[1], body))
            for _, writer in conns:
                writer.close()
            return port, seen
    port, seen = run(main())
    assert len(seen) == 6
    for client_port, body in seen:
        assert body == "127.0.0.1 %d %d http False" % (client_port, port)


def test_absolute_form_and_script_name(run):
    async def main():
        async with serving(env_app, ) as (port, srv):
            (r,), _ = await exchange(
                port, b"GET http://example.com/a/b?q=1 HTTP/1.1\r\nHost: x\r\n\r\n", count=1)
            return json.loads(r.body)
    env = run(main())
    assert env["PATH_INFO"] == "/a/b" and env["QUERY_STRING"] == "q=1"

    async def main2():
        loop = asyncio.get_running_loop()
        srv = HttpServer(env_app, loop, base_environ={"SCRIPT_NAME": "/app", "wsgi.version": (1, 0)})
        server = await loop.create_server(srv, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            (r,), _ = await exchange(port, b"GET /app/x HTTP/1.1\r\nHost: x\r\n\r\n", count=1)
            return json.loads(r.body)
        finally:
            server.close()
            srv.abort()
            await server.wait_closed()
    env = run(main2())
    assert env["SCRIPT_NAME"] == "/app" and env["PATH_INFO"] == "/x"


def test_secure_scheme_headers_from_trusted_proxy(run):
    async def main(allow):
        async with serving(env_app, secure_scheme_headers={"X-FORWARDED-PROTO": "https"},
                           forwarded_allow_ips=allow) as (port, srv):
            (r,), _ = await exchange(
                port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-Proto: https\r\n\r\n", count=1)
            return json.loads(r.body)["wsgi.url_scheme"]
    assert run(main(["127.0.0.1"])) == "https"
    assert run(main("*")) == "https"
    assert run(main(["10.1.2.3"])) == "http"
    assert run(main(lambda host: host == "127.0.0.1")) == "https"
    assert run(main(lambda host: False)) == "http"
    # as gunicorn's option reads: a comma separated str, networks
    assert run(main("10.1.2.3, 127.0.0.1")) == "https"
    assert run(main("127.0.0.1")) == "https"
    assert run(main(["10.0.0.0/8", "127.0.0.0/8"])) == "https"
    assert run(main("10.0.0.0/8")) == "http"


def test_core_server_takes_plain_values(run):
    # options are normalised in Python (aiopyramid.server.HttpServer): the
    # C type says so when given them, and checks what it relies on
    async def main():
        loop = asyncio.get_running_loop()
        with pytest.raises(TypeError, match="aiopyramid.server.HttpServer"):
            _core.HttpServer(text_app(), loop, keepalive=1.0)
        args = [text_app(), loop, {"SCRIPT_NAME": ""}, 10, 10, 10, 1.0, (),
                None, None, None, None, 1024]
        _core.HttpServer(*args)
        for i, bad in ((2, {}), (7, (("HTTP_X",),)), (8, {"127.0.0.1"}),
                       (9, 42)):
            with pytest.raises(TypeError):
                _core.HttpServer(*args[:i], bad, *args[i + 1:])
    run(main())


def test_pipelined_requests_answered_in_order(run):
    async def main():
        async with serving(sleepy_app) as (port, srv):
            # the second one suspends: the third must still come third
            rs, closed = await exchange(
                port,
                b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /two?0.05 HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /three HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /four?0.01 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                count=4,
            )
            return rs, closed, srv.requests
    rs, closed, n = run(main())
    assert [r.body for r in rs] == [b"/one", b"/two", b"/three", b"/four"]
    assert rs[-1].header("connection") == "close"
    assert closed and n == 4


def test_http10_closes_unless_keep_alive(run):
    async def main():
        async with serving(text_app()) as (port, srv):
            a = await exchange(port, b"GET / HTTP/1.0\r\n\r\n", count=1)
            b = await exchange(port, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
                               b"GET / HTTP/1.0\r\n\r\n", count=2)
            return a, b
    (ra, closed_a), (rb, closed_b) = run(main())
    assert closed_a and ra[0].header("connection") == "close"
    assert rb[0].header("connection") == "keep-alive" and rb[0].body == b"hello"
    assert closed_b and len(rb) == 2


def test_head_has_length_and_no_body(run):
    async def main():
        async with serving(text_app(b"x" * 10)) as (port, srv):
            return await exchange(port, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"
                                  b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                                  methods=["HEAD", "GET"], count=2)
    (h, g), closed = run(main())
    assert h.header("content-length") == "10" and h.body == b""
    assert g.body == b"x" * 10 and not closed


def test_request_bodies(run):
    async def main():
        async with serving(echo_app) as (port, srv):
            cl, _ = await exchange(port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello",
                                   b" world", count=1, delay=0.05)
            ch, _ = await exchange(
                port,
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
                b"lo\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n"
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                count=2, delay=0.05)
            return cl, ch
    (cl,), (ch, after) = run(main())
    assert cl.body == b"hello world"
    assert ch.body == b"hello world" and after.body == b""


def test_expect_100_continue(run):
    async def main():
        async with serving(echo_app) as (port, srv):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                         b"Expect: 100-continue\r\n\r\n")
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            writer.write(b"body")
            data = b""
            while b"body" not in data:
                data += await asyncio.wait_for(reader.read(1000), 5)
            writer.close()
            await writer.wait_closed()
            return interim, data
    interim, data = run(main())
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    (r,) = parse_all(data)
    assert r.status == 200 and r.body == b"body"


def test_expect_100_not_read_closes(run):
    async def main():
        async with serving(text_app()) as (port, srv):
            return await exchange(port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                                  b"Expect: 100-continue\r\n\r\n", count=1)
    (r,), closed = run(main())
    assert r.status == 200 and closed


def test_streamed_responses(run):
    def gen_app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"a"
        yield b""
        yield b"bc"

    async def main():
        async with serving(gen_app) as (port, srv):
            a = await exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", count=1)
            b = await exchange(port, b"GET / HTTP/1.0\r\n\r\n")
            return a, b
    ((a,), a_closed), ((b,), b_closed) = run(main())
    assert a.header("transfer-encoding") == "chunked" and a.body == b"abc" and not a_closed
    assert b.header("transfer-encoding") is None and b.body == b"abc" and b_closed


def test_file_wrapper_and_close(run):
    closed = []

    class F(io.BytesIO):
        def close(self):
            closed.append(True)
            super().close()

    def app(environ, start_response):
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](F(b"0123456789"), 3)

    async def main():
        async with serving(app) as (port, srv):
            return await exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", count=1)
    (r,), _ = run(main())
    assert r.body == b"0123456789" and closed == [True]


class Tracked:
    def __init__(self, chunks, fail=False):
        self.chunks = chunks
        self.fail = fail
        self.closed = False

    def __iter__(self):
        for c in self.chunks:
            yield c
        if self.fail:
            raise ValueError("boom")

    def close(self):
        self.closed = True


def test_app_errors(run):
    logged = []
    results = []

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/raise":
            raise RuntimeError("app failed")
        if path == "/bad-status":
            start_response("OK", [])
            return []
        if path == "/no-start":
            return [b"x"]
        if path == "/bad-header":
            start_response("200 OK", [("X-A", "a\r\nInjected: 1")])
            return [b""]
        start_response("200 OK", [])
        it = Tracked([b"partial"], fail=True)
        results.append(it)
        return it

    async def main():
        async with serving(app, error_log=lambda msg, exc: logged.append((msg, exc))) as (port, srv):
            out = {}
            for path in ("/raise", "/bad-status", "/no-start", "/bad-header", "/late"):
                out[path] = await exchange(port, b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode(),
                                           timeout=5)
            return out
    out = run(main())
    for path in ("/raise", "/bad-status", "/no-start", "/bad-header"):
        (r,), closed = out[path]
        assert r.status == 500 and closed, path
    assert b"Injected" not in repr(out["/bad-header"]).encode()
    rs, closed = out["/late"]
    # headers went out, then the app failed: the body is cut, connection closed
    assert closed
    assert results[0].closed
    assert len(logged) == 5
    assert isinstance(logged[0][1], RuntimeError)


BAD_REQUESTS = [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc", 400),
    # an absolute-form target's authority replaces Host: none, or one with
    # userinfo, is invalid (RFC 9110 4.2.1, 4.2.4)
    (b"GET http:///env HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET http://:8/env HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET http://good@evil:8/ HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET https://u:p@host/?q HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\n folded: 1\r\n\r\n", 400),
    (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n", 431),
    (b"GET / HTTP/1.1\r\nX-Big: " + b"v" * 9000 + b"\r\n\r\n", 431),
]


@pytest.mark.parametrize("data,status", BAD_REQUESTS)
def test_bad_requests_get_4xx_and_close(run, data, status):
    async def main():
        async with serving(echo_app) as (port, srv):
            rs, closed = await exchange(port, data)
            return rs, closed, srv.requests
    rs, closed, served = run(main())
    assert [r.status for r in rs] == [status]
    assert closed and served == 0


@pytest.mark.parametrize("coding", [b"gzip, chunked", b"deflate,chunked", b"identity, chunked",
                                    b"x-custom, chunked"])
def test_a_transfer_coding_besides_chunked_is_not_implemented(run, coding):
    # the body would reach the app still coded, with nothing in the environ
    # saying so: RFC 9112 6.1's 501, as nginx answers
    async def main():
        async with serving(echo_app) as (port, srv):
            rs, closed = await exchange(
                port, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: " + coding
                + b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n", count=1)
            return rs, closed, srv.requests
    rs, closed, served = run(main())
    assert [r.status for r in rs] == [501]
    assert b"chunked" in rs[0].body
    assert closed and served == 0


def test_the_codings_of_repeated_transfer_encoding_fields_are_joined(run):
    async def main():
        async with serving(echo_app) as (port, srv):
            return await exchange(
                port, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", count=1)
    rs, closed = run(main())
    assert [r.status for r in rs] == [501] and closed


@pytest.mark.parametrize("coding", [b"chunked", b"Chunked", b"CHUNKED"])
def test_chunked_alone_in_any_case_is_decoded(run, coding):
    async def main():
        async with serving(echo_app) as (port, srv):
            return await exchange(
                port, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: " + coding
                + b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n", count=1)
    (r,), closed = run(main())
    assert r.status == 200 and r.body == b"abc" and not closed


def test_a_unix_socket_gives_a_server_port(run, tmp_path):
    # PEP 3333: SERVER_PORT is never empty; on a unix socket, the scheme's
    # default port, as gunicorn says
    path = str(tmp_path / "s")

    async def main():
        loop = asyncio.get_running_loop()
        srv = HttpServer(env_app, loop, base_environ={"wsgi.version": (1, 0)})
        server = await loop.create_unix_server(srv, path)
        try:
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = await reader.read()
            writer.close()
            return data
        finally:
            server.close()
            srv.abort()
    (r,) = parse_all(run(main()))
    env = json.loads(r.body)
    assert env["SERVER_PORT"] == "80" and env["SERVER_NAME"] == path


def test_bad_request_after_a_good_one(run):
    async def main():
        async with serving(text_app()) as (port, srv):
            return await exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\nNOT HTTP\r\n\r\n")
    rs, closed = run(main())
    assert [r.status for r in rs] == [200, 400] and closed


def test_limits_are_configurable(run):
    async def main():
        async with serving(text_app(), limit_request_line=0, limit_request_fields=0,
                           limit_request_field_size=0) as (port, srv):
            return await exchange(
                port, b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\nHost: x\r\n"
                + b"".join(b"X-%d: 1\r\n" % i for i in range(200))
                + b"X-Big: " + b"v" * 20000 + b"\r\n\r\n", count=1)
    (r,), closed = run(main())
    assert r.status == 200 and not closed


def test_client_disconnect_cancels_the_view(run):
    events = []

    def app(environ, start_response):
        try:
            _core.await_(asyncio.sleep(30))
        except BaseException as e:
            events.append(type(e).__name__)
            raise
        start_response("200 OK", [])
        return [b"never"]

    async def main():
        async with serving(app) as (port, srv):
            created = _core.pool_stats()["created"]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            for _ in range(100):
                if srv.active:
                    break
                await asyncio.sleep(0.01)
            assert srv.active == 1
            # gone: a reset (a FIN alone is a half-close, which is answered:
            # tests/test_http_edges.py)
            writer.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()
            await writer.wait_closed()
            for _ in range(300):
                if events and not srv.active:
                    break
                await asyncio.sleep(0.01)
            # the greenlet went back to the pool
            return srv.active, _core.pool_stats(), created
    active, stats, created = run(main())
    assert events == ["CancelledError"]
    assert active == 0
    assert stats["idle"] >= 1


def test_streaming_input_waits_for_the_client(run):
    seen = []

    def app(environ, start_response):
        inp = environ["wsgi.input"]
        first = inp.readline()
        seen.append(first)
        rest = b"".join(iter(inp))
        start_response("200 OK", [])
        return [first + rest]

    async def main():
        async with serving(app) as (port, srv):
            return await exchange(
                port,
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 19\r\n\r\nline",
                b" 1\nline 2\n", b"tail\n", count=1, delay=0.05)
    (r,), _ = run(main())
    assert seen == [b"line 1\n"] and r.body == b"line 1\nline 2\ntail\n"


def test_large_response_drains(run):
    chunk = b"x" * 65536
    n = 160  # 10 MiB: the transport pauses, the greenlet waits for drain

    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", str(len(chunk) * n))])
        for _ in range(n):
            yield chunk

    async def main():
        async with serving(app) as (port, srv):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            got = 0
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            while got < len(chunk) * n:
                data = await asyncio.wait_for(reader.read(1 << 20), 10)
                assert data
                got += len(data)
                await asyncio.sleep(0)  # a slowish reader
            writer.close()
            await writer.wait_closed()
            return head, got
    head, got = run(main())
    assert b"200 OK" in head and got == len(chunk) * n


def test_large_upload_pauses_reading(run):
    size = 4 * 1024 * 1024

    def app(environ, start_response):
        inp = environ["wsgi.input"]
        total = 0
        while True:
            _core.await_(asyncio.sleep(0.001))  # a slow consumer
            data = inp.read(65536)
            if not data:
                break
            total += len(data)
        start_response("200 OK", [])
        return [str(total).encode()]

    async def main():
        async with serving(app, body_buffer=65536) as (port, srv):
            body = b"y" * size
            return await exchange(
                port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size,
                body, count=1, timeout=30)
    (r,), _ = run(main())
    assert r.body == str(size).encode()


def test_no_keepalive_setting(run):
    async def main():
        async with serving(text_app(), keepalive=0) as (port, srv):
            return await exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", count=1)
    (r,), closed = run(main())
    assert r.header("connection") == "close" and closed


def test_shutdown_lets_requests_finish(run):
    async def main():
        async with serving(sleepy_app) as (port, srv):
            t = asyncio.ensure_future(exchange(port, b"GET /slow?0.2 HTTP/1.1\r\nHost: x\r\n\r\n"))
            idle = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(500):
                if srv.active and srv.connections == 2:
                    break
                await asyncio.sleep(0.01)
            srv.shutdown()
            rs, closed = await t
            idle_data = await asyncio.wait_for(idle[0].read(), 2)
            idle[1].close()
            return rs, closed, idle_data
    rs, closed, idle_data = run(main())
    assert [r.body for r in rs] == [b"/slow"] and closed
    assert rs[0].header("connection") == "close"
    assert idle_data == b""


def test_access_log_callback(run):
    entries = []

    async def main():
        async with serving(text_app(b"abc"), access_log=lambda *a: entries.append(a)) as (port, srv):
            await exchange(port, b"GET /x?y HTTP/1.1\r\nHost: x\r\n\r\n", count=1)
    run(main())
    (environ, status, headers, sent, elapsed), = entries
    assert environ["PATH_INFO"] == "/x" and status == "200 OK"
    assert sent == 3 and elapsed >= 0 and headers == [("Content-Type", "text/plain")]


def test_server_arguments_are_checked():
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError, match="limit_request_line must be 0 or more, got -1"):
            HttpServer(text_app(), loop, limit_request_line=-1)
        srv = HttpServer(text_app(), loop)
        with pytest.raises(TypeError):
            srv(1)
        with pytest.raises(TypeError):
            _core.HttpProtocol()
    finally:
        loop.close()
    gc.collect()


def test_unread_large_body_is_discarded(run):
    size = 1024 * 1024

    async def main():
        async with serving(text_app(b"ignored the body"), body_buffer=16384) as (port, srv):
            return await exchange(
                port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size,
                b"z" * size + b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n", count=2, timeout=30)
    rs, closed = run(main())
    assert [r.body for r in rs] == [b"ignored the body"] * 2 and not closed


def test_close_idle(run):
    async def main():
        async with serving(text_app()) as (port, srv):
            fresh = await asyncio.open_connection("127.0.0.1", port)
            used = await asyncio.open_connection("127.0.0.1", port)
            used[1].write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await used[0].readuntil(b"hello")
            for _ in range(500):
                if srv.connections == 2:
                    break
                await asyncio.sleep(0.01)
            n1 = srv.close_idle(0.0, 30.0)  # only the one that was served
            tail_used = await asyncio.wait_for(used[0].read(), 2)
            n2 = srv.close_idle(0.0)  # then the fresh one too
            tail_fresh = await asyncio.wait_for(fresh[0].read(), 2)
            for _, w in (fresh, used):
                w.close()
            return n1, n2, tail_used, tail_fresh
    assert run(main()) == (1, 1, b"", b"")


def test_head_with_a_lazy_generator_app(run):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])  # on first next()
        yield b"body"

    async def main():
        async with serving(app) as (port, srv):
            return await exchange(port, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"
                                  b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                                  methods=["HEAD", "GET"], count=2)
    (h, g), closed = run(main())
    assert h.status == 200 and h.body == b"" and h.header("transfer-encoding") is None
    assert g.body == b"body" and not closed


def test_on_close_called_as_each_connection_closes(run):
    # the worker's accept loop waits on it at worker_connections
    async def main():
        async with serving(text_app()) as (port, srv):
            seen = []
            srv.on_close = lambda: seen.append(srv.connections)
            assert srv.on_close is not None
            with pytest.raises(TypeError, match="on_close must be callable"):
                srv.on_close = 42
            for _ in range(3):
                (r,), closed = await exchange(
                    port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                    count=1)
                assert r.body == b"hello"
            for _ in range(100):  # bounded: the server sees each close
                if len(seen) == 3:
                    break
                await asyncio.sleep(0.01)
            srv.on_close = None
            assert srv.on_close is None
            return seen
    assert run(main()) == [0, 0, 0]
