"""View mappers for websocket views.

``WebsocketMapper`` serves websockets under aiopyramid's own server (the
gunicorn worker ``aiopyramid.gunicorn.worker.AsyncGunicornWorker``), with
the framing in C (``aiopyramid._core.WebSocket``);
``UWSGIWebsocketMapper`` serves the same views on uWSGI's native
websockets.  A websocket view is any of::

    @view_config(route_name="ws", mapper=WebsocketMapper)
    async def echo(ws):
        while (message := await ws.recv()) is not None:
            await ws.send(message)

    @view_config(route_name="ws", mapper=WebsocketMapper)
    def echo(ws):                       # the original guide's style
        while True:
            message = yield from ws.recv()
            if message is None:
                break
            yield from ws.send(message)

    class Echo(WebsocketConnectionView):  # aiopyramid.websocket.view
        __view_mapper__ = WebsocketMapper

        async def on_message(self, message):
            await self.send(message)

The handshake is an ordinary request: tweens, security (a view the policy
denies answers 403 and never upgrades) and route predicates apply before
the mapped view runs.  The mapped view then checks the handshake (400, or
426 for a version other than 13), the Origin (403 for a browser page of
another site), and answers 101; the HTTP layer hands the connection to the
WebSocket as soon as that 101 is written, and the view runs as an asyncio
Task on the loop driving a pooled greenlet (plain code in it may call
synchronized coroutines, as under uWSGI), in a copy of the request's
context (so ``get_current_request()`` works in it).  A view that returns closes the
websocket with 1000, one that raises closes it with 1011 and is logged once.

Settings (Pyramid settings, e.g. in the ini's ``[app:main]``):

``aiopyramid.websocket.max_message_size``
    largest message received, in bytes (default 1048576); bigger: close 1009.
``aiopyramid.websocket.compression``
    negotiate permessage-deflate (RFC 7692) when the client offers it
    (default true).
``aiopyramid.websocket.ping_interval``
    seconds between pings the server sends (default 0: none);
``aiopyramid.websocket.ping_timeout``
    and how long to wait for the pong before closing with 1011 (default 20).
``aiopyramid.websocket.close_timeout``
    how long ``close()`` waits for the peer's close frame (default 10).
``aiopyramid.websocket.allowed_origins``
    origins whose pages may open a websocket, space or comma separated
    (``https://example.com http://localhost:6543``), or ``*`` for any.
    Default: the request's own host (the Host header), i.e. same-site
    pages only.  A handshake without an Origin header (not from a browser)
    is always allowed.

Subprotocols: the view's ``subprotocols`` attribute (a function attribute,
or a class attribute of a ``WebsocketConnectionView`` subclass) or, when
the view has none, the mapper's (``class ChatMapper(WebsocketMapper):
subprotocols = ("chat.v2", "chat.v1")``): the protocols the view speaks, in
the server's order of preference; the first of them that the client offers
is chosen (``Sec-WebSocket-Protocol``), none in common: no subprotocol.
The view reads the choice as ``request.environ["aiopyramid.websocket.subprotocol"]``.
"""
import asyncio
import contextvars
import functools
import math
import re
from urllib.parse import urlsplit

from pyramid.exceptions import ConfigurationError
from pyramid.response import Response
from pyramid.settings import truthy, falsey
from pyramid.threadlocal import get_current_registry
from pyramid.util import is_unbound_method, object_description
from pyramid.viewderivers import DefaultViewMapper

from .. import _core
from ..helpers import spawn_greenlet
from ._server import ENVIRON_KEY, HANDOFF_KEY
from .exceptions import WebsocketClosed
from .view import run_websocket_view

__all__ = ["WebsocketMapper", "UWSGIWebsocketMapper", "websocket_settings"]

PREFIX = "aiopyramid.websocket."
SUBPROTOCOL_KEY = "aiopyramid.websocket.subprotocol"

DEFAULTS = {
    "max_message_size": 1024 * 1024,
    "compression": True,
    "ping_interval": 0.0,
    "ping_timeout": 20.0,
    "close_timeout": 10.0,
    "allowed_origins": None,  # None: the request's own Host
}

_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


def _setting_error(name, value, what):
    return ConfigurationError(
        "{}{} must be {}; got {!r}".format(PREFIX, name, what, value))


def _as_bool(name, value):
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in truthy:
        return True
    if text in falsey:
        return False
    raise _setting_error(name, value, "true or false (on/off, yes/no, 1/0)")


def _as_seconds(name, value, allow_zero):
    if isinstance(value, str):
        text = value.strip().lower()
        if allow_zero and text in ("", "off", "none", "false", "no"):
            return 0.0
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0 or \
            (seconds == 0 and not allow_zero):
        raise _setting_error(
            name, value,
            "a number of seconds" + (", 0 (or off) for none" if allow_zero
                                     else " more than 0"))
    return seconds


def _as_size(name, value):
    try:
        size = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        size = 0
    if isinstance(size, bool) or size < 1:
        raise _setting_error(name, value, "a whole number of bytes, 1 or more")
    return size


