"""The documented logging tween: a synchronized coroutine called before and
after handler(request)."""
import asyncio

import pytest
from pyramid.config import Configurator
from pyramid.request import Request
from pyramid.response import Response

from aiopyramid.helpers import coroutine, spawn_greenlet, synchronize


def coroutine_logger_tween_factory(handler, registry):
    """Example of an asynchronous tween that delegates a synchronous
    function to a child thread.  This tween asynchronously logs all requests
    and responses."""

    # synchronized: called from plain code, it suspends the request greenlet
    @synchronize
    async def _async_print(content):
        # print doesn't really need a thread; it shows the pattern
        await asyncio.get_running_loop().run_in_executor(None, print, content)

    def coroutine_logger_tween(request):
        # the calls happen in order, and none of them blocks the loop
        _async_print("request: {}".format(request.path))
        # the next tween and the view run in this greenlet and suspend it
        # when they wait
        response = handler(request)
        _async_print("response: {} {}".format(request.path, response.status))
        return response

    return coroutine_logger_tween


def seed_logger_tween_factory(handler, registry):
    """The same, in the original's generator style."""

    @synchronize
    @coroutine
    def _async_print(content):
        yield from asyncio.get_event_loop().run_in_executor(None, print,
                                                            content)

    def coroutine_logger_tween(request):
        _async_print("request: {}".format(request.path))
        response = handler(request)
        _async_print("response: {} {}".format(request.path, response.status))
        return response

    return coroutine_logger_tween


def plain_outer_tween_factory(handler, registry):
    def tween(request):
        print("outer in:", request.path)
        response = handler(request)
        print("outer out:", request.path)
        return response

    return tween


def plain_inner_tween_factory(handler, registry):
    def tween(request):
        print("inner in:", request.path)
        response = handler(request)
        print("inner out:", request.path)
        return response

    return tween


FACTORIES = {
    "async": __name__ + ".coroutine_logger_tween_factory",
    "generator": __name__ + ".seed_logger_tween_factory",
}


@pytest.fixture(params=sorted(FACTORIES))
def logger_tween(request):
    return FACTORIES[request.param]


async def get(app, path, **kw):
    request = Request.blank(path, **kw)
    return await spawn_greenlet(request.get_response, app)


def make_app(tweens, views):
    with Configurator() as config:
        config.include("aiopyramid")
        for tween in tweens:
            config.add_tween(tween)
        for name, view in views.items():
            config.add_route(name, "/" + name)
            config.add_view(view, route_name=name)
        return config.make_wsgi_app()


def lines(capsys):
    return capsys.readouterr().out.splitlines()


async def hello(request):
    print("view:", request.path)
    await asyncio.sleep(0)
    return Response("hello")


@coroutine
def seed_hello(request):
    print("view:", request.path)
    yield from asyncio.sleep(0)
    return Response("hello")


def legacy_hello(request):
    print("view:", request.path)
    return Response("hello")


class TestLoggerTween:
    def test_logs_around_the_view(self, logger_tween, capsys):
        app = make_app([logger_tween], {"a": hello, "b": seed_hello,
                                        "c": legacy_hello})

        async def main():
            return [await get(app, path) for path in ("/a", "/b", "/c")]

        responses = asyncio.run(main())
        assert [r.text for r in responses] == ["hello"] * 3
        assert lines(capsys) == [
            line
            for path in ("/a", "/b", "/c")
            for line in ("request: " + path, "view: " + path,
                         "response: {} 200 OK".format(path))
        ]

    def test_between_plain_tweens(self, logger_tween, capsys):
        # a tween added later wraps those added before it
        app = make_app([__name__ + ".plain_inner_tween_factory", logger_tween,
                        __name__ + ".plain_outer_tween_factory"],
                       {"a": hello})
        assert asyncio.run(get(app, "/a")).text == "hello"
        assert lines(capsys) == [
            "outer in: /a", "request: /a", "inner in: /a", "view: /a",
            "inner out: /a", "response: /a 200 OK", "outer out: /a",
        ]

    def test_error_in_the_view_skips_the_response_log(self, logger_tween,
                                                      capsys):
        async def broken(request):
            print("view:", request.path)
            raise LookupError("gone")

        app = make_app([logger_tween], {"a": broken})
        with pytest.raises(LookupError, match="gone"):
            asyncio.run(get(app, "/a"))
        assert lines(capsys) == ["request: /a", "view: /a"]

    def test_two_requests_interleave_and_keep_their_order(self, logger_tween,
                                                          capsys):
        """Each view waits until the other has started: serialised, the
        first would wait forever (here: time out).  Each request still logs
        request, view, response in its own order."""
        started = {"/slow": asyncio.Event(), "/fast": asyncio.Event()}

        async def slow(request):
            print("view start:", request.path)
            started["/slow"].set()
            await started["/fast"].wait()
            print("view end:", request.path)
            return Response("slow")

        @coroutine
        def fast(request):
            print("view start:", request.path)
            started["/fast"].set()
            yield from started["/slow"].wait()
            print("view end:", request.path)
            return Response("fast")

        app = make_app([logger_tween], {"slow": slow, "fast": fast})

        async def main():
            return await asyncio.wait_for(
                asyncio.gather(get(app, "/slow"), get(app, "/fast")),
                timeout=5)

        slow_resp, fast_resp = asyncio.run(main())
        assert (slow_resp.text, fast_resp.text) == ("slow", "fast")
        out = lines(capsys)
        for path in ("/slow", "/fast"):
            mine = [line for line in out if path in line]
            assert mine == ["request: " + path, "view start: " + path,
                            "view end: " + path,
                            "response: {} 200 OK".format(path)]
        # both views were in flight at once
        for one, other in (("/slow", "/fast"), ("/fast", "/slow")):
            assert out.index("view start: " + one) < \
                out.index("view end: " + other)
        assert len(out) == 8
