"""ATTACK (attack-edge): Pyramid's threadlocals seen from every kind of
job a request can start in a thread, and views that block.

/hello        ready check
/plain?tag=T  (plain, executor) the request each way a thread can see it:
              the view itself, a thread it starts, a job of the loop's
              default executor it submits from its thread
/coro?tag=T   (coroutine) the same from asyncio.to_thread and
              run_in_executor(None, ...)
/block?s=S    (plain) sleeps S seconds in its thread
/sync_wait?s=S  (plain) waits S seconds for a synchronized coroutine
"""
import asyncio
import json
import threading
import time

from pyramid.config import Configurator
from pyramid.response import Response
from pyramid.threadlocal import get_current_registry, get_current_request

from aiopyramid.helpers import synchronize


def _seen():
    r = get_current_request()
    return None if r is None else r.params.get("tag")


def _registry_is_app():
    return get_current_registry() is APP[0].registry


APP = [None]


def plain(request):
    out = {"view": _seen(), "registry": _registry_is_app()}
    box = {}
    t = threading.Thread(target=lambda: box.update(thread=_seen()))
    t.start()
    t.join(10)
    out.update(box)
    return Response(json.dumps(out).encode(), content_type="application/json")


async def coro(request):
    loop = asyncio.get_running_loop()
    out = {
        "view": _seen(),
        "to_thread": await asyncio.to_thread(_seen),
        "default_executor": await loop.run_in_executor(None, _seen),
    }
    return Response(json.dumps(out).encode(), content_type="application/json")


def bare(request):
    # a job with no request: what a pool thread's own context holds
    return Response(json.dumps({"seen": _seen()}).encode(),
                    content_type="application/json")


async def bare_job(request):
    loop = asyncio.get_running_loop()
    # submitted from a context with no request in it
    import contextvars
    ctx = contextvars.Context()
    fut = ctx.run(loop.run_in_executor, None, _seen)
    return Response(json.dumps({"seen": await fut}).encode(),
                    content_type="application/json")


@synchronize
async def _wait(seconds):
    await asyncio.sleep(seconds)
    return "waited"


def sync_wait(request):
    # a plain view (in a thread) waiting for a coroutine on the loop
    print("sync_wait started", flush=True)
    return Response(_wait(float(request.params.get("s", "1"))),
                    content_type="text/plain")


def block(request):
    time.sleep(float(request.params.get("s", "1")))
    return Response(b"blocked", content_type="text/plain")


async def hello(request):
    return Response(b"Hello, world!", content_type="text/plain")


def main(global_config=None, **settings):
    with Configurator(settings=settings) as config:
        config.include("aiopyramid")
        for name, view in [("hello", hello), ("plain", plain), ("coro", coro),
                           ("bare_job", bare_job), ("block", block),
                           ("sync_wait", sync_wait)]:
            config.add_route(name, "/" + name)
            config.add_view(view, route_name=name)
        app = config.make_wsgi_app()
    APP[0] = app
    return app
