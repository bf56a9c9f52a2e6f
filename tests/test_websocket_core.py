"""_core.WebSocket as a real asyncio protocol, with no HTTP server of ours:
tests/ws_core_server.py (a child process) attaches it to plain connections
(raw port) or after a hand-written handshake through
_core.websocket_handshake (http port).  Clients are raw sockets sending
real frames (any split) and the `websockets` library."""
import asyncio
import json
import socket
import zlib

import pytest

from aiopyramid import _core

from .wsclient import (BINARY, CLOSE, CONT, PING, PONG, TEXT, RawClient, WsServer,
                       close_frame, frame)


@pytest.fixture
def server():
    started = []

    def start(*args):
        s = WsServer(*args)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def echo(client, opcode, payload):
    client.send(frame(opcode, payload))
    return client.recv_message()


# ---------------------------------------------------------------- data

def test_text_and_binary_echo(server):
    s = server()
    c = s.client()
    assert echo(c, TEXT, "héllo wörld") == (TEXT, "héllo wörld".encode())
    assert echo(c, BINARY, b"\x00\xff" * 10) == (BINARY, b"\x00\xff" * 10)
    assert echo(c, TEXT, "") == (TEXT, b"")
    assert echo(c, BINARY, b"") == (BINARY, b"")
    # lengths at the 7/16/64-bit boundaries
    for n in (125, 126, 127, 65535, 65536, 70000):
        assert echo(c, BINARY, b"a" * n) == (BINARY, b"a" * n)
    c.send(close_frame(1000))
    c.expect_close(1000)
    assert s.wait_line("END") == "END 1000 "


def test_one_mib_messages(server):
    s = server()
    c = s.client()
    text = "0123456789abcdé" * (1 << 16)  # 16 bytes each: exactly 1 MiB
    assert len(text.encode()) == 1 << 20
    assert echo(c, TEXT, text) == (TEXT, text.encode())
    blob = bytes(range(256)) * 4096
    assert len(blob) == 1 << 20
    assert echo(c, BINARY, blob) == (BINARY, blob)


@pytest.mark.parametrize("sizes", [[1], [2, 3], [7], [1, 13, 2, 100], [4096]])
def test_any_split_of_bytes(server, sizes):
    s = server()
    c = s.client()
    data = (frame(TEXT, "first é") + frame(BINARY, b"\x01" * 300)
            + frame(TEXT, "frag-", fin=False) + frame(PING, b"p1")
            + frame(CONT, "ment-", fin=False) + frame(CONT, "ed"))
    c.send_split(data, sizes)
    pongs = []  # written at once, while the echoes wait for the view
    assert c.recv_message(pongs) == (TEXT, "first é".encode())
    assert c.recv_message(pongs) == (BINARY, b"\x01" * 300)
    assert c.recv_message(pongs) == (TEXT, b"frag-ment-ed")
    assert pongs == [b"p1"]


def test_fragments_with_control_frames_between(server):
    s = server()
    c = s.client()
    c.send(frame(BINARY, b"a" * 10, fin=False) + frame(PING, b"x")
           + frame(CONT, b"b" * 10, fin=False) + frame(PONG, b"unsolicited")
           + frame(PING, b"y") + frame(CONT, b"c" * 10))
    pongs = []
    assert c.recv_message(pongs) == (BINARY, b"a" * 10 + b"b" * 10 + b"c" * 10)
    assert pongs == [b"x", b"y"]
    # a text message split inside a multi-byte character
    word = "añb€c😀".encode()
    c.send(b"".join(frame(TEXT if i == 0 else CONT, word[i:i + 1], fin=i == len(word) - 1)
                    for i in range(len(word))))
    assert c.recv_message() == (TEXT, word)


def test_ping_is_answered_with_its_payload(server):
    s = server()
    c = s.client()
    c.send(frame(PING, b"") + frame(PING, b"z" * 125))
    assert c.recv_frame() == (True, 0, PONG, b"")
    assert c.recv_frame() == (True, 0, PONG, b"z" * 125)


def test_server_ping_resolves_on_pong(server):
    s = server()
    c = s.client()
    c.send(frame(TEXT, "cmd:ping:abc"))
    assert c.recv_frame() == (True, 0, PING, b"abc")
    c.send(frame(PONG, b"abc"))
    assert c.recv_message() == (TEXT, b"pinged")


# ---------------------------------------------------------------- closing

def test_client_close_is_echoed(server):
    s = server()
    c = s.client()
    c.send(close_frame(4001, "client done".encode()))
    assert c.expect_close(4001) == (4001, b"")
    assert s.wait_line("END") == "END 4001 client done"
    assert s.wait_line("SEND-AFTER-CLOSE")


def test_close_without_code(server):
    s = server()
    c = s.client()
    c.send(close_frame())
    fin, rsv, op, payload = c.recv_frame()
    assert (op, payload) == (CLOSE, b"")
    c.read_to_eof()
    assert s.wait_line("END") == "END 1005 "


