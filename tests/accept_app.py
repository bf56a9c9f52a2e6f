"""An app that counts the asyncio Tasks made on the worker's loop (through
its task factory) since it was loaded: /tasks."""
import asyncio

from pyramid.config import Configurator
from pyramid.response import Response

MADE = [0]


def _counting_factory(loop, coro, **kwargs):
    MADE[0] += 1
    return asyncio.Task(coro, loop=loop, **kwargs)


async def hello(request):
    return Response(b"Hello, world!", content_type="text/plain")


def tasks(request):
    return Response(b"%d" % MADE[0], content_type="text/plain")


def main():
    # the worker sets its loop before it loads the app
    asyncio.get_event_loop_policy().get_event_loop().set_task_factory(_counting_factory)
    with Configurator() as config:
        config.include("aiopyramid")
        config.add_route("hello", "/hello")
        config.add_view(hello, route_name="hello")
        config.add_route("tasks", "/tasks")
        config.add_view(tasks, route_name="tasks")
        return config.make_wsgi_app()
