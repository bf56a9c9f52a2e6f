"""Pyramid hello-world for bench/http_bench.py.

aio()    config.include('aiopyramid'): /hello is a coroutine view,
         /hello-legacy a plain view (run in the executor)
plain()  stock Pyramid, /hello a plain view: what sync, gthread and gevent
         workers serve
"""
from pyramid.config import Configurator
from pyramid.response import Response

BODY = b"Hello, world!"


async def hello(request):
    return Response(BODY, content_type="text/plain")


def hello_legacy(request):
    return Response(BODY, content_type="text/plain")


def aio():
    with Configurator() as config:
        config.include("aiopyramid")
        config.add_route("hello", "/hello")
        config.add_route("hello_legacy", "/hello-legacy")
        config.add_view(hello, route_name="hello")
        config.add_view(hello_legacy, route_name="hello_legacy")
        return config.make_wsgi_app()


def plain():
    with Configurator() as config:
        config.add_route("hello", "/hello")
        config.add_view(hello_legacy, route_name="hello")
        return config.make_wsgi_app()