def test_server_close_with_code_and_reason(server):
    s = server()
    c = s.client()
    c.send(frame(TEXT, "cmd:close:3001:all done"))
    fin, rsv, op, payload = c.recv_frame()
    assert op == CLOSE and payload == (3001).to_bytes(2, "big") + b"all done"
    # messages after the server's close are dropped; our close completes it
    # (and is what close_code and close_reason say: the peer's)
    c.send(frame(TEXT, "ignored") + close_frame(3001, b"ok"))
    c.read_to_eof()
    assert c.buf == b""
    assert s.wait_line("END") == "END 3001 ok"


def test_server_close_times_out_without_reply(server):
    s = server("--close-timeout", "0.3")
    c = s.client()
    c.send(frame(TEXT, "cmd:close:1000:bye"))
    assert c.recv_frame()[2] == CLOSE
    c.read_to_eof()  # the server aborts after close_timeout
    assert s.wait_line("END") == "END 1000 bye"


def test_invalid_close_code_from_view_is_value_error(server):
    s = server()
    c = s.client()
    for code in (999, 1004, 1005, 1006, 1015, 2000, 5000):
        c.send(frame(TEXT, "cmd:badclose:%d" % code))
        op, msg = c.recv_message()
        assert msg.startswith(b"ValueError: close code %d cannot be sent" % code)


def test_client_that_vanishes(server):
    s = server()
    c = s.client()
    c.send(frame(TEXT, "hello")[:5])  # half a frame
    c.close()
    assert s.wait_line("END") == "END 1006 "


# ---------------------------------------------------------------- errors

def fragmented_invalid_utf8():
    # each fragment is fine alone until the last byte makes it impossible
    return frame(TEXT, b"ok \xe2\x82", fin=False) + frame(CONT, b"\x28 rest")


PROTOCOL_ERRORS = {
    "unmasked": (frame(TEXT, "hi", masked=False), 1002),
    "invalid utf-8": (frame(TEXT, b"\xff\xfe"), 1007),
    "invalid utf-8 across fragments": (fragmented_invalid_utf8(), 1007),
    "overlong utf-8": (frame(TEXT, b"\xc0\xaf"), 1007),
    "utf-8 surrogate": (frame(TEXT, b"\xed\xa0\x80"), 1007),
    "utf-8 cut short at the end": (frame(TEXT, b"abc\xe2\x82"), 1007),
    "fragmented ping": (frame(PING, b"a", fin=False), 1002),
    "fragmented close": (frame(CLOSE, b"\x03\xe8", fin=False), 1002),
    "control frame over 125": (frame(PING, b"a" * 126), 1002),
    "reserved opcode 3": (frame(3, b"a"), 1002),
    "reserved opcode 7": (frame(7, b"a"), 1002),
    "reserved opcode 0xB": (frame(0xB, b"a"), 1002),
    "reserved opcode 0xF": (frame(0xF, b"a"), 1002),
    "RSV1 without extension": (frame(TEXT, b"a", rsv=4), 1002),
    "RSV2": (frame(TEXT, b"a", rsv=2), 1002),
    "RSV3": (frame(BINARY, b"a", rsv=1), 1002),
    "close code 1005": (close_frame(1005), 1002),
    "close code 1006": (close_frame(1006), 1002),
    "close code 999": (close_frame(999), 1002),
    "close code 1016": (close_frame(1016), 1002),
    "close code 2999": (close_frame(2999), 1002),
    "close code 5000": (close_frame(5000), 1002),
    "1-byte close payload": (frame(CLOSE, b"\x03"), 1002),
    "close reason not utf-8": (close_frame(1000, b"\xff"), 1007),
    "continuation with nothing to continue": (frame(CONT, b"a"), 1002),
    "new message inside a fragmented one": (frame(TEXT, b"a", fin=False) + frame(TEXT, b"b"), 1002),
    "64-bit length with the high bit": (bytes([0x82, 0xFF]) + b"\x80" + b"\0" * 7 + b"MASK", 1002),
}


@pytest.mark.parametrize("name", sorted(PROTOCOL_ERRORS))
def test_protocol_errors_close_with_the_rfc_code(server, name):
    data, code = PROTOCOL_ERRORS[name]
    s = server()
    c = s.client()
    c.send(frame(TEXT, "before"))
    assert c.recv_message() == (TEXT, b"before")
    c.send(data)
    c.expect_close(code)
    end = s.wait_line("END")
    assert end.startswith("END %d " % code), end


def test_invalid_utf8_fails_fast_mid_message(server):
    """The bad byte ends the connection at once: the rest of the message
    never comes, and no final frame is needed to see the error."""
    s = server()
    c = s.client()
    c.send(frame(TEXT, b"fine so far \xff", fin=False))
    c.expect_close(1007)
    # also within one frame that has not fully arrived
    c = s.client()
    whole = frame(TEXT, b"abc\xff" + b"x" * 1000)
    c.send(whole[:20])
    c.expect_close(1007)


def test_oversized_messages_get_1009(server):
    s = server("--max-size", "1000")
    c = s.client()
    assert echo(c, BINARY, b"a" * 1000) == (BINARY, b"a" * 1000)
    c.send(frame(BINARY, b"a" * 1001)[:20])  # the header says enough
    c.expect_close(1009)
    c = s.client()
    c.send(frame(TEXT, b"a" * 600, fin=False) + frame(CONT, b"b" * 401))
    c.expect_close(1009)


