"""The view mappers, through real Pyramid apps."""
import asyncio
import random
import threading

import pytest
from pyramid.exceptions import ConfigurationError
from pyramid.response import Response
from pyramid.threadlocal import get_current_registry, get_current_request
from pyramid.view import render_view_to_response, view_config

from aiopyramid.config import (
    CoroutineMapper,
    CoroutineOrExecutorMapper,
    ExecutorMapper,
)
from aiopyramid.helpers import coroutine

from .conftest import get


def where():
    return "loop" if threading.current_thread() is threading.main_thread() else "thread"


# every shape Pyramid's DefaultViewMapper accepts, coroutine and plain

async def coro_context_request(context, request):
    await asyncio.sleep(0)
    return Response("coro_context_request " + where())


async def coro_request_only(request):
    await asyncio.sleep(0)
    return Response("coro_request_only " + where())


@coroutine
def seed_request_only(request):
    yield from asyncio.sleep(0)
    return Response("seed_request_only " + where())


def seed_undecorated(request):
    yield from asyncio.sleep(0)
    return Response("seed_undecorated " + where())


def plain_request_only(request):
    return Response("plain_request_only " + where())


def plain_context_request(context, request):
    return Response("plain_context_request " + where())


class CoroClassRequestOnly:
    def __init__(self, request):
        self.request = request

    async def __call__(self):
        await asyncio.sleep(0)
        assert self.request.__view__ is self
        return Response("CoroClassRequestOnly " + where())

    async def other(self):
        return Response("CoroClassRequestOnly.other " + where())


class PlainClassNative:
    def __init__(self, context, request):
        self.request = request

    def __call__(self):
        assert self.request.__view__ is self
        return Response("PlainClassNative " + where())

    def other(self):
        return Response("PlainClassNative.other " + where())


class CoroInstance:
    async def __call__(self, request):
        await asyncio.sleep(0)
        return Response("CoroInstance " + where())

    async def attr_view(self, context, request):
        return Response("CoroInstance.attr_view " + where())


class PlainInstance:
    def __call__(self, context, request):
        return Response("PlainInstance " + where())


class Holder:
    async def bound_coro(self, request):
        return Response("bound_coro " + where())

    def bound_plain(self, request):
        return Response("bound_plain " + where())


SHAPES = [
    (coro_context_request, {}, "coro_context_request loop"),
    (coro_request_only, {}, "coro_request_only loop"),
    (seed_request_only, {}, "seed_request_only loop"),
    (seed_undecorated, {}, "seed_undecorated loop"),
    (plain_request_only, {}, "plain_request_only thread"),
    (plain_context_request, {}, "plain_context_request thread"),
    (CoroClassRequestOnly, {}, "CoroClassRequestOnly loop"),
    (CoroClassRequestOnly, {"attr": "other"}, "CoroClassRequestOnly.other loop"),
    (PlainClassNative, {}, "PlainClassNative thread"),
    (PlainClassNative, {"attr": "other"}, "PlainClassNative.other thread"),
    (CoroInstance(), {}, "CoroInstance loop"),
    (CoroInstance(), {"attr": "attr_view"}, "CoroInstance.attr_view loop"),
    (PlainInstance(), {}, "PlainInstance thread"),
    (Holder().bound_coro, {}, "bound_coro loop"),
    (Holder().bound_plain, {}, "bound_plain thread"),
]


@pytest.mark.parametrize("view,options,expected", SHAPES,
                         ids=[s[2] for s in SHAPES])
def test_every_view_shape(run, make_app, view, options, expected):
    def configure(config):
        config.add_route("r", "/r")
        config.add_view(view, route_name="r", **options)

    app = make_app(configure)
    response = run(get(app, "/r"))
    assert response.status_int == 200
    assert response.text == expected


def test_text_as_pyramid_writes_it(make_app):
    mapped = CoroutineOrExecutorMapper()(coro_request_only)
    assert mapped.__text__ == "function tests.test_mappers.coro_request_only"
    mapped = CoroutineOrExecutorMapper(attr="other")(PlainClassNative)
    assert mapped.__text__ == (
        "method other of class tests.test_mappers.PlainClassNative")
    assert mapped.kind == "executor"
    assert CoroutineOrExecutorMapper()(CoroInstance()).kind == "coroutine"


