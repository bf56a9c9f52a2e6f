"""The websocket views the end-to-end tests run under gunicorn with
aiopyramid's worker (``websocket_app:main()``).

Extra Pyramid settings come as JSON in the WS_SETTINGS environment
variable (e.g. ``{"aiopyramid.websocket.compression": "false"}``).
"""
import asyncio
import json
import os

from pyramid.authorization import ACLHelper, Allow, Authenticated, Everyone
from pyramid.config import Configurator
from pyramid.response import Response
from pyramid.threadlocal import get_current_request

from aiopyramid.helpers import coroutine, synchronize
from aiopyramid.websocket.config import WebsocketMapper
from aiopyramid.websocket.view import WebsocketConnectionView

LAST = {}  # what the views saw, for /last


def hello(request):
    return Response(b"hello", content_type="text/plain")


def last(request):
    return Response(json.dumps(LAST).encode(), content_type="application/json")


# -- the three view forms ---------------------------------------------------

async def echo(ws):
    while True:
        message = await ws.recv()
        if message is None:
            break
        await ws.send(message)
    LAST["echo"] = ws.close_code
    print("echo view ended", flush=True)


def echo_generator(ws):
    # the original guide's style, verbatim but for the missing break
    while True:
        message = yield from ws.recv()
        if message is None:
            break
        yield from ws.send(message)


class EchoCoroutineHooks(WebsocketConnectionView):
    __view_mapper__ = WebsocketMapper

    async def on_open(self):
        await self.send("open:" + self.request.path)

    async def on_message(self, message):
        await self.send(message)

    async def on_close(self):
        LAST["class"] = "closed"


class EchoPlainHooks(WebsocketConnectionView):
    __view_mapper__ = WebsocketMapper

    def on_open(self):
        self.opened = True

    def on_message(self, message):
        # a plain hook returning the awaitable: it is awaited
        return self.send(message)

    def on_close(self):
        LAST["plain"] = "closed"


class EchoGeneratorHooks(WebsocketConnectionView):
    __view_mapper__ = WebsocketMapper

    def on_message(self, message):
        yield from self.send(message)


@synchronize
async def shout(text):
    await asyncio.sleep(0.01)  # really suspends
    return text.upper()


class SynchronizedHooks(WebsocketConnectionView):
    """Plain hooks calling a synchronized coroutine, as plain code in a
    request may (the same view runs under uWSGI)."""

    __view_mapper__ = WebsocketMapper

    def on_message(self, message):
        return self.send(shout(message))


# -- types, subprotocols, ending ----------------------------------------------

class BytesMapper(WebsocketMapper):
    use_bytes = True


async def types_view(ws):
    while (message := await ws.recv()) is not None:
        await ws.send("%s:%r" % (type(message).__name__, message))


class ChatMapper(WebsocketMapper):
    subprotocols = ("chat.v2", "chat.v1")


async def subprotocol_view(ws):
    request = get_current_request()
    await ws.send(str(request.environ["aiopyramid.websocket.subprotocol"]))
    while await ws.recv() is not None:
        pass


class ProtocolView(WebsocketConnectionView):
    __view_mapper__ = WebsocketMapper
    subprotocols = ["superchat"]

    async def on_open(self):
        await self.send(
            str(self.request.environ["aiopyramid.websocket.subprotocol"]))


async def say_bye(ws):
    await ws.send("bye")  # and return: closed with 1000


@coroutine
def generator_raises(ws):
    message = yield from ws.recv()
    raise RuntimeError("view failed on %r" % (message,))


async def close_with(ws):
    # "4001 reason" -> close(4001, "reason")
    message = await ws.recv()
    code, _, reason = message.partition(" ")
    await ws.close(int(code), reason)
    LAST["closed_with"] = [ws.close_code, ws.close_reason]


async def sleeper(ws):
    # waits for the peer; SIGTERM's 1001 ends it
    await ws.send("ready")
    while await ws.recv() is not None:
        pass
    print("sleeper view ended with %s" % ws.close_code, flush=True)


async def cancelled(ws):
    # ends as a view whose await was cancelled under it does: its close
    # frame (1011) goes, and the view's Task is over before the peer answers
    await ws.send("ready")
    await ws.recv()
    raise asyncio.CancelledError


async def request_info(ws):
    request = get_current_request()
    await ws.send(json.dumps({
        "path": request.path,
        "user": request.authenticated_userid,
    }))
    await ws.recv()


class AnnouncesOnOpen(WebsocketConnectionView):
    """Its on_open has a side effect (a chat room's "X joined")."""

    __view_mapper__ = WebsocketMapper

    def on_open(self):
        LAST.setdefault("opened", []).append(self.request.path)


def refusing_tween_factory(handler, registry):
    """Checks after the view (as an audit or a late authorization tween
    might) and replaces the 101 for paths under /ws/refused."""

    def tween(request):
        response = handler(request)
        if request.path.startswith("/ws/refused"):
            return Response(status=403, body=b"refused by a tween")
        return response

    return tween


# -- security and predicates ---------------------------------------------------

class Secured:
    __acl__ = [(Allow, Authenticated, "talk")]

    def __init__(self, request):
        pass


class HeaderPolicy:
    """X-User: alice authenticates alice."""

    def identity(self, request):
        return request.headers.get("X-User")

    def authenticated_userid(self, request):
        return self.identity(request)

    def permits(self, request, context, permission):
        principals = [Everyone]
        if self.identity(request):
            principals += [Authenticated, self.identity(request)]
        return ACLHelper().permits(context, principals, permission)

    def remember(self, request, userid, **kw):
        return []

    def forget(self, request, **kw):
        return []


def main(global_config=None, **settings):
    settings.update(json.loads(os.environ.get("WS_SETTINGS") or "{}"))
    with Configurator(settings=settings) as config:
        config.include("aiopyramid")
        config.set_security_policy(HeaderPolicy())
        config.add_route("hello", "/hello")
        config.add_view(hello, route_name="hello")
        config.add_route("last", "/last")
        config.add_view(last, route_name="last")
        routes = [
            ("echo", echo, WebsocketMapper),
            ("generator", echo_generator, WebsocketMapper),
            ("class", EchoCoroutineHooks, None),
            ("class-plain", EchoPlainHooks, None),
            ("class-generator", EchoGeneratorHooks, None),
            ("synchronized", SynchronizedHooks, None),
            ("types", types_view, WebsocketMapper),
            ("bytes", types_view, BytesMapper),
            ("subprotocol", subprotocol_view, ChatMapper),
            ("protocol-class", ProtocolView, None),
            ("bye", say_bye, WebsocketMapper),
            ("raises", generator_raises, WebsocketMapper),
            ("close", close_with, WebsocketMapper),
            ("sleeper", sleeper, WebsocketMapper),
            ("cancelled", cancelled, WebsocketMapper),
        ]
        for name, view, mapper in routes:
            config.add_route(name, "/ws/" + name)
            config.add_view(view, route_name=name, mapper=mapper)
        config.add_tween("websocket_app.refusing_tween_factory")
        config.add_route("refused", "/ws/refused")
        config.add_view(AnnouncesOnOpen, route_name="refused")
        config.add_route("announced", "/ws/announced")
        config.add_view(AnnouncesOnOpen, route_name="announced")
        config.add_route("secured", "/ws/secured", factory=Secured)
        config.add_view(request_info, route_name="secured",
                        mapper=WebsocketMapper, permission="talk")
        config.add_route("predicate", "/ws/predicate",
                         request_param="room=lobby")
        config.add_view(request_info, route_name="predicate",
                        mapper=WebsocketMapper)
        return config.make_wsgi_app()
