"""The websockets of one aiopyramid server: what the gunicorn worker counts
towards ``worker_connections`` and closes on a graceful shutdown.

``aiopyramid.server.HttpServer`` puts one :class:`WebsocketConnections` in
every request's environ (``ENVIRON_KEY``); ``WebsocketMapper`` finds it
there, which is also how it knows the request came through aiopyramid's
server (the only one that can hand a connection to the C websocket layer).
"""
import asyncio
import logging

__all__ = ["ENVIRON_KEY", "HANDOFF_KEY", "WebsocketConnections"]

# the server's WebsocketConnections, in every request's environ
ENVIRON_KEY = "aiopyramid.websockets"
# the _core.WebSocket a 101 response hands the connection to; the HTTP
# layer (csrc/http/upgrade.c) looks for it under this key
HANDOFF_KEY = "aiopyramid.websocket"

GOING_AWAY = 1001

logger = logging.getLogger("aiopyramid.websocket")


class _Entry:
    """One websocket: its ``on_lost`` callback, and its view's Task."""

    __slots__ = ("owner", "ws", "task", "open")

    def __init__(self, owner):
        self.owner = owner
        self.ws = None
        self.task = None
        self.open = True

    def __call__(self):
        # _core.WebSocket's on_lost: the transport is gone
        self.owner._lost(self)


class WebsocketConnections:
    """The open websockets and running websocket views of one server.

    ``on_close``: called with no arguments when a websocket's connection
    goes (there is room for another connection); ``error_log(message,
    exc)``: where a failing view is logged (default: the
    ``aiopyramid.websocket`` logger)."""

    def __init__(self, *, on_close=None, error_log=None):
        self._open = set()
        self._tasks = set()
        self.closing = False
        self.on_close = on_close
        self.error_log = error_log

    def __len__(self):
        """Websocket connections open."""
        return len(self._open)

    @property
    def views(self):
        """Websocket views still running."""
        return len(self._tasks)

    def log_error(self, message, exc):
        if self.error_log is not None:
            self.error_log(message, exc)
        else:
            logger.error(message, exc_info=(type(exc), exc, exc.__traceback__))

    def new_entry(self):
        """An entry to register before the WebSocket exists (its on_lost)."""
        entry = _Entry(self)
        self._open.add(entry)
        return entry

    def started(self, entry, ws, task):
        entry.ws = ws
        entry.task = task
        self._tasks.add(task)
        task.add_done_callback(lambda t, e=entry: self._view_done(e, t))
        if self.closing:
            # a handshake answered while the server began to stop
            self._close_one(entry)

    def _lost(self, entry):
        if not entry.open:
            return
        entry.open = False
        self._open.discard(entry)
        if self.on_close is not None:
            self.on_close()

    def _view_done(self, entry, task):
        self._tasks.discard(task)
        # a view starts once its WebSocket has the transport (the 101 is
        # out: _Handoff.attach), so the socket's end is its on_lost, which
        # the transport's connection_lost brings (close_timeout aborts a
        # peer that never answers the close): until then it holds a
        # connection, whatever state its close handshake is in.  Only an
        # entry with no WebSocket is over with its view.
        if entry.open and entry.ws is None:
            self._lost(entry)

    def _close_one(self, entry):
        ws = entry.ws
        if ws is None or ws.closed:
            return
        loop = entry.task.get_loop()

        async def close():
            try:
                await ws.close(GOING_AWAY, "server shutting down")
            except Exception:  # closed meanwhile: nothing to do
                pass

        loop.create_task(close())

    def shutdown(self):
        """Graceful stop: close every websocket with 1001 (Going Away);
        their views then see ``recv()`` return None and end."""
        self.closing = True
        for entry in list(self._open):
            self._close_one(entry)

    @property
    def busy(self):
        return bool(self._open or self._tasks)

    def cancel(self):
        """The end of a graceful stop (or a quick one): cancel the views
        still running."""
        self.closing = True
        for task in list(self._tasks):
            task.cancel()

    async def wait(self, timeout):
        """Wait (at most ``timeout`` seconds) for every view to end."""
        tasks = list(self._tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
