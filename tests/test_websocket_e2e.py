"""Websockets end to end: the ``websockets`` client library (and raw
sockets for what a well-behaved client never sends) against a real gunicorn
with aiopyramid's worker serving tests/websocket_app.py."""
import asyncio
import base64
import json
import os
import signal
import socket
import struct
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .conftest import http_get

APP = "websocket_app:main()"


def run(coro, limit=60):
    return asyncio.run(asyncio.wait_for(coro, limit))


@pytest.fixture
def ws_server(gunicorn):
    """ws_server(settings=None, *gunicorn_args) -> ServerProcess."""

    def start(settings=None, *extra):
        env = {"WS_SETTINGS": json.dumps(settings or {})}
        return gunicorn(*extra, app=APP, env=env)

    return start


@pytest.fixture
def server(ws_server):
    return ws_server()


def url(server, path):
    return "ws://127.0.0.1:%d%s" % (server.port, path)


def client(server, path, **kw):
    kw.setdefault("open_timeout", 10)
    kw.setdefault("close_timeout", 10)
    return connect(url(server, path), **kw)


def last(server):
    status, body = http_get(server.port, "/last")
    assert status == 200
    return json.loads(body)


# -- messages ------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/ws/echo", "/ws/generator",
                                  "/ws/class-plain", "/ws/class-generator"])
def test_echo_view_forms(server, path):
    async def main():
        async with client(server, path) as ws:
            for message in ["text", "h\u00e9llo \U0001f600", b"\x00\xffbin", b"",
                            ""]:
                await ws.send(message)
                assert await asyncio.wait_for(ws.recv(), 10) == message

    run(main())


def test_class_view_with_coroutine_hooks(server):
    async def main():
        async with client(server, "/ws/class") as ws:
            assert await ws.recv() == "open:/ws/class"
            await ws.send("x")
            assert await ws.recv() == "x"
        for _ in range(100):
            if last(server).get("class") == "closed":
                break
            await asyncio.sleep(0.05)
        assert last(server)["class"] == "closed"  # on_close ran

    run(main())


def test_plain_hooks_may_call_synchronized_coroutines(server):
    async def main():
        async with client(server, "/ws/synchronized") as ws:
            for word in ("one", "two"):
                await ws.send(word)
                assert await asyncio.wait_for(ws.recv(), 10) == word.upper()

    run(main())


@pytest.mark.parametrize("compression", ["true", "false"])
def test_one_mib_messages_with_and_without_compression(ws_server, compression):
    server = ws_server({"aiopyramid.websocket.compression": compression})

    async def main():
        async with client(server, "/ws/echo", max_size=2 ** 21) as ws:
            extensions = ws.response.headers.get("Sec-WebSocket-Extensions")
            if compression == "true":
                assert extensions and "permessage-deflate" in extensions
            else:
                assert extensions is None
            text = ("0123456789abcdef" * 65536)  # 1 MiB of text
            binary = os.urandom(1024 * 1024)  # incompressible
            for message in (text, binary):
                await ws.send(message)
                assert await asyncio.wait_for(ws.recv(), 30) == message

    run(main())


def test_message_over_max_message_size_closes_1009(ws_server):
    server = ws_server({"aiopyramid.websocket.max_message_size": "1000",
                        "aiopyramid.websocket.compression": "false"})

    async def main():
        async with client(server, "/ws/echo") as ws:
            await ws.send("a" * 1000)
            assert await ws.recv() == "a" * 1000
            await ws.send("a" * 1001)
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 10)
            assert info.value.rcvd.code == 1009

    run(main())


def test_fragmented_messages(server):
    async def main():
        async with client(server, "/ws/echo") as ws:
            await ws.send(["frag", "ment", "\u00e9d"])
            assert await ws.recv() == "fragment\u00e9d"
            await ws.send([b"a", b"b", b"c"])
            assert await ws.recv() == b"abc"

    run(main())


