"""asyncio.current_task() is the request's Task from the first line of the
view (and of the tweens before it), and stays that Task after the view
suspends: asyncio.timeout(), TaskGroup and wait_for work at a view's start,
a disconnect cancels that Task.  Through a real gunicorn with our worker,
on uvloop and on asyncio's loop, and in-process on HttpServer.

This module is also the app the server runs (tests.test_request_task:main()).
"""
import asyncio
import json
import socket
import struct
import time

import pytest
from pyramid.config import Configurator
from pyramid.response import Response

from aiopyramid.helpers import synchronize

TWEEN_KEY = "test.tween_task"
STATE = {"hanging": 0, "cancelled": []}


def text(body):
    return Response(body.encode(), content_type="text/plain")


async def child(n, suspend=True):
    if suspend:
        await asyncio.sleep(0)
    return n


@synchronize
async def guarded_check():
    # plain code (a tween) calling a coroutine that needs a Task at once
    async with asyncio.timeout(5):
        return asyncio.current_task()


def task_tween_factory(handler, registry):
    def tween(request):
        task = asyncio.current_task()
        request.environ[TWEEN_KEY] = task
        if request.path == "/tween-timeout" and guarded_check() is not task:
            return text("synchronized coroutine saw another task")
        return handler(request)
    return tween


async def timeout_view(request):
    async with asyncio.timeout(5):
        if request.params.get("suspend"):
            await asyncio.sleep(0)
    return text("timeout ok")


async def taskgroup_view(request):
    suspend = bool(request.params.get("suspend"))
    async with asyncio.TaskGroup() as tg:
        a = tg.create_task(child(1, suspend))
        b = tg.create_task(child(2, suspend))
    return text("taskgroup %d" % (a.result() + b.result()))


async def wait_for_view(request):
    suspend = bool(request.params.get("suspend"))
    n = await asyncio.wait_for(child(3, suspend), 5)
    return text("wait_for %d" % n)


async def same_task_view(request):
    first = asyncio.current_task()
    problems = []
    if not isinstance(first, asyncio.Task):
        problems.append("no Task at the first line: %r" % (first,))
    elif first.done() or first.cancelling():
        problems.append("odd Task at the first line: %r" % (first,))
    if request.environ.get(TWEEN_KEY) is not first:
        problems.append("the tween saw %r" % (request.environ.get(TWEEN_KEY),))
    await asyncio.sleep(0)
    second = asyncio.current_task()
    if second is not first:
        problems.append("after a suspension: %r, was %r" % (second, first))
    if request.params.get("twice"):
        await asyncio.sleep(0.01)
        if asyncio.current_task() is not first:
            problems.append("after a timer: %r" % (asyncio.current_task(),))
    return text("; ".join(problems) or "same task")


async def tween_timeout_view(request):
    return text("tween ok")


async def timeout_fires_view(request):
    try:
        async with asyncio.timeout(0.05):
            await asyncio.sleep(30)
    except TimeoutError:
        return text("timed out, cancelling=%d" % asyncio.current_task().cancelling())
    return text("not timed out")


async def self_cancel_view(request):
    # cancelled before it first suspends: CancelledError at that await, and
    # the Task's cancel count is the view's to take back
    task = asyncio.current_task()
    task.cancel()
    try:
        await asyncio.sleep(0)
    except asyncio.CancelledError:
        if asyncio.current_task() is not task:
            return text("another task after the cancel")
        return text("cancelled %d, uncancel=%d" % (task.cancelling(), task.uncancel()))
    return text("not cancelled")


async def hang_view(request):
    task = asyncio.current_task()
    STATE["hanging"] += 1
    try:
        async with asyncio.timeout(60):
            await asyncio.sleep(60)
    except asyncio.CancelledError:
        STATE["cancelled"].append(task is asyncio.current_task() and task.cancelling())
        raise
    finally:
        STATE["hanging"] -= 1
    return text("not cancelled")


async def state_view(request):
    return Response(json.dumps(STATE).encode(), content_type="application/json")


async def hello(request):
    return text("Hello, world!")


VIEWS = {
    "/hello": hello,
    "/timeout": timeout_view,
    "/taskgroup": taskgroup_view,
    "/wait-for": wait_for_view,
    "/same-task": same_task_view,
    "/tween-timeout": tween_timeout_view,
    "/timeout-fires": timeout_fires_view,
    "/self-cancel": self_cancel_view,
    "/hang": hang_view,
    "/state": state_view,
}


