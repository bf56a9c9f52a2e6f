"""A small Pyramid app served by aiopyramid (``make run``).

/               index (a legacy view, run in a thread)
/sleep?s=0.5    a coroutine view that really waits on the loop
/api/items      a JSON API: GET lists, POST (a JSON body) adds
/api/items/{n}  GET one item, as JSON; the lookup awaits
/hello          hello world as a coroutine view (what bench/http_bench.py serves)
/hello-legacy   hello world as a plain view (run in the executor)
/chat           a chat room: open it in two tabs (a websocket view, chat.py)
"""
import asyncio
import itertools
import time

from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPBadRequest, HTTPNotFound
from pyramid.response import Response

_ids = itertools.count(1)
ITEMS = {}


async def hello(request):
    return Response(b"Hello, world!", content_type="text/plain")


def hello_legacy(request):
    return Response(b"Hello, world!", content_type="text/plain")


def index(request):
    # a legacy (blocking) view: aiopyramid runs it in the loop's executor
    time.sleep(0.001)
    return Response(
        "<h1>aiopyramid demo</h1><ul>"
        '<li><a href="/sleep?s=0.5">/sleep?s=0.5</a> (a coroutine view)</li>'
        '<li><a href="/api/items">/api/items</a> (JSON)</li>'
        '<li><a href="/hello">/hello</a></li>'
        '<li><a href="/chat">/chat</a> (a websocket chat: open two tabs)'
        '</li></ul>',
        content_type="text/html",
    )


async def sleep(request):
    try:
        seconds = min(float(request.params.get("s", "0.1")), 30.0)
    except ValueError:
        raise HTTPBadRequest("s must be a number of seconds")
    start = time.monotonic()
    await asyncio.sleep(seconds)
    return {"slept": round(time.monotonic() - start, 3)}


async def list_items(request):
    return {"items": [dict(id=k, **v) for k, v in sorted(ITEMS.items())]}


async def add_item(request):
    try:
        body = request.json_body
        name = str(body["name"])
    except (ValueError, KeyError, TypeError):
        raise HTTPBadRequest('send a JSON object like {"name": "..."}')
    await asyncio.sleep(0)  # a stand-in for a database write
    item_id = next(_ids)
    ITEMS[item_id] = {"name": name}
    request.response.status = 201
    return {"id": item_id, "name": name}


async def get_item(request):
    await asyncio.sleep(0)  # a stand-in for a database read
    try:
        item_id = int(request.matchdict["id"])
        return dict(id=item_id, **ITEMS[item_id])
    except (ValueError, KeyError):
        raise HTTPNotFound()


def main(global_config=None, **settings):
    with Configurator(settings=settings) as config:
        config.include("aiopyramid")
        config.add_route("index", "/")
        config.add_route("hello", "/hello")
        config.add_route("hello_legacy", "/hello-legacy")
        config.add_route("sleep", "/sleep")
        config.add_route("items", "/api/items")
        config.add_route("item", "/api/items/{id}")
        config.add_view(index, route_name="index")
        config.add_view(hello, route_name="hello")
        config.add_view(hello_legacy, route_name="hello_legacy")
        config.add_view(sleep, route_name="sleep", renderer="json")
        config.add_view(list_items, route_name="items", request_method="GET",
                        renderer="json")
        config.add_view(add_item, route_name="items", request_method="POST",
                        renderer="json")
        config.add_view(get_item, route_name="item", renderer="json")
        config.include(".chat" if __package__ else "chat")
        return config.make_wsgi_app()


# gunicorn examples.app:application
def application(environ, start_response):
    global _app
    try:
        app = _app
    except NameError:
        app = _app = main({})
    return app(environ, start_response)
