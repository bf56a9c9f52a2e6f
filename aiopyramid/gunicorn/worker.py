"""A gunicorn worker serving a WSGI (Pyramid) app on asyncio.

    gunicorn -k aiopyramid.gunicorn.worker.AsyncGunicornWorker app:main

or, from a paste ini run by ``pserve``::

    [server:main]
    use = egg:gunicorn#main
    worker_class = aiopyramid.gunicorn.worker.AsyncGunicornWorker

HTTP/1.1 is spoken by ``aiopyramid._core.HttpServer`` (C, on llhttp; made by
``aiopyramid.server.HttpServer``); each
request runs in a pooled greenlet, inside its own asyncio Task from the
first line (answered at once, inline, when it never waits).

The loop is uvloop's when uvloop is installed, asyncio's otherwise;
``AIOPYRAMID_LOOP=asyncio`` (or ``uvloop``) in the environment chooses, and
so does the worker class ``AsyncioGunicornWorker``, which always uses
asyncio's loop.

Once the app is loaded, the worker freezes its objects out of the cyclic
collector's sight and has the young generation's threshold follow the
requests in flight, as far as the garbage found allows (see ``_tune_gc``
and ``_GcPacer``); ``AIOPYRAMID_GC=python`` leaves the collector as Python set
it, and an app that set its own thresholds keeps them.  The idle request
greenlets kept for reuse follow the connections open (``_PoolPacer``).

Settings honoured: bind (the arbiter's sockets), workers, worker_connections
(websocket connections count too),
keepalive (0: no keep-alive), timeout (heartbeat), graceful_timeout (SIGTERM
lets requests in flight finish, closes websockets with 1001 and lets their
views end; SIGQUIT and SIGINT stop at once),
max_requests and max_requests_jitter, limit_request_line (414),
limit_request_fields and limit_request_field_size (431), accesslog and
access_log_format, errorlog, forwarded_allow_ips and secure_scheme_headers
(wsgi.url_scheme), certfile/keyfile (SSL), reload.
"""
import asyncio
import datetime
import gc
import os
import _socket
import signal
import socket
import sys
import threading
import time

from gunicorn.workers import base

from .. import _executor
from ..server import HttpServer
from ..websocket._server import WebsocketConnections

__all__ = ["AsyncGunicornWorker", "AsyncioGunicornWorker"]

LOOP_ENV = "AIOPYRAMID_LOOP"
GC_ENV = "AIOPYRAMID_GC"
ACCEPT_LOG_INTERVAL = 10  # s between two "accept() failed" lines
# the young generation's threshold: up to this many objects per request in
# flight (which die by reference counting), never below Python's own, at
# most GC_YOUNG_MAX (a collection traverses them all), as far as earned by
# the requests answered clean (_GcPacer)
GC_YOUNG_PER_REQUEST = 100
GC_YOUNG_MAX = 100_000
# while the threshold is raised, a young collection at least this often (s),
# more often as the garbage found asks, down to GC_COLLECT_MIN_WAIT
GC_COLLECT_MAX_WAIT = 1.0
GC_COLLECT_MIN_WAIT = 0.02
# the garbage found per second counts for this long, halving (s)
GC_PACE_HALF_LIFE = 0.5
# the collector's thresholds as Python sets them (3.11 and 3.12; 3.13):
# an app that set others keeps its own
_GC_PYTHON_THRESHOLDS = ((700, 10, 10), (2000, 10, 10))
# idle request greenlets kept (_core's pool limit) as _core sets it: an app
# that set another keeps its own
_POOL_DEFAULT_LIMIT = 256


class _AccessResponse:
    __slots__ = ("status", "headers", "sent")

    def __init__(self, status, headers, sent):
        self.status = status or "-"
        self.headers = headers or []
        self.sent = sent


class _AccessRequest:
    __slots__ = ("headers",)

    def __init__(self, environ):
        # the request's headers as gunicorn's glogging reads them, with
        # Content-Type and Content-Length (environ keys without HTTP_)
        self.headers = [
            (k[5:].replace("_", "-"), v)
            for k, v in environ.items()
            if k.startswith("HTTP_")
        ]
        for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if key in environ:
                self.headers.append((key.replace("_", "-"), environ[key]))


