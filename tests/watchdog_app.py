"""A time.sleep view and an asyncio.sleep view with the watchdog on
(tests/test_watchdog.py serves it with gunicorn)."""
import asyncio
import time

from pyramid.config import Configurator
from pyramid.response import Response


async def hello(request):
    return Response("hello")


async def blocking_view(request):
    time.sleep(0.2)
    return Response("blocked")


async def waiting_view(request):
    await asyncio.sleep(0.2)
    return Response("waited")


def main(global_config=None, **settings):
    settings.setdefault("aiopyramid.slow_callback_ms", "50")
    with Configurator(settings=settings) as config:
        config.include("aiopyramid")
        for name, view in (("hello", hello), ("blocking", blocking_view),
                           ("waiting", waiting_view)):
            config.add_route(name, "/" + name)
            config.add_view(view, route_name=name)
        return config.make_wsgi_app()
