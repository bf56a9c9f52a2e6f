"""ATTACK (attack-s5): views for the attacks on what the last session
changed (the response head's stack buffer, the GC pacer's count of the
requests a pass starts).

/hello       ready check
/big         a 128 KiB body (past what a connection holds back: it is
             written at once); ?cycle=1 also leaves a cycle holding 64 KiB
/gc          the young threshold, and how many cycles are alive
"""
import gc
import json
import weakref

from pyramid.config import Configurator
from pyramid.response import Response

BIG = b"x" * (128 * 1024)


class Node:
    pass


_alive = weakref.WeakSet()
MOST = [0]  # the most cycles alive at once


async def hello(request):
    return Response(b"Hello, world!")


async def big(request):
    if request.params.get("cycle"):
        node = Node()
        node.parent = node
        node.data = bytearray(64 * 1024)
        _alive.add(node)
        MOST[0] = max(MOST[0], len(_alive))
    return Response(BIG, content_type="application/octet-stream")


def _pacer():
    for cb in gc.callbacks:
        owner = getattr(cb, "__self__", None)
        if type(owner).__name__ == "_GcPacer":
            return owner
    return None


def gc_state(request):
    pacer = _pacer()
    server = pacer.server if pacer is not None else None
    return Response(json.dumps({
        "pacer": None if pacer is None else [pacer.young, pacer.ceiling,
                                             pacer.earned],
        "server": None if server is None else [
            server.active, server.started_in_pass, server.connections],
        "threshold": gc.get_threshold(),
        "alive": len(_alive),
        "most": MOST[0],
    }).encode(), content_type="application/json")


def main(global_config=None, **settings):
    with Configurator(settings=settings) as config:
        config.include("aiopyramid")
        for name, view in [("hello", hello), ("big", big), ("gc", gc_state)]:
            config.add_route(name, "/" + name)
            config.add_view(view, route_name=name)
        return config.make_wsgi_app()
