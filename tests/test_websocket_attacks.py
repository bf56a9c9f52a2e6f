"""Websockets attacked from outside: raw-socket clients and views that
misbehave, against a real gunicorn with aiopyramid's worker serving
tests/websocket_attack_app.py."""
import json
import os
import select
import socket
import time

import pytest

from .conftest import http_get
from .wsclient import CLOSE, PING, PONG, TEXT, RawClient, frame

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


# -- a ping flood from a client that does not read ---------------------------

def send_while_reading(c, data, until, timeout=60.0):
    """Sends data while reading what comes (a client whose unsent bytes
    wait for the server, which waits for it to read), until the bytes
    `until` have come: the number of bytes read."""
    c.sock.setblocking(False)
    got, tail = 0, b""
    deadline = time.monotonic() + timeout
    try:
        while until not in tail:
            assert time.monotonic() < deadline, "the server never read on"
            r, w, _ = select.select([c.sock], [c.sock] if data else [], [], 1.0)
            if r:
                chunk = c.sock.recv(1 << 20)
                assert chunk, "the server closed the connection"
                got += len(chunk)
                tail = (tail + chunk)[-64:]
            if w:
                try:
                    data = data[c.sock.send(data[:1 << 20]):]
                except BlockingIOError:
                    pass
    finally:
        c.sock.setblocking(True)
    return got


def rss_kb(server):
    status, body = http_get(server.port, "/rss")
    assert status == 200
    return int(body)


def test_ping_flood_from_a_client_that_never_reads_is_bounded(server):
    """Every ping gets a pong, but a client that sends pings and never reads
    the pongs must not make the server buffer them all: reading stops while
    the transport's write buffer is over its high-water mark."""
    c = handshake(server.port, "/ws/echo")
    before = rss_kb(server)
    flood = frame(PING, b"p" * 125) * 200000  # 26 MB of pings
    c.sock.setblocking(False)
    sent = 0
    deadline = time.monotonic() + 30
    while sent < len(flood) and time.monotonic() < deadline:
        if not select.select([], [c.sock], [], 2.0)[1]:
            break  # the server stopped reading: what should happen
        try:
            sent += c.sock.send(flood[sent:sent + 65536])
        except BlockingIOError:
            pass
    c.sock.setblocking(True)
    # the server stopped taking pings (the kernel's buffers hold a few MB)
    assert sent < len(flood), "the server read all %d bytes of pings" % sent
    if not os.environ.get("AIOPYRAMID_ASAN"):  # ASan's quarantine keeps freed memory
        grown = rss_kb(server) - before
        assert grown < 8 * 1024, "%d KB more after %d bytes of pings" % (grown, sent)
    # once the client reads, the pongs come, the pings it still had to
    # send go, and the connection works
    got = send_while_reading(c, flood[sent:] + frame(TEXT, "after"),
                             until=b"\x81\x05after")
    assert got == 200000 * 127 + 7  # every pong (2 + 125 bytes), then the echo


# -- the C WebSocket's own methods -------------------------------------------

class _Transport:
    """Just enough of an asyncio transport for _core.WebSocket.attach()."""

    def __init__(self):
        self.written = []

    def set_protocol(self, protocol):
        self.protocol = protocol

    def write(self, data):
        self.written.append(bytes(data))

    def get_write_buffer_size(self):
        return 0

    def get_write_buffer_limits(self):
        return (16384, 65536)

    def write_eof(self):
        pass

    def close(self):
        pass

    def abort(self):
        pass

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass


def test_ping_without_data_sends_an_empty_ping():
    """ping() (its data defaults to b'') sends an empty ping; it read an
    uninitialized length and raised 'at most 125 bytes'."""
    import asyncio

    from aiopyramid import _core

    async def main():
        ws = _core.WebSocket(asyncio.get_running_loop())
        transport = _Transport()
        ws.attach(transport, b"")
        fut = ws.ping()
        assert transport.written == [b"\x89\x00"]
        ws.data_received(frame(PONG))  # its pong
        await asyncio.wait_for(fut, 5)
        ws.connection_lost(None)

    asyncio.run(main())


# -- compressed frames' own length ---------------------------------------------

def test_compressed_frame_longer_than_any_message_gets_1009(server):
    """A compressed frame declaring 2**62 bytes: inflated size is bounded,
    but its compressed payload was not, so a peer could stream empty deflate
    blocks into one frame for ever (CPU, and a connection max_message_size
    never ends).  No compressed message of max_message_size is much bigger
    than that on the wire: 1009 at the header."""
    c = RawClient(server.port)
    c.send(("GET /ws/echo HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
            % server.port).encode())
    while b"\r\n\r\n" not in c.buf:
        chunk = c.sock.recv(65536)
        assert chunk
        c.buf += chunk
    head, _, c.buf = c.buf.partition(b"\r\n\r\n")
    assert b"permessage-deflate" in head, head
    c.sock.settimeout(10)
    # RSV1 + binary, 64-bit length 2**62, mask, then empty stored blocks
    c.send(bytes([0xC2, 0xFF]) + (1 << 62).to_bytes(8, "big") + b"\0\0\0\0" +
           b"\x00\x00\x00\xff\xff" * 1000)
    assert close_code(c) == 1009
