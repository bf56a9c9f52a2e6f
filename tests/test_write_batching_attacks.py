"""Attacks on the write batching (responses held to the end of the loop's
iteration, csrc/http/protocol.c proto_write_bytes): a real gunicorn with
our worker (tests/batching_attack_app.py, whose every body byte says which
request made it) and raw sockets; every wait is bounded, so a response held
back forever fails the test."""
import shutil
import socket
import ssl
import subprocess
import time

import pytest

from .batching_attack_app import pattern
from .rawhttp import parse_all

pytest.importorskip("gunicorn")

APP = "batching_attack_app:main()"
LOOPS = ["uvloop", "asyncio"]


@pytest.fixture
def cert(tmp_path):
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-keyout",
                    str(key), "-out", str(cert)], check=True,
                   capture_output=True)
    return cert, key


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