def test_ping_pong(server):
    async def main():
        async with client(server, "/ws/echo", ping_interval=None) as ws:
            for payload in (b"", b"ping-data"):
                pong = await ws.ping(payload)
                latency = await asyncio.wait_for(pong, 10)
                assert latency >= 0
            await ws.send("still here")
            assert await ws.recv() == "still here"

    run(main())


def test_server_pings_and_closes_without_pong(ws_server):
    server = ws_server({"aiopyramid.websocket.ping_interval": "0.2",
                        "aiopyramid.websocket.ping_timeout": "0.5"})

    async def main():
        # a client that answers pings stays connected
        async with client(server, "/ws/echo") as ws:
            await asyncio.sleep(1.0)
            await ws.send("alive")
            assert await ws.recv() == "alive"
        # a raw client that never answers is closed with 1011
        sock = handshake(server, "/ws/echo")
        try:
            deadline = time.monotonic() + 10
            saw_ping = False
            while time.monotonic() < deadline:
                opcode, payload = read_frame(sock)
                if opcode == 0x9:
                    saw_ping = True
                elif opcode == 0x8:
                    assert struct.unpack("!H", payload[:2])[0] == 1011
                    break
            else:
                pytest.fail("no close after the unanswered ping")
            assert saw_ping
        finally:
            sock.close()

    run(main())


def test_types_and_use_bytes(server):
    async def main():
        async with client(server, "/ws/types") as ws:
            await ws.send("h\u00e9")
            assert await ws.recv() == "str:'h\u00e9'"
            await ws.send(b"b")
            assert await ws.recv() == "bytes:b'b'"
        async with client(server, "/ws/bytes") as ws:
            await ws.send("h\u00e9")
            assert await ws.recv() == "bytes:b'h\\xc3\\xa9'"
            await ws.send(b"b")
            assert await ws.recv() == "bytes:b'b'"

    run(main())


# -- closing -------------------------------------------------------------------

def test_view_returning_closes_1000(server):
    async def main():
        async with client(server, "/ws/bye") as ws:
            assert await ws.recv() == "bye"
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 10)
            assert info.value.rcvd.code == 1000

    run(main())


def test_view_raising_closes_1011_and_logs_once(server):
    async def main():
        async with client(server, "/ws/raises") as ws:
            await ws.send("boom")
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 10)
            assert info.value.rcvd.code == 1011

    run(main())
    deadline = time.monotonic() + 10
    while "view failed on 'boom'" not in server.log() and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    log = server.log()
    assert log.count("view failed on 'boom'") == 1, log
    assert log.count("Traceback") == 1, log
    assert "Error in websocket view" in log


def test_close_codes_both_ways(server):
    async def main():
        # the server closes with a code and reason
        async with client(server, "/ws/close") as ws:
            await ws.send("4001 done here")
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 10)
            assert info.value.rcvd.code == 4001
            assert info.value.rcvd.reason == "done here"
        # the client closes: the view sees None and the client's code
        async with client(server, "/ws/echo") as ws:
            await ws.send("x")
            await ws.recv()
            await ws.close(4321, "client leaves")
            assert ws.close_code == 4321  # echoed by the server
        for _ in range(100):
            if last(server).get("echo") == 4321:
                break
            await asyncio.sleep(0.05)
        assert last(server)["echo"] == 4321
        assert last(server)["closed_with"] == [4001, "done here"]

    run(main())


def test_vanishing_peer_ends_the_view(server):
    async def main():
        sock = handshake(server, "/ws/echo")
        sock.sendall(frame(0x1, b"hi"))
        assert read_frame(sock) == (0x1, b"hi")
        sock.close()  # no close frame
        deadline = time.monotonic() + 10
        while "echo view ended" not in server.log() and \
                time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert "echo view ended" in server.log()
        assert last(server)["echo"] == 1006

    run(main())