def test_unbound_method_is_refused():
    with pytest.raises(ConfigurationError, match="Unbound method calls"):
        CoroutineOrExecutorMapper()(Holder.bound_plain)


def test_mapper_refuses_wrong_kind():
    with pytest.raises(ConfigurationError,
                       match=r"^Non-coroutine <function plain_request_only .*> "
                             r"mapped to coroutine"):
        CoroutineMapper()(plain_request_only)
    with pytest.raises(ConfigurationError,
                       match=r"^Coroutine <function coro_request_only .*> "
                             r"mapped to executor"):
        ExecutorMapper()(coro_request_only)
    with pytest.raises(ConfigurationError, match="mapped to executor"):
        ExecutorMapper()(CoroClassRequestOnly)


def test_mapper_per_view_and_view_mapper_attribute(run, make_app):
    class ForcedExecutor:
        __view_mapper__ = ExecutorMapper

        def __init__(self, request):
            pass

        def __call__(self):
            return Response("forced " + where())

    def configure(config):
        config.add_route("a", "/a")
        config.add_view(coro_request_only, route_name="a", mapper=CoroutineMapper)
        config.add_route("b", "/b")
        config.add_view(ForcedExecutor, route_name="b")
        config.add_route("c", "/c")
        config.add_view(plain_request_only, route_name="c", mapper=ExecutorMapper)

    app = make_app(configure)
    assert run(get(app, "/a")).text == "coro_request_only loop"
    assert run(get(app, "/b")).text == "forced thread"
    assert run(get(app, "/c")).text == "plain_request_only thread"


def test_view_config_decorator(run, make_app):
    def configure(config):
        config.add_route("scan_json", "/j")
        config.add_route("scan_legacy", "/l")
        config.scan("tests.scanned_views")

    app = make_app(configure)
    assert run(get(app, "/j")).json == {"ok": True, "on_loop": True}
    assert run(get(app, "/l")).text == "on loop: False"


def test_executor_view_reads_the_body_and_sees_threadlocals(run, make_app):
    def upload(request):
        assert get_current_request() is request
        assert get_current_registry() is request.registry
        return Response("%s %s" % (where(), request.body.decode()))

    def configure(config):
        config.add_route("u", "/u")
        config.add_view(upload, route_name="u", request_method="POST")

    app = make_app(configure)
    response = run(get(app, "/u", method="POST", body=b"payload" * 1000))
    assert response.text == "thread " + "payload" * 1000


def test_executor_threads_setting(run, make_app):
    def name(request):
        return Response(threading.current_thread().name)

    def configure(config):
        config.add_route("n", "/n")
        config.add_view(name, route_name="n")

    app = make_app(configure, {"aiopyramid.executor_threads": "3"})
    assert run(get(app, "/n")).text.startswith("aiopyramid-view")
    for bad in ("0", "many"):
        with pytest.raises(ConfigurationError,
                           match="aiopyramid.executor_threads must be a whole "
                                 "number of threads, 1 or more; got"):
            make_app(configure, {"aiopyramid.executor_threads": bad})


def test_executor_threads_pool_is_a_utility_shut_down_with_the_worker(run, make_app):
    from aiopyramid import _executor
    from aiopyramid.config import IViewExecutor

    def name(request):
        return Response(threading.current_thread().name)

    def configure(config):
        config.add_route("n", "/n")
        config.add_view(name, route_name="n")

    app = make_app(configure, {"aiopyramid.executor_threads": "2"})
    pool = app.registry.queryUtility(IViewExecutor)
    assert isinstance(pool, _executor.Executor) and pool._max_workers == 2
    assert run(get(app, "/n")).text.startswith("aiopyramid-view")
    # without the setting there is no pool of the views' own
    assert make_app(configure).registry.queryUtility(IViewExecutor) is None
    # what the gunicorn worker calls when it exits
    _executor.shutdown_pools()
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(print)


