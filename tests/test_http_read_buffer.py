"""Connections with nothing unparsed read into their server's one read
buffer; what a read leaves unparsed (a head cut short, pipelined requests
behind a response in progress, part of a body) moves to the connection's
own buffer before any other connection reads.  Interleaved connections
each get their own requests, whole."""
import socket
import time

import pytest

from .rawhttp import parse_all

pytest.importorskip("gunicorn")


def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=15)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_responses(sock, count, methods=()):
    buf = b""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        rs = parse_all(buf, methods=methods, eof=False) if buf else []
        if len(rs) >= count:
            return rs
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    return parse_all(buf, methods=methods, eof=True)


def echo(port, body):
    with connect(port) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s"
                  % (len(body), body))
        (r,) = read_responses(s, 1)
        return r.body


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_interleaved_connections_keep_their_unparsed_bytes(gunicorn, loop):
    srv = gunicorn(env={"AIOPYRAMID_LOOP": loop})
    port = srv.port
    # a head cut short: its first half waits while others read
    a = connect(port)
    a.sendall(b"GET /sleep?s=0&tag=cut-head HTTP/1.1\r\nHo")
    time.sleep(0.2)
    assert echo(port, b"x" * 3000) == b"x" * 3000
    a.sendall(b"st: t\r\n\r\n")
    (r,) = read_responses(a, 1)
    assert r.status == 200 and r.body == b"cut-head"

    # pipelined: the second request waits unparsed behind the first, which
    # sleeps while other connections read
    a.sendall(b"GET /sleep?s=0.5&tag=first HTTP/1.1\r\nHost: t\r\n\r\n"
              b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\n"
              b"second-body"
              b"GET /sleep?s=0&tag=third HTTP/1.1\r\nHost: t\r\n\r\n")
    for i in range(5):
        body = b"%d" % i * 2000
        assert echo(port, body) == body
    rs = read_responses(a, 3)
    assert [(r.status, r.body) for r in rs] == [
        (200, b"first"), (200, b"second-body"), (200, b"third")]

    # a body in pieces, other connections reading in between
    a.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n01234")
    time.sleep(0.2)
    assert echo(port, b"y" * 100) == b"y" * 100
    a.sendall(b"56789")
    (r,) = read_responses(a, 1)
    assert r.body == b"0123456789"
    a.close()


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_many_pipelined_requests_in_one_read(gunicorn, loop):
    srv = gunicorn(env={"AIOPYRAMID_LOOP": loop})
    n = 300  # about 50 KiB of heads in one write
    with connect(srv.port) as s:
        s.sendall(b"".join(
            b"GET /sleep?s=0&tag=%06d HTTP/1.1\r\nHost: t\r\nX-Pad: %s\r\n\r\n"
            % (i, b"p" * 100) for i in range(n)))
        rs = read_responses(s, n)
    assert [r.body for r in rs] == [b"%06d" % i for i in range(n)]


@pytest.mark.parametrize("call", [
    lambda sr: sr("201 Created", [("X-A", "1")]),
    lambda sr: sr("201 Created", [("X-A", "1")], None),
    lambda sr: sr(status="201 Created", headers=[("X-A", "1")]),
    lambda sr: sr("201 Created", headers=[("X-A", "1")], exc_info=None),
    lambda sr: sr(*("201 Created", [("X-A", "1")])),
])
def test_start_response_shapes(call):
    """Positional calls take the fast way, keywords the parsed one: the
    same response either way."""
    import asyncio

    from .inprocess import connect, spin

    loop = asyncio.new_event_loop()
    try:
        def app(env, start_response):
            call(start_response)
            return [b"ok"]

        server, proto, t = connect(loop, app)
        proto.data_received(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        spin(loop)
        (r,) = parse_all(bytes(t.out), eof=False)
        assert (r.status, r.header("x-a"), r.body) == (201, "1", b"ok")
        proto.connection_lost(None)
    finally:
        loop.close()


@pytest.mark.parametrize("args, error", [
    ((b"200 OK", []), TypeError),
    (("200 OK",), TypeError),
    (("200 OK", [], None, None), TypeError),
    (("OK", []), ValueError),
    (("200 OK", ()), TypeError),
])
def test_start_response_bad_calls_are_errors(args, error):
    import asyncio

    from .inprocess import connect, spin

    loop = asyncio.new_event_loop()
    seen = []
    try:
        def app(env, start_response):
            try:
                start_response(*args)
            except Exception as e:
                seen.append(type(e))
            start_response("200 OK", [])
            return [b"ok"]

        server, proto, t = connect(loop, app)
        proto.data_received(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        spin(loop)
        assert seen and issubclass(seen[0], error)
        proto.connection_lost(None)
    finally:
        loop.close()