def main(global_config=None, **settings):
    with Configurator(settings=settings) as config:
        config.include("aiopyramid")
        config.add_tween(__name__ + ".task_tween_factory")
        for path, view in VIEWS.items():
            config.add_route(path, path)
            config.add_view(view, route_name=path)
        return config.make_wsgi_app()


# ------------------------------------------------------------------ tests

from .conftest import gunicorn_on_loop  # noqa: E402
from .rawhttp import blocking_exchange, exchange, parse_all  # noqa: E402


@pytest.fixture(scope="module", params=["uvloop", "asyncio"])
def server(request, tmp_path_factory):
    """One gunicorn with our worker serving main() for the module's tests."""
    yield from gunicorn_on_loop(request, tmp_path_factory,
                                "tests.test_request_task:main()", "request_task")


def get(port, path):
    data, closed = blocking_exchange(
        port, b"GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % path.encode())
    (r,) = parse_all(data)
    return r.status, r.body.decode("latin-1")


CASES = [
    ("/timeout", "timeout ok"),
    ("/timeout?suspend=1", "timeout ok"),
    ("/taskgroup", "taskgroup 3"),
    ("/taskgroup?suspend=1", "taskgroup 3"),
    ("/wait-for", "wait_for 3"),
    ("/wait-for?suspend=1", "wait_for 3"),
    ("/same-task", "same task"),
    ("/same-task?twice=1", "same task"),
    ("/tween-timeout", "tween ok"),
    ("/timeout-fires", "timed out, cancelling=0"),
    ("/self-cancel", "cancelled 1, uncancel=0"),
]


@pytest.mark.parametrize("path,body", CASES)
def test_view_runs_in_its_task_from_the_first_line(server, path, body):
    assert get(server.port, path) == (200, body), server.log()[-3000:]


def test_pipelined_requests_each_get_their_own_task(server):
    """Requests answered one after the other on one connection (the first
    ones without suspending) each see a Task of their own."""
    req = b"".join(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % p.encode()
                   for p in ["/timeout", "/same-task", "/taskgroup?suspend=1",
                             "/timeout", "/wait-for"])
    data, closed = blocking_exchange(
        server.port, req + b"GET /same-task HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    rs = parse_all(data)
    assert [(r.status, r.body) for r in rs] == [
        (200, b"timeout ok"), (200, b"same task"), (200, b"taskgroup 3"),
        (200, b"timeout ok"), (200, b"wait_for 3"), (200, b"same task")]


def state(port):
    status, body = get(port, "/state")
    assert status == 200
    return json.loads(body)


def test_disconnect_cancels_the_request_task(server):
    before = len(state(server.port)["cancelled"])
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /hang HTTP/1.1\r\nHost: t\r\n\r\n")
        deadline = time.monotonic() + 10
        while state(server.port)["hanging"] != 1:
            assert time.monotonic() < deadline, server.log()[-3000:]
            time.sleep(0.02)
        # gone: a reset (a FIN alone is a half-close, which is answered)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    deadline = time.monotonic() + 10
    while True:
        st = state(server.port)
        if len(st["cancelled"]) > before and st["hanging"] == 0:
            break
        assert time.monotonic() < deadline, (st, server.log()[-3000:])
        time.sleep(0.02)
    # cancelled once, in the Task the view started in
    assert st["cancelled"][before:] == [1]
    assert get(server.port, "/same-task") == (200, "same task")


# ------------------------------------------------ in-process, on HttpServer

from .inprocess import run, serving  # noqa: E402,F401 -- fixture


def test_wsgi_app_sees_its_task_in_process(run):
    """A plain WSGI app (no Pyramid) sees a Task at once, different per
    request, and the same one after it suspends; none is left behind."""
    seen = []

    def app(environ, start_response):
        from aiopyramid import _core

        first = asyncio.current_task()
        if environ["PATH_INFO"] == "/wait":
            _core.await_(asyncio.sleep(0))
        seen.append((first, asyncio.current_task()))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    async def main():
        async with serving(app) as (port, srv):
            rs, closed = await exchange(
                port, b"GET /now HTTP/1.1\r\nHost: x\r\n\r\n"
                      b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n"
                      b"GET /now HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", count=3)
        for _ in range(10):
            await asyncio.sleep(0)
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        return rs, tasks

    rs, tasks = run(main())
    assert [r.body for r in rs] == [b"ok"] * 3
    assert len(seen) == 3
    for first, later in seen:
        assert isinstance(first, asyncio.Task) and later is first
    assert len({id(first) for first, _ in seen}) == 3
    assert all(t.done() for t, _ in seen)
    assert tasks == []
