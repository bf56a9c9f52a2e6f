"""The Pyramid app the uWSGI end-to-end tests (tests/test_uwsgi.py) run
under uWSGI's asyncio loop: the same kind of app code as under gunicorn."""
import asyncio
import json
import os
import threading

from pyramid.authentication import CallbackAuthenticationPolicy
from pyramid.authorization import (
    ACLAuthorizationPolicy,
    ACLHelper,
    Allow,
    Authenticated,
    Everyone,
)
from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPForbidden
from pyramid.response import Response

from aiopyramid.auth import authn_policy_factory
from aiopyramid.helpers import spawn_greenlet, synchronize, use_executor
from aiopyramid.security import CoroutineSecurityPolicyProxy
from aiopyramid.uwsgi import current_driver
from aiopyramid.websocket.exceptions import WebsocketClosed
from aiopyramid.websocket.view import WebsocketConnectionView


def _uwsgi_mapper():
    """The public path once aiopyramid.websocket.config exists (the ws-app
    branch re-exports the class from there), else the module itself."""
    try:
        from aiopyramid.websocket.config import UWSGIWebsocketMapper
    except ModuleNotFoundError as e:
        if e.name != "aiopyramid.websocket.config":
            raise
        from aiopyramid.websocket._uwsgi import UWSGIWebsocketMapper
    return UWSGIWebsocketMapper


def text(body):
    return Response(str(body), content_type="text/plain")


async def hello(request):
    return text("Hello, world!")


SLEEPING = [0, 0]  # now, most at once


async def sleep(request):
    SLEEPING[0] += 1
    SLEEPING[1] = max(SLEEPING)
    try:
        await asyncio.sleep(float(request.params.get("s", "0.2")))
    finally:
        SLEEPING[0] -= 1
    return text(request.params.get("tag", "slept"))


async def sleeping(request):
    peak = SLEEPING[1]
    if "reset" in request.params:
        SLEEPING[1] = 0
    return text(peak)


GROUPS = {}


async def together(request):
    """Waits until n requests of its group are in at once (proof of
    concurrency that load cannot break): 504 if they never are."""
    n = int(request.params["n"])
    group = GROUPS.setdefault(request.params["group"], [0, asyncio.Event()])
    group[0] += 1
    if group[0] >= n:
        group[1].set()
    try:
        # under uWSGI a view has no Task of its own: wait_for (asyncio.timeout
        # on 3.12+) runs in one made for it, as the README says
        await asyncio.create_task(asyncio.wait_for(group[1].wait(), 30))
    except asyncio.TimeoutError:
        return Response("only %d at once" % group[0], status=504,
                        content_type="text/plain")
    return text("together")


def legacy(request):
    t = threading.current_thread()
    return text("%s %s" % (t is threading.main_thread(), t.name))


# a synchronized coroutine in a tween -----------------------------------

@synchronize
async def slow_upper(value):
    await asyncio.sleep(0.01)
    return value.upper()


def tween_factory(handler, registry):
    def tween(request):
        if request.path.startswith("/tweened"):
            request.tween_said = slow_upper("from the tween")
        return handler(request)

    return tween


async def tweened(request):
    await asyncio.sleep(0.01)
    return text(request.tween_said)


# traversal with a synchronized __getitem__ ----------------------------

class Node:
    __name__ = None
    __parent__ = None

    def __init__(self, name="", depth=0):
        self.__name__ = name
        self.depth = depth

    @synchronize
    async def __getitem__(self, key):
        await asyncio.sleep(0.01)
        if not key.startswith("n"):
            raise KeyError(key)
        node = Node(key, self.depth + 1)
        node.__parent__ = self
        return node


def root_factory(request):
    return Node()


async def node_view(context, request):
    names = []
    node = context
    while node is not None and node.__name__:
        names.append(node.__name__)
        node = node.__parent__
    return text("/".join(reversed(names)))


# auth with a coroutine callback ---------------------------------------

class HeaderAuthenticationPolicy(CallbackAuthenticationPolicy):
    def __init__(self, callback):
        self.callback = callback

    def unauthenticated_userid(self, request):
        return request.headers.get("X-User")

    def remember(self, request, userid, **kw):
        return []

    def forget(self, request, **kw):
        return []


async def groupfinder(userid, request):
    await asyncio.sleep(0.01)
    return {"george": ["group:admin"], "fred": []}.get(userid)


class HeaderSecurityPolicy:
    """A Pyramid 2 security policy whose methods are coroutines."""

    async def identity(self, request):
        userid = request.headers.get("X-User")
        groups = await groupfinder(userid, request)
        return None if groups is None else {"userid": userid,
                                            "groups": groups}

    async def authenticated_userid(self, request):
        identity = await self.identity(request)
        return None if identity is None else identity["userid"]

    async def permits(self, request, context, permission):
        identity = await self.identity(request)
        principals = [Everyone]
        if identity is not None:
            principals += [Authenticated, identity["userid"]]
            principals += identity["groups"]
        return ACLHelper().permits(context, principals, permission)

    def remember(self, request, userid, **kw):
        return []

    def forget(self, request, **kw):
        return []


class SecretContext:
    __acl__ = [(Allow, "group:admin", "view"), (Allow, Authenticated, "look")]

    def __init__(self, request):
        pass


async def secret(request):
    userid = await request.authenticated_userid
    return text("secret for %s" % userid)


