"""Views that can never work are refused when configured, with a message
that says why; views that can work are classified so that they do (issue
13)."""
import asyncio
import functools
import threading

import pytest
import webtest
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError
from pyramid.response import Response
from pyramid.view import render_view_to_response

from aiopyramid.config import (
    CoroutineMapper,
    CoroutineOrExecutorMapper,
    ExecutorMapper,
)

from .conftest import get


def where():
    return "loop" if threading.current_thread() is threading.main_thread() else "thread"


async def agen_view(request):
    yield Response("never")


class AgenClass:
    def __init__(self, request):
        self.request = request

    async def stream(self):
        yield Response("never")


class AgenCallable:
    async def __call__(self, request):
        yield Response("never")


class AsyncCallable:
    async def __call__(self, request, suffix="!"):
        await asyncio.sleep(0)
        return Response("async instance " + where() + suffix)


async def helper_coroutine(request, text):
    await asyncio.sleep(0)
    return Response(text + " " + where())


def plain_returning_coroutine(request):
    # a plain def that hands back a coroutine (a thin wrapper, a decorator
    # that lost the coroutine flag): only the call tells
    return helper_coroutine(request, "plain->coroutine")


@pytest.mark.parametrize("mapper", [CoroutineOrExecutorMapper, CoroutineMapper,
                                    ExecutorMapper])
@pytest.mark.parametrize("view, attr", [
    (agen_view, None),
    (AgenClass, "stream"),
    (AgenCallable(), None),
    (functools.partial(agen_view), None),
])
def test_async_generator_views_are_refused(mapper, view, attr):
    with pytest.raises(ConfigurationError, match="async generator"):
        mapper(attr=attr)(view)


def test_async_generator_view_is_refused_when_the_app_is_made():
    with Configurator() as config:
        config.include("aiopyramid")
        config.add_view(agen_view, name="agen")
        with pytest.raises(ConfigurationError) as info:
            config.commit()
    assert "async generator" in str(info.value)
    assert "agen_view" in str(info.value)


def test_partial_of_an_async_callable_instance_is_a_coroutine_view(run, make_app):
    view = functools.partial(AsyncCallable(), suffix="?")
    assert CoroutineMapper()(view).kind == "coroutine"
    assert CoroutineOrExecutorMapper()(view).kind == "coroutine"
    with pytest.raises(ConfigurationError, match="mapped to executor"):
        ExecutorMapper()(view)

    def configure(config):
        config.add_view(view, name="p")
        config.add_view(AsyncCallable(), name="i")

    app = make_app(configure)
    assert run(get(app, "/p")).text == "async instance loop?"
    assert run(get(app, "/i")).text == "async instance loop!"


def test_plain_def_returning_a_coroutine_is_awaited(run, make_app):
    def configure(config):
        config.add_view(plain_returning_coroutine, name="c")
        config.add_view(plain_returning_coroutine, name="e",
                        mapper=ExecutorMapper)

    app = make_app(configure)
    # the plain part runs in the executor, the coroutine it returns on the
    # loop, in the request greenlet
    assert run(get(app, "/c")).text == "plain->coroutine loop"
    assert run(get(app, "/e")).text == "plain->coroutine loop"
    # and with no loop at all (a user's unit test)
    test_app = webtest.TestApp(app)
    assert test_app.get("/c").text == "plain->coroutine loop"


def test_plain_def_returning_a_coroutine_with_render_view_to_response():
    from pyramid import testing

    config = testing.setUp()
    try:
        config.include("aiopyramid")
        config.add_view(plain_returning_coroutine, name="c")
        response = render_view_to_response(None, testing.DummyRequest(), name="c")
        assert response.text == "plain->coroutine loop"
    finally:
        testing.tearDown()