def test_frames_after_the_error_are_dropped(server):
    s = server()
    c = s.client()
    c.send(frame(TEXT, b"\xff") + frame(TEXT, "never echoed") + frame(PING, b"no"))
    fin, rsv, op, payload = c.recv_frame()
    assert op == CLOSE and payload[:2] == (1007).to_bytes(2, "big")
    c.read_to_eof()
    assert c.buf == b""


# ---------------------------------------------------------------- flow

def test_generator_style_and_one_recv_at_a_time(server):
    s = server()
    c = s.client()
    c.send(frame(TEXT, "cmd:yieldfrom") + frame(TEXT, "x"))
    assert c.recv_message() == (TEXT, b"gen:x")
    c.send(frame(TEXT, "cmd:tworecv"))
    op, msg = c.recv_message()
    assert msg.startswith(b"RuntimeError: recv() is already being awaited")
    assert echo(c, TEXT, "still fine") == (TEXT, b"still fine")


def test_use_bytes(server):
    s = server("--use-bytes")
    c = s.client()
    assert echo(c, TEXT, "é") == (BINARY, "é".encode())


def test_many_messages_in_one_packet_and_a_slow_view(server):
    """More messages than the queue holds arrive at once: reading pauses,
    nothing is lost or reordered."""
    s = server()
    c = s.client()
    n = 500
    c.send(b"".join(frame(TEXT, "m%d" % i) for i in range(n)))
    for i in range(n):
        assert c.recv_message() == (TEXT, b"m%d" % i)


def test_a_burst_then_gone_is_read_to_its_end(server):
    """A client sends more messages than the queue holds, a close frame,
    and goes: the view still gets every message, then None."""
    s = server()
    c = s.client()
    n = 300
    c.send(frame(TEXT, "cmd:quiet") + b"".join(frame(BINARY, b"%d" % i) for i in range(n))
           + close_frame(1000))
    c.close()
    assert s.wait_line("COUNT") == "COUNT %d" % n
    assert s.wait_line("END") == "END 1000 "


def test_messages_behind_a_full_queue_survive_connection_lost():
    """The connection ends (a reset, say) while messages wait unparsed
    behind a full queue: the view still gets them all, then None."""

    async def go():
        loop = asyncio.get_running_loop()
        ws = _core.WebSocket(loop)
        ws.attach(FakeTransport(), b"".join(frame(BINARY, b"%d" % i) for i in range(100)))
        ws.connection_lost(ConnectionResetError())
        got = []
        while (m := await ws.recv()) is not None:
            got.append(m)
        assert got == [b"%d" % i for i in range(100)]
        assert ws.close_code == 1006

    asyncio.run(go())


def test_send_and_close_before_attach():
    """Frames sent before attach() wait for it; connection_lost before
    attach ends the websocket: recv() gives None, attach does nothing."""

    async def go():
        loop = asyncio.get_running_loop()
        lost = []
        ws = _core.WebSocket(loop, on_lost=lambda: lost.append(1))
        await ws.send("early")
        await ws.send(b"\x00")
        t = FakeTransport()
        ws.attach(t, frame(TEXT, "buffered"))
        assert t.protocol is ws
        assert t.resumed == 1  # whatever the HTTP protocol paused
        assert bytes(t.written) == b"\x81\x05early\x82\x01\x00"
        assert await ws.recv() == "buffered"
        with pytest.raises(RuntimeError, match="already attached"):
            ws.attach(t, b"")
        ws.connection_lost(None)
        assert lost == [1] and ws.closed and ws.close_code == 1006
        from aiopyramid.websocket.exceptions import WebsocketClosed
        with pytest.raises(WebsocketClosed):
            ws.send("x")

        ws = _core.WebSocket(loop)
        waiter = ws.recv()
        ws.connection_lost(None)
        assert await waiter is None and await ws.recv() is None
        t = FakeTransport()
        ws.attach(t, b"")
        assert not hasattr(t, "protocol") and not t.written
        await ws.wait_closed()

        ws = _core.WebSocket(loop)
        closing = ws.close(4000, "early")
        t = FakeTransport()
        ws.attach(t, close_frame(4000))
        assert bytes(t.written) == b"\x88\x07\x0f\xa0early" and t.closed
        ws.connection_lost(None)
        await closing
        assert ws.close_code == 4000

    asyncio.run(go())


def test_constructor_checks_its_arguments():
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError, match="max_message_size"):
            _core.WebSocket(loop, max_message_size=0)
        with pytest.raises(ValueError, match="0 or more"):
            _core.WebSocket(loop, ping_interval=-1)
        with pytest.raises(TypeError, match="websocket_handshake"):
            _core.WebSocket(loop, deflate=(1, 2))
        with pytest.raises(TypeError, match="callable"):
            _core.WebSocket(loop, on_lost=3)
        ws = _core.WebSocket(loop)
        with pytest.raises(TypeError, match="str .* or bytes"):
            ws.send(3)
        with pytest.raises(ValueError, match="123 bytes"):
            ws.close(1000, "é" * 62)
        with pytest.raises(ValueError, match="125 bytes"):
            ws.ping(b"x" * 126)
    finally:
        loop.close()