def test_sigterm_closes_websockets_with_1001(server):
    async def main():
        sockets = []
        for _ in range(3):
            ws = await client(server, "/ws/sleeper")
            assert await ws.recv() == "ready"
            sockets.append(ws)
        server.signal(signal.SIGTERM)
        for ws in sockets:
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 15)
            assert info.value.rcvd.code == 1001
        await asyncio.gather(*(ws.close() for ws in sockets))

    run(main())
    server.proc.wait(20)
    log = server.log()
    assert log.count("sleeper view ended with 1001") == 3, log


# -- subprotocols ----------------------------------------------------------------

def test_subprotocols(server):
    async def main():
        # the server's order of preference wins
        async with client(server, "/ws/subprotocol",
                          subprotocols=["chat.v1", "chat.v2"]) as ws:
            assert ws.subprotocol == "chat.v2"
            assert await ws.recv() == "chat.v2"
        async with client(server, "/ws/subprotocol",
                          subprotocols=["chat.v1", "other"]) as ws:
            assert ws.subprotocol == "chat.v1"
            assert await ws.recv() == "chat.v1"
        # none in common: no subprotocol, still connected
        async with client(server, "/ws/subprotocol",
                          subprotocols=["other"]) as ws:
            assert ws.subprotocol is None
            assert await ws.recv() == "None"
        async with client(server, "/ws/protocol-class",
                          subprotocols=["superchat"]) as ws:
            assert ws.subprotocol == "superchat"
            assert await ws.recv() == "superchat"

    run(main())


# -- refused handshakes ------------------------------------------------------------

def refused(server, path, **kw):
    async def main():
        with pytest.raises(InvalidStatus) as info:
            async with client(server, path, **kw):
                pass
        return info.value.response

    return run(main())


def test_handshake_refused_by_acl(server):
    assert refused(server, "/ws/secured").status_code == 403

    async def main():
        async with client(server, "/ws/secured",
                          additional_headers={"X-User": "alice"}) as ws:
            info = json.loads(await ws.recv())
            assert info == {"path": "/ws/secured", "user": "alice"}

    run(main())


def test_handshake_refused_by_route_predicate(server):
    assert refused(server, "/ws/predicate").status_code == 404
    assert refused(server, "/ws/predicate?room=kitchen").status_code == 404

    async def main():
        async with client(server, "/ws/predicate?room=lobby") as ws:
            assert json.loads(await ws.recv())["path"] == "/ws/predicate"

    run(main())


def test_origin_default_is_the_requests_own_host(server):
    host = "127.0.0.1:%d" % server.port
    response = refused(server, "/ws/echo", origin="http://evil.example")
    assert response.status_code == 403
    assert b"allowed_origins" in response.body
    assert refused(server, "/ws/echo", origin="null").status_code == 403
    assert refused(server, "/ws/echo",
                   origin="http://127.0.0.1:1").status_code == 403

    async def main():
        for kw in ({}, {"origin": "http://" + host}):  # no Origin: allowed
            async with client(server, "/ws/echo", **kw) as ws:
                await ws.send("ok")
                assert await ws.recv() == "ok"

    run(main())


def test_allowed_origins_setting(ws_server):
    server = ws_server({"aiopyramid.websocket.allowed_origins":
                        "https://good.example, http://also.example:8080"})
    host = "127.0.0.1:%d" % server.port
    assert refused(server, "/ws/echo",
                   origin="http://" + host).status_code == 403
    assert refused(server, "/ws/echo",
                   origin="http://also.example").status_code == 403

    async def main():
        for origin in ("https://good.example", "https://GOOD.example:443",
                       "http://also.example:8080"):
            async with client(server, "/ws/echo", origin=origin) as ws:
                await ws.send("ok")
                assert await ws.recv() == "ok"

    run(main())


