"""A body WebOb spools to a temporary file (past 10 KiB when the app reads
request.body, past 64 KiB before a plain view's thread starts) replaces
wsgi.input; the server closes it once the request's run is over, so a
reference cycle through the request (Pyramid's exception view leaves one
per error) holds neither its descriptor nor its disk space until the
cyclic collector runs.  The app here runs with the collector off."""
import socket

import pytest

from .rawhttp import parse_all, read_to_eof

pytest.importorskip("gunicorn")

APP = "spooled_body_app:main()"


def _post(port, path, body):
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(b"POST %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                  b"Content-Length: %d\r\n\r\n" % (path.encode(), len(body)) + body)
        (r,) = parse_all(read_to_eof(s))
    return r


def _pid_and_fds(port):
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(b"GET /fds HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        (r,) = parse_all(read_to_eof(s))
    return tuple(int(n) for n in r.body.split())


@pytest.mark.parametrize("path,size", [("/refuse", 100_000), ("/refuse-inline", 20_000)])
def test_refused_uploads_leave_no_file_open(gunicorn, path, size):
    srv = gunicorn(app=APP, wait=False)
    srv.wait_ready("/fds")
    pid, start = _pid_and_fds(srv.port)
    for _ in range(100):
        assert _post(srv.port, path, b"y" * size).status == 403
    # each refusal's cycle is garbage nobody collects; its file is closed
    # (by the same worker)
    assert _pid_and_fds(srv.port) == (pid, pytest.approx(start, abs=10))


def test_a_streamed_response_reads_the_spooled_body_to_its_end(gunicorn):
    srv = gunicorn(app=APP, wait=False)
    srv.wait_ready("/fds")
    body = bytes(range(256)) * 800  # 200 KiB: spooled before the thread
    pid, start = _pid_and_fds(srv.port)
    for _ in range(5):
        r = _post(srv.port, "/echo-stream", body)
        assert r.status == 200 and r.body == body
    assert _pid_and_fds(srv.port) == (pid, pytest.approx(start, abs=10))
