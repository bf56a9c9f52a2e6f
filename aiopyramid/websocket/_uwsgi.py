"""UWSGIWebsocketMapper: websocket views on uWSGI's native websockets
(``uwsgi.websocket_handshake``, ``websocket_recv_nb``, ``websocket_send``),
under uWSGI's asyncio loop (``asyncio = N``, ``greenlet = true``).

uWSGI's websocket calls work only in the request's own greenlet (uWSGI finds
the request through it), so that greenlet is the connection's pump: it
reads whole messages when ``connection_fd`` is readable (``loop.add_reader``)
and writes what ``send()`` queued.  The view runs as a Task of its own (in a
request greenlet of the bridge, so synchronized code works in it); its
``recv()``, ``send()`` and ``close()`` return futures, which may be awaited
(or ``yield from``-ed in a generator view) from any task.

uWSGI answers pings and sends its own (``websocket-ping-freq``) inside
``websocket_recv_nb``: control frames never reach the view.  uWSGI gives
every message as bytes; with ``use_str`` (the default, as the original
aiopyramid documented) a message that is valid UTF-8 is given as ``str``.

Importable without uWSGI: ``uwsgi`` is imported when a view is called.
"""
import asyncio
import collections
import os
import struct

from pyramid.httpexceptions import HTTPBadRequest, HTTPForbidden
from pyramid.threadlocal import get_current_registry
from pyramid.viewderivers import DefaultViewMapper

from .exceptions import WebsocketClosed
from .view import run_websocket_view

__all__ = ["UWSGIWebsocketMapper"]

HIGH_WATER = 64          # unread messages before reading stops
_CLOSE = object()        # a close frame queued behind the sends


class UWSGIWebsocket:
    """The ``ws`` a view gets under uWSGI."""

    def __init__(self, uwsgi, loop, use_str, raw_close):
        self._uwsgi = uwsgi
        self._loop = loop
        self._use_str = use_str
        self._raw_close = raw_close    # may write a close frame to the fd
        self._fd = uwsgi.connection_fd()
        self._incoming = collections.deque()
        self._receivers = collections.deque()
        self._outgoing = collections.deque()
        self._wake = None
        self._reading = False
        self._timer = None
        self.closed = False             # no more messages either way
        self._close_sent = False

    # what the view calls ----------------------------------------------

    def recv(self):
        """A future: the next message (str or bytes), None once closed."""
        fut = self._loop.create_future()
        if self._incoming:
            fut.set_result(self._incoming.popleft())
            self._poke()  # reading may resume
        elif self.closed:
            fut.set_result(None)
        else:
            self._receivers.append(fut)
        return fut

    def send(self, message):
        """A future, done when the message is written; WebsocketClosed once
        the websocket is closed."""
        if not isinstance(message, (str, bytes, bytearray, memoryview)):
            raise TypeError("a websocket message is str or bytes, not "
                            "{}".format(type(message).__name__))
        fut = self._loop.create_future()
        if self.closed or self._close_sent:
            fut.set_exception(WebsocketClosed("the websocket is closed"))
        else:
            self._outgoing.append((message, fut))
            self._poke()
        return fut

    def close(self, code=1000, reason=""):
        """A future, done once the close frame is written (a no-op when
        already closed)."""
        fut = self._loop.create_future()
        if self.closed or self._close_sent or any(
                m is _CLOSE for m, _ in self._outgoing):
            fut.set_result(None)
        else:
            self._outgoing.append((_CLOSE, fut))
            self._close_args = (code, reason)
            self._poke()
        return fut

    # the pump, in uWSGI's request greenlet ------------------------------

    def _poke(self, *unused):
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _tick(self):
        # uWSGI sends its pings (and notices missing pongs) only inside
        # websocket_recv_nb: call it now and then on an idle connection
        self._timer = self._loop.call_later(self._interval, self._tick)
        self._poke()

    def _set_reading(self, on):
        if on == self._reading or (on and self.closed):
            return
        if on:
            self._loop.add_reader(self._fd, self._poke)
        else:
            self._loop.remove_reader(self._fd)
        self._reading = on

    def _read(self):
        while not self.closed and len(self._incoming) < HIGH_WATER:
            try:
                data = self._uwsgi.websocket_recv_nb()
            except (OSError, SystemError):
                self._closed_by_peer()
                return
            if not data:
                break
            message = data
            if self._use_str:
                try:
                    message = data.decode("utf-8")
                except UnicodeDecodeError:
                    pass
            while self._receivers:
                fut = self._receivers.popleft()
                if not fut.done():  # not cancelled (a wait_for that timed out)
                    fut.set_result(message)
                    break
            else:
                self._incoming.append(message)

    def _write(self):
        if self._outgoing:
            # a write that must wait suspends this greenlet in uWSGI's own
            # hook: the loop must not keep finding the connection readable
            self._set_reading(False)
        while self._outgoing and not self.closed:
            message, fut = self._outgoing.popleft()
            if fut.cancelled():
                continue
            try:
                if message is _CLOSE:
                    self._send_close(*self._close_args)
                elif isinstance(message, str):
                    self._uwsgi.websocket_send(message.encode("utf-8"))
                else:
                    self._uwsgi.websocket_send_binary(bytes(message))
            except (OSError, SystemError):
                fut.set_exception(WebsocketClosed("the websocket is closed"))
                self._closed_by_peer()
            else:
                fut.set_result(None)
            if message is _CLOSE:
                self._end()

    def _send_close(self, code, reason):
        self._close_sent = True
        if not self._raw_close:
            return
        payload = struct.pack("!H", code) + reason.encode("utf-8")[:123]
        try:
            os.write(self._fd, bytes([0x88, len(payload)]) + payload)
        except OSError:
            pass

    def _closed_by_peer(self):
        self._end()

    def _end(self):
        self.closed = True
        self._set_reading(False)
        while self._receivers:
            fut = self._receivers.popleft()
            if not fut.done():
                fut.set_result(None)
        while self._outgoing:
            message, fut = self._outgoing.popleft()
            if not fut.done():
                if message is _CLOSE:
                    fut.set_result(None)
                else:
                    fut.set_exception(
                        WebsocketClosed("the websocket is closed"))

    async def _pump(self, task):
        ping_freq = _int_opt(self._uwsgi, "websocket-ping-freq", 30)
        self._interval = max(1.0, ping_freq / 2.0)
        self._timer = self._loop.call_later(self._interval, self._tick)
        task.add_done_callback(self._poke)
        try:
            self._set_reading(True)
            while True:
                self._read()
                self._write()
                if task.done():
                    if not self.closed:
                        if not self._close_sent:
                            failed = not task.cancelled() and \
                                task.exception() is not None and \
                                not isinstance(task.exception(),
                                               WebsocketClosed)
                            self._send_close(1011 if failed else 1000, "")
                        self._end()
                    return
                self._set_reading(not self.closed and
                                  len(self._incoming) < HIGH_WATER)
                self._wake = self._loop.create_future()
                await self._wake
                self._wake = None
        finally:
            self._timer.cancel()
            self._set_reading(False)
            if not self.closed:
                self._end()


