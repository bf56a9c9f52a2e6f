"""Attacks on the write batching (responses held to the end of the loop's
iteration, csrc/http/protocol.c proto_write_bytes): a real gunicorn with
our worker (tests/batching_attack_app.py, whose every body byte says which
request made it) and raw sockets; every wait is bounded, so a response held
back forever fails the test."""
import socket
import ssl
import time

import pytest

from .batching_attack_app import pattern
from .rawhttp import parse_all

pytest.importorskip("gunicorn")

APP = "batching_attack_app:main()"
LOOPS = ["uvloop", "asyncio"]


def tls_request_then_close_notify(port, cafile, request, timeout=10.0):
    """A TLS client that sends `request` and its close_notify in one
    packet (as a client that shuts its side after sending does), then
    reads what the server sends until it closes: (plaintext, how)."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.check_hostname = False
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        for _ in range(20):
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                s.sendall(outgoing.read())
                data = s.recv(65536)
                if not data:
                    raise EOFError("the server closed during the handshake")
                incoming.write(data)
        s.sendall(outgoing.read())
        tls.write(request)
        try:
            tls.unwrap()
        except ssl.SSLWantReadError:
            pass  # the server's close_notify is still to come
        s.sendall(outgoing.read())  # the request and close_notify together
        raw, how = b"", "eof"
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                how = "timeout"
                break
            try:
                data = s.recv(65536)
            except socket.timeout:
                how = "timeout"
                break
            except ConnectionResetError:
                how = "reset"
                break
            if not data:
                break
            raw += data
    incoming.write(raw)
    plain = b""
    try:
        while True:
            data = tls.read(65536)
            if not data:
                break
            plain += data
    except (ssl.SSLZeroReturnError, ssl.SSLWantReadError, ssl.SSLEOFError):
        pass
    return plain, how


@pytest.mark.parametrize("loop", LOOPS)
def test_tls_client_closing_its_side_after_the_request_gets_the_response(
        gunicorn, cert, loop):
    """A TLS connection cannot half-close: the client's close_notify right
    behind its request makes the transport close as eof_received returns.
    A response made inline, before that, was written before the close;
    held to the iteration's end it was dropped by the closing transport
    (the client got no answer at all)."""
    certfile, keyfile = cert
    srv = gunicorn("--certfile", str(certfile), "--keyfile", str(keyfile),
                   app=APP, env={"AIOPYRAMID_LOOP": loop}, wait=False)
    deadline = time.monotonic() + 30
    while True:  # ready once a TLS request is answered
        try:
            with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as raw:
                ctx = ssl.create_default_context(cafile=str(certfile))
                ctx.check_hostname = False
                with ctx.wrap_socket(raw) as s:
                    s.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\n"
                              b"Connection: close\r\n\r\n")
                    while s.recv(65536):
                        pass
            break
        except (OSError, ssl.SSLError):
            if time.monotonic() > deadline or srv.proc.poll() is not None:
                raise
            time.sleep(0.2)
    # made inline (the view never waits): a response still being made as
    # the transport closes is lost, as it always was
    for path, size in [(b"/c/a/5", 5), (b"/c/b/65535?mode=gen&chunk=1000", 65535),
                       (b"/c/c/70000", 70000)]:
        plain, how = tls_request_then_close_notify(
            srv.port, certfile,
            b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path)
        responses = parse_all(plain, eof=False)
        assert len(responses) == 1, (path, how, plain[:200])
        (r,) = responses
        tag = path.split(b"/")[2].decode()
        assert r.status == 200 and r.body == pattern(tag, size), path


@pytest.mark.parametrize("loop", LOOPS)
def test_tls_close_notify_before_a_response_is_made_closes_without_it(
        gunicorn, cert, loop):
    """The README's limit (Serving, half-close): TLS has no half-close in
    asyncio's and uvloop's SSL transports (eof_received's return value is
    ignored under SSL: the transport starts its shutdown as it returns).
    A response still being made when the client's close_notify comes (a
    coroutine view that waits, a view in the executor) is lost: the client
    gets the server's close_notify and the connection's end, no answer, at
    once (not after the view); the worker serves on."""
    certfile, keyfile = cert
    srv = gunicorn("--certfile", str(certfile), "--keyfile", str(keyfile),
                   app=APP, env={"AIOPYRAMID_LOOP": loop}, wait=False)
    deadline = time.monotonic() + 30
    while True:  # ready once a TLS request is answered
        try:
            plain, how = tls_request_then_close_notify(
                srv.port, certfile, b"GET /c/r/5 HTTP/1.1\r\nHost: t\r\n\r\n")
            if parse_all(plain, eof=False):
                break
        except (OSError, ssl.SSLError, EOFError):
            pass
        if time.monotonic() > deadline or srv.proc.poll() is not None:
            pytest.fail("the TLS server never answered:\n" + srv.log())
        time.sleep(0.2)
    for path in [b"/c/a/5?wait=2", b"/l/b/5"]:
        plain, how = tls_request_then_close_notify(
            srv.port, certfile, b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path,
            timeout=20)
        assert (plain, how) == (b"", "eof"), (path, how, plain[:200])
    # and the next client is served
    plain, how = tls_request_then_close_notify(
        srv.port, certfile, b"GET /c/z/5 HTTP/1.1\r\nHost: t\r\n\r\n")
    (r,) = parse_all(plain, eof=False)
    assert r.status == 200 and r.body == pattern("z", 5)


# -- pipelined mixes and clients that leave ---------------------------------

SIZES = [1, 100, 30000, 65535, 65536, 65537, 140000]
CHUNKS = ["", "1000", "65536", "100,70000,5"]


def pipelined_mix(rnd, n, kinds=("c", "l", "w")):
    """(request bytes, expected [(tag, size)]) for n requests of random
    kinds, sizes around HELD_MAX and ways of sending the body."""
    reqs, expected = [], []
    for i in range(n):
        kind = rnd.choice(kinds)
        size = rnd.choice(SIZES)
        chunk = rnd.choice(CHUNKS)
        tag = "%d" % i
        if kind == "w":
            path = "/w/%s/%d?chunk=%s" % (tag, size, chunk)
        else:
            mode = rnd.choice(["list", "gen", "fw"])
            if mode == "fw":
                chunk = rnd.choice(["1000", "65536", "70000"])
            path = "/%s/%s/%d?mode=%s&chunk=%s" % (kind, tag, size, mode, chunk)
        reqs.append(b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % path.encode())
        expected.append((tag, size))
    return b"".join(reqs), expected


def read_responses(sock, count, timeout=30.0):
    """The first `count` responses (fewer if the server closes or the time
    runs out)."""
    sock.settimeout(timeout)
    buf, out = b"", []
    deadline = time.monotonic() + timeout
    while len(out) < count and time.monotonic() < deadline:
        try:
            data = sock.recv(1 << 20)
        except (socket.timeout, ConnectionResetError):
            break
        if not data:
            break
        buf += data
        out = parse_all(buf, eof=False)
    return out


@pytest.mark.parametrize("loop", LOOPS)
def test_pipelined_mixes_around_the_held_limit_arrive_whole_and_in_order(
        gunicorn, loop):
    import random
    srv = gunicorn(app=APP, env={"AIOPYRAMID_LOOP": loop})
    rnd = random.Random(20261202)
    for _ in range(3):
        data, expected = pipelined_mix(rnd, 40)
        with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
            s.sendall(data)
            got = read_responses(s, len(expected))
        assert len(got) == len(expected)
        for (tag, size), r in zip(expected, got):
            assert r.status == 200 and r.body == pattern(tag, size), (tag, size)


@pytest.mark.parametrize("loop", LOOPS)
def test_clients_resetting_with_responses_held_leave_the_worker_serving(
        gunicorn, loop):
    """Clients that pipeline, read part of the answers (or none) and reset:
    the worker survives (the same process; under ASan, no error), logs no
    error, and still answers whole."""
    import random
    import struct

    psutil = pytest.importorskip("psutil")
    srv = gunicorn(app=APP, env={"AIOPYRAMID_LOOP": loop})
    worker = [k for k in psutil.Process(srv.proc.pid).children()]
    rnd = random.Random(7)
    for round_ in range(4):
        socks = []
        for _ in range(15):
            data, expected = pipelined_mix(rnd, rnd.randint(1, 25))
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(data[:rnd.randint(1, len(data))])
            socks.append(s)
        for s in socks:
            if rnd.random() < 0.3:
                # part of the answers (those of requests sent whole)
                s.settimeout(0.2)
                try:
                    s.recv(rnd.choice([100, 70000]))
                except OSError:
                    pass
            # a reset (RST), not a FIN
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                         struct.pack("ii", 1, 0))
            s.close()
        time.sleep(0.1)
    data, expected = pipelined_mix(rnd, 20)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
        s.sendall(data)
        got = read_responses(s, len(expected))
    assert [r.body for r in got] == [pattern(t, n) for t, n in expected]
    assert [k.pid for k in psutil.Process(srv.proc.pid).children()] == \
        [k.pid for k in worker]
    log = srv.log()
    assert "Traceback" not in log and "ERROR" not in log.upper().replace(
        "ERROR_LOG", ""), log[-3000:]


# -- a server made for another loop -----------------------------------------

def test_a_server_made_for_another_loop_answers_or_says_why_not():
    """HttpServer(app, loop) served by a loop other than `loop` (made
    before asyncio.run() started its own, say): a response made inline went
    out at once before batching; held for a flush scheduled on a loop that
    never runs, the client waited forever with no word why.  It must get
    its answer, or the connection closes and the error log says why."""
    import asyncio

    from aiopyramid.server import HttpServer

    def hello(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hello"]

    other = asyncio.new_event_loop()
    errors = []

    async def main():
        loop = asyncio.get_running_loop()
        server = HttpServer(hello, other,
                            error_log=lambda msg, exc: errors.append(msg))
        listener = await loop.create_server(server, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            try:
                return await asyncio.wait_for(reader.read(65536), 5)
            except asyncio.TimeoutError:
                return None
        finally:
            writer.close()
            listener.close()

    try:
        data = asyncio.run(main())
    finally:
        other.close()
    assert data is not None, "no answer, no close: the response is held " \
        "for a loop that never runs"
    if data:
        (r,) = parse_all(data, eof=False)
        assert r.status == 200 and r.body == b"hello"
    else:
        assert any("loop" in e for e in errors), errors


# -- in-process: random pipelines, split at random, a strict transport ------

class StrictTransport:
    """Records writes; a write after close() is counted; pauses the
    protocol once more than `high` bytes were written, if given."""

    def __init__(self, high=None):
        self.writes, self.closed, self.after_close = [], False, 0
        self.high, self.paused, self.written, self.proto = high, False, 0, None

    def write(self, data):
        if self.closed:
            self.after_close += 1
        self.writes.append(bytes(data))
        self.written += len(data)
        if self.high and self.written > self.high and not self.paused:
            self.paused = True
            self.proto.pause_writing()

    def close(self):
        self.closed = True

    abort = close

    def is_closing(self):
        return self.closed

    def pause_reading(self):
        pass

    resume_reading = pause_reading

    def get_write_buffer_size(self):
        return 0

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 40000),
                "sockname": ("127.0.0.1", 80)}.get(name, default)


def random_request(rnd, i):
    """(bytes, (kind, tag, body size, method))."""
    kind = rnd.choice(["c", "l", "w", "r", "head", "close", "1.0", "bad",
                       "wait"])
    size = rnd.choice([0, 1, 100, 30000, 65535, 65536, 65537, 140000])
    q = "mode=%s&chunk=%s" % (rnd.choice(["list", "gen", "fw"]),
                              rnd.choice(["1000", "65536", "100,70000"]))
    if kind in ("c", "l"):
        line = "GET /%s/%d/%d?%s HTTP/1.1" % (kind, i, size, q)
    elif kind == "wait":
        line = "GET /c/%d/%d?%s&wait=0.001 HTTP/1.1" % (i, size, q)
    elif kind == "w":
        line = "GET /w/%d/%d?chunk=100,70000 HTTP/1.1" % (i, size)
    elif kind == "r":
        at = rnd.randint(0, size)
        line = "GET /r/%d/%d?at=%d HTTP/1.1" % (i, size, at)
        size = at
    elif kind == "head":
        line = "HEAD /c/%d/%d?%s HTTP/1.1" % (i, size, q)
        size = 0
    elif kind == "close":
        line = "GET /c/%d/%d HTTP/1.1\r\nConnection: close" % (i, size)
    elif kind == "1.0":
        return (b"GET /c/%d/%d HTTP/1.0\r\n\r\n" % (i, size),
                ("last", str(i), size, "GET"))
    else:
        return b"GET /x HTTP/1.1\r\nHost: h\r\nBad Header\r\n\r\n", \
            ("400", None, 0, "GET")
    how = {"close": "last", "r": "partial"}.get(kind, "ok")
    return (line + "\r\nHost: h\r\n\r\n").encode(), \
        (how, str(i), size, "HEAD" if kind == "head" else "GET")


def check_stream(out, expected, closed):
    """Problems found in the bytes written for `expected`, in order."""
    from .rawhttp import Incomplete, parse_one
    buf = out
    for how, tag, size, method in expected:
        try:
            r, buf = parse_one(buf, method, eof=False)
        except Incomplete:
            if how == "partial" and buf.startswith(b"HTTP/1.1 200"):
                body = buf.split(b"\r\n\r\n", 1)[1]
                ok = body == pattern(tag, size) and closed
                return [] if ok else ["partial body %r wrong" % tag]
            return ["no whole response for %s %r: %r" % (how, tag, buf[:80])]
        if how == "400":
            return [] if r.status == 400 else ["%d, not 400" % r.status]
        if how == "partial":
            # all of the body before the failure, or a 500 before any
            ok = closed and (r.status == 500 or r.body == pattern(tag, size))
            return [] if ok else ["partial %r: %d" % (tag, r.status)]
        if r.status != 200 or r.body != pattern(tag, size):
            return ["%r: %d %r" % (tag, r.status, r.body[:40])]
        if how == "last":
            return [] if closed else ["not closed after %r" % tag]
    return ["extra bytes %r" % buf[:80]] if buf else []


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_random_pipelines_split_at_random_keep_order_and_never_write_after_close(
        loop_kind):
    import asyncio
    import random

    from aiopyramid.server import HttpServer

    from .batching_attack_app import main

    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        new_loop = uvloop.new_event_loop
    else:
        new_loop = asyncio.new_event_loop
    app = main()
    failures = []
    for seed in range(150):
        rnd = random.Random(seed)
        loop = new_loop()
        try:
            server = HttpServer(app, loop, error_log=lambda m, e: None)
            proto = server()
            t = StrictTransport(high=rnd.choice([None, None, 70000, 300000]))
            t.proto = proto
            proto.connection_made(t)
            reqs = [random_request(rnd, i) for i in range(rnd.randint(1, 10))]
            data = b"".join(r for r, _ in reqs)

            async def go():
                pos = 0
                while pos < len(data):
                    n = rnd.choice([len(data), 1000, 50, 100000])
                    proto.data_received(data[pos:pos + n])
                    pos += n
                    for _ in range(rnd.randint(0, 3)):
                        await asyncio.sleep(0)
                # until every response is whole (or the connection closed),
                # bounded: plain views answer from the executor's threads,
                # which a loaded or sanitized run keeps waiting for the GIL
                deadline = loop.time() + 20
                i = 0
                while loop.time() < deadline:
                    i += 1
                    await asyncio.sleep(0 if i % 50 else 0.001)
                    if t.paused and rnd.random() < 0.5:
                        t.paused, t.high = False, None
                        proto.resume_writing()
                    if t.closed:
                        break
                    if i % 50 == 0 and not check_stream(
                            b"".join(t.writes), [e for _, e in reqs], t.closed):
                        break
                await asyncio.sleep(0.02)
                for _ in range(100):
                    await asyncio.sleep(0)

            loop.run_until_complete(go())
            problems = check_stream(b"".join(t.writes), [e for _, e in reqs],
                                    t.closed)
            if t.after_close:
                problems.append("%d writes after close" % t.after_close)
            if problems:
                failures.append((seed, problems))
            proto.connection_lost(None)
        finally:
            loop.close()
    assert not failures, failures[:5]
