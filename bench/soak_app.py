"""The app `make soak` (bench/soak.py) serves: coroutine and plain
(executor) views, small and 1 MiB bodies in and out, views that wait, and
/_debug: the live counts a leak would raise."""
import asyncio
import gc
import json
import time

import greenlet
from pyramid.config import Configurator
from pyramid.response import Response

from aiopyramid import _core

MIB = 1024 * 1024
BIG = b"b" * MIB
PIECE = 65536


def _text(body):
    return Response(body, content_type="text/plain")


async def co(request):
    return _text(b"co")


def ex(request):
    return _text(b"ex")


async def co_wait(request):
    await asyncio.sleep(float(request.params.get("s", "0.001")))
    return _text(b"waited")


def ex_wait(request):
    time.sleep(float(request.params.get("s", "0.001")))
    return _text(b"waited")


async def co_big(request):
    return Response(BIG, content_type="application/octet-stream")


def ex_big(request):
    """1 MiB streamed in 64 KiB pieces from the thread's app_iter."""
    response = Response(content_type="application/octet-stream")
    response.app_iter = [BIG[i:i + PIECE] for i in range(0, MIB, PIECE)]
    response.content_length = MIB
    return response


def _count(read):
    total = 0
    while True:
        data = read(PIECE)
        if not data:
            return total
        total += len(data)


async def co_up(request):
    return _text(str(_count(request.environ["wsgi.input"].read)).encode())


def ex_up(request):
    return _text(str(_count(request.body_file.read)).encode())


_NAMES = ("HttpRequest", "HttpProtocol", "HttpInput")


def _malloc_trim():
    try:
        import ctypes
        return ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        return None


async def debug(request):
    """Live objects after a full collection (this request's own included:
    1 HttpRequest, 1 HttpProtocol, 1 HttpInput, 1 Task).  ?trim=1 first
    gives the C allocator's free memory back to the system (glibc's
    malloc_trim), so that RSS shows what is held, not what was once needed."""
    gc.collect()
    if request.params.get("trim"):
        _malloc_trim()
    counts = dict.fromkeys(_NAMES, 0)
    live = dead = 0
    for o in gc.get_objects():
        name = type(o).__name__
        if name in counts:
            counts[name] += 1
        elif isinstance(o, greenlet.greenlet) and o.parent is not None:
            # not a thread's main greenlet (each executor thread has one)
            if o.dead:
                dead += 1
            else:
                live += 1
    counts["greenlets"] = live
    counts["dead_greenlets"] = dead
    counts["tasks"] = len(asyncio.all_tasks())
    counts["pool"] = _core.pool_stats()
    counts["gc_garbage"] = len(gc.garbage)
    return Response(json.dumps(counts).encode(), content_type="application/json")


def main(global_config=None, **settings):
    with Configurator(settings=settings) as config:
        config.include("aiopyramid")
        for name, view in [("co", co), ("ex", ex), ("co_wait", co_wait), ("ex_wait", ex_wait),
                           ("co_big", co_big), ("ex_big", ex_big), ("co_up", co_up),
                           ("ex_up", ex_up), ("_debug", debug)]:
            config.add_route(name, "/" + name)
            config.add_view(view, route_name=name)
        return config.make_wsgi_app()