def test_back_pressure_send_waits_for_a_reader(server):
    """A client that stops reading: the view's send() waits, so the server's
    memory stays bounded; once the client reads, everything arrives."""
    psutil = pytest.importorskip("psutil")
    s = server()
    c = s.client()
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    proc = psutil.Process(s.pid)
    rss0 = proc.memory_info().rss
    n, size = 2000, 65536  # 128 MiB in all
    c.send(frame(TEXT, "cmd:flood:%d:%d" % (n, size)))
    # the server gets some way, then stalls: its sends wait
    import time
    last, stalled_at = None, None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            line = s.wait_line("SENT", timeout=1.0)
            last = int(line.split()[1])
        except AssertionError:
            stalled_at = last
            break
    assert stalled_at is not None and stalled_at < n, stalled_at
    grown = proc.memory_info().rss - rss0
    assert grown < 40 * 1024 * 1024, grown
    got = 0
    while got < n:
        op, payload = c.recv_message()
        assert op == BINARY and len(payload) == size
        got += 1
    assert s.wait_line("SENT %d" % n)


# ---------------------------------------------------------------- handshake

def handshake_request(extra="", key="dGhlIHNhbXBsZSBub25jZQ==", version="13",
                      method="GET", proto="HTTP/1.1", upgrade="websocket",
                      connection="Upgrade"):
    lines = ["%s /ws %s" % (method, proto), "Host: t"]
    if upgrade is not None:
        lines.append("Upgrade: %s" % upgrade)
    if connection is not None:
        lines.append("Connection: %s" % connection)
    if key is not None:
        lines.append("Sec-WebSocket-Key: %s" % key)
    if version is not None:
        lines.append("Sec-WebSocket-Version: %s" % version)
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def read_head(c):
    while b"\r\n\r\n" not in c.buf:
        chunk = c.sock.recv(65536)
        if not chunk:
            break
        c.buf += chunk
    head, _, c.buf = c.buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(lines[0].split()[1]), headers


