"""ATTACK (attack-s4): views for the attacks on what the last session
changed (spooled bodies closed by the server, the executor, stop paths).

/hello       ready check
/slow-read   (plain view) waits until /go, then reads request.body and
             records what it got (its length, or the error)
/state       (coroutine) whether /slow-read's request Task is done, and
             what the plain views recorded
/go          (coroutine) lets /slow-read go on
/forever     (plain) never returns; /spawn-thread (plain) starts a thread
/plain-sleep (plain) sleeps ms=N
/cycle       leaves a cycle holding 64 KiB; /live: how many are alive
/wait        (coroutine) waits s=N seconds
"""
import asyncio
import json
import threading
import weakref

from pyramid.config import Configurator
from pyramid.response import Response

GO = threading.Event()
TASKS = []
RESULTS = []


async def hello(request):
    return Response(b"Hello, world!")


def slow_read(request):
    GO.wait(30)
    try:
        RESULTS.append(len(request.body))
    except Exception as e:  # what the view saw
        RESULTS.append(repr(e))
    return Response(b"read")


async def state(request):
    return Response(json.dumps({
        "task_done": bool(TASKS) and TASKS[-1].done(),
        "results": RESULTS,
    }).encode())


async def go(request):
    GO.set()
    return Response(b"go")


def task_tween_factory(handler, registry):
    def tween(request):
        if request.path == "/slow-read":
            TASKS.append(asyncio.current_task())
        return handler(request)
    return tween


def main(global_config=None, **settings):
    with Configurator(settings=settings) as config:
        config.include("aiopyramid")
        config.add_tween("attack_s4_app.task_tween_factory")
        for name, view in [("hello", hello), ("slow-read", slow_read),
                           ("state", state), ("go", go)]:
            config.add_route(name, "/" + name)
            config.add_view(view, route_name=name)
        _more_routes(config)
        return config.make_wsgi_app()


def forever(request):
    """(plain view) never returns on its own (a lost upstream)."""
    import time
    while True:
        time.sleep(1)


def spawn_thread(request):
    """(plain view) starts a non-daemon thread of its own that outlives the
    request (waits for GO), and answers at once."""
    t = threading.Thread(target=GO.wait, args=(600,), name="app-thread")
    t.start()
    return Response(b"started")


def plain_sleep(request):
    """(plain view) sleeps ms=N milliseconds in its thread."""
    import time
    time.sleep(int(request.params.get("ms", "1")) / 1000)
    return Response(b"slept")


class Node:
    pass


_alive = weakref.WeakSet()


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
    """how many of /cycle's cycles are alive, and /wait's requests waiting"""
    return Response(b"%d %d" % (len(_alive), WAITING[0]))


WAITING = [0]


async def wait(request):
    """waits s=N seconds (a long poll, an upstream that takes its time)"""
    WAITING[0] += 1
    try:
        await asyncio.sleep(float(request.params.get("s", "1")))
    finally:
        WAITING[0] -= 1
    return Response(b"waited")


def _more_routes(config):
    for name, view in [("forever", forever), ("spawn-thread", spawn_thread),
                       ("plain-sleep", plain_sleep), ("cycle", cycle),
                       ("live", live), ("wait", wait)]:
        config.add_route(name, "/" + name)
        config.add_view(view, route_name=name)
