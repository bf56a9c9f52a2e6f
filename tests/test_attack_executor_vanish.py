"""ATTACK (attack-exec): a client that vanishes (a reset) while its plain
view runs in an executor thread.  The request's Task is cancelled; its
tweens unwind at once (a `finally` that closes the request's database
session, or gives its connection back to a pool) while the view still
runs in its thread with the same request and the same resources: a
session used from two threads at once, a pooled connection handed to the
next request while this view still uses it.  anyio's to_thread.run_sync
(Starlette's plain endpoints) waits for the thread before the cancellation
goes on; gunicorn's own workers never cancel a view."""
import json
import socket
import struct
import time

import pytest

from .rawhttp import read_to_eof

pytest.importorskip("gunicorn")


def _status(port):
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(b"GET /status HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        return json.loads(read_to_eof(s).partition(b"\r\n\r\n")[2])


def _until(cond, what, tries=400):
    for _ in range(tries):
        if cond():
            return
        time.sleep(0.025)
    raise AssertionError("never happened: " + what)


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_attack_tweens_do_not_unwind_under_a_view_still_running(gunicorn, loop):
    srv = gunicorn(app="attack_vanish_app:main()", env={"AIOPYRAMID_LOOP": loop})
    c = socket.create_connection(("127.0.0.1", srv.port), timeout=15)
    c.sendall(b"GET /use HTTP/1.1\r\nHost: t\r\n\r\n")
    _until(lambda: _status(srv.port)["started"] == 1, "/use started")
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()  # a reset: the client is gone for good
    _until(lambda: _status(srv.port)["finished"] == 1, "/use finished")
    assert _status(srv.port)["closed_under_view"] == 0, (
        "the request's tween closed its resource while the view still ran")
    # and the worker serves on
    with socket.create_connection(("127.0.0.1", srv.port), timeout=15) as s:
        s.sendall(b"GET /use HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert read_to_eof(s).endswith(b"used")
    assert _status(srv.port)["closed_under_view"] == 0


def _in_process_app(make_app, started, finished):
    from pyramid.response import Response

    def slow(request):
        started.set()
        time.sleep(1.5)
        finished.set()
        return Response(b"slow")

    def configure(config):
        config.add_route("slow", "/slow")
        config.add_view(slow, route_name="slow")

    return make_app(configure, {"aiopyramid.executor_threads": "2"})


async def _cancel_once_running(app, started):
    """The request's Task for /slow, cancelled once its view runs."""
    import asyncio

    from .conftest import get

    task = asyncio.ensure_future(get(app, "/slow"))
    for _ in range(400):
        if started.is_set():
            break
        await asyncio.sleep(0.01)
    task.cancel()
    return task


def test_attack_a_cancelled_request_ends_after_its_running_view(run, make_app):
    import asyncio
    import threading

    started, finished = threading.Event(), threading.Event()
    app = _in_process_app(make_app, started, finished)

    async def main():
        task = await _cancel_once_running(app, started)
        try:
            await asyncio.wait_for(task, 20)
        except asyncio.CancelledError:
            return finished.is_set()
        return "not cancelled"

    assert run(main()) is True


def test_attack_a_second_cancellation_goes_on_at_once(run, make_app):
    import asyncio
    import threading

    started, finished = threading.Event(), threading.Event()
    app = _in_process_app(make_app, started, finished)

    async def main():
        task = await _cancel_once_running(app, started)
        await asyncio.sleep(0.05)  # the first one waits for the view
        assert not task.done()
        task.cancel()
        try:
            await asyncio.wait_for(task, 20)
        except asyncio.CancelledError:
            early = not finished.is_set()
        finished.wait(10)  # the view's end, before the loop closes
        await asyncio.sleep(0.1)
        return early

    assert run(main()) is True
