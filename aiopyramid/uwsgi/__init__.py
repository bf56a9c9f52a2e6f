"""What uWSGI's asyncio loop needs (``asyncio = N`` with ``greenlet = true``).

uWSGI runs each request in a plain greenlet of its own, whose parent (the
main greenlet, running ``loop.run_forever()``) ignores what is switched to
it.  ``config.include('aiopyramid')`` under uWSGI adds :func:`tween_factory`
outermost: it gives the request greenlet a :class:`RequestDriver`, through
which the bridge (``synchronize``, coroutine and executor views) suspends it
with ``uwsgi.suspend()`` and resumes it from a done-callback, so that uWSGI's
current-request pointer is set again on every resume; while the request
waits, its connection is watched, and a client that goes away cancels what
the view awaits, as under gunicorn.

Importing this module (the app's ``config.include('aiopyramid')`` does) sets
an event loop before uWSGI's asyncio plugin asks for one with
``asyncio.get_event_loop()`` (deprecated without a loop on Python 3.12+),
and a fresh one in each worker uWSGI forks.

Importable without uWSGI: ``uwsgi`` is imported lazily.
"""
import asyncio
import socket
import sys
import weakref

import greenlet

__all__ = ["RequestDriver", "current_driver", "running_under_uwsgi",
           "set_event_loop", "tween_factory"]

WAIT_ATTR = "_aiopyramid_wait"   # what the bridge looks for (csrc/bridge/await.c)
_inherited = []                  # loops made before a fork: kept, never used


def _uwsgi():
    """The ``uwsgi`` module when running under uWSGI's asyncio loop engine,
    else None."""
    mod = sys.modules.get("uwsgi")
    if mod is None:
        try:
            import uwsgi as mod
        except ImportError:
            return None
    if not hasattr(mod, "suspend") or not hasattr(mod, "connection_fd"):
        return None  # some other module of that name
    return mod


def running_under_uwsgi():
    """True in a uWSGI process whose loop engine is asyncio."""
    mod = _uwsgi()
    loop = getattr(mod, "loop", None) if mod is not None else None
    return loop in ("asyncio", b"asyncio")  # bytes from uWSGI 2.0


def _loop_set():
    """The loop set for this thread, None if none: asked without
    get_event_loop(), which on 3.12+ warns (and makes one) when none is."""
    local = getattr(asyncio.get_event_loop_policy(), "_local", None)
    return getattr(local, "_loop", None)


def set_event_loop(fresh=True):
    """Give this thread a fresh event loop (uWSGI's asyncio plugin then runs
    it): no 'There is no current event loop' on Python 3.12+.  With
    ``fresh=False``, a loop already set is kept."""
    old = _loop_set()
    if old is not None:
        if not fresh:
            return
        if not old.is_closed():
            _inherited.append(old)  # closing it would touch a parent's epoll set
    asyncio.set_event_loop(asyncio.new_event_loop())


_setup_done = False


def setup():
    """Set a loop now and in every forked worker (once per process)."""
    global _setup_done
    if _setup_done or not running_under_uwsgi():
        return
    _setup_done = True
    set_event_loop(fresh=False)  # before a fork: an app's own loop is kept
    # uwsgidecorators.postfork would need the master process: chain the
    # hook by hand, keeping one set before
    mod = _uwsgi()
    previous = getattr(mod, "post_fork_hook", None)

    def post_fork_hook():
        set_event_loop()
        if previous is not None:
            previous()

    mod.post_fork_hook = post_fork_hook


class RequestDriver:
    """Suspends and resumes one uWSGI request greenlet for the bridge.

    ``wait(yielded)`` is called in the request greenlet with what a coroutine
    yielded (an asyncio future, or None for a bare yield): it arranges the
    resume (a done-callback, or ``call_soon``), suspends with
    ``uwsgi.suspend()`` and returns None, the value the coroutine is sent.
    """

    __slots__ = ("greenlet", "loop", "fd", "watch", "gone", "_waiting",
                 "_armed", "_suspend")

    def __init__(self, glet, loop, fd, suspend):
        self.greenlet = weakref.ref(glet)  # no cycle through its dict
        self.loop = loop
        self.fd = fd
        self.watch = fd >= 0   # watch the connection for a client going away
        self.gone = False      # the client went away
        self._waiting = None   # the future (or token) being waited for
        self._armed = False
        self._suspend = suspend

    def wait(self, yielded):
        if yielded is None:
            token = object()
            self.loop.call_soon(self._resume, token)
        else:
            if getattr(yielded, "_asyncio_future_blocking", None) is not True:
                raise RuntimeError(
                    "coroutine yielded {!r}, which is not a future: use "
                    "'await' or 'yield from', not a bare 'yield'".format(
                        yielded))
            yielded._asyncio_future_blocking = False
            token = yielded
            if self.gone:
                yielded.cancel()
            yielded.add_done_callback(self._resume)
        self._waiting = token
        if self.watch and not self.gone:
            self._arm()
        try:
            self._suspend()
        finally:
            self._waiting = None
            if self._armed:
                self._disarm()

    def _resume(self, token):
        if self._waiting is token:
            glet = self.greenlet()
            if glet is not None:
                glet.switch()

    # the client going away -------------------------------------------

    def _arm(self):
        try:
            self.loop.add_reader(self.fd, self._readable)
        except (OSError, ValueError):
            self.watch = False
            return
        self._armed = True

    def _disarm(self):
        self._armed = False
        try:
            self.loop.remove_reader(self.fd)
        except (OSError, ValueError):
            pass

    def _readable(self):
        sock = socket.socket(fileno=self.fd)
        try:
            data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""  # reset: gone
        finally:
            sock.detach()  # uWSGI's fd: never closed here
        if self._armed:
            self._disarm()
        if data:
            self.watch = False  # more request bytes: no way to tell, stop
            return
        self.gone = True
        waiting = self._waiting
        if isinstance(waiting, asyncio.Future):
            waiting.cancel()


def current_driver():
    """The :class:`RequestDriver` of the calling uWSGI request greenlet, or
    None."""
    wait = getattr(greenlet.getcurrent(), WAIT_ATTR, None)
    return getattr(wait, "__self__", None)


def tween_factory(handler, registry):
    """Outermost tween under uWSGI's asyncio loop: gives the request
    greenlet its :class:`RequestDriver`."""
    mod = _uwsgi()

    def uwsgi_driver_tween(request):
        glet = greenlet.getcurrent()
        # uWSGI's own request greenlets carry the pointer uWSGI finds its
        # request by; any other greenlet keeps the bridge's usual paths
        if getattr(glet, "uwsgi_wsgi_req", None) is not None and \
                getattr(glet, WAIT_ATTR, None) is None:
            try:
                fd = mod.connection_fd()
            except (OSError, SystemError):
                fd = -1
            driver = RequestDriver(glet, asyncio.get_running_loop(), fd,
                                   mod.suspend)
            setattr(glet, WAIT_ATTR, driver.wait)
        return handler(request)

    return uwsgi_driver_tween


def includeme(config):
    """Called by ``config.include('aiopyramid')`` under uWSGI's asyncio
    loop engine."""
    from pyramid.tweens import INGRESS

    setup()
    config.add_tween("aiopyramid.uwsgi.tween_factory", under=INGRESS)


# importing this module is enough (an ini's `import = aiopyramid.uwsgi`)
setup()
