"""Responses made in one iteration of the loop are held back and written at
its end, one write per connection: the client is woken once for what the
iteration made, not once per response (see proto_write_bytes in
csrc/http/protocol.c).  What must not change: order, nothing lost or
written after a close, and a large response still written as it goes, so
that a client that stops reading still pauses it."""
import asyncio
import select
import socket

from aiopyramid import _core
from aiopyramid.server import HttpServer

from .inprocess import loop, run, serving  # noqa: F401 -- fixture
from .rawhttp import parse_all


class RecordingTransport:
    """Records each write() as one item; pause_writing() past `high`."""

    def __init__(self, high=None):
        self.writes = []
        self.closed = False
        self.aborted = False
        self.high = high
        self.proto = None

    @property
    def out(self):
        return b"".join(self.writes)

    def write(self, data):
        assert not self.closed, "write after close"
        self.writes.append(bytes(data))
        if self.high is not None and len(self.out) > self.high:
            self.proto.pause_writing()

    def close(self):
        self.closed = True

    def abort(self):
        self.closed = self.aborted = True

    def is_closing(self):
        return self.closed

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass

    def get_write_buffer_size(self):
        return 0

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 40000),
                "sockname": ("127.0.0.1", 80)}.get(name, default)


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [environ["PATH_INFO"].encode()]


def connect(server, **kw):
    proto, t = server(), RecordingTransport(**kw)
    t.proto = proto
    proto.connection_made(t)
    return proto, t


def one_iteration(loop):
    loop.run_until_complete(asyncio.sleep(0))


def get(path, close=False):
    return (b"GET %s HTTP/1.1\r\nHost: h\r\n%s\r\n"
            % (path, b"Connection: close\r\n" if close else b""))


def test_pipelined_responses_go_out_in_one_write_after_the_iteration(loop):
    server = HttpServer(hello, loop)
    proto, t = connect(server)
    proto.data_received(get(b"/a") + get(b"/b") + get(b"/c"))
    assert t.writes == [] and server.requests == 3  # made, held back
    one_iteration(loop)
    assert len(t.writes) == 1
    assert [r.body for r in parse_all(t.out)] == [b"/a", b"/b", b"/c"]
    proto.connection_lost(None)


def test_connections_served_in_one_iteration_are_written_together(loop):
    server = HttpServer(hello, loop)
    conns = [connect(server) for _ in range(5)]
    for i, (proto, t) in enumerate(conns):
        proto.data_received(get(b"/%d" % i))
    assert all(t.writes == [] for _, t in conns)
    one_iteration(loop)
    for i, (proto, t) in enumerate(conns):
        assert [r.body for r in parse_all(t.out)] == [b"/%d" % i]
        proto.connection_lost(None)


def test_a_closing_connection_writes_what_it_held_first(loop):
    server = HttpServer(hello, loop)
    proto, t = connect(server)
    proto.data_received(get(b"/a") + get(b"/last", close=True))
    assert t.closed  # closed at once, its responses written before
    assert [r.body for r in parse_all(t.out)] == [b"/a", b"/last"]
    one_iteration(loop)  # the flush finds nothing more to write
    assert len(t.writes) == 1
    proto.connection_lost(None)


def test_a_connection_lost_before_the_flush_writes_nothing(loop):
    server = HttpServer(hello, loop)
    proto, t = connect(server)
    proto.data_received(get(b"/a"))
    proto.connection_lost(ConnectionResetError())
    one_iteration(loop)
    assert t.writes == []
    # the server goes on serving others
    proto2, t2 = connect(server)
    proto2.data_received(get(b"/b"))
    one_iteration(loop)
    assert [r.body for r in parse_all(t2.out)] == [b"/b"]
    proto2.connection_lost(None)


def test_abort_drops_what_is_held(loop):
    server = HttpServer(hello, loop)
    proto, t = connect(server)
    proto.data_received(get(b"/a"))
    server.abort()
    assert t.aborted
    one_iteration(loop)
    assert t.writes == []


