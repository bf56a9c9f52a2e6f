"""aiopyramid.testing: a user's own tests run requests through the whole
app (tweens, traversal, mappers, the bridge) with no server, from plain and
from async def tests; its pytest plugin; WebTest's TestApp."""
import asyncio
import os
import subprocess
import sys

import pytest
from pyramid.config import Configurator
from pyramid.request import Request
from pyramid.response import Response
from webtest import TestApp

from aiopyramid.helpers import synchronize
from aiopyramid.testing import Runner, get_response

from .conftest import ROOT


@synchronize
async def slow_upper(text):
    await asyncio.sleep(0.001)
    return text.upper()


def shout_tween_factory(handler, registry):
    def tween(request):
        response = handler(request)
        response.headers["X-Shout"] = slow_upper(request.path)  # plain code
        return response
    return tween


class Root:
    __name__ = ""
    __parent__ = None

    def __init__(self, request):
        pass

    @synchronize
    async def __getitem__(self, key):
        await asyncio.sleep(0)
        if key != "thing":
            raise KeyError(key)
        return Thing()


class Thing:
    __name__ = "thing"
    __parent__ = None


LOOPS = []


async def coroutine_view(request):
    LOOPS.append(asyncio.get_running_loop())
    await asyncio.sleep(0.001)
    return Response("coroutine " + request.params.get("q", ""))


def plain_view(request):
    return Response("plain")


async def thing_view(context, request):
    await asyncio.sleep(0)
    return {"thing": context.__name__}


def stream_view(request):
    def body():
        yield slow_upper("a").encode()  # read in the request's greenlet
        yield b"b"
    return Response(app_iter=body())


def make_app():
    with Configurator() as config:
        config.include("aiopyramid")
        config.add_tween(__name__ + ".shout_tween_factory")
        config.add_route("c", "/c")
        config.add_view(coroutine_view, route_name="c")
        config.add_route("p", "/p")
        config.add_view(plain_view, route_name="p")
        config.add_route("s", "/s")
        config.add_view(stream_view, route_name="s")
        config.add_route("t", "/t/*traverse", factory=Root)
        config.add_view(thing_view, route_name="t", context=Thing, renderer="json")
        return config.make_wsgi_app()


def test_runner_from_a_plain_test():
    app = make_app()
    del LOOPS[:]
    with Runner() as runner:
        r = runner.get_response(app, "/c", POST={"q": "x"})
        assert (r.status_int, r.text, r.headers["X-Shout"]) == (200, "coroutine x", "/C")
        assert runner.get_response(app, Request.blank("/p")).text == "plain"
        assert runner.get_response(app, "/t/thing").json == {"thing": "thing"}
        assert runner.get_response(app, "/t/other").status_int == 404
        assert runner.get_response(app, "/s").body == b"Ab"
        runner.get_response(app, "/c")
        assert LOOPS == [runner.loop, runner.loop]  # one loop for the test
    assert runner.loop.is_closed()


def test_get_response_from_a_coroutine():
    app = make_app()

    async def main():
        responses = await asyncio.gather(*(get_response(app, "/c?q=%d" % i) for i in range(20)))
        return [r.text for r in responses], (await get_response(app, "/s")).body

    texts, streamed = asyncio.run(main())
    assert texts == ["coroutine %d" % i for i in range(20)]
    assert streamed == b"Ab"


def test_runner_testapp_is_webtest_on_the_runners_loop():
    app = make_app()
    del LOOPS[:]
    with Runner() as runner:
        testapp = runner.testapp(app)
        assert testapp.get("/c", {"q": "y"}).text == "coroutine y"
        assert testapp.get("/c").headers["X-Shout"] == "/C"
        assert testapp.get("/p").text == "plain"
        assert testapp.get("/t/thing").json == {"thing": "thing"}
        testapp.get("/t/nothing", status=404)
        assert testapp.get("/s").body == b"Ab"
        assert LOOPS == [runner.loop, runner.loop]


def test_plain_webtest_testapp_works_too():
    testapp = TestApp(make_app())
    assert testapp.get("/c", {"q": "z"}).text == "coroutine z"
    assert testapp.get("/c").headers["X-Shout"] == "/C"
    assert testapp.get("/p").text == "plain"
    assert testapp.get("/t/thing").json == {"thing": "thing"}
    testapp.get("/t/nothing", status=404)


def test_runner_in_a_running_loop_says_what_to_do():
    app = make_app()

    async def main():
        with Runner(asyncio.get_running_loop()) as runner:
            with pytest.raises(RuntimeError, match=r"await aiopyramid\.testing\.get_response"):
                runner.get_response(app, "/p")

    asyncio.run(main())


def test_bad_arguments_are_refused():
    with Runner() as runner:
        with pytest.raises(TypeError, match="must be a path"):
            runner.get_response(make_app(), b"/p")
        with pytest.raises(TypeError, match="keyword arguments make a request from a path"):
            runner.get_response(make_app(), Request.blank("/p"), POST={})


USER_CONFTEST = """\
import pytest
from pyramid.config import Configurator
from pyramid.response import Response

pytest_plugins = ["aiopyramid.testing"]


async def hello(request):
    import asyncio
    await asyncio.sleep(0)
    return Response("hello " + request.matchdict["name"])


@pytest.fixture
def app():
    with Configurator() as config:
        config.include("aiopyramid")
        config.add_route("hello", "/hello/{name}")
        config.add_view(hello, route_name="hello")
        return config.make_wsgi_app()
"""

USER_TESTS = """\
import asyncio

import pytest

from aiopyramid.testing import get_response


def test_plain(app, aiopyramid_runner):
    assert aiopyramid_runner.get_response(app, "/hello/a").text == "hello a"
    assert aiopyramid_runner.testapp(app).get("/hello/b").text == "hello b"


@pytest.mark.aiopyramid
async def test_async(app, aiopyramid_runner):
    assert asyncio.get_running_loop() is aiopyramid_runner.loop
    responses = await asyncio.gather(*(get_response(app, "/hello/%d" % i) for i in range(5)))
    assert [r.text for r in responses] == ["hello %d" % i for i in range(5)]


@pytest.mark.aiopyramid
async def test_async_without_asking_for_the_runner(app):
    assert (await get_response(app, "/hello/c")).text == "hello c"


@pytest.mark.aiopyramid
async def test_a_failing_one_fails(app):
    assert (await get_response(app, "/hello/d")).text == "wrong"
"""


def test_the_pytest_plugin_in_a_users_project(tmp_path):
    (tmp_path / "conftest.py").write_text(USER_CONFTEST)
    (tmp_path / "test_user.py").write_text(USER_TESTS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env["PYTHONPATH"] = ROOT
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "--strict-markers", "-W", "error::pytest.PytestUnraisableExceptionWarning",
         str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert "1 failed, 3 passed" in out.stdout, out.stdout + out.stderr
    assert "test_a_failing_one_fails" in out.stdout
    assert "AssertionError" in out.stdout

