"""The blocked-loop watchdog: ``aiopyramid.slow_callback_ms = 100``.

A coroutine view, a tween, a synchronized call or anything else running on
the event loop that does not give the loop back (a ``time.sleep``, a
blocking driver, a long computation) stalls every request of the worker.
With the setting on, each loop that serves the app gets a watchdog: a
heartbeat callback on the loop every quarter of the limit, and a daemon
thread that looks at the heartbeat.  When the loop has not run it for
longer than the limit, the thread takes the loop thread's stack as it is,
blocked, and logs one warning (logger ``aiopyramid.watchdog``) naming the
view and the route of the request that holds the loop, with that stack.
One incident is logged once, however long it lasts; the next one is
logged when the loop has run again in between.

Off by default.  When on, a request pays for one tween call (which starts
the watchdog of a loop it has not seen); the heartbeat and the thread cost
a few wake-ups per limit, not per request.  Only a loop that is running is
watched: one stopped between ``run_until_complete`` calls is not blocked.

``watch(loop, limit_ms)`` starts one by hand (a loop you run yourself).
"""
import asyncio
import logging
import sys
import threading
import time
import traceback

from pyramid.config import PHASE3_CONFIG
from pyramid.config.tweens import Tweens
from pyramid.exceptions import ConfigurationError
from pyramid.interfaces import ITweens
from pyramid.tweens import INGRESS

__all__ = ["SLOW_CALLBACK_SETTING", "Watchdog", "watch"]

SLOW_CALLBACK_SETTING = "aiopyramid.slow_callback_ms"
logger = logging.getLogger("aiopyramid.watchdog")

_watchdogs = {}  # loop -> its Watchdog, while the loop is open
_lock = threading.Lock()
_monotonic = time.monotonic


def _limit_ms(settings):
    value = (settings or {}).get(SLOW_CALLBACK_SETTING)
    if value is None or (isinstance(value, str) and
                         value.strip().lower() in ("", "off", "false", "0")):
        return None
    try:
        limit = float(value)
    except (TypeError, ValueError):
        limit = 0.0
    if not limit > 0 or limit != limit or limit == float("inf"):
        raise ConfigurationError(
            "{} must be a number of milliseconds above 0 (the longest the "
            "event loop may be held before it is logged), or 'off'; got "
            "{!r}".format(SLOW_CALLBACK_SETTING, value))
    return limit


class Watchdog:
    """Watches one running loop; see the module."""

    def __init__(self, loop, limit_ms, thread_id=None, log=logger):
        self.loop = loop
        self.limit = limit_ms / 1000.0
        self.interval = self.limit / 4
        self.thread_id = threading.get_ident() if thread_id is None else thread_id
        self.log = log
        self.incidents = 0
        self.last = _monotonic()
        self._handle = None
        self._stopped = False
        self._thread = threading.Thread(
            target=self._watch, name="aiopyramid-watchdog", daemon=True)

    def start(self):
        """Start beating (call it on the loop's thread) and watching."""
        self._beat()
        self._thread.start()
        return self

    def stop(self):
        self._stopped = True
        if self._handle is not None:
            self._handle.cancel()

    def _beat(self):
        self.last = _monotonic()
        if not self._stopped:
            self._handle = self.loop.call_later(self.interval, self._beat)

    def _watch(self):
        loop, interval, limit = self.loop, self.interval, self.limit
        reported = None  # the beat that the logged incident followed
        sleep = time.sleep
        while not self._stopped:
            sleep(interval)
            if loop.is_closed():
                break
            last = self.last
            if not loop.is_running():
                self.last = _monotonic()  # stopped is not blocked
                continue
            # the beat was due at last + interval: blocked since then
            blocked = _monotonic() - last - interval
            if blocked > limit and reported != last:
                frame = sys._current_frames().get(self.thread_id)
                if frame is None or self.last != last:
                    continue  # it moved on meanwhile
                reported = last
                self.incidents += 1
                try:
                    self._report(frame, blocked)
                except Exception:  # never let a report end the watching
                    self.log.exception("aiopyramid watchdog: report failed")
                finally:
                    del frame
        with _lock:
            if _watchdogs.get(loop) is self:
                del _watchdogs[loop]

    def _report(self, frame, blocked):
        view, where = _who(frame)
        stack = "".join(traceback.format_stack(frame))
        self.log.warning(
            "the event loop was blocked for more than %d ms (%d ms so far) "
            "by %s (%s); it is blocked here:\n%s",
            round(self.limit * 1000), round(blocked * 1000),
            "view %s" % view if view else "code outside any view (a tween, "
            "traversal, a callback)", where or "outside any request", stack)


def _who(frame):
    """(view, where) of the request whose code ``frame`` runs, from the
    frames of Pyramid's view lookup and router on its stack: the view's
    name, and its route (or its path, before routing)."""
    view = where = None
    f = frame
    seen = 0
    while f is not None and seen < 500:
        code = f.f_code
        name = code.co_name
        if name == "_call_view" and view is None and \
                code.co_filename.endswith(("pyramid/view.py", "pyramid\\view.py")):
            callable_ = f.f_locals.get("view_callable")
            if callable_ is not None:
                view = _describe(callable_)
        elif name == "invoke_request" and where is None:
            request = f.f_locals.get("request")
            state = getattr(request, "__dict__", {})
            matched = state.get("matched_route")
            if matched is not None:
                where = "route %r" % matched.name
            elif request is not None:
                where = "path %r, no route matched yet" % request.environ.get("PATH_INFO")
        f = f.f_back
        seen += 1
    return view, where


def _describe(view):
    original = getattr(view, "__original_view__", None) or view
    if not isinstance(original, type) and hasattr(original, "__qualname__"):
        return "%s.%s" % (getattr(original, "__module__", "?"), original.__qualname__)
    return getattr(view, "__text__", None) or repr(original)


def watch(loop, limit_ms, thread_id=None):
    """Start the watchdog of ``loop`` (once per loop; call it on the loop's
    thread, or give that thread's ident)."""
    with _lock:
        dog = _watchdogs.get(loop)
        if dog is not None:
            return dog
        dog = _watchdogs[loop] = Watchdog(loop, limit_ms, thread_id)
    if thread_id is None:
        return dog.start()
    loop.call_soon_threadsafe(dog._beat)
    dog._thread.start()
    return dog


def watchdog_tween_factory(handler, registry):
    """Starts the watchdog of each loop that serves a request."""
    limit = _limit_ms(registry.settings)
    get_loop = asyncio._get_running_loop
    watched = _watchdogs

    def watchdog_tween(request):
        loop = get_loop()
        if loop is not None and loop not in watched:
            watch(loop, limit)
        return handler(request)

    return watchdog_tween


TWEEN = "aiopyramid.watchdog.watchdog_tween_factory"


def includeme(config):
    """Adds the watchdog's tween when ``aiopyramid.slow_callback_ms`` is on
    (the setting is checked here: a bad value is a ConfigurationError)."""
    if _limit_ms(config.registry.settings) is None:
        return
    registry = config.registry

    def register():
        tweens = registry.queryUtility(ITweens)
        if tweens is None:
            tweens = Tweens()
            registry.registerUtility(tweens, ITweens)
        # of the tweens under INGRESS, the one added last is the outermost:
        # added after every add_tween of the app (they run at order 0), it
        # starts the watchdog before any other tween runs
        tweens.add_implicit(TWEEN, watchdog_tween_factory, under=INGRESS)

    config.action(("tween", TWEEN, False), register, order=PHASE3_CONFIG + 1)
