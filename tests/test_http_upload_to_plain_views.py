"""Uploads to plain views (run in the executor) in bounded memory, whatever
the body size (issue 12): a real gunicorn with our worker, the body made on
the fly, memory as the worker's RSS sampled while the request runs."""
import os
import socket
import time

import pytest

from .conftest import http_get
from .rawhttp import parse_all
from .test_hostile_clients import MIB, worker_of
from .test_http_uploads_and_slow_readers import PeakRSS, send_upload

psutil = pytest.importorskip("psutil")
pytest.importorskip("gunicorn")

APP = "http_edges_app:main()"
STREAM = "http_edges_app:main_stream()"  # aiopyramid.stream_bodies = true
ASAN = bool(os.environ.get("AIOPYRAMID_ASAN"))


@pytest.mark.parametrize("app", [APP, STREAM], ids=["spooled", "streamed"])
@pytest.mark.parametrize("path", ["/upload", "/upload_body_file"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_big_upload_to_a_plain_view_keeps_memory_bounded(gunicorn, app, path, chunked):
    # the body was read whole before the view started: 300 MiB to a plain
    # view reading 64 KiB at a time took the worker from 33 to 334 MiB.
    # Spooled (the default), WebOb writes it to a temporary file first
    srv = gunicorn(app=app)
    worker = worker_of(srv)
    total = 200 * MIB
    with PeakRSS(worker) as rss:
        out = send_upload(srv.port, path, total, chunked, timeout=120)
    print("\n%s %s upload of %d MiB: RSS %.0f -> peak %.0f MiB"
          % (path, "chunked" if chunked else "sized", total // MIB, rss.start / MIB,
             rss.peak / MIB))
    assert out.startswith(b"HTTP/1.1 200 "), out[:300]
    assert out.endswith(b"\r\n\r\n%d" % total), out[-200:]
    if not ASAN:  # ASan's quarantine keeps the freed pieces
        assert rss.grown_mib < 24, rss.grown_mib
    assert srv.log().count("Traceback") == 0, srv.log()[-3000:]


def read_answer(s, timeout):
    buf = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = s.recv(65536)
        except socket.timeout:
            break
        if not data:
            break
        buf += data
        rs = parse_all(buf, ["POST"], eof=False)
        if rs:
            return rs[0]
    raise AssertionError("no answer in %.0fs: %r" % (timeout, buf[:300]))


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_streamed_plain_view_starts_before_a_big_body_has_come(gunicorn, chunked):
    # with aiopyramid.stream_bodies the body is not spooled before the
    # view's thread starts: a view answering after its first 64 KiB runs
    # before the client has sent all 100 MiB
    srv = gunicorn(app=STREAM)
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=2)
    try:
        framing = (b"Transfer-Encoding: chunked" if chunked
                   else b"Content-Length: %d" % (100 * MIB))
        s.sendall(b"POST /upload_first HTTP/1.1\r\nHost: t\r\n%s\r\n\r\n" % framing)
        piece = b"u" * (256 * 1024)
        for _ in range(4):  # 1 MiB of the 100
            s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        r = read_answer(s, timeout=15)
    finally:
        s.close()
    assert (r.status, r.body) == (200, b"65536 False")
    assert http_get(srv.port, "/hello")[0] == 200


@pytest.mark.parametrize("app,size,seekable", [
    (APP, 1000, True), (APP, 65536, True), (APP, 65537, True), (APP, -1, True),
    (STREAM, 1000, True), (STREAM, 65536, True), (STREAM, 65537, False), (STREAM, -1, False)],
    ids=["spool-1000", "spool-65536", "spool-65537", "spool-chunked",
         "stream-1000", "stream-65536", "stream-65537", "stream-chunked"])
def test_bodies_read_before_the_thread(gunicorn, app, size, seekable):
    # up to body_preread read in memory; past it (or chunked) spooled by
    # default (seekable in the thread), streamed with stream_bodies
    srv = gunicorn(app=app)
    body = b"x" * (size if size >= 0 else 70000)
    framing = (b"Content-Length: %d\r\n\r\n%s" % (size, body) if size >= 0 else
               b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(b"POST /upload_first HTTP/1.1\r\nHost: t\r\n" + framing)
        r = read_answer(s, timeout=15)
    assert r.body == b"%d %s" % (min(len(body), 65536), str(seekable).encode())


def test_the_preread_limit_is_a_setting(gunicorn):
    srv = gunicorn(app="http_edges_app:main_stream_all()")
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(b"POST /upload_first HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
        r = read_answer(s, timeout=15)
    assert r.body == b"5 False"


def test_a_big_form_through_request_post_in_the_thread(gunicorn):
    srv = gunicorn(app=APP)
    worker = worker_of(srv)
    size = 64 * MIB
    head = (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.bin\"\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n")
    tail = b"\r\n--b--\r\n"
    with PeakRSS(worker) as rss, socket.create_connection(("127.0.0.1", srv.port), timeout=60) as s:
        s.sendall(b"POST /upload_post HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; "
                  b"boundary=b\r\nContent-Length: %d\r\n\r\n" % (len(head) + size + len(tail)))
        s.sendall(head)
        piece = b"p" * MIB
        for _ in range(size // MIB):
            s.sendall(piece)
        s.sendall(tail)
        r = read_answer(s, timeout=60)
    assert (r.status, r.body) == (200, b"f.bin %d" % size)
    if not ASAN:
        assert rss.grown_mib < 24, rss.grown_mib


@pytest.mark.parametrize("value", ["maybe", "2", "-1"])
def test_a_bad_stream_bodies_setting_is_refused(value):
    from pyramid.config import Configurator
    from pyramid.exceptions import ConfigurationError
    with pytest.raises(ConfigurationError, match="aiopyramid.stream_bodies must be true or false"):
        with Configurator(settings={"aiopyramid.stream_bodies": value}) as config:
            config.include("aiopyramid")


def test_a_bad_preread_setting_is_refused():
    from pyramid.config import Configurator
    from pyramid.exceptions import ConfigurationError
    with pytest.raises(ConfigurationError, match="aiopyramid.body_preread must be"):
        with Configurator(settings={"aiopyramid.body_preread": "-1"}) as config:
            config.include("aiopyramid")


def test_slow_uploaders_do_not_hold_the_plain_views_threads(gunicorn):
    # a body past body_preread or chunked was streamed to the view's thread
    # by default: each client trickling its upload held a thread as long as
    # it trickled, and pool + 2 of them left every plain view unanswered
    import select
    threads = 2
    srv = gunicorn(app="http_edges_app:main_two_threads()")
    uploaders = []
    try:
        for _ in range(threads + 2):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            s.sendall(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"1\r\nu\r\n")
            uploaders.append(s)
        sent = 1
        g = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        try:
            g.sendall(b"GET /env HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            answer = b""
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:  # the uploaders trickle meanwhile
                if select.select([g], [], [], 0.5)[0]:
                    data = g.recv(65536)
                    answer += data
                    if not data:
                        break
                for s in uploaders:
                    s.sendall(b"1\r\nu\r\n")
                sent += 1
        finally:
            g.close()
        assert answer.startswith(b"HTTP/1.1 200 "), (
            "a plain view got no answer in 20 s while %d clients trickled their uploads: %r"
            % (len(uploaders), answer[:200]))
        for s in uploaders:
            s.sendall(b"0\r\n\r\n")
        for s in uploaders:
            r = read_answer(s, timeout=30)
            assert (r.status, r.body) == (200, b"%d" % sent)
    finally:
        for s in uploaders:
            s.close()
    assert srv.log().count("Traceback") == 0, srv.log()[-3000:]