def _origin(text):
    """'HTTPS://Example.com:443' -> ('https', 'example.com', None): scheme,
    host and the port when it is not the scheme's default; None when it is
    not an origin."""
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if not scheme or not parts.hostname or parts.path not in ("", "/") or \
            parts.query or parts.fragment or parts.username is not None:
        return None
    if port == _DEFAULT_PORTS.get(scheme):
        port = None
    return scheme, parts.hostname.lower(), port


def _as_origins(name, value):
    if value is None:
        return None
    if isinstance(value, str):
        items = [v for v in re.split(r"[\s,]+", value.strip()) if v]
    else:
        items = [str(v).strip() for v in value]
    if not items:
        return None
    if "*" in items:
        if len(items) > 1:
            raise _setting_error(name, value, "'*' alone, or a list of origins")
        return "*"
    origins = set()
    for item in items:
        origin = _origin(item)
        if origin is None:
            raise _setting_error(
                name, value,
                "origins like https://example.com or http://localhost:6543 "
                "(scheme://host[:port], no path), space or comma separated, "
                "or '*'; {!r} is not one".format(item))
        origins.add(origin)
    return frozenset(origins)


def websocket_settings(settings):
    """The ``aiopyramid.websocket.*`` settings as plain values, checked;
    ``ConfigurationError`` saying what is wrong otherwise."""
    settings = settings or {}
    known = set(DEFAULTS)
    for key in settings:
        if key.startswith(PREFIX) and key[len(PREFIX):] not in known and \
                key != SUBPROTOCOL_KEY:
            raise ConfigurationError(
                "unknown setting {!r}; the websocket settings are {}".format(
                    key, ", ".join(PREFIX + k for k in sorted(known))))
    get = lambda k: settings.get(PREFIX + k, DEFAULTS[k])  # noqa: E731
    values = {
        "max_message_size": _as_size("max_message_size",
                                     get("max_message_size")),
        "compression": _as_bool("compression", get("compression")),
        "ping_interval": _as_seconds("ping_interval", get("ping_interval"),
                                     True),
        "ping_timeout": _as_seconds("ping_timeout", get("ping_timeout"),
                                    False),
        "close_timeout": _as_seconds("close_timeout", get("close_timeout"),
                                     False),
        "allowed_origins": _as_origins("allowed_origins",
                                       get("allowed_origins")),
    }
    return values


def _as_subprotocols(value, where):
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    try:
        protocols = tuple(value)
    except TypeError:
        protocols = None
    if protocols is None or not all(
            isinstance(p, str) and p and re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", p)
            for p in protocols):
        raise ConfigurationError(
            "subprotocols of {} must be a sequence of tokens (str, like "
            "'chat.v1'); got {!r}".format(where, value))
    return protocols


def _origin_allowed(environ, allowed):
    origin = environ.get("HTTP_ORIGIN")
    if origin is None:
        return True  # not a browser: no page of another site behind it
    if allowed == "*":
        return True
    parsed = _origin(origin.strip())
    if parsed is None:
        return False  # "null" (a sandboxed page, a file:) and garbage
    if allowed is not None:
        return parsed in allowed
    # the default: the page comes from the host the handshake was sent to
    host = environ.get("HTTP_HOST", "").strip().lower()
    m = re.fullmatch(r"(\[[^\]]*\]|[^:]*)(?::(\d+))?", host)
    if m is None or not m.group(1):
        return False
    name = m.group(1)
    if name.startswith("["):
        name = name[1:-1]
    port = int(m.group(2)) if m.group(2) else None
    _, oname, oport = parsed
    if port is not None and port == _DEFAULT_PORTS.get(parsed[0]):
        port = None
    return oname == name and oport == port


def _refusal(status, message, headers=()):
    response = Response(
        status=status, body=message.encode("utf-8"),
        content_type="text/plain", charset="utf-8")
    for name, value in headers:
        response.headers[name] = value
    return response