def test_bad_handshakes_get_400_and_426(server):
    # a plain GET on a websocket route
    status, body = http_get(server.port, "/ws/echo")
    assert status == 400
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(handshake_bytes("/ws/echo", version="8"))
        head = read_head(s)
    assert head.startswith(b"HTTP/1.1 426 ")
    assert b"\r\nsec-websocket-version: 13\r\n" in head.lower()


# -- raw frames ----------------------------------------------------------------------

def handshake_bytes(path, version="13", extra=b""):
    key = base64.b64encode(os.urandom(16))
    return (b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\n"
            b"Sec-WebSocket-Version: " + version.encode() + b"\r\n" + extra +
            b"\r\n")


class Raw:
    """A raw socket with a read buffer: the head, then whole frames."""

    def __init__(self, sock):
        self.sock = sock
        self.pending = b""

    def sendall(self, data):
        self.sock.sendall(data)

    def close(self):
        self.sock.close()

    def recv_exact(self, n):
        while len(self.pending) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed with %d of %d bytes"
                               % (len(self.pending), n))
            self.pending += chunk
        data, self.pending = self.pending[:n], self.pending[n:]
        return data

    def read_head(self):
        while b"\r\n\r\n" not in self.pending:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            self.pending += chunk
        head, sep, self.pending = self.pending.partition(b"\r\n\r\n")
        return head + sep


def read_head(sock):
    return Raw(sock).read_head()


def read_frame(raw):
    """(opcode, payload) of the next whole frame from the server."""
    b0, b1 = raw.recv_exact(2)
    assert not b1 & 0x80, "server frames are never masked"
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", raw.recv_exact(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", raw.recv_exact(8))[0]
    return b0 & 0x0F, raw.recv_exact(n)