def plain_secret(request):
    return text("plain secret for %s" % request.authenticated_userid)


# the current request, as uWSGI sees it, across suspensions -------------

async def whoami(request):
    import uwsgi

    seen = []
    for i in range(int(request.params.get("n", "5"))):
        seen.append([uwsgi.request_id(), uwsgi.connection_fd(),
                     request.environ["QUERY_STRING"],
                     current_driver() is not None])
        await asyncio.sleep(float(request.params.get("s", "0.01")))
    return Response(json.dumps({"tag": request.params["tag"], "seen": seen}).encode(),
                    content_type="application/json")


# helpers ---------------------------------------------------------------

@use_executor
def blocking_name():
    return threading.current_thread().name


def in_greenlet(x):
    return slow_upper(x)


async def helpers_view(request):
    name = await blocking_name()
    spawned = await spawn_greenlet(in_greenlet, "spawned")
    return text("%s %s" % (name != threading.main_thread().name, spawned))


# a client that goes away cancels its view ------------------------------

EVENTS = []


async def hang(request):
    EVENTS.append("started " + request.params["tag"])
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        EVENTS.append("cancelled " + request.params["tag"])
        raise
    EVENTS.append("finished " + request.params["tag"])
    return text("woke")


async def events(request):
    return Response(json.dumps(EVENTS).encode(), content_type="application/json")


# websockets ------------------------------------------------------------

async def ws_echo(ws):
    while True:
        message = await ws.recv()
        if message is None:
            break
        await ws.send(message)


def ws_echo_generator(ws):
    while True:
        message = yield from ws.recv()
        if message is None:
            break
        yield from ws.send(message)


class EchoView(WebsocketConnectionView):
    async def on_message(self, message):
        await self.send(message)


async def ws_types(ws):
    while True:
        message = await ws.recv()
        if message is None:
            break
        await ws.send(type(message).__name__)


WS_LOG = []


async def ws_until_closed(ws):
    """Sends after the peer has closed: WebsocketClosed ends the view."""
    message = await ws.recv()
    await ws.send("got " + message)
    while True:
        message = await ws.recv()
        if message is None:
            WS_LOG.append("recv gave None")
            break
    await asyncio.sleep(0.05)
    try:
        await ws.send("too late")
    except WebsocketClosed:
        WS_LOG.append("send raised WebsocketClosed")
        raise


async def ws_broken(ws):
    await ws.recv()
    try:
        raise KeyError("the real cause")
    except KeyError as e:
        raise WebsocketClosed("view gave up") from e


async def ws_fails(ws):
    await ws.recv()
    raise ValueError("a bug in the view")


async def ws_timeout(ws):
    """recv() given up by wait_for (its future cancelled), then again."""
    try:
        await asyncio.wait_for(ws.recv(), 0.1)
    except asyncio.TimeoutError:
        await ws.send("timed out")
    message = await ws.recv()
    await ws.send("then " + message)


async def ws_log(request):
    return Response(json.dumps(WS_LOG).encode(), content_type="application/json")


def main(global_config=None, **settings):
    mapper = _uwsgi_mapper()
    bytes_mapper = type("BytesMapper", (mapper,), {"use_str": False})
    with Configurator(settings=settings) as config:
        config.include("aiopyramid")
        config.add_tween("uwsgi_app.tween_factory")
        for name, view in [("hello", hello), ("sleep", sleep), ("sleeping", sleeping),
                           ("together", together),
                           ("legacy", legacy), ("tweened", tweened),
                           ("whoami", whoami), ("helpers", helpers_view),
                           ("hang", hang), ("events", events),
                           ("ws_log", ws_log)]:
            config.add_route(name, "/" + name)
            config.add_view(view, route_name=name)
        config.add_route("tree", "/tree/*traverse", factory=root_factory)
        config.add_view(node_view, route_name="tree", context=Node)

        if os.environ.get("SECURITY_POLICY"):
            config.set_security_policy(
                CoroutineSecurityPolicyProxy(HeaderSecurityPolicy()))
        else:
            config.set_authentication_policy(
                authn_policy_factory(HeaderAuthenticationPolicy, groupfinder))
            config.set_authorization_policy(ACLAuthorizationPolicy())
        config.add_route("secret", "/secret", factory=SecretContext)
        config.add_view(secret, route_name="secret", permission="view")
        config.add_route("plain_secret", "/plain_secret", factory=SecretContext)
        config.add_view(plain_secret, route_name="plain_secret",
                        permission="look")
        config.add_forbidden_view(
            lambda request: HTTPForbidden(), renderer=None)

        for name, view, m in [("ws", ws_echo, mapper),
                              ("ws_gen", ws_echo_generator, mapper),
                              ("ws_class", EchoView, mapper),
                              ("ws_types", ws_types, mapper),
                              ("ws_types_bytes", ws_types, bytes_mapper),
                              ("ws_until_closed", ws_until_closed, mapper),
                              ("ws_broken", ws_broken, mapper),
                              ("ws_fails", ws_fails, mapper),
                              ("ws_timeout", ws_timeout, mapper)]:
            config.add_route(name, "/" + name)
            config.add_view(view, route_name=name, mapper=m)
        app = config.make_wsgi_app()
    if os.environ.get("IGNORE_WEBSOCKET_CLOSED"):
        from aiopyramid.websocket.helpers import ignore_websocket_closed

        app = ignore_websocket_closed(app)
    return app


application = main()
