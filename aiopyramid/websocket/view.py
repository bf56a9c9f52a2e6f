"""Running a websocket view, whatever its shape, on a connected ``ws``.

Both mappers (gunicorn's ``WebsocketMapper`` and ``UWSGIWebsocketMapper``)
hand their ``ws`` (an object with awaitable ``recv()``, ``send(message)``
and ``close(code=1000, reason='')``) to :func:`run_websocket_view`, so a view
behaves the same under either server.
"""
import inspect
import types

__all__ = ["WebsocketConnectionView", "run_websocket_view"]


async def _settle(result):
    """Await what a view or hook returned: a coroutine or other awaitable, a
    generator coroutine (the original guide's ``yield from`` style), or a
    plain value (a plain-def hook), which is returned as is."""
    if inspect.isgenerator(result):
        return await types.coroutine(lambda: (yield from result))()
    if inspect.isawaitable(result):
        return await result
    return result


class WebsocketConnectionView:
    """A class-based websocket view: override ``on_open``, ``on_message``
    and ``on_close`` (each may be ``async def``, a generator coroutine or a
    plain function); ``self.send(message)`` is ``self.ws.send(message)``.

    Set ``__view_mapper__`` to the mapper of your server (or pass
    ``mapper=`` to ``view_config``).
    """

    def __init__(self, context, request):
        self.context = context
        self.request = request
        self.ws = None

    def send(self, message):
        return self.ws.send(message)

    def on_open(self):
        pass

    def on_message(self, message):
        pass

    def on_close(self):
        pass

    async def __call__(self, ws):
        self.ws = ws
        try:
            await _settle(self.on_open())
            while True:
                message = await ws.recv()
                if message is None:
                    break
                await _settle(self.on_message(message))
        finally:
            await _settle(self.on_close())


async def run_websocket_view(view, context, request, ws, attr=None):
    """Run ``view`` on ``ws`` to its end.

    ``view`` is what was registered: a function taking ``ws`` (``async def``,
    generator coroutine or plain), or a class (``WebsocketConnectionView``
    or any class taking ``(context, request)``) whose instance, or its
    ``attr`` method, is called with ``ws``.
    """
    if inspect.isclass(view):
        instance = view(context, request)
        target = getattr(instance, attr) if attr else instance
    else:
        target = getattr(view, attr) if attr else view
    return await _settle(target(ws))
