"""HttpProtocol fed by hand through a fake transport: every split of the
input gives the same answers, callback errors become clean 500s, and
requests leak nothing."""
import gc

import pytest

from aiopyramid import _core

from .inprocess import connect, loop, spin  # noqa: F401 -- fixture
from .rawhttp import parse_all


def app(environ, start_response):
    body = environ["wsgi.input"].read()
    out = b"%s %s %s|%s" % (environ["REQUEST_METHOD"].encode(), environ["PATH_INFO"].encode(),
                            environ["QUERY_STRING"].encode(), body)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [out]


PIPELINE = (
    b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\nX-Long-Header-Name: some value\r\n\r\n"
    b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
    b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n2;name=value\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n"
    b"HEAD /d HTTP/1.1\r\nHost: h\r\n\r\n"
    b"GET /e HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
)
EXPECTED = [b"GET /a x=1|", b"POST /b |hello", b"POST /c |abcde", b"", b"GET /e |"]
METHODS = ["GET", "POST", "POST", "HEAD", "GET"]


def feed_buffered(proto, data):
    buf = proto.get_buffer(-1)
    n = min(len(buf), len(data))
    buf[:n] = data[:n]
    proto.buffer_updated(n)
    return data[n:]


def test_every_split_gives_the_same_answers(loop):
    for i in range(len(PIPELINE) + 1):
        server, proto, t = connect(loop, app)
        proto.data_received(PIPELINE[:i])
        spin(loop)
        proto.data_received(PIPELINE[i:])
        spin(loop)
        rs = parse_all(bytes(t.out), METHODS)
        assert [r.body for r in rs] == EXPECTED, i
        assert t.closed and server.requests == 5
        proto.connection_lost(None)


def test_byte_by_byte_through_the_buffer(loop):
    server, proto, t = connect(loop, app)
    for b in range(len(PIPELINE)):
        rest = feed_buffered(proto, PIPELINE[b:b + 1])
        assert rest == b""
        spin(loop, 2)
    rs = parse_all(bytes(t.out), METHODS)
    assert [r.body for r in rs] == EXPECTED
    proto.connection_lost(None)


def test_malformed_input_at_every_split(loop):
    bad = b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
    for i in range(len(bad) + 1):
        server, proto, t = connect(loop, app)
        proto.data_received(bad[:i])
        proto.data_received(bad[i:])
        rs = parse_all(bytes(t.out))
        assert [r.status for r in rs] == [400] and t.closed, i
        proto.connection_lost(None)


class Exploding:
    def __eq__(self, other):
        raise ZeroDivisionError("cannot compare")

    __hash__ = object.__hash__


def test_callback_exception_is_a_500_and_logged(loop):
    logged = []
    server, proto, t = connect(loop, app, secure_scheme_headers={"X-FORWARDED-PROTO": Exploding()},
                               forwarded_allow_ips="*",
                               error_log=lambda msg, exc: logged.append((msg, exc)))
    proto.data_received(b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-Proto: https\r\n\r\n")
    (r,) = parse_all(bytes(t.out))
    assert r.status == 500 and t.closed
    (msg, exc), = logged
    assert msg == "Error parsing request" and isinstance(exc, ZeroDivisionError)
    proto.connection_lost(None)


def test_buffer_updated_checks_its_argument(loop):
    server, proto, t = connect(loop, app)
    proto.get_buffer(-1)
    with pytest.raises(ValueError, match="more than the buffer had room for"):
        proto.buffer_updated(1 << 30)
    proto.connection_lost(None)


def test_start_response_contract(loop):
    calls = []

    def app2(environ, start_response):
        write = start_response("200 OK", [])
        with pytest.raises(RuntimeError, match="already called"):
            start_response("200 OK", [])
        try:
            raise KeyError("x")
        except KeyError as e:
            start_response("500 Internal Server Error", [("X-A", "b")], (type(e), e, e.__traceback__))
        write(b"early ")
        try:
            raise KeyError("late")
        except KeyError as e:
            with pytest.raises(KeyError):
                start_response("500 Internal Server Error", [], (type(e), e, e.__traceback__))
        calls.append(True)
        return [b"late"]

    server, proto, t = connect(loop, app2)
    proto.data_received(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    spin(loop)  # writes go out at the end of the loop's iteration
    (r,) = parse_all(bytes(t.out))
    assert r.status == 500 and r.header("x-a") == "b"
    assert r.body == b"early late" and calls == [True]
    proto.connection_lost(None)


def test_no_leaks(loop):
    def run(n):
        for i in range(n):
            server, proto, t = connect(loop, app)
            if i % 2:
                proto.data_received(PIPELINE)
            else:  # the POST waits for its body: a Task finishes it
                proto.data_received(PIPELINE[:112])
                spin(loop, 3)
                proto.data_received(PIPELINE[112:])
                spin(loop, 3)
            assert len(parse_all(bytes(t.out), METHODS)) == 5
            proto.connection_lost(None)
        spin(loop)
    run(200)
    gc.collect()
    before = len(gc.get_objects())
    created = _core.pool_stats()["created"]
    run(2000)
    gc.collect()
    after = len(gc.get_objects())
    assert after - before < 100, (before, after)
    # pooled request greenlets are reused, not made per request
    assert _core.pool_stats()["created"] - created < 10


def test_mutated_input_never_crashes(loop):
    """A bounded, seeded fuzz: valid pipelines with bytes flipped, dropped
    or repeated, fed in random splits.  Every answer is well formed, and a
    4xx closes the connection."""
    import random
    rng = random.Random(20261124)
    alphabet = b"\r\n :;-0123456789abcdefxXGET/HTTP1.\x00\xff\t"
    pipeline = PIPELINE.replace(b"HEAD /d", b"GET /d")
    for _ in range(1500):
        data = bytearray(pipeline)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(data))
            op = rng.random()
            if op < 0.4:
                data[i] = rng.choice(alphabet)
            elif op < 0.7:
                del data[i:i + rng.randint(1, 8)]
            else:
                data[i:i] = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 8)))
        logged = []
        server, proto, t = connect(loop, app, error_log=lambda msg, exc: logged.append((msg, exc)))
        pos = 0
        while pos < len(data) and not t.closed:
            step = rng.randint(1, 64)
            proto.data_received(bytes(data[pos:pos + step]))
            pos += step
            spin(loop, 2)
        out = bytes(t.out)
        rs = parse_all(out, eof=True)
        for r in rs:
            assert r.status in (200, 400, 414, 431, 500, 501), r
        if rs and rs[-1].status >= 400:
            assert t.closed
        assert not logged, logged
        proto.connection_lost(None)
        spin(loop, 2)


