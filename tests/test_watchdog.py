"""The blocked-loop watchdog (``aiopyramid.slow_callback_ms``): a view,
tween or synchronized call that holds the loop past the limit is logged
once per incident with the view, the route and the stack; one that awaits
is not; off by default."""
import asyncio
import logging
import threading
import time

import pytest
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError
from pyramid.interfaces import ITweens
from pyramid.response import Response

from aiopyramid import watchdog
from aiopyramid.helpers import synchronize
from aiopyramid.testing import Runner, get_response

LIMIT_MS = 50


async def blocking_view(request):
    time.sleep(0.2)  # holds the loop
    return Response("blocked")


async def waiting_view(request):
    await asyncio.sleep(0.2)  # gives the loop back
    return Response("waited")


def plain_view(request):  # in the executor: blocks a thread, not the loop
    time.sleep(0.2)
    return Response("plain")


@synchronize
async def blocking_lookup():
    time.sleep(0.2)
    return "looked up"


def tween_factory(handler, registry):
    def tween(request):
        if request.path == "/tween":
            return Response(blocking_lookup())  # a synchronized call, in a tween
        return handler(request)
    return tween


def make_app(settings):
    with Configurator(settings=settings) as config:
        config.include("aiopyramid")
        config.add_tween(__name__ + ".tween_factory")
        for name, view in (("blocking", blocking_view), ("waiting", waiting_view),
                           ("plain", plain_view)):
            config.add_route(name, "/" + name)
            config.add_view(view, route_name=name)
        return config.make_wsgi_app()


class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []
        self.records_lock = threading.Lock()

    def emit(self, record):
        with self.records_lock:
            self.records.append(record.getMessage())


@pytest.fixture
def reports():
    handler = Records()
    watchdog.logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        watchdog.logger.removeHandler(handler)


def run(app, *paths):
    async def main():
        return [r.text for r in await asyncio.gather(*(get_response(app, p) for p in paths))]

    with Runner() as runner:
        return runner.run(main())


def test_a_blocking_view_is_reported_once_with_its_name_and_route(reports):
    app = make_app({watchdog.SLOW_CALLBACK_SETTING: str(LIMIT_MS)})
    assert run(app, "/blocking", "/waiting") == ["blocked", "waited"]
    time.sleep(0.1)  # the watchdog's thread may still be writing
    # (a loaded machine may starve the loop's thread too: that would be an
    # incident of its own, outside these views)
    mine = [r for r in reports if "blocking_view" in r]
    assert len(mine) == 1, reports
    report = mine[0]
    assert "blocked for more than 50 ms" in report
    assert "view tests.test_watchdog.blocking_view (route 'blocking')" in report
    assert "time.sleep(0.2)  # holds the loop" in report  # the stack, where it blocks
    assert "waiting_view" not in report


def test_awaiting_and_executor_views_are_not_reported(reports):
    app = make_app({watchdog.SLOW_CALLBACK_SETTING: str(LIMIT_MS)})
    assert run(app, "/waiting", "/plain", "/waiting") == ["waited", "plain", "waited"]
    time.sleep(0.1)
    # a loaded machine may starve the loop's thread: whatever it reports,
    # neither view is what held the loop
    assert not [r for r in reports if "waiting_view" in r or "plain_view" in r], reports


def test_each_incident_once_a_tween_and_a_synchronized_call_included(reports):
    app = make_app({watchdog.SLOW_CALLBACK_SETTING: str(LIMIT_MS)})
    with Runner() as runner:
        # the first request on the loop: the watchdog starts before the
        # app's own tweens run
        assert runner.get_response(app, "/tween").text == "looked up"
        assert runner.get_response(app, "/blocking").text == "blocked"
        assert runner.get_response(app, "/blocking").text == "blocked"
        runner.run(asyncio.sleep(0.1))
    blocking = [r for r in reports if "blocking_view" in r]
    tween = [r for r in reports if "blocking_lookup" in r]
    assert len(blocking) == 2, reports
    assert len(tween) == 1, reports
    assert "code outside any view" in tween[0]
    assert "(path '/tween', no route matched yet)" in tween[0]
    assert "in blocking_lookup" in tween[0] and "in tween" in tween[0]


def test_off_by_default(reports):
    before = threading.active_count()
    app = make_app({})
    tweens = [name for name, _ in app.registry.getUtility(ITweens).implicit()]
    assert "aiopyramid.watchdog.watchdog_tween_factory" not in tweens
    assert run(app, "/blocking") == ["blocked"]
    assert reports == []
    assert not [t for t in threading.enumerate() if t.name == "aiopyramid-watchdog"
                and threading.active_count() > before]


@pytest.mark.parametrize("value", ["off", "0", "", "false"])
def test_off_values(value):
    app = make_app({watchdog.SLOW_CALLBACK_SETTING: value})
    tweens = [name for name, _ in app.registry.getUtility(ITweens).implicit()]
    assert "aiopyramid.watchdog.watchdog_tween_factory" not in tweens


@pytest.mark.parametrize("value", ["fast", "-5", "nan", "inf"])
def test_bad_values_say_what_is_expected(value):
    with pytest.raises(ConfigurationError,
                       match=r"aiopyramid\.slow_callback_ms must be a number of milliseconds above 0"):
        make_app({watchdog.SLOW_CALLBACK_SETTING: value})


def test_a_stopped_loop_is_not_blocked(reports):
    """Between run_until_complete calls the loop is not running: the
    test's own time.sleep there is no incident."""
    app = make_app({watchdog.SLOW_CALLBACK_SETTING: str(LIMIT_MS)})
    with Runner() as runner:
        runner.get_response(app, "/waiting")
        time.sleep(0.3)
        runner.get_response(app, "/waiting")
    assert not [r for r in reports if "test_a_stopped_loop_is_not_blocked" in r], reports


def test_the_watchdog_ends_with_its_loop():
    app = make_app({watchdog.SLOW_CALLBACK_SETTING: str(LIMIT_MS)})
    with Runner() as runner:
        runner.get_response(app, "/waiting")
        dog = watchdog._watchdogs[runner.loop]
    dog._thread.join(5)
    assert not dog._thread.is_alive()
    assert runner.loop not in watchdog._watchdogs


def test_through_gunicorn(gunicorn):
    """A time.sleep(0.2) view reported once by name; an asyncio.sleep(0.2)
    view not reported."""
    from .conftest import http_get

    server = gunicorn(app="watchdog_app:main()")
    assert http_get(server.port, "/blocking", timeout=10) == (200, b"blocked")
    assert http_get(server.port, "/waiting", timeout=10) == (200, b"waited")
    deadline = time.monotonic() + 10
    while "blocking_view" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = server.log()
    assert log.count("the event loop was blocked for more than") >= 1, log
    assert log.count("by view watchdog_app.blocking_view (route 'blocking')") == 1, log
    assert "waiting_view" not in log, log
