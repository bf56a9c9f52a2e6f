"""The pool of idle request greenlets: a limit raised or lowered keeps the
greenlets the pool holds (up to the limit), and the gunicorn worker keeps
as many idle as connections are open, so requests that wait at once on
more connections than the default limit (256) reuse their greenlets
instead of killing some and making others."""
import asyncio
import json
import socket
import time

import pytest

from aiopyramid import _core
from aiopyramid.helpers import spawn_greenlet, synchronize

from .conftest import get_ok

_sleep = synchronize(asyncio.sleep)


def _job():
    _sleep(0.01)


def _spawn_at_once(run, n):
    async def main():
        await asyncio.gather(*(spawn_greenlet(_job) for _ in range(n)))
        return _core.pool_stats()

    return run(main())


class TestSetPoolLimit:
    def test_a_new_limit_keeps_what_the_pool_holds(self, run):
        old = _core.set_pool_limit(3)
        try:
            assert _spawn_at_once(run, 5)["idle"] == 3
            created = _core.pool_stats()["created"]
            # raised: the three stay (they were all dropped, the pool remade)
            _core.set_pool_limit(600)
            assert _core.pool_stats()["idle"] == 3
            # and the pool grows past its first allocation, to the limit
            stats = _spawn_at_once(run, 500)
            assert stats["idle"] == 500
            assert stats["created"] == created + 497
            stats = _spawn_at_once(run, 500)
            assert stats["created"] == created + 497  # all reused
            # lowered: the pool keeps that many, the others end
            _core.set_pool_limit(10)
            assert _core.pool_stats()["idle"] == 10
            assert _spawn_at_once(run, 10)["created"] == created + 497
            _core.set_pool_limit(0)
            assert _core.pool_stats()["idle"] == 0
        finally:
            _core.set_pool_limit(old)

    def test_no_pool(self, run):
        old = _core.set_pool_limit(0)
        try:
            before = _core.pool_stats()["created"]
            stats = _spawn_at_once(run, 4)
            assert stats["idle"] == 0 and stats["created"] == before + 4
        finally:
            _core.set_pool_limit(old)


pytest.importorskip("gunicorn")

CONNS = 300  # more requests waiting at once than the default limit (256)




def _wave(socks):
    """One waiting request on each kept-alive connection, all at once."""
    for s in socks:
        s.sendall(b"GET /wait?s=0.5 HTTP/1.1\r\nHost: t\r\n\r\n")
    for s in socks:
        got = b""
        deadline = time.monotonic() + 30
        while not got.endswith(b"waited"):
            assert time.monotonic() < deadline, got
            data = s.recv(4096)
            assert data, "connection closed: %r" % got
            got += data
        assert got.startswith(b"HTTP/1.1 200"), got


def _waves(port):
    socks = [socket.create_connection(("127.0.0.1", port), timeout=15)
             for _ in range(CONNS)]
    try:
        _wave(socks)
        first = json.loads(get_ok(port, "/pool"))
        _wave(socks)
        second = json.loads(get_ok(port, "/pool"))
    finally:
        for s in socks:
            s.close()
    return first, second


def test_worker_keeps_a_greenlet_per_connection_open(gunicorn):
    """300 connections each waiting at once, twice: the second time every
    request reuses a greenlet the first left idle (with 256 kept, 44 were
    killed after the first wave and 44 made anew for the second)."""
    srv = gunicorn("--worker-connections", "1000", app="pool_pacing_app:main()")
    first, second = _waves(srv.port)
    assert first["created"] >= CONNS
    # (/pool runs in one of them)
    assert first["idle"] >= CONNS - 1 and first["limit"] >= CONNS
    assert second["created"] == first["created"]


def test_worker_lowers_the_limit_as_connections_close(gunicorn):
    """Once the connections have closed, the limit comes back down to the
    default (by half at most each second) and the pool keeps no more idle
    greenlets than that."""
    srv = gunicorn("--worker-connections", "1000", app="pool_pacing_app:main()")
    first, _ = _waves(srv.port)
    assert first["limit"] >= CONNS
    deadline = time.monotonic() + 20
    while True:
        stats = json.loads(get_ok(srv.port, "/pool"))
        if stats["limit"] == 256:
            break
        assert time.monotonic() < deadline, stats
        time.sleep(0.2)
    assert stats["idle"] <= 256


def test_worker_keeps_the_apps_own_pool_limit(gunicorn):
    srv = gunicorn("--worker-connections", "1000",
                   app="pool_pacing_app:main(limit=100)")
    first, second = _waves(srv.port)
    assert first["limit"] == second["limit"] == 100
    assert first["idle"] <= 100
    assert second["created"] > first["created"]