def frame(opcode, payload, fin=True, mask=True, rsv=0, length=None):
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    m = 0x80 if mask else 0
    if n < 126:
        head += bytes([m | n])
    elif n < 65536:
        head += bytes([m | 126]) + struct.pack("!H", n)
    else:
        head += bytes([m | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def handshake(server, path, early=b""):
    raw = Raw(socket.create_connection(("127.0.0.1", server.port),
                                       timeout=10))
    raw.sendall(handshake_bytes(path) + early)
    head = raw.read_head()
    assert head.startswith(b"HTTP/1.1 101 "), head
    return raw


def close_code(sock):
    """The code of the close frame the server sends next (other frames
    skipped)."""
    for _ in range(100):
        opcode, payload = read_frame(sock)
        if opcode == 0x8:
            return struct.unpack("!H", payload[:2])[0] if payload else 1005
    pytest.fail("no close frame")


@pytest.mark.parametrize("bad, code", [
    (frame(0x1, b"hello", mask=False), 1002),              # unmasked
    (frame(0x1, b"ok \xff"), 1007),                         # invalid UTF-8
    (frame(0x1, b"\xe2\x82", fin=False) + frame(0x0, b"\x28"), 1007),
    (frame(0x2, b"", length=2 * 1024 * 1024)[:14], 1009),   # oversized
    (frame(0x9, b"p", fin=False), 1002),                    # fragmented ping
    (frame(0x3, b"x"), 1002),                               # reserved opcode
    (frame(0x1, b"x", rsv=0x20), 1002),                     # RSV2
    (frame(0x0, b"x"), 1002),                               # nothing to continue
    (frame(0x8, struct.pack("!H", 1005)), 1002),            # invalid close code
], ids=["unmasked", "utf8", "utf8-split", "oversized", "fragmented-ping",
        "reserved-opcode", "rsv2", "continuation", "close-code"])
def test_protocol_errors_close_with_the_rfc_code(server, bad, code):
    sock = handshake(server, "/ws/echo")
    try:
        sock.sendall(frame(0x1, b"first"))
        assert read_frame(sock) == (0x1, b"first")
        sock.sendall(bad)
        assert close_code(sock) == code
    finally:
        sock.close()


def test_frames_in_the_same_packet_as_the_handshake(server):
    early = frame(0x1, b"early one") + frame(0x2, b"\x00two") + \
        frame(0x9, b"ping!")
    sock = handshake(server, "/ws/echo", early=early)
    try:
        got = [read_frame(sock) for _ in range(3)]
        assert sorted(got) == sorted([(0x1, b"early one"), (0x2, b"\x00two"),
                                      (0xA, b"ping!")])
    finally:
        sock.close()


# -- load ----------------------------------------------------------------------------

def test_200_clients_echo_100_messages_each(server):
    async def one(i):
        async with client(server, "/ws/echo", open_timeout=60) as ws:
            for j in range(100):
                message = "client %d message %d" % (i, j)
                await ws.send(message)
                assert await ws.recv() == message
        return i

    async def main():
        done = await asyncio.gather(*(one(i) for i in range(200)))
        assert sorted(done) == list(range(200))

    run(main(), limit=240)


def test_websockets_count_towards_worker_connections(ws_server):
    server = ws_server(None, "--worker-connections", "3")

    async def main():
        sockets = [await client(server, "/ws/sleeper") for _ in range(3)]
        for ws in sockets:
            assert await ws.recv() == "ready"
        # a fourth connection waits in the backlog: no answer
        with pytest.raises((TimeoutError, asyncio.TimeoutError)):
            async with client(server, "/ws/echo", open_timeout=1.0):
                pass
        await sockets[0].close()
        # room again once one closed
        async with client(server, "/ws/echo", open_timeout=10) as ws:
            await ws.send("in")
            assert await ws.recv() == "in"
        for ws in sockets[1:]:
            await ws.close()

    run(main())


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_websocket_counts_until_its_connection_is_gone(gunicorn, loop):
    """A view over before its close handshake is (the close frame sent,
    the peer silent, the socket open until close_timeout) still holds a
    connection: it counts towards worker_connections until the socket is
    gone, else a client that never answers a close holds more sockets than
    worker_connections."""
    env = {"WS_SETTINGS": json.dumps({"aiopyramid.websocket.close_timeout": "60"}),
           "AIOPYRAMID_LOOP": loop}
    server = gunicorn("--worker-connections", "3", app=APP, env=env)
    held = []
    try:
        for _ in range(3):
            raw = handshake(server, "/ws/cancelled")
            held.append(raw)
            assert read_frame(raw) == (0x1, b"ready")
            raw.sendall(frame(0x1, b"end"))
            assert close_code(raw) == 1011  # and never answered
        # a fourth connection waits in the backlog: no answer to its
        # handshake while the three sockets are open
        extra = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        try:
            extra.sendall(handshake_bytes("/ws/echo"))
            extra.settimeout(1.0)
            with pytest.raises(socket.timeout):
                got = extra.recv(100)
                pytest.fail("answered over worker_connections: %r" % got)
            # room once one of them is gone: the waiting one is answered
            held.pop().close()
            extra.settimeout(15)
            assert Raw(extra).read_head().startswith(b"HTTP/1.1 101 ")
        finally:
            extra.close()
    finally:
        for raw in held:
            raw.close()


def test_a_view_whose_101_a_tween_replaced_never_runs(server):
    """A tween that replaces the 101 after the view (an audit, a late
    authorization check) means no websocket: the view's code must not run
    at all.  Its Task was started as the 101 was made, so an on_open with a
    side effect ("X joined") ran for a connection that never upgraded."""
    async def main():
        with pytest.raises(InvalidStatus) as refused:
            async with client(server, "/ws/refused"):
                pass
        assert refused.value.response.status_code == 403
        # the same view on a route the tween leaves alone does run
        async with client(server, "/ws/announced") as ws:
            await ws.send("x")
    run(main())
    for _ in range(100):
        if last(server).get("opened"):
            break
        time.sleep(0.05)
    time.sleep(0.3)  # a wrongly started view would have run by now too
    assert last(server)["opened"] == ["/ws/announced"]
