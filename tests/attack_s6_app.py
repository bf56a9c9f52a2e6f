"""ATTACK (attack-s6): views for the GC pacer attack and the per-request
environ attack.

/hello       ready check
/clean       (coroutine) makes and drops a few hundred objects, no cycle
/cycle       leaves a cycle holding n=N bytes (4 KiB by default)
/live        "alive waiting threshold" (cycles alive, /wait requests
             waiting, gc's young threshold)
/wait        (coroutine) waits s=N seconds
/env         (plain) the connection's keys of the environ, as JSON; with
             ?mutate=1 it then deletes and overwrites them and adds keys
/aenv        (coroutine) the same after an await
"""
import asyncio
import gc
import json

from pyramid.config import Configurator
from pyramid.response import Response

# attack-s4's ready check, cycle node and counts
from attack_s4_app import WAITING, Node, _alive, hello


async def clean(request):
    junk = [{"i": i} for i in range(200)]
    del junk
    return Response(b"clean")


async def cycle(request):
    node = Node()
    node.parent = node
    # the size from the query string by hand: request.params would add
    # WebOb's own cycle (environ -> GET dict -> environ)
    qs = request.environ.get("QUERY_STRING", "")
    node.data = bytearray(int(qs[2:]) if qs.startswith("n=") else 4096)
    _alive.add(node)
    return Response(b"ok")


async def live(request):
    return Response(b"%d %d %d" % (len(_alive), WAITING[0],
                                   gc.get_threshold()[0]))


async def wait(request):
    WAITING[0] += 1
    try:
        qs = request.environ.get("QUERY_STRING", "")
        await asyncio.sleep(float(qs[2:]) if qs.startswith("s=") else 1.0)
    finally:
        WAITING[0] -= 1
    return Response(b"waited")


KEYS = ("REMOTE_ADDR", "REMOTE_PORT", "SERVER_NAME", "SERVER_PORT",
        "wsgi.url_scheme", "HTTP_X_ID", "PATH_INFO", "QUERY_STRING",
        "HTTP_HOST", "SCRIPT_NAME", "REQUEST_METHOD", "SERVER_PROTOCOL")


def _snapshot(environ):
    out = {k: environ.get(k) for k in KEYS}
    out["extra"] = sorted(k for k in environ if k.startswith("attack."))
    return out


def _mutate(environ):
    for k in ("REMOTE_ADDR", "REMOTE_PORT", "SERVER_NAME", "SERVER_PORT",
              "wsgi.url_scheme", "SCRIPT_NAME"):
        environ.pop(k, None)
    environ["attack.added"] = "x"
    environ["HTTP_X_INJECTED"] = "y"


def env(request):
    out = _snapshot(request.environ)
    out["injected"] = request.environ.get("HTTP_X_INJECTED")
    if request.params.get("mutate"):
        _mutate(request.environ)
        request.environ["REMOTE_ADDR"] = "6.6.6.6"
    if request.params.get("mutate") == "2":
        request.environ.clear()
    return Response(json.dumps(out).encode())


async def aenv(request):
    before = _snapshot(request.environ)
    await asyncio.sleep(float(request.params.get("s", "0.01")))
    out = _snapshot(request.environ)
    out["changed"] = before != out
    out["injected"] = request.environ.get("HTTP_X_INJECTED")
    if request.params.get("mutate"):
        _mutate(request.environ)
    return Response(json.dumps(out).encode())


def main(global_config=None, **settings):
    with Configurator(settings=settings) as config:
        config.include("aiopyramid")
        for name, view in [("hello", hello), ("clean", clean),
                           ("cycle", cycle), ("live", live), ("wait", wait),
                           ("env", env), ("aenv", aenv)]:
            config.add_route(name, "/" + name)
            config.add_view(view, route_name=name)
        return config.make_wsgi_app()
