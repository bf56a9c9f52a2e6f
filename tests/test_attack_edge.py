"""ATTACK (attack-edge): what the last push built, attacked from outside
with real gunicorn processes on 127.0.0.1: the young GC threshold that
follows the connections open (_GcPacer), the accept path (_Acceptor) with
TLS handshakes in progress at shutdown."""
import resource
import shutil
import signal
import socket
import subprocess
import time

import pytest

from .conftest import get_ok
from .rawhttp import read_to_eof

pytest.importorskip("gunicorn")




IDLE = 700
UPLOADS = 600


@pytest.mark.parametrize("kind", [
    "python",
    "tuned",
])
def test_attack_idle_connections_keep_garbage_and_its_files(gunicorn, kind):
    """An attacker holds 700 connections that send nothing (below
    worker_connections 1000, each closed only after the worker timeout,
    30 s) while 600 uploads of 100 kB are refused by a plain view with
    HTTPForbidden.  Under Python's threshold the cycles each refusal
    leaves are collected within a few dozen requests; the tuned worker
    kept their temporary files open until it ran out of descriptors (62
    uploads got a 500, accept() failed) when its threshold followed the
    connections open.  Now idle connections raise nothing, and the server
    closes each spooled body as its request ends."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1300:
        pytest.skip("the open file limit (%d) is below 1300" % hard)
    # a deployment's soft limit of 1,024, which the worker raises to
    # worker_connections + 256
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    idle = []
    statuses = {}
    try:
        srv = gunicorn("--worker-connections", "1000",
                       app="attack_gc_app:main()", env={"AIOPYRAMID_GC": kind})
        for _ in range(IDLE):
            idle.append(socket.create_connection(("127.0.0.1", srv.port),
                                                 timeout=10))
        get_ok(srv.port, "/hello")  # all of them accepted by now
        start = most = int(get_ok(srv.port, "/fds"))
        body = b"y" * 100000
        for i in range(UPLOADS):
            with socket.create_connection(("127.0.0.1", srv.port), timeout=15) as s:
                s.sendall(b"POST /refuse HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                          b"Content-Length: %d\r\n\r\n" % len(body) + body)
                status = read_to_eof(s)[9:12]
            statuses[status] = statuses.get(status, 0) + 1
            if i % 20 == 19:
                try:
                    most = max(most, int(get_ok(srv.port, "/fds")))
                except (AssertionError, OSError):  # out of descriptors
                    most = max(most, 10 ** 6)
    finally:
        for s in idle:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert statuses == {b"403": UPLOADS} and most - start < 200, (
        statuses, start, most)


def _self_signed(tmp_path):
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGQUIT])
def test_attack_tls_handshakes_in_progress_at_shutdown(gunicorn, tmp_path, loop, sig):
    """Clients that connect to the TLS port and stall their handshake (send
    nothing, or half a ClientHello) while the worker stops: it exits at
    once and quietly.  On asyncio's loop each handshake's coroutine was
    left to the collector after the loop closed: one 'Exception ignored
    ... RuntimeError: Event loop is closed' traceback per client in the
    error log."""
    import ssl

    cert, key = _self_signed(tmp_path)
    srv = gunicorn("--certfile", str(cert), "--keyfile", str(key),
                   env={"AIOPYRAMID_LOOP": loop}, wait=False)
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.check_hostname = False
    deadline = time.monotonic() + 30
    while True:  # ready: one TLS request answered
        try:
            with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as raw:
                with ctx.wrap_socket(raw) as s:
                    s.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                    assert b"Hello, world!" in read_to_eof(s)
            break
        except (OSError, ssl.SSLError):
            if time.monotonic() > deadline or srv.proc.poll() is not None:
                raise
            time.sleep(0.2)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ctx.wrap_bio(incoming, outgoing)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    hello = outgoing.read()
    stalled = []
    try:
        for i in range(6):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            if i % 2:
                s.sendall(hello[:len(hello) // 2])
            stalled.append(s)
        time.sleep(0.5)  # accepted, their handshakes waiting
        srv.signal(sig)
        try:
            srv.proc.wait(20)
        except subprocess.TimeoutExpired:
            pytest.fail("the worker did not stop:\n" + srv.log())
    finally:
        for s in stalled:
            s.close()
    log = srv.log()
    assert "Traceback" not in log and "Exception ignored" not in log, log


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_attack_no_job_sees_another_requests_threadlocals(gunicorn, loop):
    """The executor pushes Pyramid's threadlocals in C and never pops them
    ('the context is the call's own copy').  Interleaved plain and
    coroutine requests: a plain view sees its own request and registry, a
    thread it starts sees none (as under any WSGI server), a coroutine
    view's asyncio.to_thread job its own, run_in_executor(None, ...) none
    (asyncio's default executor copies no context either), and a job
    submitted from an empty context none: never another request's."""
    import asyncio
    import json
    import random

    from .rawhttp import parse_all

    srv = gunicorn(app="attack_edge_app:main()", env={"AIOPYRAMID_LOOP": loop})
    rnd = random.Random(4)

    async def one(i, kind):
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        try:
            writer.write(b"GET /%s?tag=t%d HTTP/1.1\r\nHost: t\r\n"
                         b"Connection: close\r\n\r\n" % (kind.encode(), i))
            data = await asyncio.wait_for(reader.read(), 30)
        finally:
            writer.close()
        return json.loads(parse_all(data)[0].body)

    async def main():
        wrong = []
        for r in range(4):
            kinds = [rnd.choice(["plain", "coro", "bare_job"]) for _ in range(50)]
            got = await asyncio.gather(*(one(r * 100 + i, k)
                                         for i, k in enumerate(kinds)))
            for i, (kind, body) in enumerate(zip(kinds, got)):
                tag = "t%d" % (r * 100 + i)
                want = {"plain": {"view": tag, "registry": True, "thread": None},
                        "coro": {"view": tag, "to_thread": tag,
                                 "default_executor": None},
                        "bare_job": {"seen": None}}[kind]
                if body != want:
                    wrong.append((kind, tag, body))
        return wrong

    assert asyncio.run(main()) == []


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_attack_sigquit_with_plain_views_waiting_on_the_loop(gunicorn, loop):
    """40 plain views (more than the default executor has threads: the rest
    queued) each wait for a synchronized coroutine sleeping 60 s; SIGQUIT.
    The worker woke the waiting threads, but the queued views of the
    aborted requests then started and waited in their turn, and
    shutdown_default_executor, cancelled by its 5 s wait_for, joined the
    executor's threads in its finally on the loop's own thread: the loop
    stopped, so nothing those threads waited for could ever end.  The
    worker hung until the master's SIGKILL after graceful_timeout.  The
    views queued for the aborted requests must not start at all."""
    srv = gunicorn("--graceful-timeout", "20", app="attack_edge_app:main()",
                   env={"AIOPYRAMID_LOOP": loop})
    clients = []
    try:
        for _ in range(40):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            s.sendall(b"GET /sync_wait?s=60 HTTP/1.1\r\nHost: t\r\n\r\n")
            clients.append(s)
        time.sleep(1.0)  # the views are running or queued
        running = srv.log().count("sync_wait started")
        srv.signal(signal.SIGQUIT)
        try:
            srv.proc.wait(15)
        except subprocess.TimeoutExpired:
            pytest.fail("the worker did not stop at SIGQUIT:\n" + srv.log()[-3000:])
    finally:
        for s in clients:
            s.close()
    log = srv.log()
    assert "SIGKILL" not in log, log[-3000:]
    # and the views queued for the aborted requests never started
    assert 0 < running == log.count("sync_wait started") < 40, (running, log[-3000:])