def _gc_kind():
    kind = os.environ.get(GC_ENV, "").strip().lower() or "tuned"
    if kind not in ("tuned", "python"):
        raise RuntimeError(
            "{} must be 'tuned' or 'python', not {!r}".format(GC_ENV, kind)
        )
    return kind


def _tune_gc(preloaded=False):
    """The cyclic collector, once the app is loaded (AIOPYRAMID_GC=python
    leaves it as Python set it): a _GcPacer, or None when the app set its
    own thresholds (it keeps them).

    A collection traverses every tracked object of its generation and the
    younger ones.  With hundreds of requests in flight, Python's young
    threshold (700 allocations more than deallocations) is crossed many
    times a second by the objects of requests that are merely waiting (a
    few dozen each: environ, Pyramid's request, Task, future, timer), which
    reference counting frees anyway: each collection traverses them,
    promotes them, and the full collections that the promotions trigger
    traverse the whole app too (tens of ms each, with every request in
    flight waiting).  So: the app's objects, collected once, are frozen (a
    collection never looks at them again; in a forked worker their memory
    pages also stay shared), and the young threshold follows the requests
    in flight as far as the garbage the collections find allows (_GcPacer).

    A preloaded app (gunicorn --preload) was loaded in the master, its
    pages shared with this forked worker: it is frozen without a
    collection first (a collection writes every object's GC header, and
    made the whole app private to each worker at once); what garbage its
    loading left stays frozen with it."""
    if not preloaded:
        gc.collect()
    gc.freeze()
    thresholds = gc.get_threshold()
    if thresholds in _GC_PYTHON_THRESHOLDS:
        return _GcPacer(thresholds)
    return None


