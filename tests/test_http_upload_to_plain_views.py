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
ASAN = bool(os.environ.get("AIOPYRAMID_ASAN"))


@pytest.mark.parametrize("path", ["/upload", "/upload_body_file"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_big_upload_to_a_plain_view_keeps_memory_bounded(gunicorn, path, chunked):
    # the body was read whole before the view started: 300 MiB to a plain
    # view reading 64 KiB at a time took the worker from 33 to 334 MiB
    srv = gunicorn(app=APP)
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
def test_a_plain_view_starts_before_a_big_body_has_come(gunicorn, chunked):
    # the whole body was read (spooled to a temporary file) before the
    # view's thread started: a view answering after its first 64 KiB got
    # nothing to run until the client had sent all 100 MiB
    srv = gunicorn(app=APP)
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


@pytest.mark.parametrize("size,seekable", [(1000, True), (65536, True), (65537, False)])
def test_small_bodies_are_read_before_the_thread(gunicorn, size, seekable):
    srv = gunicorn(app=APP)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(b"POST /upload_first HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s"
                  % (size, b"x" * size))
        r = read_answer(s, timeout=15)
    assert r.body == b"%d %s" % (min(size, 65536), str(seekable).encode())


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


def test_a_bad_preread_setting_is_refused():
    from pyramid.config import Configurator
    from pyramid.exceptions import ConfigurationError
    with pytest.raises(ConfigurationError, match="aiopyramid.body_preread must be"):
        with Configurator(settings={"aiopyramid.body_preread": "-1"}) as config:
            config.include("aiopyramid")
