"""A connection's protocol, read buffer and environ go when the connection
ends, without waiting for the cyclic GC (which is disabled here)."""
import asyncio
import gc

from aiopyramid import _core

from .rawhttp import exchange
from .inprocess import run, serving  # noqa: F401 -- fixture

CONNECTIONS = 200


def live_protocols():
    return sum(1 for o in gc.get_objects() if type(o) is _core.HttpProtocol)


def suspending_app(environ, start_response):
    # the request suspends, so a Task drives the rest of it
    _core.await_(asyncio.sleep(0.001))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def test_protocols_of_ended_connections_are_freed_without_gc(run):
    async def main():
        async with serving(suspending_app) as (port, srv):
            before = live_protocols()
            for _ in range(CONNECTIONS // 20):
                replies = await asyncio.gather(*(
                    exchange(port, b"GET / HTTP/1.1\r\nHost: t\r\n"
                                   b"Connection: close\r\n\r\n")
                    for _ in range(20)))
                for responses, _closed in replies:
                    assert [r.status for r in responses] == [200]
            for _ in range(100):  # let the server see every close
                if not srv.connections:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            return before, live_protocols()

    gc.collect()
    gc.disable()
    try:
        before, after = run(main())
    finally:
        gc.enable()
    assert after - before < 5, (before, after)
