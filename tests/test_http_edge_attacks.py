"""Attacks on issue 12's HTTP edges from outside: a real gunicorn with our
worker over raw sockets (half-close, raw bytes in targets, chunk
extensions, request bodies streamed to plain views' threads).  Each test
failed before the fix that came with it.  Every wait is bounded."""
import json
import socket
import time

import pytest

from .conftest import free_port, gunicorn_args, http_get, spawn_server
from .rawhttp import parse_all

pytest.importorskip("gunicorn")

APP = "http_edge_attacks_app:main()"


def start_gunicorn(log_path, app=APP, *extra):
    port = free_port()
    return spawn_server(gunicorn_args(port, app, *extra), port, log_path)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_gunicorn(tmp_path_factory.mktemp("attacks") / "server.log")
    try:
        yield srv
    finally:
        srv.stop()


def still_serves(srv):
    assert http_get(srv.port, "/hello") == (200, b"hello"), srv.log()[-3000:]


def send_pieces(port, pieces, timeout=10.0, pause=0.05):
    """Sends each piece in its own write (TCP_NODELAY, a pause between),
    then reads until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in pieces:
            s.sendall(piece)
            time.sleep(pause)
        buf = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            buf += data
    return buf


# -- raw bytes above 0x7F in the target ------------------------------------

@pytest.mark.parametrize("split", [1, 4, 5, 9], ids=["G", "GET_", "GET_/", "GET_/env/a"])
def test_raw_bytes_in_a_target_whose_line_is_split_before_them(server, split):
    # served only when the line's first bytes and its first raw byte came in
    # the same read: "GET /env/a" then "\xe0b HTTP/1.1..." was a 400 (the
    # head was parsed again from its start, which an earlier read had
    # already consumed and dropped)
    line = b"GET /env/a\xc3\xa0b?q=\xe1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    buf = send_pieces(server.port, [line[:split], line[split:]])
    (r,) = parse_all(buf, eof=True)
    assert r.status == 200, buf[:300]
    env = json.loads(r.body)
    assert (env["PATH_INFO"], env["QUERY_STRING"]) == ("/env/a\xc3\xa0b", "q=\xe1")
    still_serves(server)


def test_raw_bytes_in_a_pipelined_target_split_before_them(server):
    buf = send_pieces(server.port, [
        b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\nGET /env/x",
        b"\xc3\xa0 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"])
    rs = parse_all(buf, eof=True)
    assert [r.status for r in rs] == [200, 200], buf[:500]
    assert json.loads(rs[1].body)["PATH_INFO"] == "/env/x\xc3\xa0"


# -- request bodies streamed to plain views' threads ----------------------

def exchange(port, data, count, methods=("POST",), timeout=10.0):
    """Sends data, reads until `count` responses or the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        buf = b""
        closed = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(parse_all(buf, methods, eof=False)) >= count:
                break
            data = s.recv(65536)
            if not data:
                closed = True
                break
            buf += data
    return parse_all(buf, methods, eof=closed)


@pytest.mark.parametrize("length", [2 ** 63, 2 ** 64 - 1])
def test_a_content_length_past_ssize_t_to_a_plain_view(server, length):
    # llhttp takes any length that fits 64 bits; deciding whether to read
    # the body before the view's thread converted it to a C ssize_t and
    # failed: a 500 and an OverflowError traceback in the log for each
    (r,) = exchange(server.port, b"POST /readsome?n=5 HTTP/1.1\r\nHost: a\r\n"
                    b"Content-Length: %d\r\n\r\nabcdef" % length, 1)
    assert (r.status, r.body) == (200, b"5 36bbe50ed96841d1")
    assert "OverflowError" not in server.log(), server.log()[-2000:]
    still_serves(server)


# -- the asterisk form ------------------------------------------------------

@pytest.mark.parametrize("target", [b"*foo", b"**", b"*?x", b"*/x", b"*#x"])
@pytest.mark.parametrize("method", [b"OPTIONS", b"GET"])
def test_a_target_starting_with_an_asterisk_is_only_the_asterisk_form(server, method, target):
    # the asterisk form is exactly "*" (RFC 9112 3.2.4) and every other
    # target but the absolute form starts with "/": these were served with
    # a PATH_INFO not starting with "/" ("*foo"; "OPTIONS *?x" ran the app
    # with PATH_INFO "*"), where nginx answers 400
    (r,) = exchange(server.port, method + b" " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n", 1,
                    methods=("GET",))
    assert r.status == 400, r
    still_serves(server)


@pytest.mark.parametrize("how", ["readline", "iterate", "read1", "readn"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_small_reads_of_a_streamed_body_take_what_is_buffered(server, how, chunked):
    # every wsgi.input read of a streamed body in a plain view's thread was
    # handed to the loop (a task and a thread wake-up each, ~100-200 us),
    # even when the buffer already held the bytes: a text upload read line
    # by line (wsgi.input iterated, or WebOb's request.body_file of a
    # chunked body) went 50-100x slower than under gunicorn's sync worker
    import hashlib
    # 700 KB: past the server's body buffer (256 KiB), whose reading pauses
    lines = b"".join(b"line %05d of a text upload\n" % i for i in range(25000))
    body = lines[:66000] if how == "read1" else lines  # past the 64 KiB read first
    if chunked:
        framing = b"Transfer-Encoding: chunked"
        data = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    else:
        framing = b"Content-Length: %d" % len(body)
        data = body
    (r,) = exchange(server.port, b"POST /handoffs?how=%s HTTP/1.1\r\nHost: a\r\n%s\r\n\r\n"
                    % (how.encode(), framing) + data, 1, timeout=120)
    digest, pieces, handoffs = r.body.decode().split(" pieces=")[0], *(
        int(x.split("=")[1]) for x in r.body.decode().split(" ")[2:])
    assert digest == "%d %s" % (len(body), hashlib.sha256(body).hexdigest()[:16])
    # a hand-off only when the buffer ran dry: a few, whatever the pieces
    assert pieces >= 80 and handoffs < pieces // 10, r.body
    still_serves(server)


# -- a request line held until it is whole ---------------------------------

from .inprocess import FakeTransport, loop, spin  # noqa: E402,F401 -- fixture


def test_a_stray_crlf_after_a_body_does_not_start_the_next_heads_timeout(loop):
    # the request line is held until its LF (so that raw bytes in it can be
    # parsed again); an empty line held after a body (some old clients send
    # one) started the head's timeout: a 408 for a keep-alive connection
    # that had not begun its next request
    import time

    from aiopyramid.server import HttpServer

    def app(env, start_response):
        env["wsgi.input"].read()
        start_response("200 OK", [])
        return [b"x"]

    server = HttpServer(app, loop)
    proto, t = server(), FakeTransport()
    proto.connection_made(t)
    proto.data_received(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nab\r\n")
    spin(loop)
    assert [r.status for r in parse_all(bytes(t.out))] == [200]
    time.sleep(0.05)
    assert server.close_idle(60.0, 60.0, 0.02) == 0
    assert not t.closed and b"408" not in bytes(t.out)
    proto.data_received(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    spin(loop)
    assert [r.status for r in parse_all(bytes(t.out))] == [200, 200]
    proto.connection_lost(None)
    spin(loop)
