"""An app whose legacy views (run in executor threads) call synchronized
coroutines that wait on executor jobs: the shape that used to deadlock a
worker once more requests came than the pool had threads."""
import asyncio
import os
import threading
import time

from pyramid.config import Configurator
from pyramid.response import Response

from aiopyramid.config import IViewExecutor
from aiopyramid.helpers import synchronize, use_executor


def _pause():
    time.sleep(0.02)
    return threading.current_thread().name


@use_executor
def blocking():
    return _pause()


@synchronize
async def via_use_executor():
    return await blocking()


@synchronize
async def via_default_executor():
    return await asyncio.get_running_loop().run_in_executor(None, _pause)


@synchronize
async def nested():
    # a use_executor job that itself calls a synchronized coroutine
    return await use_executor(via_use_executor)()


@synchronize
async def via_view_pool(request):
    # the views' own pool (aiopyramid.executor_threads), or the default one
    pool = request.registry.queryUtility(IViewExecutor)
    return await asyncio.get_running_loop().run_in_executor(pool, _pause)


def hello(request):
    return Response(b"Hello, world!", content_type="text/plain")


def legacy_use_executor(request):
    return Response(via_use_executor(), content_type="text/plain")


def legacy_default(request):
    return Response(via_default_executor(), content_type="text/plain")


def legacy_nested(request):
    return Response(nested(), content_type="text/plain")


def legacy_view_pool(request):
    return Response(via_view_pool(request), content_type="text/plain")


def main(global_config=None, **settings):
    threads = os.environ.get("EXECUTOR_THREADS")
    if threads:
        settings["aiopyramid.executor_threads"] = threads
    with Configurator(settings=settings) as config:
        config.include("aiopyramid")
        for name, view in [("hello", hello),
                           ("use_executor", legacy_use_executor),
                           ("default", legacy_default),
                           ("nested", legacy_nested),
                           ("view_pool", legacy_view_pool)]:
            config.add_route(name, "/" + name)
            config.add_view(view, route_name=name)
        return config.make_wsgi_app()
