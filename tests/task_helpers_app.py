"""The app test_bridge_idle_greenlets_and_executor.py runs under gunicorn: asyncio's Task-bound
helpers at a view's first line, and in a tween."""
import asyncio
import time

from pyramid.config import Configurator
from pyramid.response import Response

from aiopyramid.helpers import synchronize


async def hello(request):
    return Response(b"Hello, world!")


async def timeout_first(request):
    async with asyncio.timeout(5):
        await asyncio.sleep(0)
    return Response(b"timeout ok")


async def taskgroup_first(request):
    async with asyncio.TaskGroup() as group:
        task = group.create_task(asyncio.sleep(0, b"taskgroup ok"))
    return Response(task.result())


async def same_task(request):
    first = asyncio.current_task()
    await asyncio.sleep(0)
    return Response(b"same task" if first is asyncio.current_task() else b"not the same task")


@synchronize
async def with_deadline():
    async with asyncio.timeout(5):
        await asyncio.sleep(0)
    return b"tween timeout ok"


def deadline_tween(handler, registry):
    def tween(request):
        if request.path == "/tween-timeout":
            return Response(with_deadline())
        return handler(request)

    return tween


def blocking(x):
    time.sleep(0.01)
    return x


@synchronize
async def by_hand_in_executor(x):
    # not use_executor: the loop's own run_in_executor, as asyncio.to_thread
    return await asyncio.get_running_loop().run_in_executor(None, blocking, x)


def legacy_by_hand(request):
    return Response(str(by_hand_in_executor(int(request.params["i"]))).encode())


def main():
    with Configurator() as config:
        config.include("aiopyramid")
        config.add_tween("task_helpers_app.deadline_tween")
        for name, view in [("hello", hello), ("timeout-first", timeout_first),
                           ("taskgroup-first", taskgroup_first), ("same-task", same_task),
                           ("legacy-by-hand", legacy_by_hand)]:
            config.add_route(name, "/" + name)
            config.add_view(view, route_name=name)
        return config.make_wsgi_app()