def test_wsgi_input_api(loop):
    seen = {}

    def app(environ, start_response):
        inp = environ["wsgi.input"]
        seen["read3"] = inp.read(3)
        seen["line"] = inp.readline()
        seen["line_capped"] = inp.readline(2)
        seen["lines"] = inp.readlines()
        seen["eof"] = (inp.read(), inp.readline(), inp.read(5), list(inp))
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        return [b"returned"]

    server, proto, t = connect(loop, app)
    body = b"abcdef\nghijkl\nmn\nop"
    proto.data_received(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    spin(loop)
    (r,) = parse_all(bytes(t.out))
    assert seen == {
        "read3": b"abc", "line": b"def\n", "line_capped": b"gh",
        "lines": [b"ijkl\n", b"mn\n", b"op"], "eof": (b"", b"", b"", []),
    }
    # write() went out first, chunked: the app's length was unknown
    assert r.body == b"written returned" and r.header("transfer-encoding") == "chunked"
    proto.connection_lost(None)


def test_http10_expect_gets_no_interim(loop):
    server, proto, t = connect(loop, app)
    proto.data_received(b"POST / HTTP/1.0\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
    spin(loop)
    assert b"100 Continue" not in bytes(t.out)
    proto.data_received(b"hi")
    spin(loop)
    (r,) = parse_all(bytes(t.out), eof=True)
    assert r.body == b"POST / |hi"
    proto.connection_lost(None)


def test_environ_is_fresh_per_request(loop):
    envs = []

    def app2(environ, start_response):
        environ["app.mark"] = len(envs)
        envs.append(environ)
        start_response("204 No Content", [])
        return []

    server, proto, t = connect(loop, app2, base_environ={"wsgi.version": (1, 0), "SCRIPT_NAME": "/s"})
    proto.data_received(b"GET /s/a HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\nGET /s/b HTTP/1.1\r\nHost: h\r\n\r\n")
    spin(loop)
    a, b = envs
    assert a is not b and a["app.mark"] == 0 and b["app.mark"] == 1
    assert "HTTP_X_A" in a and "HTTP_X_A" not in b
    assert (a["SCRIPT_NAME"], a["PATH_INFO"], b["PATH_INFO"]) == ("/s", "/a", "/b")
    assert a["wsgi.input"] is not b["wsgi.input"]
    rs = parse_all(bytes(t.out))
    assert [r.status for r in rs] == [204, 204] and rs[0].header("content-length") is None
    proto.connection_lost(None)


def test_readline_of_a_long_line_costs_linear_time(loop):
    """readline() waiting for a newline searched the whole buffered line
    again after each packet: a 64 MiB line in 32 KiB packets took ~10 s
    of memchr (quadratic).  Linear, the whole feed takes a fraction
    of a second."""
    import time
    lines = []

    def reader(environ, start_response):
        lines.append(environ["wsgi.input"].readline())
        start_response("200 OK", [("Content-Length", "0")])
        return []

    size, packet = 64 << 20, 32768
    server, proto, t = connect(loop, reader, body_buffer=size * 2)
    proto.data_received(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % (size + 1))
    chunk = b"x" * packet
    started = time.process_time()
    for _ in range(size // packet):
        proto.data_received(chunk)
        loop.call_soon(loop.stop)  # one turn: the waiting readline runs
        loop.run_forever()
    proto.data_received(b"\n")
    spin(loop)
    spent = time.process_time() - started
    assert [len(line) for line in lines] == [size + 1]
    assert spent < 5.0, "readline took %.1f s of CPU for a %d MiB line" % (spent, size >> 20)
    proto.connection_lost(None)
