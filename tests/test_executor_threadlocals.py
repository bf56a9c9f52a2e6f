"""Pyramid's threadlocals in an executor thread, on both the aiopyramid
Executor (its WorkQueue) and a plain ThreadPoolExecutor.  With aiopyramid's
manager (its stack in the request's context, copied into the thread) the
view sees the router's entry, as a view of a threaded WSGI server does,
and nothing is pushed again; a push the view leaves goes with the copy.
Any other manager class gets the request pushed and popped around the
view through its own methods."""
import asyncio
import concurrent.futures
import threading

import pyramid.threadlocal
import pytest
from pyramid.response import Response
from pyramid.threadlocal import get_current_registry, get_current_request

from aiopyramid import _executor, _threadlocal

from .conftest import get


def _run_with(executor_class):
    def run(coro):
        def factory():
            loop = asyncio.new_event_loop()
            loop.set_default_executor(executor_class())
            return loop

        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(asyncio.wait_for(coro, 30))
    return run


@pytest.fixture(params=["aiopyramid", "threadpool"])
def run_on(request):
    return _run_with({"aiopyramid": _executor.Executor,
                      "threadpool": concurrent.futures.ThreadPoolExecutor}[request.param])


def _app(make_app, view):
    def configure(config):
        config.add_route("v", "/v")
        config.add_view(view, route_name="v")

    return make_app(configure)


def test_the_thread_sees_the_routers_entry_alone(run_on, make_app):
    seen = {}

    def view(request):
        seen["thread"] = threading.current_thread() is not threading.main_thread()
        seen["stack"] = pyramid.threadlocal.manager.stack
        seen["top"] = pyramid.threadlocal.manager.get()
        seen["request"] = get_current_request() is request
        seen["request_object"] = request
        seen["registry"] = get_current_registry() is request.registry
        return Response("ok")

    for _ in range(3):  # the same thread again: nothing left from before
        seen.clear()
        assert run_on(get(_app(make_app, view), "/v")).text == "ok"
        assert seen["thread"] and seen["request"] and seen["registry"]
        # one entry, the router's (its dict, not a copy pushed again)
        assert len(seen["stack"]) == 1
        assert seen["top"] is seen["stack"][0]
        assert seen["top"]["request"] is seen["request_object"]


def test_a_push_the_view_leaves_does_not_outlive_it(run_on, make_app):
    stacks = []

    def view(request):
        stacks.append(len(pyramid.threadlocal.manager.stack))
        pyramid.threadlocal.manager.push({"registry": request.registry,
                                          "request": "left behind"})
        return Response("ok")

    app = _app(make_app, view)
    for _ in range(3):
        assert run_on(get(app, "/v")).text == "ok"
    assert stacks == [1, 1, 1]


def _other_entry_tween(handler, registry):
    # an entry of its own on top of the router's, around the view
    def tween(request):
        pyramid.threadlocal.manager.push({"registry": registry,
                                          "request": "the tween's"})
        try:
            return handler(request)
        finally:
            pyramid.threadlocal.manager.pop()
    return tween


def test_the_request_is_pushed_over_another_entry(run_on, make_app):
    seen = {}

    def view(request):
        seen["request"] = get_current_request() is request
        seen["stack"] = [e["request"] for e in pyramid.threadlocal.manager.stack]
        return Response("ok")

    def configure(config):
        config.add_route("v", "/v")
        config.add_view(view, route_name="v")
        config.add_tween(__name__ + "._other_entry_tween")

    assert run_on(get(make_app(configure), "/v")).text == "ok"
    assert seen["request"]
    assert seen["stack"][1:] == ["the tween's", seen["stack"][0]]


class _Recording(_threadlocal.ContextLocalManager):
    calls = []

    def push(self, info):
        self.calls.append(("push", info.get("request")))
        super().push(info)

    def pop(self):
        self.calls.append(("pop",))
        return super().pop()


def test_a_manager_of_another_class_gets_its_push_and_pop(run_on, make_app):
    requests = []

    def view(request):
        requests.append(request)
        return Response("ok")

    app = _app(make_app, view)
    manager = pyramid.threadlocal.manager
    assert type(manager) is _threadlocal.ContextLocalManager
    _Recording.calls = []
    manager.__class__ = _Recording
    try:
        assert run_on(get(app, "/v")).text == "ok"
    finally:
        manager.__class__ = _threadlocal.ContextLocalManager
    # the router's push, the thread's push and pop, the router's pop
    assert _Recording.calls == [("push", requests[0]), ("push", requests[0]),
                                ("pop",), ("pop",)]
