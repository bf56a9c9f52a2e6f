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
collector's sight and raises the young generation's threshold (see
``_tune_gc``); ``AIOPYRAMID_GC=python`` leaves the collector as Python set
it, and an app that set its own thresholds keeps them.

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
import signal
import sys
import time

from gunicorn.workers import base

from .. import _executor
from ..server import HttpServer
from ..websocket._server import WebsocketConnections

__all__ = ["AsyncGunicornWorker", "AsyncioGunicornWorker"]

LOOP_ENV = "AIOPYRAMID_LOOP"
GC_ENV = "AIOPYRAMID_GC"
ACCEPT_LOG_INTERVAL = 10  # s between two "accept() failed" lines
# the young generation's threshold: this many objects per worker connection
# (the objects of the requests in flight, which die by reference counting),
# at most GC_YOUNG_MAX (a collection traverses them all)
GC_YOUNG_PER_CONNECTION = 50
GC_YOUNG_MAX = 100_000
# the collector's thresholds as Python sets them (3.11 and 3.12; 3.13):
# an app that set others keeps its own
_GC_PYTHON_THRESHOLDS = ((700, 10, 10), (2000, 10, 10))


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


def _tune_gc(connections, preloaded=False):
    """The cyclic collector, once the app is loaded (AIOPYRAMID_GC=python
    leaves it as Python set it).

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
    pages also stay shared), and the young threshold grows to
    GC_YOUNG_PER_CONNECTION objects per worker connection: the collector
    runs when that many objects were made and not freed, which requests
    that do not leak cycles never do.  Cyclic garbage is still collected,
    GC_YOUNG_MAX objects at a time at most.

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
        young = min(GC_YOUNG_MAX, GC_YOUNG_PER_CONNECTION * max(1, connections))
        if young > thresholds[0]:
            gc.set_threshold(young, *thresholds[1:])


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
        self._quit_now = False
        self._wakeup = None
        self._connecting = 0
        self._acceptors = []
        # websockets: connections handed from the HTTP server to the C
        # websocket layer (they count towards worker_connections too)
        self.websockets = WebsocketConnections()

    # -- process set-up ---------------------------------------------------

    def init_process(self):
        # a fresh loop in the forked child, never the arbiter's
        asyncio.set_event_loop(None)
        self._gc_kind = _gc_kind()
        self.loop = _new_loop(self.loop_kind)
        asyncio.set_event_loop(self.loop)
        # an executor whose jobs, when a thread waits for the coroutine that
        # submits them, run in that thread (no deadlock on a full pool)
        self.loop.set_default_executor(_executor.Executor())
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
            _tune_gc(self.cfg.worker_connections,
                     preloaded=bool(self.cfg.preload_app))
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

    async def _accept(self, listener, ssl_ctx):
        loop = asyncio.get_running_loop()
        sock = getattr(listener, "sock", listener)
        sock.setblocking(False)
        limit = max(1, self.cfg.worker_connections)
        server = self.server
        websockets = self.websockets
        backoff = 0.0
        # failed accepts (out of descriptors, say) are logged at most once
        # every ACCEPT_LOG_INTERVAL s, with their count: at the limit, each
        # closing connection lets one accept through before the next fails
        failures, quiet_until = 0, 0.0
        while self.alive:
            if (server.connections + len(websockets)
                    + self._connecting >= limit):
                # worker_connections: leave the rest in the backlog until a
                # connection closes (server.on_close) or fails to open
                self._room.clear()
                await self._room.wait()
                continue
            try:
                conns = [await loop.sock_accept(sock)]
            except asyncio.CancelledError:
                raise
            except OSError as e:
                # EMFILE and friends: back off, longer while it lasts
                failures, quiet_until = self._accept_failed(
                    failures, quiet_until, e)
                backoff = min(max(backoff * 2, 0.01), 0.5)
                await asyncio.sleep(backoff)
                continue
            backoff = 0.0
            # take what else waits in the backlog now, not one per loop
            # iteration: a burst of clients is not kept waiting
            while (server.connections + len(websockets) + self._connecting
                   + len(conns) < limit):
                try:
                    conns.append(sock.accept())
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as e:
                    # out of descriptors: serve those accepted so far (their
                    # closing frees descriptors), the rest wait
                    failures, quiet_until = self._accept_failed(
                        failures, quiet_until, e)
                    backoff = 0.01
                    break
            for conn, _ in conns:
                self._connecting += 1
                loop.create_task(self._connect(loop, conn, ssl_ctx))
            del conns
            if backoff:
                await asyncio.sleep(backoff)

    def _accept_failed(self, failures, quiet_until, error):
        """(failures not yet logged, until when to stay quiet)."""
        now = time.monotonic()
        if now < quiet_until:
            return failures + 1, quiet_until
        if failures:
            self.log.error("accept() failed: %s (%d more failures since "
                           "the last report); retrying", error, failures)
        else:
            self.log.error("accept() failed: %s; retrying", error)
        return 0, now + ACCEPT_LOG_INTERVAL

    async def _connect(self, loop, conn, ssl_ctx):
        try:
            if ssl_ctx is None:
                await loop.connect_accepted_socket(self.server, conn)
            else:
                await loop.connect_accepted_socket(
                    self.server, conn, ssl=ssl_ctx,
                    ssl_handshake_timeout=max(1.0, float(self.cfg.keepalive or 0) + 10),
                )
        except Exception as e:  # a failed handshake is the client's problem
            self.log.debug("connection failed: %s", e)
            conn.close()
        finally:
            self._connecting -= 1
            self._room.set()

    async def _serve(self):
        loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self.server = server = self.make_server(loop)
        # set when there may be room for another connection
        self._room = asyncio.Event()
        server.on_close = self._room.set
        self.websockets.on_close = self._room.set
        self.websockets.error_log = self._error
        ssl_ctx = self._ssl_context()
        self._acceptors = acceptors = [
            loop.create_task(self._accept(s, ssl_ctx)) for s in self.sockets
        ]
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
                try:
                    await asyncio.wait_for(self._wakeup.wait(), 1.0)
                except asyncio.TimeoutError:
                    pass
        finally:
            for t in acceptors:
                t.cancel()
            await asyncio.gather(*acceptors, return_exceptions=True)
            await self._stop(loop)

    def _on_max_requests(self):
        # called as the max_requests-th response completes: stop accepting
        # at once (the server already closes connections after responses)
        if self.alive:
            self.log.info("Autorestarting worker after current request.")
        self.alive = False
        for t in self._acceptors:
            t.cancel()
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
        server.abort()
        websockets.cancel()
        # executor threads still waiting on coroutines give up now
        _executor.stop_waiting(loop)
        # let the cancelled requests and websocket views unwind
        for _ in range(20):
            if not server.active and not websockets.views:
                break
            await asyncio.sleep(0.01)
        try:
            await asyncio.wait_for(loop.shutdown_default_executor(), 5)
        except (asyncio.TimeoutError, RuntimeError):
            pass
        # and the views' own pools (aiopyramid.executor_threads)
        _executor.shutdown_pools()


class AsyncioGunicornWorker(AsyncGunicornWorker):
    """The same worker, always on asyncio's own loop."""

    loop_kind = "asyncio"