def _int_opt(uwsgi, name, default):
    value = getattr(uwsgi, "opt", {}).get(name)
    if isinstance(value, (list, tuple)):
        value = value[-1] if value else None
    if isinstance(value, bytes):
        value = value.decode()
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _run_view(view, context, request, ws, attr):
    from .. import _core

    return _core.await_(run_websocket_view(view, context, request, ws, attr))


class UWSGIWebsocketMapper(DefaultViewMapper):
    """The view mapper of websocket views under uWSGI:
    ``view_config(mapper=UWSGIWebsocketMapper)`` or a class's
    ``__view_mapper__``.  ``use_str`` (default True): a text message is
    given as ``str``; set it False to get bytes."""

    use_str = True

    def __call__(self, view):
        from .config import _origin_allowed, websocket_settings

        attr = self.attr
        mapper = type(self)
        # the Origin rule of WebsocketMapper (cross-site websocket
        # hijacking): aiopyramid.websocket.allowed_origins, by default the
        # handshake's own host
        registry = getattr(self, "registry", None) or get_current_registry()
        allowed = websocket_settings(
            getattr(registry, "settings", None))["allowed_origins"]

        def websocket_view(context, request):
            import uwsgi

            from .. import _core
            from ..helpers import spawn_greenlet
            from ..uwsgi import current_driver

            environ = request.environ
            key = environ.get("HTTP_SEC_WEBSOCKET_KEY")
            if not key or "websocket" not in \
                    environ.get("HTTP_UPGRADE", "").lower():
                return HTTPBadRequest("a websocket handshake was expected")
            if not _origin_allowed(environ, allowed):
                return HTTPForbidden(
                    "Websocket handshake from origin %r refused: set "
                    "aiopyramid.websocket.allowed_origins to accept pages "
                    "from other sites." % environ.get("HTTP_ORIGIN"))
            driver = current_driver()
            if driver is not None:
                driver.watch = False  # the pump reads the connection
            uwsgi.websocket_handshake(key, environ.get("HTTP_ORIGIN", ""))
            loop = asyncio.get_running_loop()
            raw_close = environ.get("wsgi.url_scheme") != "https"
            ws = UWSGIWebsocket(uwsgi, loop, mapper.use_str, raw_close)
            task = loop.create_task(spawn_greenlet(
                _run_view, view, context, request, ws, attr))
            try:
                _core.await_(ws._pump(task))
            finally:
                if not task.done():
                    task.cancel()
            exc = None if task.cancelled() else task.exception()
            if exc is not None:
                raise exc  # the view's own error (logged), or its closed ws
            # the response went out with the handshake: end the request as
            # the original did (ignore_websocket_closed keeps it out of the
            # log)
            raise WebsocketClosed("the websocket is closed")

        return websocket_view