def test_handshake_and_frames_in_the_same_packet(server):
    s = server()
    c = RawClient(s.http_port)
    c.send(handshake_request() + frame(TEXT, "already here") + frame(PING, b"q"))
    status, headers = read_head(c)
    assert status == 101
    assert headers["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert headers["upgrade"] == "websocket" and headers["connection"] == "Upgrade"
    assert "sec-websocket-extensions" not in headers
    pongs = []
    assert c.recv_message(pongs) == (TEXT, b"already here")
    assert pongs == [b"q"]


REFUSALS = {
    "POST": (dict(method="POST"), 400, "the method must be GET"),
    "HTTP/1.0": (dict(proto="HTTP/1.0"), 400, "HTTP/1.1 or later"),
    "no Upgrade": (dict(upgrade=None), 400, "'Upgrade: websocket'"),
    "Upgrade: h2c": (dict(upgrade="h2c"), 400, "'Upgrade: websocket'"),
    "no Connection": (dict(connection=None), 400, "'Connection: Upgrade'"),
    "Connection: keep-alive": (dict(connection="keep-alive"), 400, "'Connection: Upgrade'"),
    "no version": (dict(version=None), 400, "no Sec-WebSocket-Version"),
    "version 8": (dict(version="8"), 426, "unsupported Sec-WebSocket-Version"),
    "no key": (dict(key=None), 400, "no Sec-WebSocket-Key"),
    "short key": (dict(key="dGhlIHNhbXBsZQ=="), 400, "base64 of 16 bytes"),
    "key not base64": (dict(key="dGhlIHNhbXBsZSBub25jZ!=="), 400, "base64 of 16 bytes"),
    "key with stray bits": (dict(key="dGhlIHNhbXBsZSBub25jZR=="), 400, "base64 of 16 bytes"),
}


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_handshake_refusals(server, name):
    kw, status, message = REFUSALS[name]
    env = environ_of(**kw)
    with pytest.raises(_core.WebsocketHandshakeError) as info:
        _core.websocket_handshake(env)
    assert isinstance(info.value, ValueError)
    assert info.value.status == status
    assert message in str(info.value)
    assert info.value.headers == ([("Sec-WebSocket-Version", "13")] if status == 426 else [])


def test_handshake_refusal_over_the_wire(server):
    s = server()
    c = RawClient(s.http_port)
    c.send(handshake_request(version="7"))
    status, headers = read_head(c)
    assert status == 426 and headers["sec-websocket-version"] == "13"
    c.read_to_eof()
    assert b"unsupported Sec-WebSocket-Version" in c.buf


def environ_of(method="GET", proto="HTTP/1.1", upgrade="websocket", connection="Upgrade",
               version="13", key="dGhlIHNhbXBsZSBub25jZQ==", **headers):
    env = {"REQUEST_METHOD": method, "SERVER_PROTOCOL": proto}
    for k, v in (("UPGRADE", upgrade), ("CONNECTION", connection),
                 ("SEC_WEBSOCKET_VERSION", version), ("SEC_WEBSOCKET_KEY", key)):
        if v is not None:
            env["HTTP_" + k] = v
    for k, v in headers.items():
        env["HTTP_" + k.upper()] = v
    return env


def test_handshake_tokens_are_case_insensitive_lists():
    headers, proto, deflate = _core.websocket_handshake(environ_of(
        upgrade="WebSocket", connection="keep-alive, UPGRADE", proto="HTTP/1.1"))
    assert dict(headers)["Sec-WebSocket-Accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert proto is None and deflate is None
    _core.websocket_handshake(environ_of(upgrade="foo, websocket", proto="HTTP/2.0"))


def test_subprotocol_choice_is_the_servers_order():
    env = environ_of(sec_websocket_protocol="superchat, chat,  v2.chat")
    headers, proto, _ = _core.websocket_handshake(env, subprotocols=["chat", "superchat"])
    assert proto == "chat" and ("Sec-WebSocket-Protocol", "chat") in headers
    headers, proto, _ = _core.websocket_handshake(env, subprotocols=("other",))
    assert proto is None and "Sec-WebSocket-Protocol" not in dict(headers)
    headers, proto, _ = _core.websocket_handshake(environ_of(), subprotocols=["chat"])
    assert proto is None
    with pytest.raises(TypeError, match="sequence of str"):
        _core.websocket_handshake(env, subprotocols=[b"chat"])


@pytest.mark.parametrize("offer,response", [
    ("permessage-deflate", "permessage-deflate"),
    ("permessage-deflate; client_max_window_bits", "permessage-deflate; client_max_window_bits=12"),
    ("permessage-deflate; client_max_window_bits=10", "permessage-deflate; client_max_window_bits=10"),
    ("permessage-deflate; client_max_window_bits=15", "permessage-deflate; client_max_window_bits=12"),
    ("permessage-deflate; server_max_window_bits=10", "permessage-deflate; server_max_window_bits=10"),
    ('permessage-deflate; server_max_window_bits="11"', "permessage-deflate; server_max_window_bits=11"),
    ("permessage-deflate; server_no_context_takeover; client_no_context_takeover",
     "permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
    # unacceptable offers are skipped, the next one taken
    ("permessage-deflate; server_max_window_bits=8, permessage-deflate",
     "permessage-deflate"),
    ("permessage-deflate; unknown=1, x-webkit-deflate-frame, permessage-deflate; client_no_context_takeover",
     "permessage-deflate; client_no_context_takeover"),
    ("permessage-deflate; server_max_window_bits", None),
    ("permessage-deflate; server_max_window_bits=16", None),
    ("permessage-deflate; server_max_window_bits=010", None),
    ("permessage-deflate; client_no_context_takeover; client_no_context_takeover", None),
    ("permessage-deflate; server_no_context_takeover=1", None),
    ('permessage-deflate; client_max_window_bits="1', None),
    ("x-other", None),
])
def test_deflate_negotiation(offer, response):
    headers, _, deflate = _core.websocket_handshake(environ_of(sec_websocket_extensions=offer))
    assert dict(headers).get("Sec-WebSocket-Extensions") == response
    assert (deflate is None) == (response is None)
    headers, _, deflate = _core.websocket_handshake(
        environ_of(sec_websocket_extensions=offer), compression=False)
    assert deflate is None and "Sec-WebSocket-Extensions" not in dict(headers)


# ---------------------------------------------------------------- deflate

def deflate_connect(s, offer="permessage-deflate"):
    c = RawClient(s.http_port)
    c.send(handshake_request("Sec-WebSocket-Extensions: %s\r\n" % offer))
    status, headers = read_head(c)
    assert status == 101, status
    assert headers["sec-websocket-extensions"].startswith("permessage-deflate")
    return c


def compress(data, wbits=-15):
    z = zlib.compressobj(wbits=wbits)
    out = z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def test_compressed_frames_raw(server):
    s = server()
    c = deflate_connect(s)
    msg = ("hello " * 1000).encode()
    body = compress(msg)
    # split over three frames, RSV1 on the first only
    c.send(frame(TEXT, body[:5], fin=False, rsv=4) + frame(CONT, body[5:9], fin=False)
           + frame(PING, b"p") + frame(CONT, body[9:]))
    assert c.recv_frame()[2:] == (PONG, b"p")
    fin, rsv, op, payload = c.recv_frame()
    assert op == TEXT and rsv == 4
    assert zlib.decompressobj(wbits=-15).decompress(payload + b"\x00\x00\xff\xff") == msg


def test_compression_bomb_gets_1009(server):
    s = server()
    c = deflate_connect(s)
    bomb = compress(b"\0" * (64 << 20))  # 64 MiB of zeros in ~64 KiB
    assert len(bomb) < 100_000
    c.send(frame(BINARY, bomb, rsv=4))
    c.expect_close(1009)
    assert s.wait_line("END").startswith("END 1009")


def test_compressed_invalid_utf8_and_garbage(server):
    s = server()
    c = deflate_connect(s)
    c.send(frame(TEXT, compress(b"ok \xff"), rsv=4))
    c.expect_close(1007)
    c = deflate_connect(s)
    c.send(frame(BINARY, b"\xff\xff\xff\xff not deflate", rsv=4))
    c.expect_close(1002)
    c = deflate_connect(s)
    c.send(frame(CONT, b"a", rsv=4, fin=False) if False else
           frame(BINARY, compress(b"a"), rsv=4, fin=False) + frame(CONT, b"", rsv=4))
    c.expect_close(1002)


# ---------------------------------------------------------------- websockets client

def run_client(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


@pytest.mark.parametrize("compression", [None, "deflate"])
def test_websockets_client_echo(server, compression):
    websockets = pytest.importorskip("websockets")
    from websockets.asyncio.client import connect

    s = server()

    async def go():
        async with connect("ws://127.0.0.1:%d/ws" % s.http_port, compression=compression,
                           max_size=4 << 20) as ws:
            ext = ws.response.headers.get("Sec-WebSocket-Extensions")
            assert (ext is not None) == (compression == "deflate")
            # empty messages after others: RFC 7692 7.2.3.6's empty block
            for msg in ["hi", b"\x00bin", "", b"", "é" * 1000, "", b"z" * (1 << 20),
                        "t" * ((1 << 20) - 1), b""]:
                await ws.send(msg)
                assert await ws.recv() == msg
            # a fragmented message (an iterable is sent as fragments)
            await ws.send(["frag", "mented", " text"])
            assert await ws.recv() == "fragmented text"
            await ws.send([b"a" * 70000, b"b" * 3])
            assert await ws.recv() == b"a" * 70000 + b"b" * 3
            latency = await ws.ping(b"hey")
            await asyncio.wait_for(latency, 10)
            await ws.send("cmd:info")
            info = json.loads(await ws.recv())
            assert info["compressed"] == (compression == "deflate")
            await ws.close(4005, "bye now")
        assert ws.close_code == 4005

    run_client(go())
    assert s.wait_line("END") == "END 4005 bye now"


def test_websockets_client_server_closes(server):
    websockets = pytest.importorskip("websockets")
    from websockets.asyncio.client import connect

    s = server()

    async def go():
        async with connect("ws://127.0.0.1:%d/ws" % s.http_port) as ws:
            await ws.send("cmd:close:4100:server says bye")
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 4100 and ws.close_reason == "server says bye"

    run_client(go())
    assert s.wait_line("END") == "END 4100 server says bye"


@pytest.mark.parametrize("params", [
    dict(server_no_context_takeover=True),
    dict(client_no_context_takeover=True),
    dict(server_max_window_bits=9),
    dict(server_max_window_bits=15),
    dict(client_max_window_bits=9),
    dict(client_max_window_bits=True),
    dict(server_no_context_takeover=True, client_no_context_takeover=True,
         server_max_window_bits=10, client_max_window_bits=11),
])
def test_websockets_client_deflate_parameters(server, params):
    pytest.importorskip("websockets")
    from websockets.asyncio.client import connect
    from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

    s = server()

    async def go():
        factory = ClientPerMessageDeflateFactory(**params)
        async with connect("ws://127.0.0.1:%d/ws" % s.http_port, compression=None,
                           extensions=[factory], max_size=4 << 20) as ws:
            ext = ws.response.headers["Sec-WebSocket-Extensions"]
            for name, value in params.items():
                if name.endswith("takeover"):
                    assert name in ext
                elif name == "server_max_window_bits":
                    assert "%s=%d" % (name, value) in ext
            # several messages: the context is kept or not, as agreed
            import random
            rnd = random.Random(1)
            for i in range(20):
                words = " ".join(rnd.choice(["alpha", "beta", "gamma", "delta"])
                                 for _ in range(rnd.randrange(1, 3000)))
                await ws.send(words)
                assert await ws.recv() == words
            await ws.send(bytes(rnd.randrange(256) for _ in range(100_000)))
            assert len(await ws.recv()) == 100_000

    run_client(go())


def test_websockets_client_subprotocol(server):
    pytest.importorskip("websockets")
    from websockets.asyncio.client import connect

    s = server("--subprotocols", "chat", "superchat")

    async def go():
        async with connect("ws://127.0.0.1:%d/ws" % s.http_port,
                           subprotocols=["superchat", "chat"]) as ws:
            assert ws.subprotocol == "chat"
            await ws.send("x")
            assert await ws.recv() == "x"

    run_client(go())
    assert s.wait_line("SUBPROTOCOL") == "SUBPROTOCOL chat"


def test_keepalive_pings_and_closes_a_silent_peer(server):
    s = server("--ping-interval", "0.2", "--ping-timeout", "0.5")
    c = s.client()
    fin, rsv, op, payload = c.recv_frame()
    assert op == PING and len(payload) == 4
    c.send(frame(PONG, payload))  # answered: the next comes
    fin, rsv, op, payload2 = c.recv_frame()
    assert op == PING and payload2 != payload
    # not answered: 1011
    c.expect_close(1011)
    assert s.wait_line("END").startswith("END 1011")


def test_keepalive_without_a_timeout_keeps_pinging(server):
    s = server("--ping-interval", "0.05", "--ping-timeout", "0")
    c = s.client()
    payloads = set()
    while len(payloads) < 3:  # unanswered, they keep coming
        fin, rsv, op, payload = c.recv_frame()
        assert op == PING
        payloads.add(payload)
    c.send(frame(TEXT, "still open"))
    assert c.recv_message() == (TEXT, b"still open")


def test_keepalive_with_a_live_client(server):
    pytest.importorskip("websockets")
    from websockets.asyncio.client import connect

    s = server("--ping-interval", "0.1", "--ping-timeout", "2")

    async def go():
        async with connect("ws://127.0.0.1:%d/ws" % s.http_port) as ws:
            for i in range(8):
                await asyncio.sleep(0.1)
                await ws.send("tick %d" % i)
                assert await ws.recv() == "tick %d" % i

    run_client(go())


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_echo_on_each_loop(server, loop):
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    s = server(*(["--uvloop"] if loop == "uvloop" else []))
    c = s.client()
    assert echo(c, TEXT, "x" * 100_000) == (TEXT, b"x" * 100_000)
    c.send(b"".join(frame(BINARY, b"%d" % i) for i in range(100)))
    for i in range(100):
        assert c.recv_message() == (BINARY, b"%d" % i)
    c = RawClient(s.http_port)
    c.send(handshake_request() + frame(TEXT, "after handshake"))
    assert read_head(c)[0] == 101
    assert c.recv_message() == (TEXT, b"after handshake")


# ---------------------------------------------------------------- memory

MEMORY_LOOP = r"""
import asyncio, gc, os, sys, zlib
import psutil
from aiopyramid import _core
sys.path.insert(0, os.path.dirname(sys.argv[1]))
from wsclient import BINARY, CONT, PING, PONG, TEXT, close_frame, frame

class Transport:
    def __init__(self):
        self.out = 0
        self.proto = None
    def set_protocol(self, p): self.proto = p
    def write(self, b): self.out += len(b)
    def get_write_buffer_size(self): return 0
    def get_write_buffer_limits(self): return (16384, 65536)
    def pause_reading(self): pass
    def resume_reading(self): pass
    def close(self): pass
    def write_eof(self): pass
    def abort(self): pass

def compressed(op, data):
    z = zlib.compressobj(wbits=-12)
    return frame(op, (z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH))[:-4], rsv=4)

ENV = {"REQUEST_METHOD": "GET", "SERVER_PROTOCOL": "HTTP/1.1",
       "HTTP_UPGRADE": "websocket", "HTTP_CONNECTION": "Upgrade",
       "HTTP_SEC_WEBSOCKET_VERSION": "13",
       "HTTP_SEC_WEBSOCKET_KEY": "dGhlIHNhbXBsZSBub25jZQ==",
       "HTTP_SEC_WEBSOCKET_EXTENSIONS": "permessage-deflate; client_max_window_bits",
       "HTTP_SEC_WEBSOCKET_PROTOCOL": "chat"}

async def main(n):
    loop = asyncio.get_running_loop()
    plain = _core.WebSocket(loop)
    plain.attach(Transport(), b"")
    _, _, params = _core.websocket_handshake(ENV)
    deflated = _core.WebSocket(loop, deflate=params)
    deflated.attach(Transport(), b"")
    text = "héllo wörld " * 20
    data_plain = (frame(TEXT, text) + frame(BINARY, b"\x01" * 3000)
                  + frame(TEXT, "frag", fin=False) + frame(PING, b"p")
                  + frame(CONT, "ment"))
    data_deflate = compressed(TEXT, text.encode()) + compressed(BINARY, b"\x02" * 3000)
    mask = b"\x01\x02\x03\x04"
    buf = bytes(range(32, 127)) * 40
    gc.disable()
    proc = psutil.Process()
    marks = []
    for i in range(n):
        plain.data_received(data_plain)
        for _ in range(3):
            m = await plain.recv()
            await plain.send(m)
        deflated.data_received(data_deflate)
        for _ in range(2):
            m = await deflated.recv()
            await deflated.send(m)
        _core._websocket_unmask_validate(buf, mask)
        headers, proto, params = _core.websocket_handshake(ENV, subprotocols=["chat"])
        # a whole connection: made, attached, fed, closed by the peer, lost
        ws = _core.WebSocket(loop, deflate=params, on_lost=lambda: None)
        ws.attach(Transport(), data_deflate + close_frame(1000))
        await ws.recv()
        ws.connection_lost(None)
        assert await ws.recv() == bytes([2]) * 3000
        assert await ws.recv() is None
        await ws.wait_closed()
        try:
            ws.send("x")
        except Exception as e:
            assert type(e).__name__ == "WebsocketClosed"
        await asyncio.sleep(0)  # the loop runs: cancelled timers go
        if i in (n // 5, n - 1):
            marks.append(proc.memory_info().rss)
    print(marks[0], marks[1], flush=True)

asyncio.run(main(int(sys.argv[2])))
"""


def test_memory_is_flat_over_a_long_loop(tmp_path):
    """Frames parsed, unmasked, inflated, validated, messages received and
    sent, handshakes and whole connections: 100k rounds with the GC off,
    and RSS does not grow between the first fifth and the end."""
    import os
    import subprocess
    import sys

    script = tmp_path / "loop.py"
    script.write_text(MEMORY_LOOP)
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wsclient.py")
    asan = bool(os.environ.get("AIOPYRAMID_ASAN"))
    n = 5_000 if asan else 100_000
    out = subprocess.run([sys.executable, str(script), here, str(n)], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    first, last = map(int, out.stdout.split())
    if not asan:  # ASan keeps freed memory in quarantine: RSS measures it
        assert last - first < 2 * 1024 * 1024, (first, last)


# ---------------------------------------------------------------- UTF-8, unmasking

def random_text(rnd, invalid):
    """Random UTF-8 of every sequence length, and (invalid) one defect."""
    pieces = []
    for _ in range(rnd.randrange(0, 120)):
        kind = rnd.random()
        if kind < 0.4:
            pieces.append(bytes(rnd.randrange(0x20, 0x7F) for _ in range(rnd.randrange(1, 40))))
        elif kind < 0.6:
            pieces.append(chr(rnd.randrange(0x80, 0x800)).encode())
        elif kind < 0.8:
            c = rnd.randrange(0x800, 0x10000)
            if 0xD800 <= c < 0xE000:
                c = 0xE000
            pieces.append(chr(c).encode())
        else:
            pieces.append(chr(rnd.randrange(0x10000, 0x110000)).encode())
    if invalid:
        bad = rnd.choice([
            b"\x80", b"\xbf", b"\xc0\xaf", b"\xc1\xbf", b"\xe0\x80\xaf", b"\xe0\x9f\xbf",
            b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xf0\x80\x80\xaf", b"\xf0\x8f\xbf\xbf",
            b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xff", b"\xfe", b"\xc3", b"\xe2\x82",
            b"\xf0\x9f\x98", b"\xc3\xc3", b"\xe2\x28\xa1", b"\xf0\x9f\x28\x80",
            bytes([rnd.randrange(0x80, 0x100)]),
        ])
        pieces.insert(rnd.randrange(len(pieces) + 1), bad)
    return b"".join(pieces)


def is_utf8(data):
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_unmask_and_validation_agree_with_python():
    """Every length and alignment of the word-at-a-time unmasking, and the
    validator (SIMD blocks, ASCII runs, the state machine) against Python's
    own UTF-8 decoder."""
    import random

    from .wsclient import mask_bytes

    rnd = random.Random(8)
    unmask = _core._websocket_unmask_validate
    for n in list(range(0, 70)) + [127, 128, 129, 1023, 4096, 65537]:
        plain = bytes(rnd.randrange(0x20, 0x7F) for _ in range(n))
        mask = bytes(rnd.randrange(256) for _ in range(4))
        assert unmask(mask_bytes(plain, mask), mask) == plain
        assert unmask(memoryview(bytearray(mask_bytes(plain, mask))), mask) == plain
    checked = {True: 0, False: 0}
    for i in range(20000):
        data = random_text(rnd, invalid=rnd.random() < 0.5)
        valid = is_utf8(data)
        checked[valid] += 1
        mask = bytes(rnd.randrange(256) for _ in range(4))
        masked = mask_bytes(data, mask)
        if valid:
            assert unmask(masked, mask) == data
        else:
            with pytest.raises(ValueError, match="not valid UTF-8"):
                unmask(masked, mask)
    assert min(checked.values()) > 5000
    with pytest.raises(ValueError, match="4 bytes"):
        unmask(b"abc", b"abc")


class FakeTransport:
    def __init__(self):
        self.written = bytearray()
        self.closed = False

    def set_protocol(self, p):
        self.protocol = p

    def write(self, data):
        self.written += data

    def get_write_buffer_size(self):
        return 0

    def get_write_buffer_limits(self):
        return (16384, 65536)

    def pause_reading(self):
        pass

    def resume_reading(self):
        self.resumed = getattr(self, "resumed", 0) + 1

    def write_eof(self):
        pass

    def close(self):
        self.closed = True

    def abort(self):
        self.closed = True


def test_text_split_anywhere_is_validated_like_python():
    """Random text, cut into random fragments and fed in random reads:
    a valid message arrives whole, an invalid one closes with 1007 (at the
    latest when its last fragment ends)."""
    import random

    from .wsclient import RawClient  # noqa: F401  (frames only)

    rnd = random.Random(9)

    async def go():
        loop = asyncio.get_running_loop()
        for i in range(1500):
            data = random_text(rnd, invalid=rnd.random() < 0.5)
            if rnd.random() < 0.3:
                data = data * rnd.randrange(2, 20)
            cuts = sorted(rnd.sample(range(len(data) + 1), min(len(data) + 1, rnd.randrange(1, 6))))
            parts = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
            wire = b"".join(frame(TEXT if k == 0 else CONT, part, fin=k == len(parts) - 1)
                            for k, part in enumerate(parts))
            ws = _core.WebSocket(loop)
            t = FakeTransport()
            ws.attach(t, b"")
            pos = 0
            while pos < len(wire):
                step = rnd.randrange(1, 200)
                ws.data_received(wire[pos:pos + step])
                pos += step
            got = await ws.recv()
            if is_utf8(data):
                assert got == data.decode()
            else:
                assert got is None
                assert t.written[0] == 0x88 and bytes(t.written[2:4]) == b"\x03\xef"  # 1007
            ws.connection_lost(None)

    asyncio.run(go())
