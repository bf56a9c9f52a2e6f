"""Plain views that do not block: ``blocking=False`` (a view option) and the
``aiopyramid.plain_views`` setting run a plain view inline in the request
greenlet, where a synchronized coroutine it calls suspends only its own
request; the executor stays the default."""
import json
import socket
import threading
import time

import pytest
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError
from pyramid.response import Response

from aiopyramid.config import CoroutineOrExecutorMapper, ExecutorMapper

from .conftest import get
from .rawhttp import parse_one

pytest.importorskip("gunicorn")


def send(port, path):
    s = socket.create_connection(("127.0.0.1", port), timeout=15)
    s.sendall(b"GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
              % path.encode())
    return s


def answer(sock):
    """The response on sock (read to the server's close, 15 s at most)."""
    buf = b""
    deadline = time.monotonic() + 15
    with sock:
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    return parse_one(buf, eof=True)[0]


def fetch(port, path):
    return answer(send(port, path))


def release(port, tag):
    """Releases the request waiting under tag, once it waits (bounded)."""
    for _ in range(200):
        r = fetch(port, "/release?tag=" + tag)
        if r.status == 200:
            return
        assert r.status == 404, r
        time.sleep(0.05)
    raise AssertionError("no request waited under tag %r" % tag)


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_inline_view_suspends_while_others_are_served(gunicorn, loop):
    srv = gunicorn(app="plain_inline_app:main()", env={"AIOPYRAMID_LOOP": loop})
    # two inline views wait, each in a synchronized coroutine; the requests
    # that release them (and a third) are served meanwhile, on the same
    # worker, by the same thread: only a suspended request greenlet allows it
    waiting_a = send(srv.port, "/wait?tag=a")
    waiting_c = send(srv.port, "/wait?tag=c")
    assert fetch(srv.port, "/hello").status == 200
    release(srv.port, "c")
    release(srv.port, "a")
    for sock, tag in ((waiting_a, "a"), (waiting_c, "c")):
        r = answer(sock)
        assert r.status == 200, r
        out = json.loads(r.body)
        # inline: the worker's main thread, in a request greenlet
        assert out["main_thread"] is True, out
        assert out["greenlet"] == "BridgeGreenlet", out
        assert out["in_task"] is True
        # Pyramid's threadlocals and contextvars are this request's own,
        # after it was suspended while the others ran
        assert out["tag"] == tag
        assert out["threadlocal_tag"] == tag
        assert out["same_request"] is True
        assert out["contextvar_tag"] == tag
        assert out["view_var"] == "set by view " + tag
        # one context from the tween through the view: the tween sees what
        # the inline view set
        assert r.header("x-view-var") == "set by view " + tag


def test_executor_is_still_the_default(gunicorn):
    srv = gunicorn(app="plain_inline_app:main()")
    for path in ("/default", "/blocking"):
        r = fetch(srv.port, path)
        out = json.loads(r.body)
        assert out["main_thread"] is False, (path, out)
        # the executor thread's contextvars are a copy: nothing leaks back
        assert r.header("x-view-var") == "-"


def test_setting_inline_makes_plain_views_inline(gunicorn):
    srv = gunicorn(app="plain_inline_app:main()", env={"PLAIN_VIEWS": "inline"})
    out = json.loads(fetch(srv.port, "/default").body)
    assert out["main_thread"] is True and out["greenlet"] == "BridgeGreenlet"
    # blocking=True still goes to a thread
    out = json.loads(fetch(srv.port, "/blocking").body)
    assert out["main_thread"] is False, out


def where(request):
    return Response(json.dumps(
        {"main": threading.current_thread() is threading.main_thread()}).encode())


def _app(settings=None, **view_options):
    with Configurator(settings=settings or {}) as config:
        config.include("aiopyramid")
        config.add_route("r", "/r")
        config.add_view(where, route_name="r", **view_options)
        return config.make_wsgi_app()


@pytest.mark.parametrize("settings, options, main", [
    (None, {}, False),
    ({"aiopyramid.plain_views": "executor"}, {}, False),
    ({"aiopyramid.plain_views": "inline"}, {}, True),
    ({"aiopyramid.plain_views": " Inline "}, {}, True),
    (None, {"blocking": False}, True),
    (None, {"blocking": True}, False),
    ({"aiopyramid.plain_views": "inline"}, {"blocking": True}, False),
    ({"aiopyramid.plain_views": "executor"}, {"blocking": False}, True),
    (None, {"blocking": False, "mapper": CoroutineOrExecutorMapper}, True),
])
def test_where_a_plain_view_runs(run, settings, options, main):
    app = _app(settings, **options)
    r = run(get(app, "/r"))
    assert json.loads(r.body) == {"main": main}


@pytest.mark.parametrize("value", ["thread", "", "1", "inline,executor", 1])
def test_bad_setting_is_a_clear_configuration_error(value):
    with pytest.raises(ConfigurationError) as e:
        _app({"aiopyramid.plain_views": value})
    msg = str(e.value)
    assert "aiopyramid.plain_views" in msg
    assert "'executor'" in msg and "'inline'" in msg
    assert repr(value) in msg


@pytest.mark.parametrize("value", ["no", 0, "False"])
def test_bad_blocking_value_is_a_clear_configuration_error(value):
    with pytest.raises(ConfigurationError) as e:
        _app(blocking=value)
    assert "blocking=" in str(e.value) and repr(value) in str(e.value)


def test_executor_mapper_refuses_blocking_false():
    with pytest.raises(ConfigurationError) as e:
        _app(blocking=False, mapper=ExecutorMapper)
    assert "blocking=False" in str(e.value)


def test_blocking_is_unknown_without_aiopyramid():
    with Configurator() as config:
        config.add_route("r", "/r")
        config.add_view(where, route_name="r", blocking=False)
        with pytest.raises(ConfigurationError):
            config.make_wsgi_app()


def test_inline_view_with_no_loop_runs_inline():
    from webtest import TestApp

    app = TestApp(_app(blocking=False))
    assert json.loads(app.get("/r").body) == {"main": True}


def test_inline_view_reads_a_body_and_calls_synchronized_coroutines(run):
    import asyncio

    from aiopyramid.helpers import synchronize

    @synchronize
    async def slow_upper(text):
        await asyncio.sleep(0)
        return text.upper()

    def view(request):
        return Response(slow_upper(request.body.decode()))

    with Configurator() as config:
        config.include("aiopyramid")
        config.add_route("r", "/r")
        config.add_view(view, route_name="r", blocking=False)
        app = config.make_wsgi_app()
    r = run(get(app, "/r", POST=b"hello", content_type="text/plain"))
    assert r.body == b"HELLO"


def test_many_inline_requests_interleave(run):
    """Many inline views suspended at once on one loop, each finds its own
    request when it resumes."""
    import asyncio

    from pyramid.threadlocal import get_current_request

    from aiopyramid.helpers import synchronize

    @synchronize
    async def pause(n):
        await asyncio.sleep(0.001 * (n % 7))

    def view(request):
        n = int(request.params["n"])
        pause(n)
        assert get_current_request() is request
        return Response(str(n))

    with Configurator() as config:
        config.include("aiopyramid")
        config.add_route("r", "/r")
        config.add_view(view, route_name="r", blocking=False)
        app = config.make_wsgi_app()

    async def all_of_them():
        return await asyncio.wait_for(asyncio.gather(
            *(get(app, "/r?n=%d" % i) for i in range(100))), 30)

    rs = run(all_of_them())
    assert [r.body for r in rs] == [str(i).encode() for i in range(100)]
