"""HTTP edges (issue 12) against a real gunicorn with our worker, over raw
sockets: half-closed clients, the asterisk form, chunk extensions, raw bytes
above 0x7F in targets.  After each shape the worker still serves the next
client.  Every wait is bounded."""
import json
import socket
import struct
import time

import pytest

from .conftest import http_get
from .rawhttp import blocking_exchange, parse_all, read_to_eof

pytest.importorskip("gunicorn")

APP = "http_edges_app:main()"


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    """One gunicorn for the module (the shapes are independent)."""
    from .conftest import free_port, gunicorn_args, spawn_server
    port = free_port()
    srv = spawn_server(gunicorn_args(port, APP), port,
                       tmp_path_factory.mktemp("edges") / "server.log")
    try:
        yield srv
    finally:
        srv.stop()


def still_serves(srv):
    assert http_get(srv.port, "/hello") == (200, b"Hello, world!"), srv.log()[-3000:]


def state(srv):
    status, body = http_get(srv.port, "/state")
    assert status == 200
    return json.loads(body)


def half_closed(port, data, timeout=10.0):
    """Sends data, shuts down the sending side (as `nc -N` does), reads
    until the server closes.  (responses, closed)"""
    buf, closed = blocking_exchange(port, data, timeout=timeout, shut_write=True)
    return parse_all(buf, eof=closed), closed


# -- half-close: answer what was received, then close ----------------------

