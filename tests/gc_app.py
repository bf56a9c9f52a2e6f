"""An app that shows the cyclic collector as the worker left it."""
import asyncio
import gc
import json
import time

from pyramid.config import Configurator
from pyramid.response import Response

# made while the app loads: the worker's tuning freezes it
LOADED = [object()]


COLLECTIONS = [0, 0, 0]  # by generation, since the app was loaded


def _count(phase, info):
    if phase == "start":
        COLLECTIONS[info["generation"]] += 1


async def sleep(request):
    await asyncio.sleep(float(request.params.get("s", "0.5")))
    return Response(b"slept", content_type="text/plain")


async def hello(request):
    return Response(b"Hello, world!", content_type="text/plain")


async def block(request):
    # holds the loop: the requests sent meanwhile are all read in its next pass
    time.sleep(float(request.params.get("s", "0.3")))
    return Response(b"blocked", content_type="text/plain")


def gc_state(request):
    # gc.get_objects() leaves out the frozen (permanent) generation
    seen = any(o is LOADED for o in gc.get_objects())
    return Response(json.dumps({
        "threshold": gc.get_threshold(),
        "frozen": gc.get_freeze_count(),
        "loaded_seen": seen,
        "enabled": gc.isenabled(),
        "collections": COLLECTIONS,
    }).encode(), content_type="application/json")


def main(threshold=None):
    if threshold is not None:
        gc.set_threshold(*threshold)
    gc.callbacks.append(_count)
    with Configurator() as config:
        config.include("aiopyramid")
        config.add_route("hello", "/hello")
        config.add_view(hello, route_name="hello")
        config.add_route("sleep", "/sleep")
        config.add_view(sleep, route_name="sleep")
        config.add_route("block", "/block")
        config.add_view(block, route_name="block")
        config.add_route("gc", "/gc")
        config.add_view(gc_state, route_name="gc")
        return config.make_wsgi_app()
