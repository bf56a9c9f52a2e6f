"""ATTACK (attack-exec): an app whose requests each leave a reference
cycle behind, holding a buffer (a parsed document whose nodes point at
their parent, an exception kept with its traceback): reference counting
never frees it, only the cyclic collector does.

/hello      ready check
/cycle      leaves one cycle holding a 64 KiB buffer
/live       how many of those cycles are still alive, the worker's RSS
/private    the worker's private dirty memory, in MiB
/refuse     (plain) looks at the upload, then refuses it (HTTPForbidden:
            Pyramid keeps the exception and its traceback on the request,
            a cycle through the request, its environ and the upload spooled
            to a temporary file)
/fds        (inline) the worker's open file descriptors

main(load=N) makes N small objects while the app loads (with --preload,
in gunicorn's master, shared with the forked workers).
"""
import json
import os
import weakref

from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPForbidden
from pyramid.response import Response

BUFFER = 64 * 1024


class Node:
    pass


_alive = weakref.WeakSet()
LOADED = []


def hello(request):
    return Response(b"Hello, world!")


async def cycle(request):
    node = Node()
    node.parent = node
    node.data = bytearray(BUFFER)
    _alive.add(node)
    return Response(b"ok")


def live(request):
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return Response(json.dumps({"alive": len(_alive), "rss": rss}).encode())


def private(request):
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("Private_Dirty:"):
                return Response(b"%d" % (int(line.split()[1]) // 1024))
    return Response(b"-1")


def refuse(request):
    request.body_file.read(10)
    raise HTTPForbidden("not yours")


def fds(request):
    return Response(b"%d" % len(os.listdir("/proc/self/fd")))


def main(global_config=None, load=0, **settings):
    LOADED.extend({"i": i, "l": [i]} for i in range(load))
    with Configurator(settings=settings) as config:
        config.include("aiopyramid")
        for name, view in [("hello", hello), ("cycle", cycle), ("live", live),
                           ("private", private), ("refuse", refuse),
                           ("fds", fds)]:
            config.add_route(name, "/" + name)
            config.add_view(view, route_name=name,
                            blocking=name not in ("fds", "private", "live"))
        return config.make_wsgi_app()
