"""Websocket views: the same view code under gunicorn (``config.WebsocketMapper``,
framing in C) and under uWSGI (``config.UWSGIWebsocketMapper``, uWSGI's
native websockets)."""
