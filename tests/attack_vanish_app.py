"""ATTACK (attack-exec): a resource a tween holds for its request (a
database session, a connection from a pool) and closes in `finally`, used
by a plain view running in an executor thread.

/use        (plain, in a thread) uses the request's resource for about 1 s,
            in 10 ms steps, and records whether it ever found it closed
/status     (inline) what /use recorded: {"started", "finished",
            "closed_under_view"}
/hello      ready check
"""
import json
import threading
import time

from pyramid.config import Configurator
from pyramid.response import Response

state = {"started": 0, "finished": 0, "closed_under_view": 0}
lock = threading.Lock()


class Resource:
    closed = False


def resource_tween(handler, registry):
    def tween(request):
        request.resource = Resource()
        try:
            return handler(request)
        finally:
            request.resource.closed = True

    return tween


def use(request):
    with lock:
        state["started"] += 1
    closed = False
    for _ in range(100):
        if request.resource.closed:
            closed = True
        time.sleep(0.01)
    with lock:
        state["finished"] += 1
        state["closed_under_view"] += closed
    return Response(b"used")


def status(request):
    with lock:
        return Response(json.dumps(state).encode())


def hello(request):
    return Response(b"Hello, world!")


def main(global_config=None, **settings):
    with Configurator(settings=settings) as config:
        config.include("aiopyramid")
        config.add_tween("attack_vanish_app.resource_tween")
        for name, view, options in [
                ("use", use, {}), ("status", status, {"blocking": False}),
                ("hello", hello, {})]:
            config.add_route(name, "/" + name)
            config.add_view(view, route_name=name, **options)
        return config.make_wsgi_app()