def test_loop_default_executor_is_used(run, make_app):
    from concurrent.futures import ThreadPoolExecutor

    def name(request):
        return Response(threading.current_thread().name)

    def configure(config):
        config.add_route("n", "/n")
        config.add_view(name, route_name="n")

    app = make_app(configure)

    async def main():
        pool = ThreadPoolExecutor(2, thread_name_prefix="loop-default")
        asyncio.get_running_loop().set_default_executor(pool)
        return (await get(app, "/n")).text

    assert run(main()).startswith("loop-default")


def test_outside_any_loop_views_still_render(make_app):
    """A user's unit test: render_view_to_response with no loop at all."""
    from pyramid import testing

    config = testing.setUp()
    try:
        config.include("aiopyramid")
        config.add_view(coro_request_only, name="c")
        config.add_view(plain_request_only, name="p")
        request = testing.DummyRequest()
        assert render_view_to_response(None, request, name="c").text == (
            "coro_request_only loop")
        assert render_view_to_response(None, request, name="p").text == (
            "plain_request_only loop")
    finally:
        testing.tearDown()


def test_500_concurrent_requests_keep_their_request(run, make_app):
    seen = []

    async def coro_view(request):
        await asyncio.sleep(random.random() / 100)
        assert get_current_request() is request
        await asyncio.sleep(random.random() / 100)
        assert get_current_request() is request
        seen.append(request.matchdict["n"])
        return Response(request.matchdict["n"])

    def legacy_view(request):
        assert get_current_request() is request
        return Response("legacy " + request.matchdict["n"])

    def configure(config):
        config.add_route("c", "/c/{n}")
        config.add_view(coro_view, route_name="c")
        config.add_route("l", "/l/{n}")
        config.add_view(legacy_view, route_name="l")

    app = make_app(configure)

    async def main():
        responses = await asyncio.gather(
            *(get(app, "/c/%d" % i) for i in range(500)),
            *(get(app, "/l/%d" % i) for i in range(50)))
        return [r.text for r in responses]

    texts = run(main())
    assert texts == [str(i) for i in range(500)] + [
        "legacy %d" % i for i in range(50)]
    # they really interleaved: completion order differs from start order
    assert seen != sorted(seen, key=int)


def test_one_context_across_tweens_view_and_awaits(run, make_app):
    import contextvars

    marker = contextvars.ContextVar("marker")

    def tween_factory(handler, registry):
        def tween(request):
            marker.set(("tween", request.path))
            response = handler(request)
            response.headers["X-After"] = repr(marker.get())
            return response
        return tween

    async def helper():
        await asyncio.sleep(0)
        return marker.get()

    async def view(request):
        seen = await helper()
        marker.set(("view", request.path))
        return Response(repr(seen))

    def configure(config):
        config.add_tween("tests.test_mappers._tween_factory")
        config.add_route("v", "/v/{n}")
        config.add_view(view, route_name="v")

    global _tween_factory
    _tween_factory = tween_factory
    app = make_app(configure)

    async def main():
        return await asyncio.gather(*(get(app, "/v/%d" % i) for i in range(20)))

    for i, response in enumerate(run(main())):
        assert response.text == repr(("tween", "/v/%d" % i))
        assert response.headers["X-After"] == repr(("view", "/v/%d" % i))


def test_coroutine_view_exception_becomes_pyramid_error(run, make_app):
    async def broken(request):
        await asyncio.sleep(0)
        raise LookupError("nothing here")

    def configure(config):
        config.add_route("b", "/b")
        config.add_view(broken, route_name="b")

    app = make_app(configure)
    with pytest.raises(LookupError, match="nothing here"):
        run(get(app, "/b"))


def test_mapped_view_takes_context_and_request(make_app):
    mapped = CoroutineOrExecutorMapper()(coro_request_only)
    with pytest.raises(TypeError, match="takes \\(context, request\\)"):
        mapped(1)


def test_executor_view_in_a_greenlet_with_no_running_loop_runs_inline():
    """A request greenlet driven with no loop running (its coroutine sent
    to by hand): a legacy view runs right there, as with no loop at all."""
    from pyramid.request import Request

    from aiopyramid.helpers import spawn_greenlet

    def view(request):
        return "plain"

    mapped = ExecutorMapper()(view)
    coro = spawn_greenlet(mapped, None, Request.blank("/"))
    with pytest.raises(StopIteration) as stop:
        coro.send(None)
    assert stop.value.value == "plain"
