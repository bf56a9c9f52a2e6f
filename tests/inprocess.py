"""aiopyramid._core.HttpServer in this process, two ways:

- fed by hand through a FakeTransport on a loop that runs only when the
  test spins it (`loop` fixture, connect(), spin()): every split of the
  input, every callback, no sockets;
- served on 127.0.0.1 by a real loop, asyncio's and uvloop (`run`
  fixture, serving()), for raw bytes over real sockets (tests/rawhttp.py).

A test module uses a fixture by importing it:
`from .inprocess import run, serving  # noqa: F401 -- fixture`.
"""
import asyncio
import contextlib

import pytest

from aiopyramid.server import HttpServer

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None

LOOPS = ["asyncio"] + (["uvloop"] if uvloop else [])


class FakeTransport:
    def __init__(self):
        self.out = bytearray()
        self.closed = False
        self.paused = False

    def write(self, data):
        assert not self.closed, "write after close"
        self.out += data

    def close(self):
        self.closed = True

    abort = close

    def pause_reading(self):
        self.paused = True

    def resume_reading(self):
        self.paused = False

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 80)}.get(name, default)


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def connect(loop, app, **kw):
    """(server, protocol, transport): one connection made on a FakeTransport."""
    server = HttpServer(app, loop, **kw)
    proto = server()
    t = FakeTransport()
    proto.connection_made(t)
    return server, proto, t


def spin(loop, n=10):
    """Lets Tasks of requests that waited (for their body) run."""
    for _ in range(n):
        loop.run_until_complete(asyncio.sleep(0))


@pytest.fixture(params=LOOPS)
def run(request):
    """run(coro): to completion on a fresh loop of each kind; a coroutine
    still running after 60 s fails the test with TimeoutError."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else None

    async def bounded(coro):
        async with asyncio.timeout(60):
            return await coro

    def run(coro):
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(bounded(coro))

    return run


@contextlib.asynccontextmanager
async def serving(app, **kw):
    """(port, server) of an HttpServer listening on 127.0.0.1; aborted and
    closed on the way out."""
    loop = asyncio.get_running_loop()
    srv = HttpServer(app, loop, base_environ={"wsgi.version": (1, 0)}, **kw)
    server = await loop.create_server(srv, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], srv
    finally:
        server.close()
        srv.abort()
        await server.wait_closed()
        for _ in range(50):
            if not srv.connections:
                break
            await asyncio.sleep(0.01)
