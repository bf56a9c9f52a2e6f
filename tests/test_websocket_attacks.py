"""Websockets attacked from outside: raw-socket clients and views that
misbehave, against a real gunicorn with aiopyramid's worker serving
tests/websocket_attack_app.py."""
import json
import socket
import time

import pytest

from .conftest import http_get
from .wsclient import CLOSE, PING, TEXT, RawClient, frame

APP = "websocket_attack_app:main()"


@pytest.fixture
def server(gunicorn):
    return gunicorn(app=APP)


def handshake(port, path):
    """A RawClient whose handshake for path was answered 101."""
    c = RawClient(port)
    c.send(("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n" % (path, port)).encode())
    while b"\r\n\r\n" not in c.buf:
        chunk = c.sock.recv(65536)
        assert chunk, "closed before the handshake's answer: %r" % c.buf
        c.buf += chunk
    head, _, c.buf = c.buf.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head
    return c


def close_code(c):
    """The code of the server's close frame (frames before it skipped)."""
    while True:
        fin, rsv, op, payload = c.recv_frame()
        if op == CLOSE:
            return int.from_bytes(payload[:2], "big") if payload else None


@pytest.fixture(autouse=True)
def close_clients():
    yield
    for c in RawClient.opened:
        c.close()
    RawClient.opened.clear()


# -- views that raise BaseExceptions -----------------------------------------

@pytest.mark.parametrize("kind", ["systemexit", "keyboardinterrupt",
                                  "cancelled", "generatorexit"])
def test_view_raising_a_base_exception_closes_1011_and_the_worker_goes_on(
        server, kind):
    """SystemExit, KeyboardInterrupt, CancelledError or GeneratorExit raised
    by a websocket view: the websocket is closed with 1011 (as an HTTP view's
    is answered 500), and the worker (and master) go on serving."""
    c = handshake(server.port, "/ws/raise/" + kind)
    c.sock.settimeout(10)
    assert c.recv_message() == (TEXT, b"raising " + kind.encode())
    assert close_code(c) == 1011
    c.close()
    assert server.proc.poll() is None, server.log()
    e = handshake(server.port, "/ws/echo")
    e.sock.settimeout(10)
    e.send(frame(TEXT, "still here"))
    assert e.recv_message() == (TEXT, b"still here")
    e.close()
    assert "Worker exiting" not in server.log(), server.log()
