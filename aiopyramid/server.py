"""HttpServer: aiopyramid's HTTP/1.1 server made from options as a user (or
the gunicorn worker) gives them.

The server itself is ``aiopyramid._core.HttpServer`` (C, on llhttp); it
takes plain values, normalised here::

    server = HttpServer(app, loop, forwarded_allow_ips="10.0.0.0/8")
    await loop.create_server(server, "127.0.0.1", 8080)
"""
import collections.abc
import functools
import ipaddress
import sys

from . import _core

__all__ = ["HttpServer"]

_WS_CONNECTIONS = "aiopyramid.websockets"  # websocket._server.ENVIRON_KEY


def _environ_key(name):
    """The environ key of a request header, as the server files it."""
    if not isinstance(name, str):
        raise TypeError(
            "secure scheme header names must be str, not %s"
            % type(name).__name__
        )
    upper = name.upper()
    if upper in ("CONTENT-TYPE", "CONTENT-LENGTH"):
        return upper.replace("-", "_")
    if "_" in name:
        raise ValueError(
            "secure scheme header %r has an underscore, such headers are "
            "dropped" % name
        )
    return "HTTP_" + upper.replace("-", "_")


def _secure_headers(headers):
    """{"X-FORWARDED-PROTO": "https"} as ((environ key, value), ...)."""
    if headers is None:
        return ()
    pairs = []
    for i, item in enumerate(headers.items()):
        # a custom mapping's items() may give anything: pairs only
        if isinstance(item, (str, bytes)) or not isinstance(
            item, collections.abc.Sequence
        ):
            raise TypeError(
                "secure_scheme_headers: items() element #%d is a %s, not a "
                "(header, value) pair" % (i, type(item).__name__)
            )
        if len(item) != 2:
            raise TypeError(
                "secure_scheme_headers: items() element #%d has length %d; "
                "2 is required" % (i, len(item))
            )
        pairs.append((_environ_key(item[0]), item[1]))
    return tuple(pairs)


def _trusted_peers(allow):
    """forwarded_allow_ips as (addresses, check): (None, None) trusts every
    peer; a frozenset of addresses; or, with networks named or a callable
    given, a membership test of the peer's host."""
    if allow is None:
        return frozenset(["127.0.0.1"]), None
    if callable(allow):
        return None, allow
    if isinstance(allow, str):
        allow = allow.split(",")
    allow = [str(a).strip() for a in allow]
    allow = [a for a in allow if a]
    if "*" in allow:
        return None, None
    if not any("/" in a for a in allow):
        return frozenset(allow), None
    networks = [ipaddress.ip_network(a, strict=False) for a in allow]

    @functools.lru_cache(maxsize=1024)
    def trusted(host):
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(addr in net for net in networks)

    return None, trusted


def _at_least(value, least, name):
    value = int(value)
    if value < least:
        raise ValueError(
            "%s must be %d or more, got %d" % (name, least, value)
        )
    return value


def HttpServer(
    app,
    loop,
    *,
    base_environ=None,
    limit_request_line=4094,
    limit_request_fields=100,
    limit_request_field_size=8190,
    keepalive=2.0,
    secure_scheme_headers=None,
    forwarded_allow_ips=None,
    access_log=None,
    error_log=None,
    body_buffer=262144,
    websockets=None,
):
    """A protocol factory for ``loop.create_server()`` or
    ``loop.connect_accepted_socket()`` serving the WSGI ``app``.

    limit_request_*: 0 or more (414 / 431 past them); keepalive: seconds an
    idle connection is kept; secure_scheme_headers: {header: value that
    means https}, believed from trusted peers only; forwarded_allow_ips:
    the trusted peers, "*", addresses or networks (a list or a comma
    separated str), or a callable(host) -> bool; default 127.0.0.1;
    access_log(environ, status, headers, sent, seconds) and
    error_log(message, exc): callables or None; body_buffer: bytes of
    request body buffered before reading pauses (1024 or more);
    websockets: the ``aiopyramid.websocket._server.WebsocketConnections``
    that counts this server's websockets (one is made when None), put in
    each request's environ for ``WebsocketMapper``."""
    if not callable(getattr(loop, "create_future", None)):
        raise TypeError(
            "HttpServer(app, loop): loop is the event loop that serves it "
            "(asyncio.get_running_loop() in a coroutine), not %r" % (loop,)
        )
    environ = dict(base_environ or ())
    script_name = environ.setdefault("SCRIPT_NAME", "")
    if not isinstance(script_name, str):
        raise TypeError(
            "SCRIPT_NAME must be str, not %s" % type(script_name).__name__
        )
    environ.setdefault("wsgi.input", None)
    environ["wsgi.file_wrapper"] = _core.FileWrapper
    # wsgi.input ends at the body's end, whatever its framing: WebOb reads
    # a chunked body only when told so
    environ["wsgi.input_terminated"] = True
    # what WebsocketMapper hands a connection over to (and how it knows
    # that it runs under this server)
    if websockets is None:
        from .websocket._server import WebsocketConnections

        websockets = WebsocketConnections()
    environ[_WS_CONNECTIONS] = websockets
    # interned keys, as the C side's own: each request's environ is a copy,
    # and lookups with interned strings then match by identity
    environ = {
        sys.intern(k) if type(k) is str else k: v for k, v in environ.items()
    }
    addresses, check = _trusted_peers(forwarded_allow_ips)
    return _core.HttpServer(
        app,
        loop,
        environ,
        _at_least(limit_request_line, 0, "limit_request_line"),
        _at_least(limit_request_fields, 0, "limit_request_fields"),
        _at_least(limit_request_field_size, 0, "limit_request_field_size"),
        float(keepalive),
        _secure_headers(secure_scheme_headers),
        addresses,
        check,
        access_log,
        error_log,
        _at_least(body_buffer, 1024, "body_buffer"),
    )
