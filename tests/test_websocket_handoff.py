"""The HTTP server's hand-off of a connection to the websocket layer
(csrc/http/upgrade.c), with a stand-in WebSocket that records what it is
given: a 101 carrying the WebSocket in the environ goes out with its
Upgrade/Connection headers, the transport and the bytes read past the
handshake go to ws.attach(), the HTTP protocol is out of the path; a
request that ends without its 101 tells the WebSocket connection_lost(None).
"""
import asyncio

import pytest

from aiopyramid import _core

from .inprocess import run, serving  # noqa: F401 -- fixture
from .rawhttp import parse_one

HANDSHAKE = (b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n"
             b"Connection: Upgrade\r\nSec-WebSocket-Key: x\r\n\r\n")
HEADERS = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
           ("Sec-WebSocket-Accept", "abc")]


class FakeWebSocket(asyncio.Protocol):
    """What the HTTP layer sees of a _core.WebSocket: attach() and the
    protocol methods.  It echoes what it receives, prefixed."""

    def __init__(self):
        self.transport = None
        self.buffered = None
        self.received = bytearray()
        self.lost = []
        self.attaches = 0

    def attach(self, transport, buffered):
        self.attaches += 1
        self.transport = transport
        transport.set_protocol(self)
        self.buffered = bytes(buffered)
        transport.write(b"attached:" + self.buffered + b";")

    def data_received(self, data):
        self.received += data
        self.transport.write(b"echo:" + data + b";")

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        self.lost.append(exc)


def upgrade_app(ws, status="101 Switching Protocols", delay=0.0,
                headers=HEADERS):
    def app(environ, start_response):
        environ["aiopyramid.websocket"] = ws
        if delay:
            _core.await_(asyncio.sleep(delay))
        start_response(status, list(headers))
        return [b"" if status.startswith("101") else b"no upgrade"]
    return app


async def read_until(reader, marker, limit=5.0):
    data = b""
    async with asyncio.timeout(limit):
        while marker not in data:
            chunk = await reader.read(65536)
            if not chunk:
                break
            data += chunk
    return data


async def wait_for(predicate, limit=5.0):
    async with asyncio.timeout(limit):
        while not predicate():
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("delay", [0.0, 0.05])
def test_101_hands_transport_and_early_frames_to_the_websocket(run, delay):
    ws = FakeWebSocket()

    async def main():
        async with serving(upgrade_app(ws, delay=delay)) as (port, srv):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            # frames in the same packet as the handshake
            writer.write(HANDSHAKE + b"FRAME1")
            if delay:
                await asyncio.sleep(delay / 5)
                writer.write(b"FRAME2")  # while the app has not answered
            data = await read_until(reader, b";")
            resp, rest = parse_one(data)
            assert resp.status == 101
            assert resp.header("upgrade") == "websocket"
            assert resp.header("connection") == "Upgrade"
            assert resp.header("sec-websocket-accept") == "abc"
            assert resp.header("content-length") is None
            assert resp.header("transfer-encoding") is None
            expected = b"FRAME1" + (b"FRAME2" if delay else b"")
            while not rest.endswith(b";"):
                rest += await read_until(reader, b";")
            if delay and rest == b"attached:FRAME1;":
                # FRAME2 came after the hand-off: the WebSocket got it
                rest += await read_until(reader, b";")
                assert rest == b"attached:FRAME1;echo:FRAME2;"
            else:
                assert rest == b"attached:" + expected + b";"
            assert ws.attaches == 1 and ws.lost == []
            # from now on the bytes go to the WebSocket, unparsed
            writer.write(b"GET / HTTP/1.1\r\n\r\n")
            more = await read_until(reader, b"\r\n\r\n;")
            assert more == b"echo:GET / HTTP/1.1\r\n\r\n;"
            # the server no longer counts it as an HTTP connection
            await wait_for(lambda: srv.connections == 0)
            assert srv.active == 0
            writer.close()
            await wait_for(lambda: ws.lost)
            assert ws.lost == [None]

    run(main())


def test_response_replaced_tells_the_websocket(run):
    # a tween (or an error view) answered instead of the 101
    ws = FakeWebSocket()

    async def main():
        app = upgrade_app(ws, status="403 Forbidden",
                          headers=[("Content-Type", "text/plain")])
        async with serving(app) as (port, srv):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(HANDSHAKE + b"FRAME")
            data = await read_until(reader, b"no upgrade")
            resp, _ = parse_one(data)
            assert resp.status == 403 and resp.body == b"no upgrade"
            assert resp.header("connection") == "close"
            assert resp.header("upgrade") is None
            assert ws.lost == [None] and ws.attaches == 0
            assert await reader.read() == b""  # closed
            writer.close()

    run(main())


def test_client_gone_before_the_101_tells_the_websocket(run):
    ws = FakeWebSocket()

    async def main():
        async with serving(upgrade_app(ws, delay=0.3)) as (port, srv):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(HANDSHAKE)
            await asyncio.sleep(0.05)
            writer.close()
            await wait_for(lambda: ws.lost)
            # a close is a half-close until a write fails: the 101 may go
            # out (and the websocket be attached) before the connection is
            # known to be gone; either way the websocket is told, once
            (lost,) = ws.lost
            assert lost is None or isinstance(lost, OSError), lost
            assert ws.attaches in (0, 1)

    run(main())


def test_101_without_a_websocket_is_refused(run):
    def app(environ, start_response):
        start_response("101 Switching Protocols", list(HEADERS))
        return [b""]

    async def main():
        async with serving(app, error_log=lambda m, e: None) as (port, srv):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(HANDSHAKE)
            data = await read_until(reader, b"Internal Server Error")
            resp, _ = parse_one(data)
            assert resp.status == 500
            writer.close()

    run(main())