def test_a_large_response_is_written_as_it_is_made(loop):
    """Held bytes are bounded (64 KiB a connection): a response made of
    many small chunks reaches the transport while the app still iterates,
    so the transport's pause_writing can stop it."""
    seen = []

    def streaming(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        for i in range(64):
            seen.append(len(t.out))
            yield b"x" * 8192

    server = HttpServer(streaming, loop)
    proto, t = connect(server)
    proto.data_received(get(b"/"))
    for _ in range(20):
        one_iteration(loop)
    (r,) = parse_all(t.out)
    assert r.body == b"x" * 8192 * 64
    # written while iterating, not all at the end
    assert seen[16] > 0, seen
    assert max(len(w) for w in t.writes) < 128 * 1024
    proto.connection_lost(None)


def test_a_paused_transport_stops_a_large_response_until_resumed(loop):
    chunks = []

    def streaming(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        for i in range(256):
            chunks.append(i)
            yield b"y" * 8192

    server = HttpServer(streaming, loop)
    proto, t = connect(server, high=256 * 1024)
    proto.data_received(get(b"/"))
    for _ in range(20):
        one_iteration(loop)
    stalled = len(chunks)
    assert stalled < 256, "the app was not paused by a full transport"
    for _ in range(5):
        one_iteration(loop)
    assert len(chunks) == stalled  # still paused
    t.high = None
    proto.resume_writing()
    for _ in range(50):
        one_iteration(loop)
    (r,) = parse_all(t.out)
    assert len(r.body) == 256 * 8192
    proto.connection_lost(None)


def test_a_response_made_between_polls_goes_out_before_the_next_reads(run):
    """A request that resumes in a callback of the loop's queue (a timer's,
    a future's: the 50 ms wait view at 1,000 connections) makes its
    response between two polls for I/O.  uvloop runs only the callbacks
    queued before its pass over the queue starts, so the flush that
    response queued ran after the next poll, and every request that poll
    brought was served first.  Now the first read of the next poll writes
    it before serving what it read: here B's request, read right after A's
    response was made, finds it already sent to A's client."""
    state = {}

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/a":
            _core.await_(state["release"])
            body = b"a"
        else:
            ready, _, _ = select.select([state["a"]], [], [], 0)
            body = b"a sent" if ready else b"a held"
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]

    async def read_response(sock):
        loop = asyncio.get_running_loop()
        data = b""
        while not parse_all(data, eof=False):
            chunk = await loop.sock_recv(sock, 65536)
            assert chunk, data
            data += chunk
        return parse_all(data, eof=False)[0].body

    async def main():
        loop = asyncio.get_running_loop()
        state["release"] = loop.create_future()
        async with serving(app) as (port, srv):
            with socket.create_connection(("127.0.0.1", port)) as a, \
                    socket.create_connection(("127.0.0.1", port)) as b:
                state["a"] = a
                a.setblocking(False)
                b.setblocking(False)
                a.send(get(b"/a"))
                for _ in range(500):  # bounded: A waits, B is connected
                    if srv.active == 1 and srv.connections == 2:
                        break
                    await asyncio.sleep(0.01)
                assert srv.active == 1 and srv.connections == 2
                # A's request resumes in the loop's next pass over its
                # queue; B's request arrives in that same pass, after it
                state["release"].set_result(None)
                loop.call_soon(b.send, get(b"/b"))
                return await read_response(b), await read_response(a)

    assert run(main()) == (b"a sent", b"a")


def test_a_pass_serving_many_connections_sends_their_responses_as_it_goes(run):
    """A pass of the loop that reads requests from many connections (here
    200, all sent before the server polls) sends the responses of the first
    ones before it serves the last: a server holds the writes of at most 64
    connections (HELD_CONNECTIONS_MAX in csrc/http/protocol.c).  Held to
    the pass's end, the first client waited for the whole pass and its next
    request missed the next poll (p99 at 1,000 connections).  Each call of
    the app counts the clients that have a response to read by then."""
    n = 200
    state = {"seen": [], "clients": []}

    def app(environ, start_response):
        poller = select.poll()
        for c in state["clients"]:
            poller.register(c, select.POLLIN)
        state["seen"].append(len(poller.poll(0)))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["PATH_INFO"].encode()]

    async def main():
        async with serving(app) as (port, srv):
            loop = asyncio.get_running_loop()
            clients = state["clients"]
            try:
                for _ in range(n):
                    c = socket.socket()
                    clients.append(c)
                    c.setblocking(False)
                    await asyncio.wait_for(loop.sock_connect(c, ("127.0.0.1", port)), 10)
                for _ in range(500):  # bounded: every connection accepted
                    if srv.connections == n:
                        break
                    await asyncio.sleep(0.01)
                assert srv.connections == n
                for i, c in enumerate(clients):  # no await: one poll reads all
                    assert c.send(get(b"/%d" % i)) == len(get(b"/%d" % i))
                for i, c in enumerate(clients):
                    data = b""
                    while not parse_all(data, eof=False):
                        chunk = await asyncio.wait_for(loop.sock_recv(c, 65536), 10)
                        assert chunk, data
                        data += chunk
                    assert parse_all(data, eof=False)[0].body == b"/%d" % i
            finally:
                for c in clients:
                    c.close()

    run(main())
    seen = state["seen"]
    assert len(seen) == n
    # the 66th request served finds the first 64 responses sent
    assert seen[-1] >= 64, seen
