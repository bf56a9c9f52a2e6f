"""The server under hostile clients (issue 14): a real gunicorn with our
worker, spoken to with raw sockets.  Every wait is bounded, so a hang
fails the test; memory is the worker's RSS.  The figures each test measures
are printed (run with -s to see them)."""
import asyncio
import json
import os
import re
import signal
import socket
import struct
import sys
import threading
import time

import pytest

from .conftest import free_port, http_get
from .rawhttp import blocking_exchange, parse_all

psutil = pytest.importorskip("psutil")
pytest.importorskip("gunicorn")

APP = "http_e2e_app:hostile_main()"
ASAN = bool(os.environ.get("AIOPYRAMID_ASAN"))
MIB = 1024 * 1024


def worker_of(srv, timeout=10.0):
    """The worker process of a one-worker gunicorn."""
    master = psutil.Process(srv.proc.pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = [k for k in master.children() if k.is_running()]
        if len(kids) == 1:
            return kids[0]
        time.sleep(0.05)
    raise TimeoutError("no single worker under %d" % srv.proc.pid)


def rss_mib(proc):
    return proc.memory_info().rss / MIB


def answers(port, path="/hello", timeout=30.0, each=2.0):
    """Seconds until `path` gets a 200 (polling), or None after timeout."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        r = http_get(port, path, timeout=each)
        if r is not None and r[0] == 200:
            return time.monotonic() - t0
        time.sleep(0.1)
    return None


def slow_reader(port, rcvbuf=4096):
    """A connected socket with a small receive buffer, never read."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    return s


def reset(s):
    """Close with an RST, as a client that crashes does."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def read_responses(s, n, timeout):
    """Reads n Content-Length responses off s without keeping their bodies;
    returns their (status, length)."""
    out = []
    buf = b""
    deadline = time.monotonic() + timeout
    s.settimeout(timeout)
    need = None
    while len(out) < n:
        if time.monotonic() > deadline:
            raise TimeoutError("%d of %d responses in %.0fs" % (len(out), n, timeout))
        if need is None:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                head = buf[:end].decode("latin-1")
                status = int(head.split(" ", 2)[1])
                length = int(re.search(r"(?im)^content-length:\s*(\d+)", head).group(1))
                buf = buf[end + 4:]
                need = [status, length, length]
                continue
        else:
            take = min(need[2], len(buf))
            need[2] -= take
            buf = buf[take:]
            if need[2] == 0:
                out.append((need[0], need[1]))
                need = None
                continue
        data = s.recv(1 << 20)
        if not data:
            raise ConnectionError("closed after %d of %d responses" % (len(out), n))
        buf += data
    return out


def stable(value, timeout=15.0, quiet=1.0):
    """Polls value() until it has not changed for `quiet` seconds (or
    timeout); returns the last value."""
    last = value()
    since = time.monotonic()
    deadline = since + timeout
    while time.monotonic() < deadline:
        time.sleep(0.2)
        v = value()
        if v != last:
            last, since = v, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last


def served(srv, path):
    return srv.log().count('"GET %s ' % path)


# -- 1. pipelined responses have back-pressure --------------------------------

def test_pipelined_responses_wait_for_the_client_to_read(gunicorn):
    srv = gunicorn("--access-logfile", "-", app=APP)
    worker = worker_of(srv)
    assert answers(srv.port, "/big") is not None
    before = rss_mib(worker)
    n = 150
    s = slow_reader(srv.port)
    try:
        s.sendall(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n" * n)
        # the worker answers what the socket buffers take, then waits
        count = stable(lambda: served(srv, "/big"))
        grown = rss_mib(worker) - before
        print("\npipelined %d x 1 MiB, unread: %d answered, RSS %.0f -> %.0f MiB (+%.0f)"
              % (n, count - 1, before, before + grown, grown))
        assert count - 1 < n // 4, count
        assert grown < 48, grown
        # others are served meanwhile
        assert answers(srv.port, "/hello", timeout=10) is not None
        # and once the client reads, every answer comes, in order
        rs = read_responses(s, n, timeout=60)
        assert rs == [(200, MIB)] * n
        if not ASAN:  # ASan keeps freed memory in quarantine
            assert rss_mib(worker) - before < 48
    finally:
        s.close()


# -- 2. a client that never reads a finished response is dropped ----------

def test_clients_that_never_read_are_dropped_after_the_timeout(gunicorn):
    srv = gunicorn("--worker-connections", "4", "--timeout", "3", "--keep-alive", "1",
                   app=APP)
    worker = worker_of(srv)
    assert answers(srv.port) is not None
    fds0, rss0 = worker.num_fds(), rss_mib(worker)
    clients = []
    try:
        for close in (False, False, True, True):
            s = slow_reader(srv.port)
            s.sendall(b"GET /big?mb=16 HTTP/1.1\r\nHost: t\r\n%s\r\n"
                      % (b"Connection: close\r\n" if close else b""))
            clients.append(s)
        # every slot taken by a client that does not read
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and worker.num_fds() < fds0 + 4:
            time.sleep(0.05)
        time.sleep(0.5)
        fds1, rss1 = worker.num_fds(), rss_mib(worker)
        t0 = time.monotonic()
        took = answers(srv.port, timeout=40)
        assert took is not None, "a new client never got an answer"
        fds2 = stable(worker.num_fds, timeout=15)
        rss2 = rss_mib(worker)
        print("\n4 clients x 16 MiB unread (timeout 3): fds %d -> %d -> %d, RSS %.0f -> %.0f -> %.0f MiB,"
              " a new client answered after %.1fs" % (fds0, fds1, fds2, rss0, rss1, rss2,
                                                      time.monotonic() - t0))
        assert fds2 <= fds0 + 1
        # the held responses are gone (whether malloc gives the pages back
        # to the system is its business: no more growth is what is asked)
        assert rss2 <= rss1 + 8
    finally:
        for s in clients:
            s.close()


# -- 3. running out of descriptors does not wedge the worker -------------------

def test_worker_recovers_from_running_out_of_descriptors(start_server):
    port = free_port()
    args = ["prlimit", "--nofile=64:64", sys.executable, "-m", "gunicorn",
            "--bind", "127.0.0.1:%d" % port, "--worker-class",
            "aiopyramid.gunicorn.worker.AsyncGunicornWorker", "--workers", "1",
            "--no-control-socket", "--graceful-timeout", "5", APP]
    srv = start_server(args, port)
    worker = worker_of(srv)

    async def burst(n):
        async def one():
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), 10)
            except (OSError, asyncio.TimeoutError):
                return "no connection"
            try:
                writer.write(b"GET /sleep?s=0.5 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                data = await asyncio.wait_for(reader.read(), 10)
                return "answered" if data.startswith(b"HTTP/1.1 200") else "refused"
            except (OSError, asyncio.TimeoutError):
                return "timed out"
            finally:
                writer.close()
        return await asyncio.gather(*(one() for _ in range(n)))

    results = asyncio.run(burst(100))
    t0 = time.monotonic()
    took = answers(port, timeout=30)
    print("\nulimit -n 64, 100 clients: %s; answering again after %s s, worker fds %d"
          % ({k: results.count(k) for k in set(results)},
             None if took is None else "%.1f" % (time.monotonic() - t0), worker.num_fds()))
    assert took is not None, "the worker never answered again:\n" + srv.log()[-2000:]
    assert results.count("answered") > 0
    # and a second burst is served as well
    results = asyncio.run(burst(30))
    assert results.count("answered") == 30, results


# -- 4. a client gone during a response that never suspends ------------------

@pytest.mark.parametrize("path", ["/endless", "/zerofile", "/raw/writer"])
def test_an_endless_inline_response_stops_when_the_client_goes(gunicorn, path):
    srv = gunicorn(app=APP)
    worker = worker_of(srv)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MIB)
    s.settimeout(10)
    s.connect(("127.0.0.1", srv.port))
    s.sendall(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path.encode())
    # gone at once: the response starts after the client left, its writes
    # fail and never wait for a drain
    reset(s)
    t0 = time.monotonic()
    cpu0 = sum(worker.cpu_times()[:2])
    first = http_get(srv.port, "/streamed", timeout=10)
    assert first is not None, "the worker is deaf after the client left"
    time.sleep(1.0)
    second = http_get(srv.port, "/streamed", timeout=10)
    assert second is not None, "the worker is deaf after the client left"
    cpu1 = sum(worker.cpu_times()[:2])
    print("\n%s: client reset; worker answered after %.2fs, chunks %s -> %s, CPU %.2fs in %.1fs"
          % (path, time.monotonic() - t0, first[1], second[1], cpu1 - cpu0,
             time.monotonic() - t0))
    assert first[1] == second[1], "the response is still being produced"


@pytest.mark.parametrize("path", ["/endless", "/raw/writer"])
def test_a_long_inline_response_does_not_starve_others(gunicorn, path):
    srv = gunicorn(app=APP)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MIB)
    s.settimeout(10)
    s.connect(("127.0.0.1", srv.port))
    s.sendall(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path.encode())
    stop = threading.Event()
    read = [0]

    def drain():
        buf = bytearray(4 * MIB)
        while not stop.is_set():
            try:
                read[0] += s.recv_into(buf)
            except OSError:
                return

    t = threading.Thread(target=drain)
    t.start()
    try:
        while read[0] < 8 * MIB:
            time.sleep(0.01)
        took = answers(srv.port, "/hello", timeout=10, each=5)
        print("\n%s read as fast as it comes: /hello answered after %s s"
              % (path, took and "%.2f" % took))
        assert took is not None
    finally:
        stop.set()
        reset(s)
        t.join(10)


# -- 5. SystemExit and KeyboardInterrupt from a view -------------------------

@pytest.mark.parametrize("target", ["/die?code=3", "/die?code=3&after=1", "/die?kind=kbi",
                                    "/die?kind=kbi&after=1", "/die?code=0&after=1",
                                    "/die_legacy?code=3", "/die_legacy?kind=kbi"])
def test_systemexit_in_a_view_is_a_500(gunicorn, target):
    srv = gunicorn(app=APP)
    query = target
    pid = json.loads(http_get(srv.port, "/env")[1])["pid"]
    data, _ = blocking_exchange(
        srv.port, b"GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % target.encode())
    (r,) = parse_all(data)
    assert r.status == 500
    # the same worker goes on, and the master is up
    r = http_get(srv.port, "/env")
    assert r is not None and json.loads(r[1])["pid"] == pid
    assert srv.proc.poll() is None
    name = "KeyboardInterrupt" if "kbi" in query else "SystemExit"
    assert name in srv.log()


# -- 6. max_requests is exact; graceful restarts lose nothing ----------------

class KeepAliveClient:
    """Sequential requests on a kept-alive connection; reconnects when the
    server announces a close.  A connection closed without an answer to a
    request sent is a lost request."""

    def __init__(self, port):
        self.port = port
        self.sock = None
        self.lost = 0
        self.answered = []

    def request(self, path):
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        s = self.sock
        try:
            s.sendall(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path.encode())
            buf = b""
            while True:
                rs = parse_all(buf, eof=False)
                if rs:
                    break
                data = s.recv(65536)
                if not data:
                    raise ConnectionError
                buf += data
        except OSError:
            self.lost += 1
            self.close()
            return None
        (r,) = rs
        self.answered.append(r)
        if r.header("connection") == "close":
            self.close()
        return r

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def test_max_requests_is_exact(gunicorn):
    srv = gunicorn("--max-requests", "10", app=APP)
    c = KeepAliveClient(srv.port)
    pids = []
    deadline = time.monotonic() + 60
    while len(pids) < 35 and time.monotonic() < deadline:
        r = c.request("/env")
        if r is None:
            time.sleep(0.05)
            continue
        pids.append(json.loads(r.body)["pid"])
    c.close()
    counts = [pids.count(p) for p in dict.fromkeys(pids)]
    print("\n--max-requests 10: answers per worker %s, lost %d" % (counts, c.lost))
    assert len(pids) == 35 and c.lost == 0
    # the first worker also answered the fixture's readiness check
    assert len(counts) >= 4 and all(n <= 10 for n in counts), counts
    assert all(n == 10 for n in counts[1:-1]), counts


def test_graceful_restarts_lose_no_keepalive_request(gunicorn):
    srv = gunicorn("--keep-alive", "5", app=APP)
    stop = threading.Event()
    clients = [KeepAliveClient(srv.port) for _ in range(4)]

    def run(c):
        while not stop.is_set():
            c.request("/hello")

    threads = [threading.Thread(target=run, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    try:
        pids = set()
        for _ in range(4):
            time.sleep(0.7)
            pids.add(worker_of(srv).pid)
            srv.signal(signal.SIGHUP)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    kids = psutil.Process(srv.proc.pid).children()
                except psutil.Error:
                    break
                if len(kids) == 1 and kids[0].pid not in pids:
                    break
                time.sleep(0.05)
        time.sleep(0.7)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        for c in clients:
            c.close()
    lost = sum(c.lost for c in clients)
    total = sum(len(c.answered) for c in clients)
    print("\n4 SIGHUPs under 4 keep-alive clients: %d answered, %d lost" % (total, lost))
    assert not any(t.is_alive() for t in threads)
    assert total > 100
    assert lost == 0


# -- 7. hop-by-hop headers from the app --------------------------------------

@pytest.mark.parametrize("query,version,body_framing", [
    ("h=te,conn,ka,up", b"1.1", "content-length"),
    ("h=te,conn,ka,up&gen=1", b"1.1", "chunked"),
    ("h=te,cl&gen=1", b"1.1", "content-length"),
    ("h=te&gen=1", b"1.0", "close"),
    ("h=te,cl&gen=1", b"1.0", "content-length"),
])
def test_hop_by_hop_headers_from_the_app_are_dropped(gunicorn, query, version, body_framing):
    srv = gunicorn(app=APP)
    data, closed = blocking_exchange(
        srv.port, b"GET /raw/x?%s HTTP/%s\r\nHost: t\r\nConnection: close\r\n\r\n"
        % (query.encode(), version))
    (r,) = parse_all(data)
    names = [k for k, _ in r.headers]
    assert r.status == 200 and r.body == b"hello", data
    for hop in ("keep-alive", "upgrade"):
        assert hop not in names, data
    assert names.count("connection") == 1 and r.header("connection") == "close"
    if body_framing == "chunked":
        assert r.header("transfer-encoding") == "chunked", data
        assert "content-length" not in names
    else:
        assert "transfer-encoding" not in names, data
    if body_framing == "content-length":
        assert r.header("content-length") == "5", data


# -- 8. secure scheme headers --------------------------------------------------

def test_contradictory_scheme_headers_are_refused(gunicorn):
    srv = gunicorn("--forwarded-allow-ips", "127.0.0.1", app=APP)

    def scheme(*headers):
        data, _ = blocking_exchange(
            srv.port, b"GET /env HTTP/1.1\r\nHost: t\r\n%sConnection: close\r\n\r\n"
            % b"".join(h + b"\r\n" for h in headers))
        (r,) = parse_all(data)
        if r.status == 400:
            assert r.body == b"Contradictory scheme headers", data
        return r.status, (json.loads(r.body)["wsgi.url_scheme"] if r.status == 200 else None)

    assert scheme(b"X-Forwarded-Proto: http", b"X-Forwarded-Protocol: ssl") == (400, None)
    assert scheme(b"X-Forwarded-Proto: https", b"X-Forwarded-Proto: http") == (400, None)
    assert scheme(b"X-Forwarded-Proto: https", b"X-Forwarded-Proto: https") == (200, "https")
    assert scheme(b"X-Forwarded-Proto: https", b"X-Forwarded-Ssl: on") == (200, "https")
    assert scheme(b"X-Forwarded-Proto: http") == (200, "http")
    assert scheme() == (200, "http")


# -- 9. bodyless and interim statuses from the app --------------------------------

def test_204_carries_no_content_length_and_1xx_is_no_final_answer(gunicorn):
    srv = gunicorn(app=APP)
    pieces = (b"GET /raw/x?status=204&h=cl HTTP/1.1\r\nHost: t\r\n\r\n"
              b"GET /raw/x?status=304&h=cl HTTP/1.1\r\nHost: t\r\n\r\n"
              b"GET /raw/x?status=100 HTTP/1.1\r\nHost: t\r\n\r\n")
    data, closed = blocking_exchange(srv.port, pieces, timeout=10)
    assert closed, data
    rs = parse_all(data, eof=False)
    assert [r.status for r in rs] == [204, 304, 500], data
    assert rs[0].header("content-length") is None and rs[0].body == b""
    # a 304 may tell the length the 200 would have had, with no body
    assert data.count(b"hello") == 0


# -- 10. the access log's request headers -------------------------------------

def test_access_log_shows_content_type_and_length(gunicorn):
    srv = gunicorn("--access-logfile", "-", "--access-logformat",
                   '%(r)s ct=%({content-type}i)s cl=%({content-length}i)s', app=APP)
    data, _ = blocking_exchange(
        srv.port, b"POST /hello HTTP/1.1\r\nHost: t\r\nContent-Type: text/x-thing\r\n"
        b"Content-Length: 3\r\nConnection: close\r\n\r\nabc")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "POST /hello" not in srv.log():
        time.sleep(0.05)
    assert "POST /hello HTTP/1.1 ct=text/x-thing cl=3" in srv.log(), srv.log()


# -- back-pressure stops new requests, not the body of the one in progress ----

def test_a_paused_write_still_lets_the_body_in_progress_come():
    from .inprocess import connect, spin

    loop = asyncio.new_event_loop()
    got = []
    holder = {}

    def app(environ, start_response):
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"early ")
        holder["proto"].pause_writing()  # the client reads nothing until it has sent all
        got.append(environ["wsgi.input"].read())
        return [b"late"]

    try:
        server, proto, t = connect(loop, app)
        holder["proto"] = proto
        proto.data_received(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n")
        spin(loop)
        proto.data_received(b"hello")
        spin(loop)
        assert got == [b"hello"]
        proto.resume_writing()
        spin(loop)
        (r,) = parse_all(bytes(t.out))
        assert r.body == b"early late"
        proto.connection_lost(None)
        spin(loop)
    finally:
        loop.close()
