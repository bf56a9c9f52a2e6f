"""Exceptions of aiopyramid's websockets."""


class WebsocketClosed(Exception):
    """The websocket is closed: raised by ``ws.send()`` (and ``close()`` is
    then a no-op).  ``recv()`` never raises it: it returns None once the
    peer has closed or the connection is gone.

    Under uWSGI a view ended by a closed websocket raises it out of the
    request; wrap the app in
    ``aiopyramid.websocket.helpers.ignore_websocket_closed`` to keep it out
    of uWSGI's log.
    """
