"""Legacy views in a pool of one thread (aiopyramid.executor_threads = 1),
for the hand-off to the executor and back.

/block      waits in its thread until /release (at most 20 s)
/release    (inline) lets /block go on
/count      counts its runs in `ran["count"]`
/count2     counts its runs in `ran["count2"]`
/status     (inline) what the executor ran, which requests were cancelled,
            the pool's queue length
/hello      ready check
"""
import asyncio
import json
import threading

from pyramid.config import Configurator
from pyramid.response import Response

from aiopyramid.config import IViewExecutor

ran = {"count": 0, "count2": 0, "block": 0}
cancelled = []
release_event = threading.Event()


def block(request):
    ran["block"] += 1
    release_event.wait(20)
    return Response(b"blocked")


def release(request):
    release_event.set()
    return Response(b"released")


def count(request):
    ran["count"] += 1
    return Response(b"counted")


def count2(request):
    ran["count2"] += 1
    return Response(b"counted2")


def status(request):
    pool = request.registry.queryUtility(IViewExecutor)
    return Response(json.dumps({
        "ran": ran, "cancelled": cancelled,
        "queued": pool._work_queue.qsize()}).encode())


def hello(request):
    return Response(b"Hello, world!")


def cancel_recorder(handler, registry):
    def tween(request):
        try:
            return handler(request)
        except asyncio.CancelledError:
            cancelled.append(request.path)
            raise

    return tween


def main(global_config=None, **settings):
    settings["aiopyramid.executor_threads"] = "1"
    with Configurator(settings=settings) as config:
        config.include("aiopyramid")
        config.add_tween("executor_handoff_app.cancel_recorder")
        for name, view, options in [
                ("block", block, {}), ("release", release, {"blocking": False}),
                ("count", count, {}), ("count2", count2, {}),
                ("status", status, {"blocking": False}), ("hello", hello, {})]:
            config.add_route(name, "/" + name)
            config.add_view(view, route_name=name, **options)
        return config.make_wsgi_app()