class _GcPacer:
    """The young generation's threshold: up to GC_YOUNG_PER_REQUEST objects
    per request in flight (never below Python's own, at most GC_YOUNG_MAX),
    as far as earned; and, while it is raised, a young collection at least
    every so often, as often as the garbage found asks.

    Requests in flight then no longer set off collections: their objects
    die by reference counting, and a collection would only traverse and
    promote them.  The threshold is earned by the requests answered since
    the collection before: GC_YOUNG_PER_REQUEST objects each.  A
    collection with no request answered since the one before earns
    nothing: what it looked at was alive, the objects of requests still in
    flight (a pile of long polls; 300 waiting requests used to earn 11,200
    that way: tests/test_attack_s4.py).

    Cyclic garbage waits for a collection, holding what it points at, and
    how long a raised threshold makes it wait is not the threshold's to
    say: the count that sets off a collection is objects made less objects
    freed, and where requests turn over (each one's objects freed as the
    next one's are made) the garbage alone moves it, up to the whole
    threshold, while where they arrive in waves a wave sets it off early.
    Reading the threshold from the garbage found per object of it let
    1,900-6,400 one-object cycles be alive at once against ~340 under
    Python's threshold (tests/test_attack_s6.py, server and client on one
    CPU; CI met 3,400 under 3.12).  So the garbage is paced by time.  The
    young collections' garbage per second (the pace: the most found
    lately, halved every GC_PACE_HALF_LIFE) sets how long the next may
    wait while the threshold is raised: the budget (half of Python's
    threshold) at that pace, at least GC_COLLECT_MIN_WAIT and at most
    GC_COLLECT_MAX_WAIT seconds, and the worker's loop collects when it is
    due.  A young collection that found more than the budget, or a pace
    the shortest wait would not keep within it, earns nothing and takes
    the threshold back to Python's own, which then does what Python would
    until collections find less (3,000 requests each leaving a cycle:
    tests/test_attack_s4.py).  An app that makes no
    cyclic garbage has one young collection a second while the threshold
    is raised; one that starts leaving cycles after a clean stretch lets
    them wait once, for the threshold earned or a second, whichever comes
    first.  The loop looks every GC_COLLECT_MIN_WAIT while connections are
    open and once a second while none are, and the threshold is raised
    only while a look is due within GC_COLLECT_MIN_WAIT (``watching``): a
    load that arrives in the idle second is under Python's threshold until
    the loop looks (under ASan, 2,840 cycles were alive at once before any
    collection, as a load that came and went within that second had
    raised the threshold with the next look a second away).

    Idle connections cost a client nothing, so they raise nothing: the
    ceiling follows the requests in flight, read as each collection ends,
    and is lowered by half at most once a second by the worker's loop (a
    load that ebbs and flows within seconds does not set off a collection
    each time it ebbs)."""

    __slots__ = ("young", "base", "budget", "rest", "ceiling", "earned",
                 "pace", "last", "server", "answered", "loop", "timer",
                 "watching")

    def __init__(self, thresholds):
        self.young = self.base = self.ceiling = self.earned = thresholds[0]
        self.budget = self.base // 2
        self.rest = thresholds[1:]
        self.pace = 0.0  # cyclic garbage found per second: none yet
        self.last = time.monotonic()  # the last collection's end
        self.server = None  # the worker's HttpServer, once made
        self.answered = 0  # its requests answered at the last collection
        self.loop = self.timer = None
        self.watching = False  # the loop's next look is due soon
        gc.callbacks.append(self._collected)

    def start(self, server, loop):
        self.server, self.loop = server, loop
        self._tick()

    def stop(self):
        self.watching = False
        self._apply()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _want(self):
        server = self.server
        if server is None:
            return self.base
        # in flight: the requests in progress, and those started in this
        # pass of the loop (a pass at 1,000 connections starts hundreds;
        # on 3.11 each one's finished Task, its Handle and context wait in
        # the loop's queue to the pass's end), at most one per connection
        active = server.active + min(server.started_in_pass, server.connections)
        return min(GC_YOUNG_MAX, max(self.base, GC_YOUNG_PER_REQUEST * active))

    def wait(self):
        """The longest the next young collection may wait, in seconds."""
        if self.pace * GC_COLLECT_MAX_WAIT <= self.budget:
            return GC_COLLECT_MAX_WAIT
        return max(GC_COLLECT_MIN_WAIT, self.budget / self.pace)

    def _tick(self):
        # the worker's loop: a young collection when one is due and the
        # threshold raised (at Python's own, Python's collections pace it).
        # While connections are open it looks again soon: a collection
        # (set off by allocations, in any thread) may raise the threshold
        # or the pace at any time, and the loop is not told
        if self.young > self.base:
            if time.monotonic() >= self.last + self.wait():
                gc.collect(0)
            delay = min(GC_COLLECT_MIN_WAIT, max(
                self.last + self.wait() - time.monotonic(), 0.001))
        else:
            # (a collection while the next look is not yet due soon, in
            # any thread, keeps Python's threshold)
            self.watching = False
            delay = (GC_COLLECT_MIN_WAIT if self.server.connections
                     else GC_COLLECT_MAX_WAIT)
        self.timer = self.loop.call_later(delay, self._tick)
        self.watching = delay <= GC_COLLECT_MIN_WAIT

    def follow(self):
        # once a second: down by half at most; what was earned at a higher
        # threshold is not kept for later
        self.ceiling = max(self._want(), self.young // 2)
        self.earned = min(self.earned, 2 * self.ceiling)
        self._apply()

    def _collected(self, phase, info):
        if phase != "stop":
            return
        now = time.monotonic()
        since, self.last = max(now - self.last, GC_COLLECT_MIN_WAIT), now
        answered = self._answered_since()
        self.ceiling = max(self.ceiling, self._want())
        if info["generation"] == 0:
            # (an older generation's garbage waited there for longer than
            # the time since the last collection: it neither paces nor earns)
            garbage = info["collected"] + info["uncollectable"]
            # the most found lately: halved each GC_PACE_HALF_LIFE (one
            # collection soon after the one before finds little)
            self.pace = max(garbage / since,
                            self.pace * 0.5 ** (since / GC_PACE_HALF_LIFE))
            if (garbage > self.budget
                    or self.pace * GC_COLLECT_MIN_WAIT > self.budget):
                # the wait let more than the budget pile up, or the
                # shortest would: Python's threshold, until collections
                # find less
                self.earned = self.base
            else:
                self.earned = min(GC_YOUNG_MAX, max(
                    self.earned, GC_YOUNG_PER_REQUEST * answered))
        self._apply()

    def _answered_since(self):
        server = self.server
        if server is None:  # no server yet: nothing in flight either
            return GC_YOUNG_MAX
        answered = server.requests
        since, self.answered = answered - self.answered, answered
        return since

    def _apply(self):
        young = self.base
        if self.watching:
            young = max(young, min(self.ceiling, self.earned))
        if young != self.young:
            self.young = young
            gc.set_threshold(young, *self.rest)


def _pool_pacer():
    """A _PoolPacer, or None when the app set its own pool limit (it keeps
    it)."""
    from .. import _core

    limit = _core.pool_stats()["limit"]
    return _PoolPacer(limit) if limit == _POOL_DEFAULT_LIMIT else None


class _PoolPacer:
    """The idle request greenlets kept: as many as connections open, never
    fewer than the pool's default.

    Each connection has at most one request in flight, in a greenlet of
    its own.  With more requests waiting at once than the pool keeps idle
    (256), the greenlets of the ones that finish were dropped (each killed
    where it was parked) while the next ones made new greenlets: at 1,000
    connections each waiting 50 ms, about a third of the requests made one.
    An idle greenlet costs about 5 KiB.  Raised as connections are
    accepted, lowered by the worker's once-a-second loop (by half at most,
    as _GcPacer)."""

    __slots__ = ("limit", "base")

    def __init__(self, base):
        self.limit = self.base = base

    def raise_for(self, connections):
        if connections > self.limit:
            self._set(connections)

    def follow(self, connections):
        limit = max(self.base, connections, self.limit // 2)
        if limit != self.limit:
            self._set(limit)

    def _set(self, limit):
        from .. import _core

        self.limit = limit
        _core.set_pool_limit(limit)


def _new_loop(kind):
    if kind is None:
        kind = os.environ.get(LOOP_ENV, "").strip().lower() or None
    if kind not in (None, "asyncio", "uvloop"):
        raise RuntimeError(
            "{} must be 'asyncio' or 'uvloop', not {!r}".format(LOOP_ENV, kind)
        )
    if kind != "asyncio":
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise
        else:
            # its default executor readable, as on asyncio's loops
            return _executor.tracking_loop_class(uvloop.Loop)()
    return asyncio.new_event_loop()


# gunicorn's own bounds: 0 never means "unbounded" for the server that
# buffers the head (a request line of 0 is gunicorn's "no limit", which
# here is 1 MiB)
_UNLIMITED_REQUEST_LINE = 1024 * 1024


def _request_limits(cfg):
    from gunicorn.http.message import (
        DEFAULT_MAX_HEADERFIELD_SIZE,
        MAX_HEADERS,
        MAX_REQUEST_LINE,
    )

    line = cfg.limit_request_line
    if line < 0 or line >= MAX_REQUEST_LINE:
        line = MAX_REQUEST_LINE
    elif line == 0:
        line = _UNLIMITED_REQUEST_LINE
    fields = cfg.limit_request_fields
    if fields <= 0 or fields > MAX_HEADERS:
        fields = MAX_HEADERS
    field_size = cfg.limit_request_field_size
    if field_size <= 0:
        field_size = DEFAULT_MAX_HEADERFIELD_SIZE
    return {
        "limit_request_line": line,
        "limit_request_fields": fields,
        "limit_request_field_size": field_size,
    }


class AsyncGunicornWorker(base.Worker):
    """gunicorn worker: aiopyramid's C HTTP server on an asyncio loop."""

    loop_kind = None  # None: uvloop when installed (or AIOPYRAMID_LOOP)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.loop = None
        self.server = None
        self.exit_code = 0
        self._gc_kind = "tuned"
        self._gc_pacer = None  # the young threshold following the requests
        self._pool_pacer = None  # the idle greenlets following connections
        self._quit_now = False
        self._executor = None  # the loop's default executor
        self._wakeup = None
        self._connecting = 0  # accepted, their transport not made yet
        self._limit = 1
        self._full = False  # the acceptors paused at worker_connections
        self._acceptors = []
        self._accept_failures = 0  # not yet logged
        self._accept_quiet_until = 0.0
        # websockets: connections handed from the HTTP server to the C
        # websocket layer (they count towards worker_connections too)
        self.websockets = WebsocketConnections()

    # -- process set-up ---------------------------------------------------

    def init_process(self):
        # a fresh loop in the forked child, never the arbiter's
        asyncio.set_event_loop(None)
        self._gc_kind = _gc_kind()
        self._gc_pacer = None
        self.loop = _new_loop(self.loop_kind)
        asyncio.set_event_loop(self.loop)
        # an executor whose jobs, when a thread waits for the coroutine that
        # submits them, run in that thread (no deadlock on a full pool)
        self._executor = _executor.Executor()  # (the app may set another)
        self.loop.set_default_executor(self._executor)
        self._raise_fd_limit()
        super().init_process()  # signals, app, then run()

    def _raise_fd_limit(self):
        try:
            import resource
        except ImportError:  # pragma: no cover
            return
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = self.cfg.worker_connections + 256
        if soft != resource.RLIM_INFINITY and soft < want:
            new = want if hard == resource.RLIM_INFINITY else min(want, hard)
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            except (ValueError, OSError):
                self.log.warning("could not raise the open file limit to %d", new)

    def init_signals(self):
        for s in self.SIGNALS:
            signal.signal(s, signal.SIG_DFL)
        add = self.loop.add_signal_handler
        add(signal.SIGTERM, self._on_term)
        add(signal.SIGQUIT, self._on_quit)
        add(signal.SIGINT, self._on_quit)
        add(signal.SIGABRT, self._on_abort)
        add(signal.SIGUSR1, self.log.reopen_files)
        add(signal.SIGWINCH, lambda: None)
        signal.siginterrupt(signal.SIGTERM, False)
        signal.siginterrupt(signal.SIGUSR1, False)

    def _wake(self):
        if self._wakeup is not None:
            self._wakeup.set()

    def _on_term(self):
        # graceful: stop accepting, let requests in flight finish
        self.alive = False
        self._wake()

    def _on_quit(self):
        self.alive = False
        self._quit_now = True
        try:
            self.cfg.worker_int(self)
        finally:
            self._wake()

    def _on_abort(self):
        self.alive = False
        self._quit_now = True
        self.exit_code = 1
        try:
            self.cfg.worker_abort(self)
        finally:
            self._wake()

    # -- serving ----------------------------------------------------------

    def run(self):
        # the app is loaded (gunicorn loads it before run())
        if self._gc_kind == "tuned":
            self._gc_pacer = _tune_gc(preloaded=bool(self.cfg.preload_app))
        self._pool_pacer = _pool_pacer()
        try:
            self.loop.run_until_complete(self._serve())
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()
        sys.exit(self.exit_code)

    def _base_environ(self):
        from gunicorn import __version__
        from gunicorn.http.wsgi import WSGIErrorsWrapper

        return {
            "wsgi.version": (1, 0),
            "wsgi.errors": WSGIErrorsWrapper(self.cfg),
            "wsgi.multithread": True,  # legacy views run in threads
            "wsgi.multiprocess": self.cfg.workers > 1,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
            "SERVER_SOFTWARE": "aiopyramid gunicorn/%s" % __version__,
            "SCRIPT_NAME": os.environ.get("SCRIPT_NAME", ""),
        }

    def _access_log_enabled(self):
        enabled = getattr(self.log, "access_log_enabled", None)
        if enabled is not None:
            return bool(enabled)
        cfg = self.cfg
        return bool(
            cfg.accesslog or cfg.logconfig
            or getattr(cfg, "logconfig_dict", None)
            or getattr(cfg, "logconfig_json", None)
            or (cfg.syslog and not cfg.disable_redirect_access_to_syslog)
        )

    def _access(self, environ, status, headers, sent, elapsed):
        self.log.access(
            _AccessResponse(status, headers, sent),
            _AccessRequest(environ),
            environ,
            datetime.timedelta(seconds=elapsed),
        )

    def _error(self, message, exc):
        if exc is None:
            self.log.error(message)
        else:
            self.log.error(message, exc_info=(type(exc), exc, exc.__traceback__))

    def make_server(self, loop):
        cfg = self.cfg
        return HttpServer(
            self.wsgi,
            loop,
            base_environ=self._base_environ(),
            **_request_limits(cfg),
            keepalive=float(cfg.keepalive),
            secure_scheme_headers=dict(cfg.secure_scheme_headers or {}),
            forwarded_allow_ips=cfg.forwarded_allow_ips,
            access_log=self._access if self._access_log_enabled() else None,
            error_log=self._error,
            websockets=self.websockets,
        )

    def _ssl_context(self):
        if not self.cfg.is_ssl:
            return None
        from gunicorn.sock import ssl_context

        return ssl_context(self.cfg)

    def _open_connections(self):
        return (self.server.connections + len(self.websockets)
                + self._connecting)

    def _room(self):
        """Connections the worker may still accept (worker_connections)."""
        return self._limit - self._open_connections()

    def _on_room(self):
        # a connection closed (or one failed to open): the acceptors paused
        # at worker_connections read again once there is room
        if self._full and self.alive and self._room() > 0:
            self._full = False
            self.server.on_close = None
            self.websockets.on_close = None
            for a in self._acceptors:
                a.resume()

    def _at_limit(self):
        """An acceptor found no room: every acceptor stops reading until a
        connection closes."""
        if not self._full:
            self._full = True
            self.server.on_close = self._on_room
            self.websockets.on_close = self._on_room
            for a in self._acceptors:
                a.pause()

    def _accept_failed(self, error):
        """Logs a failed accept (out of descriptors, say) at most once every
        ACCEPT_LOG_INTERVAL s, with the count of those it stands for: at
        the limit, each closing connection lets one accept through before
        the next fails."""
        now = time.monotonic()
        if now < self._accept_quiet_until:
            self._accept_failures += 1
            return
        if self._accept_failures:
            self.log.error("accept() failed: %s (%d more failures since "
                           "the last report); retrying", error,
                           self._accept_failures)
        else:
            self.log.error("accept() failed: %s; retrying", error)
        self._accept_failures = 0
        self._accept_quiet_until = now + ACCEPT_LOG_INTERVAL

    def _stop_accepting(self):
        for a in self._acceptors:
            a.close()

    async def _serve(self):
        loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self.server = server = self.make_server(loop)
        if self._gc_pacer is not None:
            self._gc_pacer.start(server, loop)
        self.websockets.error_log = self._error
        self._limit = max(1, self.cfg.worker_connections)
        ssl_ctx = self._ssl_context()
        self._acceptors = [_Acceptor(self, loop, s, ssl_ctx) for s in self.sockets]
        for a in self._acceptors:
            a.resume()
        if self.max_requests and self.max_requests < sys.maxsize:
            server.limit_requests(self.max_requests, self._on_max_requests)
        keepalive = float(self.cfg.keepalive)
        first_wait = max(keepalive, float(self.cfg.timeout or 30))
        try:
            while self.alive:
                self.notify()
                if not self.alive:
                    break
                if self.ppid != os.getppid():
                    self.log.info("Parent changed, shutting down: %s", self)
                    self.alive = False
                    break
                # keepalive between requests; a new connection gets the
                # worker timeout to send its first one, and a client that
                # keeps a request waiting (a head sent a byte at a time, a
                # body that stalls, a response it does not read) as long
                server.close_idle(max(keepalive, 0.0), first_wait, first_wait)
                if self._gc_pacer is not None:
                    self._gc_pacer.follow()
                if self._pool_pacer is not None:
                    self._pool_pacer.follow(self._open_connections())
                try:
                    await asyncio.wait_for(self._wakeup.wait(), 1.0)
                except asyncio.TimeoutError:
                    pass
        finally:
            self._stop_accepting()
            if self._gc_pacer is not None:
                self._gc_pacer.stop()
            await self._stop(loop)

    def _on_max_requests(self):
        # called as the max_requests-th response completes: stop accepting
        # at once (the server already closes connections after responses)
        if self.alive:
            self.log.info("Autorestarting worker after current request.")
        self.alive = False
        self._stop_accepting()
        self._wake()

    async def _stop(self, loop):
        server = self.server
        websockets = self.websockets
        if not self._quit_now:
            # graceful: in-flight requests get graceful_timeout to finish;
            # a kept-alive connection lingers until idle for keepalive (a
            # request may be on the wire: it is answered, with
            # Connection: close), as gthread does
            keepalive = max(float(self.cfg.keepalive), 0.0)
            client_wait = max(keepalive, float(self.cfg.timeout or 30))
            server.shutdown(keepalive)
            # websockets are closed with 1001 (Going Away); their views see
            # recv() return None, and get the same graceful_timeout to end
            websockets.shutdown()
            deadline = loop.time() + float(self.cfg.graceful_timeout)
            while ((server.active or server.connections or websockets.busy)
                   and loop.time() < deadline and not self._quit_now):
                self.notify()
                server.close_idle(keepalive, keepalive, client_wait)
                await asyncio.sleep(0.05)
        # TLS handshakes still in progress end here, while the loop runs
        # (left to the collector after it closed, each logged a traceback)
        for a in self._acceptors:
            a.abort_handshakes()
        server.abort()
        websockets.cancel()
        # let the cancelled requests and websocket views unwind (the
        # executor still takes their clean-up; a plain view queued for an
        # aborted request is taken off its queue, never started)
        for _ in range(20):
            if not server.active and not websockets.views:
                break
            await asyncio.sleep(0.01)
        # what is still queued never starts (it would run, and could wait
        # for a coroutine of this loop in its turn): the loop's executor and
        # the views' own pools (aiopyramid.executor_threads) cancel it
        _executor.shutdown_pools()
        # executor threads still waiting on coroutines give up now
        _executor.stop_waiting(loop)
        for _ in range(20):
            if not server.active and not websockets.views:
                break
            await asyncio.sleep(0.01)
        # the views still running get a few seconds to end, the loop running
        # meanwhile (shutdown_default_executor, cancelled by a timeout,
        # joins the threads on the loop's own thread: a view waiting for a
        # coroutine of this loop then never ends)
        executor = getattr(loop, "_default_executor", self._executor)
        await _joined(loop, executor, 5.0)


async def _joined(loop, executor, timeout):
    """Waits at most timeout seconds for executor's threads to end, from a
    thread of its own: the loop runs meanwhile."""
    if executor is None:
        return
    done = loop.create_future()

    def join():
        try:
            executor.shutdown(wait=True)
        finally:
            try:
                loop.call_soon_threadsafe(
                    lambda: done.done() or done.set_result(None))
            except RuntimeError:  # the loop closed: nobody waits
                pass

    threading.Thread(target=join, name="aiopyramid-join",
                     daemon=True).start()
    try:
        await asyncio.wait_for(done, timeout)
    except asyncio.TimeoutError:
        pass


class _AcceptedSocket(socket.socket):
    """An accepted socket as uvloop's connect_accepted_socket reads it:
    family and type as the C socket has them (socket.socket's properties
    make an enum of each, at every read: uvloop reads three)."""

    __slots__ = ()
    family = _socket.socket.family
    type = _socket.socket.type


def _accept_for(loop, sock):
    """accept() for the listening sock: () -> (socket, address)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        uvloop = None
    if uvloop is None or not isinstance(loop, uvloop.Loop):
        return sock.accept  # asyncio's transports use the socket's methods
    family, type_, proto = sock.family, sock.type, sock.proto
    raw_accept = sock._accept

    def accept():
        fd, address = raw_accept()
        return _AcceptedSocket(family, type_, proto, fd), address

    return accept


class _Acceptor:
    """Accepts the connections of one listening socket for the worker, from
    a reader callback on the loop: no Task, future or coroutine step per
    connection (each connection's transport is made by the loop's own
    connect_accepted_socket, driven to its end with one callback per burst
    of accepts).  Stops reading the socket at worker_connections (the rest
    wait in the backlog) and, backing off, when accept() fails."""

    def __init__(self, worker, loop, listener, ssl_ctx):
        self.worker = worker
        self.loop = loop
        self.sock = sock = getattr(listener, "sock", listener)
        sock.setblocking(False)
        self.fd = sock.fileno()
        self.accept = _accept_for(loop, sock)
        self.ssl_ctx = ssl_ctx
        self.ssl_timeout = max(1.0, float(worker.cfg.keepalive or 0) + 10)
        self.reading = False
        self.closed = False
        self.backoff = 0.0
        self.retry = None  # the TimerHandle of a backoff
        self.opening = []  # (coroutine, waiter, socket): transports in making
        self.handshaking = {}  # coroutine -> socket: TLS handshakes going on
        self.aborted = False  # the worker is stopping: no more handshakes
        self.finish_scheduled = False

    def resume(self):
        if not self.reading and not self.closed and self.retry is None:
            self.loop.add_reader(self.fd, self._on_readable)
            self.reading = True

    def pause(self):
        if self.reading:
            self.loop.remove_reader(self.fd)
            self.reading = False

    def close(self):
        self.closed = True
        self.pause()
        if self.retry is not None:
            self.retry.cancel()
            self.retry = None

    def _retry(self):
        self.retry = None
        if not self.worker._full:
            self.resume()

    def _on_readable(self):
        worker = self.worker
        room = worker._room()
        accept = self.accept
        connect = self.loop.connect_accepted_socket
        server = worker.server
        opening = self.opening
        pool = worker._pool_pacer
        # take what waits in the backlog now, not one per loop iteration: a
        # burst of clients is not kept waiting
        while True:
            if room <= 0:
                worker._at_limit()
                break
            try:
                conn, _ = accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                # EMFILE and friends: back off, longer while it lasts (those
                # accepted so far are served: their closing frees
                # descriptors; the rest wait in the backlog)
                worker._accept_failed(e)
                self.backoff = min(max(self.backoff * 2, 0.01), 0.5)
                self.pause()
                self.retry = self.loop.call_later(self.backoff, self._retry)
                break
            self.backoff = 0.0
            room -= 1
            if pool is not None:
                pool.raise_for(worker._open_connections() + 1)
            if self.ssl_ctx is None:
                coro = connect(server, conn)
            else:
                coro = connect(server, conn, ssl=self.ssl_ctx,
                               ssl_handshake_timeout=self.ssl_timeout)
            try:
                waiter = coro.send(None)
            except StopIteration:
                continue
            except Exception as e:
                worker.log.debug("connection failed: %s", e)
                conn.close()
                continue
            worker._connecting += 1
            opening.append((coro, waiter, conn))
        if opening and not self.finish_scheduled:
            # after the connection_made of every transport of this burst
            self.finish_scheduled = True
            self.loop.call_soon(self._finish)

    def _finish(self):
        # the transports made by this burst have called connection_made by
        # now (queued before this): their coroutines end here
        self.finish_scheduled = False
        opening, self.opening = self.opening, []
        for coro, waiter, conn in opening:
            if waiter.done():
                self._end(coro, conn)
            elif self.aborted:
                self._abort(coro, conn)
            else:  # a TLS handshake: when it is done
                self.handshaking[coro] = conn
                waiter.add_done_callback(
                    lambda _, c=coro, s=conn: self._handshake_done(c, s))
        self.worker._on_room()

    def _handshake_done(self, coro, conn):
        if self.handshaking.pop(coro, None) is not None:  # else aborted
            self._end(coro, conn)

    def abort_handshakes(self):
        """The worker stops: the TLS handshakes still going on end now, their
        transports closed while the loop still runs."""
        self.aborted = True
        handshaking, self.handshaking = self.handshaking, {}
        for coro, conn in handshaking.items():
            self._abort(coro, conn)

    def _abort(self, coro, conn):
        self.worker._connecting -= 1
        try:
            coro.close()  # the loop's coroutine closes its transport
        except Exception as e:  # pragma: no cover
            self.worker.log.debug("connection failed: %s", e)
        conn.close()

    def _end(self, coro, conn):
        worker = self.worker
        worker._connecting -= 1
        try:
            coro.send(None)
        except StopIteration:
            pass
        except Exception as e:  # a failed handshake is the client's problem
            worker.log.debug("connection failed: %s", e)
            conn.close()
        else:  # pragma: no cover - the loop's coroutine awaits one future
            coro.close()
            conn.close()
        worker._on_room()


class AsyncioGunicornWorker(AsyncGunicornWorker):
    """The same worker, always on asyncio's own loop."""

    loop_kind = "asyncio"
