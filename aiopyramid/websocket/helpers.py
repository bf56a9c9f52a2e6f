"""Websocket helpers."""
from .exceptions import WebsocketClosed

__all__ = ["ignore_websocket_closed"]


def ignore_websocket_closed(app):
    """Wrap a WSGI app so that a websocket view ended by its websocket
    closing (``WebsocketClosed``, which under uWSGI ends the request once
    the view is over) does not fill uWSGI's log::

        return ignore_websocket_closed(config.make_wsgi_app())

    A ``WebsocketClosed`` raised *from* another error (``raise
    WebsocketClosed(...) from exc``) is a real failure: it still raises,
    and is logged, as is any other exception.
    """

    def wrapped(environ, start_response):
        try:
            return app(environ, start_response)
        except WebsocketClosed as exc:
            if exc.__cause__ is not None:
                raise
            return []

    wrapped.__wrapped__ = app
    return wrapped
