"""Websocket views for tests/test_websocket_attacks.py (hostile clients and
views that misbehave), served by gunicorn with aiopyramid's worker as
``websocket_attack_app:main()``."""
import asyncio
import json

from pyramid.config import Configurator
from pyramid.response import Response

from aiopyramid.websocket.config import WebsocketMapper

LAST = {}


def hello(request):
    return Response(b"hello", content_type="text/plain")


def last(request):
    return Response(json.dumps(LAST).encode(), content_type="application/json")


def rss(request):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return Response(line.split()[1].encode(),
                                content_type="text/plain")
    return Response(b"0", content_type="text/plain")


async def echo(ws):
    while (message := await ws.recv()) is not None:
        await ws.send(message)


def raises(kind):
    async def view(ws):
        LAST[kind] = "started"
        await ws.send("raising " + kind)
        raise {"systemexit": SystemExit(3),
               "keyboardinterrupt": KeyboardInterrupt(),
               "cancelled": asyncio.CancelledError(),
               "generatorexit": GeneratorExit()}[kind]
    return view


def main(global_config=None, **settings):
    with Configurator(settings=settings) as config:
        config.include("aiopyramid")
        config.add_route("hello", "/hello")
        config.add_view(hello, route_name="hello")
        config.add_route("last", "/last")
        config.add_view(last, route_name="last")
        config.add_route("rss", "/rss")
        config.add_view(rss, route_name="rss")
        config.add_route("echo", "/ws/echo")
        config.add_view(echo, route_name="echo", mapper=WebsocketMapper)
        for kind in ("systemexit", "keyboardinterrupt", "cancelled",
                     "generatorexit"):
            config.add_route(kind, "/ws/raise/" + kind)
            config.add_view(raises(kind), route_name=kind,
                            mapper=WebsocketMapper)
        return config.make_wsgi_app()
