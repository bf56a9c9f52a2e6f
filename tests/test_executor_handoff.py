"""The hand-off of a legacy view to an aiopyramid Executor and back (the
view is the pool's work item, its outcome handed back to the loop by one
call_soon_threadsafe): results, errors, a request that gives up while its
view waits in the queue, a pool shut down under queued views."""
import asyncio
import json
import socket
import struct
import threading
import time

import pytest
from pyramid.response import Response

from aiopyramid import _executor
from aiopyramid.config import IViewExecutor

from .conftest import get
from .rawhttp import parse_one

pytest.importorskip("gunicorn")


def fetch(port, path):
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(b"GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
                  % path.encode())
        buf = b""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return parse_one(buf, eof=True)[0]


def status(port):
    return json.loads(fetch(port, "/status").body)


def until(cond, what, tries=300):
    for _ in range(tries):
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("never happened: " + what)


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_view_of_a_client_that_left_while_queued_never_runs(gunicorn, loop):
    srv = gunicorn(app="executor_handoff_app:main()", env={"AIOPYRAMID_LOOP": loop})
    blocker = socket.create_connection(("127.0.0.1", srv.port), timeout=15)
    blocker.sendall(b"GET /block HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    until(lambda: status(srv.port)["ran"]["block"] == 1, "/block running")
    # /count waits in the queue behind /block; its client leaves
    leaver = socket.create_connection(("127.0.0.1", srv.port), timeout=15)
    leaver.sendall(b"GET /count HTTP/1.1\r\nHost: t\r\n\r\n")
    until(lambda: status(srv.port)["queued"] == 1, "/count queued")
    # gone for good (a reset): a FIN alone is a half-close, still answered
    leaver.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    leaver.close()
    until(lambda: "/count" in status(srv.port)["cancelled"], "/count cancelled")
    assert fetch(srv.port, "/release").status == 200
    with blocker:
        blocker.settimeout(15)
        assert blocker.recv(100).startswith(b"HTTP/1.1 200")
    # /count2 queues behind the cancelled /count: once it is answered, the
    # thread has been past /count, which it must not have run
    r = fetch(srv.port, "/count2")
    assert r.status == 200 and r.body == b"counted2"
    assert status(srv.port)["ran"] == {"count": 0, "count2": 1, "block": 1}


def _app(make_app, views):
    def configure(config):
        for name, view in views.items():
            config.add_route(name, "/" + name)
            config.add_view(view, route_name=name)

    return make_app(configure, {"aiopyramid.executor_threads": "1"})


def test_results_and_errors_come_back(run, make_app):
    def ok(request):
        return Response(threading.current_thread().name)

    def boom(request):
        raise KeyError("boom")

    def stop(request):
        raise StopIteration  # asyncio futures refuse it: still an error

    app = _app(make_app, {"ok": ok, "boom": boom, "stop": stop})

    async def main():
        r = await get(app, "/ok")
        assert r.text.startswith("aiopyramid-view")
        with pytest.raises(KeyError):
            await get(app, "/boom")
        with pytest.raises(RuntimeError):
            await get(app, "/stop")
        return True

    assert run(main())


def test_pool_shut_down_under_a_queued_view_cancels_its_request(run, make_app):
    started, go = threading.Event(), threading.Event()

    def block(request):
        started.set()
        go.wait(20)
        return Response(b"done")

    def queued(request):
        return Response(b"queued ran")

    app = _app(make_app, {"block": block, "queued": queued})
    pool = app.registry.queryUtility(IViewExecutor)
    assert isinstance(pool, _executor.Executor)

    async def main():
        first = asyncio.ensure_future(get(app, "/block"))
        for _ in range(400):
            if started.is_set():
                break
            await asyncio.sleep(0.01)
        second = asyncio.ensure_future(get(app, "/queued"))
        for _ in range(400):
            if pool._work_queue.qsize() == 1:
                break
            await asyncio.sleep(0.01)
        assert pool._work_queue.qsize() == 1
        pool.shutdown(wait=False, cancel_futures=True)
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(second, 10)
        go.set()
        return (await asyncio.wait_for(first, 10)).body

    assert run(main()) == b"done"
