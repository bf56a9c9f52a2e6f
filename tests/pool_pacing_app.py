"""The app of tests/test_pool_pacing.py.

/hello      ready check
/wait       a coroutine view awaiting asyncio.sleep(?s=, 0.5 s by default)
/pool       _core.pool_stats() of the loop's thread, as JSON
"""
import asyncio
import json

from pyramid.config import Configurator
from pyramid.response import Response

from aiopyramid import _core


def hello(request):
    return Response(b"Hello, world!")


async def wait(request):
    await asyncio.sleep(float(request.params.get("s", "0.5")))
    return Response(b"waited")


async def pool(request):
    return Response(json.dumps(_core.pool_stats()).encode(),
                    content_type="application/json")


def main(limit=None):
    if limit is not None:
        _core.set_pool_limit(limit)  # the app's own: the worker keeps it
    with Configurator() as config:
        config.include("aiopyramid")
        for name, view in [("hello", hello), ("wait", wait), ("pool", pool)]:
            config.add_route(name, "/" + name)
            config.add_view(view, route_name=name)
        return config.make_wsgi_app()
