"""The Pyramid app the end-to-end server tests run under gunicorn."""
import asyncio
import json
import os

from pyramid.config import Configurator
from pyramid.response import Response


async def hello(request):
    return Response(b"Hello, world!", content_type="text/plain")


def legacy(request):
    return Response(b"legacy", content_type="text/plain")


SLEEPING = 0


async def sleep(request):
    global SLEEPING
    SLEEPING += 1
    try:
        await asyncio.sleep(float(request.params.get("s", "0.1")))
    finally:
        SLEEPING -= 1
    return Response(request.params.get("tag", "slept"), content_type="text/plain")


async def sleeping(request):
    """How many /sleep requests are in flight in this worker."""
    return Response(str(SLEEPING), content_type="text/plain")


async def echo(request):
    return Response(request.body, content_type="application/octet-stream")


def env(request):
    e = request.environ
    out = {k: v for k, v in e.items() if isinstance(v, str)}
    out["pid"] = os.getpid()
    return Response(json.dumps(out).encode(), content_type="application/json")


def main(global_config=None, **settings):
    with Configurator(settings=settings) as config:
        config.include("aiopyramid")
        for name, view in [("hello", hello), ("legacy", legacy), ("sleep", sleep),
                           ("echo", echo), ("env", env), ("sleeping", sleeping)]:
            config.add_route(name, "/" + name)
            config.add_view(view, route_name=name)
        return config.make_wsgi_app()
