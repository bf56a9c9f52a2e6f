"""Uploads read in small pieces keep memory bounded; slow but steady readers
are never cut off.  A real gunicorn with our worker, raw sockets, every wait
bounded, memory as the worker's RSS (sampled while the request runs)."""
import os
import socket
import threading
import time

import pytest

from .conftest import free_port  # noqa: F401  (fixtures come from conftest)
from .test_hostile_clients import APP, MIB, answers, worker_of

psutil = pytest.importorskip("psutil")
pytest.importorskip("gunicorn")

ASAN = bool(os.environ.get("AIOPYRAMID_ASAN"))


class PeakRSS:
    """The highest RSS of a process, sampled every few ms in a thread."""

    def __init__(self, proc):
        self.proc = proc
        self.peak = proc.memory_info().rss
        self.start = self.peak
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return
            self._stop.wait(0.005)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(5)

    @property
    def grown_mib(self):
        return (self.peak - self.start) / MIB


def send_upload(port, path, total, chunked, timeout=60.0):
    """POSTs `total` bytes as fast as the socket takes them; returns the
    response bytes (read to EOF)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    deadline = time.monotonic() + timeout
    try:
        if chunked:
            s.sendall(b"POST %s HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                      b"Connection: close\r\n\r\n" % path.encode())
        else:
            s.sendall(b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n"
                      b"Connection: close\r\n\r\n" % (path.encode(), total))
        piece = b"u" * MIB
        sent = 0
        while sent < total:
            assert time.monotonic() < deadline, "upload not taken in %.0fs" % timeout
            n = min(MIB, total - sent)
            s.sendall(b"%x\r\n%s\r\n" % (n, piece[:n]) if chunked else piece[:n])
            sent += n
        if chunked:
            s.sendall(b"0\r\n\r\n")
        out = b""
        while True:
            assert time.monotonic() < deadline, "no answer in %.0fs" % timeout
            data = s.recv(65536)
            if not data:
                return out
            out += data
    finally:
        s.close()


# -- a body read in small pieces is not kept whole in memory ----------------

@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_read_in_pieces_keeps_memory_bounded(gunicorn, chunked):
    # the body buffer was compacted only when the app had read all of it:
    # a reader a little slower than the client (always a few bytes behind)
    # kept what came while it lagged: 256 MiB grew the worker by 27-194 MiB
    srv = gunicorn(app=APP)
    worker = worker_of(srv)
    total = 256 * MIB
    with PeakRSS(worker) as rss:
        out = send_upload(srv.port, "/raw/count?n=1000&work=3", total, chunked)
    print("\n%s upload of %d MiB read 1000 bytes at a time: RSS %.0f -> peak %.0f MiB"
          % ("chunked" if chunked else "sized", total // MIB, rss.start / MIB, rss.peak / MIB))
    assert out.startswith(b"HTTP/1.1 200 "), out[:200]
    assert out.endswith(b"\r\n\r\n%d" % total), out[-200:]
    if not ASAN:  # ASan's quarantine keeps the freed pieces
        assert rss.grown_mib < 16, rss.grown_mib


# -- a client that reads slowly but steadily is not cut off ----------------

def read_steadily(s, total, rate, timeout):
    """Reads `total` bytes off s at about `rate` bytes a second; returns
    them, or fails saying how far it got."""
    data = bytearray()
    step = 0.05
    deadline = time.monotonic() + timeout
    while len(data) < total:
        assert time.monotonic() < deadline, "%d of %d bytes" % (len(data), total)
        want = int(rate * step)
        while want > 0 and len(data) < total:
            try:
                got = s.recv(min(want, 65536))
            except ConnectionError as e:
                raise AssertionError("%r after %d of %d bytes" % (e, len(data), total)) from None
            assert got, "closed after %d of %d bytes" % (len(data), total)
            data += got
            want -= len(got)
        time.sleep(step)
    return bytes(data)


@pytest.mark.parametrize("n,mb", [(1, 8), (32, 0.25)], ids=["one-8MiB", "pipelined-32x256KiB"])
def test_a_slow_steady_reader_is_not_cut_off(gunicorn, n, mb):
    # the send timeout looked only at the transport's buffer, which the
    # kernel drains in megabyte steps to a slow reader (its send queue
    # takes more only once half of it has gone): a client reading 512 KiB/s
    # showed no progress for 4 s and was cut off after 4.09 of 8 MiB
    # (--timeout 2); and keep-alive closed a connection whose answers it
    # was still reading (truncating one, the pipelined rest lost)
    srv = gunicorn("--keep-alive", "1", "--timeout", "2", app=APP)
    size = int(mb * MIB)
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    try:
        s.sendall(b"GET /big?mb=%s HTTP/1.1\r\nHost: t\r\n\r\n" % str(mb).encode() * n)
        head_len = len(b"HTTP/1.1 200 OK\r\n")  # heads are about 150 bytes
        data = read_steadily(s, n * (size + head_len), 512 * 1024, timeout=90)
        s.settimeout(5)
        # the rest of the last head, then nothing more
        while data.count(b"x") < n * size:
            more = s.recv(65536)
            assert more, "closed before the end"
            data += more
        assert data.count(b"HTTP/1.1 200 OK\r\n") == n
        assert data.count(b"x") == n * size
    finally:
        s.close()
