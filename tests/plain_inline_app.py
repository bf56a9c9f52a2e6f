"""Plain views run inline in the request greenlet (``blocking=False``, or
``aiopyramid.plain_views = inline``), served by gunicorn with aiopyramid's
worker.

/wait?tag=T     plain inline view: a synchronized coroutine waits until
                /release?tag=T is served, then it reports where it ran, the
                request Pyramid's threadlocals give, and the contextvars
/release?tag=T  releases it (404 while nothing waits under that tag)
/default        a plain view with no option: where it ran
/blocking       a plain view with blocking=True: where it ran
/hello          ready check

PLAIN_VIEWS in the environment becomes the aiopyramid.plain_views setting.
"""
import asyncio
import contextvars
import json
import os
import threading

import greenlet
from pyramid.config import Configurator
from pyramid.response import Response
from pyramid.threadlocal import get_current_request

from aiopyramid.helpers import synchronize

tag_var = contextvars.ContextVar("tag_var", default=None)
view_var = contextvars.ContextVar("view_var", default=None)
_events = {}


@synchronize
async def wait_released(tag):
    event = _events[tag] = asyncio.Event()
    try:
        await asyncio.wait_for(event.wait(), 20)
    finally:
        _events.pop(tag, None)
    return asyncio.current_task() is not None


def where(request):
    return {
        "thread": threading.current_thread().name,
        "main_thread": threading.current_thread() is threading.main_thread(),
        "greenlet": type(greenlet.getcurrent()).__name__,
        "tag": request.params.get("tag"),
    }


def wait_view(request):
    tag = request.params["tag"]
    view_var.set("set by view " + tag)
    in_task = wait_released(tag)  # suspends this request only
    out = where(request)
    out.update(
        in_task=in_task,
        threadlocal_tag=get_current_request().params.get("tag"),
        same_request=get_current_request() is request,
        contextvar_tag=tag_var.get(),
        view_var=view_var.get(),
    )
    return Response(json.dumps(out).encode(), content_type="application/json")


def release_view(request):
    event = _events.get(request.params["tag"])
    if event is None:
        return Response(b"nobody waits", status=404)
    event.set()
    return Response(b"released")


def where_view(request):
    return Response(json.dumps(where(request)).encode(), content_type="application/json")


def hello(request):
    return Response(b"Hello, world!")


def tag_tween_factory(handler, registry):
    def tween(request):
        tag_var.set(request.params.get("tag"))
        response = handler(request)
        # the view's contextvars, seen after it: the same context when it
        # ran inline (a copy in an executor thread)
        response.headers["X-View-Var"] = view_var.get() or "-"
        return response

    return tween


def main(global_config=None, **settings):
    if os.environ.get("PLAIN_VIEWS"):
        settings["aiopyramid.plain_views"] = os.environ["PLAIN_VIEWS"]
    with Configurator(settings=settings) as config:
        config.include("aiopyramid")
        config.add_tween("plain_inline_app.tag_tween_factory")
        for name in ("wait", "release", "default", "blocking", "hello"):
            config.add_route(name, "/" + name)
        config.add_view(wait_view, route_name="wait", blocking=False)
        config.add_view(release_view, route_name="release", blocking=False)
        config.add_view(where_view, route_name="default")
        config.add_view(where_view, route_name="blocking", blocking=True)
        config.add_view(hello, route_name="hello")
        return config.make_wsgi_app()
