"""The app of bench/inflight_memory.py: /sleep awaits asyncio.sleep(s) in a
coroutine view, /inline-sleep calls a synchronized asyncio.sleep(s) from a
plain view that says blocking=False (?s=, 1 s by default); both answer with
their ?tag.  /stats: the most requests in flight at once since it was last
asked."""
import asyncio

from pyramid.config import Configurator
from pyramid.response import Response

from aiopyramid.helpers import synchronize

_sleep = synchronize(asyncio.sleep)
count = {"now": 0, "max": 0}


def _enter(request):
    count["now"] += 1
    count["max"] = max(count["max"], count["now"])
    return float(request.params.get("s", "1"))


async def sleep(request):
    try:
        await asyncio.sleep(_enter(request))
    finally:
        count["now"] -= 1
    return Response(request.params["tag"].encode())


def inline_sleep(request):
    try:
        _sleep(_enter(request))
    finally:
        count["now"] -= 1
    return Response(request.params["tag"].encode())


def stats(request):
    """'now max': requests in flight now, and the most at once since the
    last call (then reset)."""
    out = b"%d %d" % (count["now"], count["max"])
    count["max"] = count["now"]
    return Response(out)


def hello(request):
    return Response(b"Hello, world!")


def main(global_config=None, **settings):
    with Configurator(settings=settings) as config:
        config.include("aiopyramid")
        config.add_route("sleep", "/sleep")
        config.add_route("inline_sleep", "/inline-sleep")
        config.add_route("hello", "/hello")
        config.add_route("stats", "/stats")
        config.add_view(stats, route_name="stats", blocking=False)
        config.add_view(sleep, route_name="sleep")
        config.add_view(inline_sleep, route_name="inline_sleep", blocking=False)
        config.add_view(hello, route_name="hello", blocking=False)
        return config.make_wsgi_app()
