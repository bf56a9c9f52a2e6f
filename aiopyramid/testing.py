"""Testing your application: requests through the whole app (tweens,
traversal, the view mappers and the greenlet bridge) with no server.

``await get_response(app, '/path')``
    In a coroutine (an ``async def`` test): runs one request on the running
    loop in a request greenlet, the way the gunicorn worker runs it, and
    returns the WebOb response with its body read.
``Runner()``
    For plain tests: one event loop that ``runner.get_response(app, ...)``
    and ``runner.testapp(app)`` (a WebTest ``TestApp``) run every request
    on, so what a test's requests share (an async database pool, say) stays
    on one loop.  ``runner.close()`` (or ``with Runner() as runner``)
    closes it.
``pytest_plugins = ["aiopyramid.testing"]``
    In your ``conftest.py``: the ``aiopyramid_runner`` fixture (a Runner
    per test, closed after it) and the ``aiopyramid`` marker, which runs an
    ``async def`` test on that Runner's loop (``pytestmark =
    pytest.mark.aiopyramid`` marks a whole module).

WebTest's own ``TestApp(app)`` works too: with no loop running, a plain view
runs inline and each coroutine view on a fresh loop.
"""
import asyncio
import inspect

from webob.request import BaseRequest

from ._core import spawn_greenlet

__all__ = ["get_response", "Runner"]


def _blank(request, kw):
    if isinstance(request, BaseRequest):
        if kw:
            raise TypeError("keyword arguments make a request from a path; "
                            "got a request and %s" % ", ".join(sorted(kw)))
        return request
    if not isinstance(request, str):
        raise TypeError("request must be a path (str) or a WebOb/Pyramid "
                        "Request, not %s" % type(request).__name__)
    from pyramid.request import Request

    return Request.blank(request, **kw)


def _respond(request, app):
    response = request.get_response(app)
    response.body  # the app_iter is read here, in the request's greenlet
    return response


async def get_response(app, request="/", **kw):
    """The response of ``app`` to ``request`` (a path, with
    ``webob.Request.blank``'s keywords, or a Request), run in a request
    greenlet on the running loop: tweens, traversal and views may call
    synchronized coroutines, coroutine views suspend only that greenlet."""
    return await spawn_greenlet(_respond, _blank(request, kw), app)


class Runner:
    """Runs requests through apps on one event loop of its own, from plain
    (not ``async``) code."""

    def __init__(self, loop=None):
        self._own = loop is None
        self.loop = asyncio.new_event_loop() if loop is None else loop

    def run(self, awaitable):
        """Run an awaitable to completion on the runner's loop."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            if inspect.iscoroutine(awaitable):
                awaitable.close()
            raise RuntimeError(
                "aiopyramid.testing.Runner runs its loop until a request is "
                "done, which cannot happen inside a running loop: in a "
                "coroutine, 'await aiopyramid.testing.get_response(app, ...)' "
                "instead")
        return self.loop.run_until_complete(awaitable)

    def get_response(self, app, request="/", **kw):
        """The response of ``app`` to ``request`` (a path, with
        ``Request.blank``'s keywords, or a Request)."""
        return self.run(get_response(app, request, **kw))

    def wsgi(self, app):
        """``app`` as a plain WSGI callable whose every call runs in a
        request greenlet on the runner's loop (what ``testapp`` wraps)."""
        def call(environ, start_response):
            def whole():
                chunks = []
                app_iter = app(environ, start_response)
                try:
                    chunks.extend(app_iter)
                finally:
                    close = getattr(app_iter, "close", None)
                    if close is not None:
                        close()
                return chunks

            return self.run(spawn_greenlet(whole))

        return call

    def testapp(self, app, **kw):
        """A WebTest ``TestApp`` whose requests run on the runner's loop."""
        from webtest import TestApp

        return TestApp(self.wsgi(app), **kw)

    def close(self):
        """Finish the loop's leftovers and close it (a loop given to the
        constructor is left open)."""
        loop = self.loop
        if not self._own or loop.is_closed():
            return
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---- the pytest plugin: pytest_plugins = ["aiopyramid.testing"] ----------

try:
    import pytest
except ImportError:  # pragma: no cover - pytest is for tests only
    pytest = None

if pytest is not None:
    def pytest_configure(config):
        config.addinivalue_line(
            "markers", "aiopyramid: run this async def test on the "
            "aiopyramid_runner fixture's loop (aiopyramid.testing)")

    def pytest_collection_modifyitems(session, config, items):
        for item in items:
            if item.get_closest_marker("aiopyramid") is not None and \
                    "aiopyramid_runner" not in item.fixturenames:
                item.fixturenames.append("aiopyramid_runner")

    @pytest.hookimpl(tryfirst=True)
    def pytest_pyfunc_call(pyfuncitem):
        if pyfuncitem.get_closest_marker("aiopyramid") is None:
            return None
        func = pyfuncitem.obj
        if not inspect.iscoroutinefunction(func):
            return None  # a plain test: the marker only adds the fixture
        runner = pyfuncitem.funcargs["aiopyramid_runner"]
        names = pyfuncitem._fixtureinfo.argnames
        runner.run(func(**{name: pyfuncitem.funcargs[name] for name in names}))
        return True

    @pytest.fixture
    def aiopyramid_runner():
        """A :class:`Runner` on a fresh event loop, closed after the test."""
        with Runner() as runner:
            yield runner