def _loop():
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class WebsocketMapper(DefaultViewMapper):
    """Maps a websocket view (``view(ws)``, a generator coroutine, or a
    ``WebsocketConnectionView`` subclass) for aiopyramid's server.

    ``use_bytes = True`` (on this class or a subclass) makes text messages
    arrive as bytes (UTF-8) instead of str.  ``subprotocols``: see the
    module's doc."""

    use_bytes = False
    subprotocols = ()

    def __init__(self, **kw):
        super().__init__(**kw)
        registry = kw.get("registry") or get_current_registry()
        self.settings = websocket_settings(
            getattr(registry, "settings", None))

    def __call__(self, view):
        if is_unbound_method(view) and self.attr is None:
            raise ConfigurationError(
                "Unbound method calls are not supported, please set the "
                "class as your `view` and the method as your `attr`")
        text = object_description(view)
        own = getattr(view, "subprotocols", None)
        subprotocols = _as_subprotocols(
            own if own is not None else self.subprotocols, text)
        settings = self.settings
        use_bytes = bool(self.use_bytes)
        attr = self.attr
        options = dict(
            max_message_size=settings["max_message_size"],
            use_bytes=use_bytes,
            ping_interval=settings["ping_interval"],
            ping_timeout=settings["ping_timeout"],
            close_timeout=settings["close_timeout"],
        )
        compression = settings["compression"]
        allowed = settings["allowed_origins"]

        def websocket_view(context, request):
            environ = request.environ
            connections = environ.get(ENVIRON_KEY)
            loop = _loop()
            if connections is None or loop is None:
                return _refusal(
                    501,
                    "This is a websocket view (WebsocketMapper): it needs "
                    "aiopyramid's server, the gunicorn worker "
                    "aiopyramid.gunicorn.worker.AsyncGunicornWorker (under "
                    "uWSGI, map it with UWSGIWebsocketMapper). Test it "
                    "with a websocket client against a running server.\n")
            try:
                headers, subprotocol, deflate = _core.websocket_handshake(
                    environ, subprotocols, compression)
            except _core.WebsocketHandshakeError as e:
                return _refusal(e.status, "Bad websocket handshake: %s\n" % e,
                                e.headers)
            if not _origin_allowed(environ, allowed):
                return _refusal(
                    403,
                    "Websocket handshake from origin %r refused: set "
                    "aiopyramid.websocket.allowed_origins to accept pages "
                    "from other sites.\n" % environ.get("HTTP_ORIGIN"))
            if connections.closing:
                return _refusal(503, "The server is shutting down.\n")
            entry = connections.new_entry()
            try:
                ws = _core.WebSocket(loop, deflate=deflate, on_lost=entry,
                                     **options)
            except BaseException:
                connections._lost(entry)
                raise
            environ[SUBPROTOCOL_KEY] = subprotocol
            context_copy = contextvars.copy_context()

            def start():
                # a Task of its own, driving a pooled greenlet (as a
                # request's Task does, and as under uWSGI) so that plain
                # code in the view may call synchronized coroutines; in a
                # copy of the request's context (threadlocals, contextvars):
                # the request's own greenlet and Task end once the 101 is out
                task = loop.create_task(
                    spawn_greenlet(_run_in_greenlet, view, context, request,
                                   ws, attr, text, connections),
                    context=context_copy)
                connections.started(entry, ws, task)

            environ[HANDOFF_KEY] = _Handoff(ws, start)
            return Response(status=101, headerlist=list(headers))

        websocket_view.__text__ = text
        functools.update_wrapper(websocket_view, view, assigned=("__module__",
                                                                 "__doc__"),
                                 updated=())
        return websocket_view


class _Handoff:
    """What the HTTP layer hands the connection to (csrc/http/upgrade.c):
    ``attach`` once the 101 is out, or ``connection_lost(None)`` when it
    never went out (a tween replaced the response, the app failed, the
    client left).  The view starts at attach, not when its 101 was made: a
    view whose 101 a tween replaced must not run at all."""

    __slots__ = ("ws", "start")

    def __init__(self, ws, start):
        self.ws = ws
        self.start = start

    def attach(self, transport, buffered):
        start, self.start = self.start, None
        self.ws.attach(transport, buffered)
        if start is not None:
            start()

    def connection_lost(self, exc):
        self.start = None  # never attached: the view never runs
        self.ws.connection_lost(exc)


def _run_in_greenlet(*args):
    return _core.await_(_run(*args))


async def _run(view, context, request, ws, attr, text, connections):
    """A websocket view to its end, then the websocket closed: 1000 when it
    returned, 1011 (and the error logged once) when it raised."""
    code = 1000
    try:
        await run_websocket_view(view, context, request, ws, attr)
    except WebsocketClosed:
        pass  # it sent on a websocket already closed: the end, no error
    except asyncio.CancelledError:
        # cancelled (a quick stop), or the view raised it: the close frame
        # goes now and close_timeout ends a peer that does not answer
        try:
            ws.close(1011)
        except WebsocketClosed:
            pass
        raise
    except BaseException as e:
        # SystemExit, KeyboardInterrupt, GeneratorExit from the view are its
        # errors too (an HTTP view's get a 500): the worker goes on
        code = 1011
        connections.log_error("Error in websocket view %s" % text, e)
    try:
        await ws.close(code)
    except (WebsocketClosed, ConnectionError):
        pass


try:
    # the uWSGI side (importable without uWSGI: uwsgi is imported when a
    # view runs)
    from ._uwsgi import UWSGIWebsocketMapper
except ImportError as _e:
    if getattr(_e, "name", None) != __package__ + "._uwsgi":
        raise
    _UWSGI_MISSING = _e

    def __getattr__(name):
        if name == "UWSGIWebsocketMapper":
            raise ImportError(
                "UWSGIWebsocketMapper needs aiopyramid's uWSGI side "
                "(aiopyramid.websocket._uwsgi, for uWSGI's native websockets "
                "under its asyncio and greenlet plugins), which this "
                "installation lacks: %s" % _UWSGI_MISSING,
                name=__package__ + "._uwsgi")
        raise AttributeError("module {!r} has no attribute {!r}".format(
            __name__, name))