def test_a_half_closed_client_gets_the_answer_of_a_waiting_view(server):
    # the request was cancelled on the FIN: nothing came back
    before = state(server)
    rs, closed = half_closed(server.port, b"GET /sleep?s=0.2 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert [(r.status, r.body) for r in rs] == [(200, b"slept")]
    assert closed
    after = state(server)
    assert after["cancelled"] == before["cancelled"]
    still_serves(server)


def test_a_half_closed_client_gets_every_pipelined_answer(server):
    reqs = (b"GET /sleep?s=0.2&tag=one HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /sleep?s=0.05&tag=three HTTP/1.1\r\nHost: a\r\n\r\n"
            b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nfour")
    rs, closed = half_closed(server.port, reqs)
    assert [r.body for r in rs] == [b"one", b"Hello, world!", b"three", b"four"]
    assert closed
    still_serves(server)


def test_a_half_closed_client_that_reads_late_gets_big_pipelined_answers(server):
    # the answers fill the socket buffers, so the later requests wait for
    # the client to read (a paused transport) after its FIN
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        s.sendall(b"GET /big?mb=8 HTTP/1.1\r\nHost: a\r\n\r\n" * 3
                  + b"GET /sleep?s=0.05&tag=last HTTP/1.1\r\nHost: a\r\n\r\n")
        s.shutdown(socket.SHUT_WR)
        time.sleep(0.5)
        buf = bytearray()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            data = s.recv(1 << 20)
            if not data:
                break
            buf += data
        else:
            raise AssertionError("not closed after %d bytes" % len(buf))
    finally:
        s.close()
    rs = parse_all(bytes(buf), eof=True)
    assert [len(r.body) for r in rs] == [8 << 20] * 3 + [4]
    assert rs[-1].body == b"last"
    still_serves(server)


def test_a_half_close_with_an_inline_answer_and_http10(server):
    rs, closed = half_closed(server.port, b"GET /hello HTTP/1.0\r\n\r\n")
    assert [(r.status, r.body) for r in rs] == [(200, b"Hello, world!")]
    assert closed
    still_serves(server)


def test_a_half_close_when_idle_or_mid_request_closes_at_once(server):
    # idle keep-alive connection, a partial head, a partial body: nothing
    # more can come, so nothing is answered and the server closes
    for data in [b"", b"GET /hello HTTP/1.1\r\nHost:",
                 b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc"]:
        buf, closed = blocking_exchange(server.port, data, timeout=10, shut_write=True)
        assert closed and buf == b"", (data, buf)
    still_serves(server)


def test_a_client_that_resets_after_its_half_close_cancels_the_view(server):
    before = state(server)["cancelled"]
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    s.sendall(b"GET /sleep?s=30 HTTP/1.1\r\nHost: a\r\n\r\n")
    s.shutdown(socket.SHUT_WR)
    time.sleep(0.2)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    deadline = time.monotonic() + 10
    while state(server)["cancelled"] == before:
        assert time.monotonic() < deadline, server.log()[-3000:]
        time.sleep(0.05)
    still_serves(server)


def test_a_client_gone_after_its_half_close_loses_only_its_answer(server):
    # FIN, then the socket closed: the view runs to its end, the write
    # fails, and the worker goes on
    before = state(server)["slept"]
    tracebacks = server.log().count("Traceback")
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    s.sendall(b"GET /sleep?s=0.3 HTTP/1.1\r\nHost: a\r\n\r\n")
    s.shutdown(socket.SHUT_WR)
    s.close()
    deadline = time.monotonic() + 10
    while state(server)["slept"] == before:
        assert time.monotonic() < deadline, server.log()[-3000:]
        time.sleep(0.05)
    still_serves(server)
    assert server.log().count("Traceback") == tracebacks, server.log()[-3000:]


# -- the asterisk form is for OPTIONS only ----------------------------------

@pytest.mark.parametrize("method", [b"GET", b"POST", b"HEAD", b"DELETE"])
def test_the_asterisk_form_is_refused_but_for_options(server, method):
    body = b"Content-Length: 0\r\n" if method == b"POST" else b""
    buf, closed = blocking_exchange(
        server.port, b"%s * HTTP/1.1\r\nHost: a\r\n%s\r\n" % (method, body), timeout=10)
    (r,) = parse_all(buf, [method.decode()], eof=closed)
    assert r.status == 400 and closed, buf
    still_serves(server)


def test_options_asterisk_runs_the_app_with_an_empty_path(server):
    buf, closed = blocking_exchange(
        server.port, b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\nGET /hello HTTP/1.1\r\nHost: a\r\n"
        b"Connection: close\r\n\r\n", timeout=10)
    r1, r2 = parse_all(buf, eof=closed)
    assert r1.status == 200, buf
    assert json.loads(r1.body) == {"method": "OPTIONS", "path": "", "script": "", "query": ""}
    assert r2.body == b"Hello, world!"  # the same connection goes on
    still_serves(server)


# -- chunk extensions: RFC 9112 7.1.1, BWS around ; and = ------------------

def chunked(port, *lines, delay=0.0):
    head = b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head)
        for line in lines:
            if delay:
                time.sleep(delay)
            s.sendall(line)
        buf = read_to_eof(s)
    (r,) = parse_all(buf, ["POST"], eof=True)
    return r


@pytest.mark.parametrize("ext", [
    b";name=value", b";name", b' ;name=value', b"; name=value", b";name =value",
    b";name= value", b"\t;\tname\t=\tvalue", b' ; a = "quo ted" ; b', b'; n="q\\"x"',
    b";a=b;c=d", b"  ;  a  =  b  ;  c"], ids=repr)
def test_valid_chunk_extensions_are_accepted(server, ext):
    r = chunked(server.port, b"5" + ext + b"\r\nhello\r\n3" + ext + b"\r\n, w\r\n0" + ext + b"\r\n\r\n")
    assert (r.status, r.body) == (200, b"hello, w")


def test_a_chunk_extension_split_across_reads(server):
    r = chunked(server.port, b"5 ; na", b"me = \"va", b"l ue\"\r", b"\nhello\r\n0 ;", b" x\r\n\r\n",
                delay=0.05)
    assert (r.status, r.body) == (200, b"hello")


@pytest.mark.parametrize("ext", [
    b";", b"; ", b";=x", b";a=", b";a=b c", b';a="open', b";a==b", b";a b", b" ",
    b" x", b";a=\x01", b";a@=b", b';a="x"y', b";a=b;"], ids=repr)
def test_malformed_chunk_extensions_are_400(server, ext):
    r = chunked(server.port, b"5" + ext + b"\r\nhello\r\n0\r\n\r\n")
    assert r.status == 400
    still_serves(server)


def test_a_malformed_later_chunk_extension_is_400(server):
    r = chunked(server.port, b"5;a=b\r\nhello\r\n5;=x\r\nhello\r\n0\r\n\r\n")
    assert r.status == 400
    still_serves(server)


# -- raw bytes above 0x7F in the target: served, PEP 3333 latin-1 ----------

@pytest.mark.parametrize("target,path,query", [
    (b"/raw/\xc3\xa0", "/raw/\xc3\xa0", ""),
    (b"/raw/a%20b/\xe9t\xe9?q=\xc3\xa0&x=%C3%A0#\xe0", "/raw/a b/\xe9t\xe9", "q=\xc3\xa0&x=%C3%A0"),
    (b"/raw\xff\x80", "/raw\xff\x80", ""),
    (b"http://h:80/raw/\xe0?\xe1", "/raw/\xe0", "\xe1"),
], ids=["utf8", "latin1-query", "ff80", "absolute-form"])
def test_raw_bytes_in_the_target_are_served_as_latin1(server, target, path, query):
    buf, closed = blocking_exchange(
        server.port, b"GET " + target + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        timeout=10)
    (r,) = parse_all(buf, eof=closed)
    assert r.status == 200, buf
    env = json.loads(r.body)
    assert env["PATH_INFO"] == path
    assert env["QUERY_STRING"] == query
    assert env["RAW_URI"] == target.decode("latin-1")
    still_serves(server)


def test_raw_bytes_are_decoded_by_webob_as_utf8(server):
    # what Pyramid's routes see: request.path_info is the UTF-8 reading
    buf, closed = blocking_exchange(
        server.port, b"GET /echo\xc3\xa0 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        timeout=10)
    (r,) = parse_all(buf, eof=closed)
    assert r.status == 200  # the catch-all route: /*rest
    assert json.loads(r.body)["PATH_INFO"].encode("latin-1").decode("utf-8") == "/echo\u00e0"


@pytest.mark.parametrize("line", [
    b"G\xc3T / HTTP/1.1", b"GET / HTTP/1.\xc3", b"GET /\x7f HTTP/1.1", b"GET /\x01 HTTP/1.1"],
    ids=["method", "version", "del", "ctl"])
def test_raw_bytes_elsewhere_in_the_line_are_still_400(server, line):
    buf, closed = blocking_exchange(server.port, line + b"\r\nHost: a\r\n\r\n", timeout=10)
    (r,) = parse_all(buf, eof=closed)
    assert r.status == 400 and closed
    still_serves(server)


def test_raw_bytes_in_pipelined_requests(server):
    buf, closed = blocking_exchange(
        server.port, b"GET /raw\xe0 HTTP/1.1\r\nHost: a\r\n\r\nGET /raw?\xe1 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /raw\xe2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", timeout=10)
    rs = parse_all(buf, eof=closed)
    assert [json.loads(r.body)["RAW_URI"] for r in rs] == ["/raw\xe0", "/raw?\xe1", "/raw\xe2"]


def test_raw_bytes_in_a_request_line_split_across_reads(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        for piece in [b"GET /raw/\xe0", b"\xe1/b", b"?\xe2 HTTP/1.1\r", b"\nHost: a\r\nConnection: close\r\n\r\n"]:
            s.sendall(piece)
            time.sleep(0.05)
        buf = read_to_eof(s)
    (r,) = parse_all(buf, eof=True)
    env = json.loads(r.body)
    assert (env["PATH_INFO"], env["QUERY_STRING"]) == ("/raw/\xe0\xe1/b", "\xe2")
