"""ATTACK (attack-s4): views for the GC pacer attack (requests waiting in
flight, then requests that leave cycles).

/hello       ready check
/cycle       leaves a cycle holding 64 KiB; /live: how many are alive, and
             how many /wait requests are waiting
/wait        (coroutine) waits s=N seconds
"""
import asyncio
import weakref

from pyramid.config import Configurator
from pyramid.response import Response


async def hello(request):
    return Response(b"Hello, world!")


class Node:
    pass


_alive = weakref.WeakSet()
WAITING = [0]


async def cycle(request):
    """leaves one reference cycle holding 64 KiB (what a parsed document
    whose nodes point at their parent, or an exception kept with its
    traceback, leaves)"""
    node = Node()
    node.parent = node
    node.data = bytearray(64 * 1024)
    _alive.add(node)
    return Response(b"ok")


async def live(request):
    return Response(b"%d %d" % (len(_alive), WAITING[0]))


async def wait(request):
    """waits s=N seconds (a long poll, an upstream that takes its time)"""
    WAITING[0] += 1
    try:
        await asyncio.sleep(float(request.params.get("s", "1")))
    finally:
        WAITING[0] -= 1
    return Response(b"waited")


def main(global_config=None, **settings):
    with Configurator(settings=settings) as config:
        config.include("aiopyramid")
        for name, view in [("hello", hello), ("cycle", cycle),
                           ("live", live), ("wait", wait)]:
            config.add_route(name, "/" + name)
            config.add_view(view, route_name=name)
        return config.make_wsgi_app()
