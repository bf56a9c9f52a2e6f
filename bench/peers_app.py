"""The Pyramid apps bench/peers.py serves: a hello-world and a view that
waits 50 ms, each written the way its server runs it best.

aio()        config.include('aiopyramid'), for our worker:
               /hello, /wait          coroutine views (asyncio.sleep)
               /plain/hello, /plain/wait
                                      plain views through the executor (a
                                      thread; time.sleep); EXECUTOR_THREADS
                                      in the environment sizes it
               /inline/hello, /inline/wait
                                      plain views with blocking=False, in
                                      the request greenlet (the wait is a
                                      synchronized asyncio.sleep)
aio(KIND)    the same with only KIND's two views ("coroutine", "executor"
             or "inline"), at /hello and /wait: what bench/peers.py
             serves, so that every server's app matches its hello on its
             first route (Pyramid tries the routes in turn: /inline/hello
             behind four others cost the inline view 8,900 instructions a
             request, 107,773 against 98,842 per WSGI call of aio() and
             of aio("inline") under valgrind, that bjoern's app did not pay)
plain()      stock Pyramid, no aiopyramid: /hello, /wait (time.sleep), what
             every WSGI peer serves (gevent's worker patches time.sleep)
application  plain(), made at import (granian, uWSGI)
asgi_app     plain() under a2wsgi's WSGIMiddleware (uvicorn)
"""
import time

from pyramid.config import Configurator
from pyramid.response import Response

BODY = b"Hello, world!"
WAIT = 0.05


def hello(request):
    return Response(BODY, content_type="text/plain")


def wait(request):
    time.sleep(WAIT)
    return Response(BODY, content_type="text/plain")


def plain():
    with Configurator() as config:
        config.add_route("hello", "/hello")
        config.add_route("wait", "/wait")
        config.add_view(hello, route_name="hello")
        config.add_view(wait, route_name="wait")
        return config.make_wsgi_app()


KINDS = {"coroutine": "", "executor": "plain/", "inline": "inline/"}


def aio(kind=None):
    import asyncio
    import os

    from aiopyramid.helpers import synchronize

    async def co_hello(request):
        return Response(BODY, content_type="text/plain")

    async def co_wait(request):
        await asyncio.sleep(WAIT)
        return Response(BODY, content_type="text/plain")

    sleep = synchronize(asyncio.sleep)

    def inline_wait(request):
        sleep(WAIT)
        return Response(BODY, content_type="text/plain")

    settings = {}
    if os.environ.get("EXECUTOR_THREADS"):
        settings["aiopyramid.executor_threads"] = os.environ["EXECUTOR_THREADS"]
    views = [("coroutine", "hello", co_hello, {}), ("coroutine", "wait", co_wait, {}),
             ("executor", "hello", hello, {}), ("executor", "wait", wait, {}),
             ("inline", "hello", hello, {"blocking": False}),
             ("inline", "wait", inline_wait, {"blocking": False})]
    if kind is not None and kind not in KINDS:
        raise ValueError("aio(kind): one of %s, not %r" % (", ".join(KINDS), kind))
    with Configurator(settings=settings) as config:
        config.include("aiopyramid")
        for view_kind, name, view, options in views:
            if kind is None:
                name = KINDS[view_kind] + name
            elif view_kind != kind:
                continue
            config.add_route(name, "/" + name)
            config.add_view(view, route_name=name, **options)
        return config.make_wsgi_app()


def __getattr__(name):
    # made on first use: importing this module for aio() must not need
    # a2wsgi, nor build apps it does not serve
    if name == "application":
        app = globals()["application"] = plain()
        return app
    if name == "asgi_app":
        from a2wsgi import WSGIMiddleware

        app = globals()["asgi_app"] = WSGIMiddleware(plain(), workers=32)
        return app
    raise AttributeError(name)
