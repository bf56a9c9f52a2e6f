"""An app whose requests leave reference cycles through their request (an
error answered by Pyramid's exception view keeps the exception, its
traceback and so the request) while the cyclic collector is off: what the
cycles hold stays held unless the server lets it go.

/refuse         (plain view, executor) looks at the upload, then refuses
                it: HTTPForbidden
/refuse-inline  (coroutine view) reads request.body, then refuses it
/echo-stream    (plain view) streams the upload back from a generator
                that reads request.body_file as it is iterated
/fds            the worker's pid and open file descriptors
"""
import gc
import os

from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPForbidden
from pyramid.response import Response


def refuse(request):
    request.body_file.read(10)
    raise HTTPForbidden("not yours")


async def refuse_inline(request):
    request.body  # past 10 KiB: WebOb spools it to a temporary file
    raise HTTPForbidden("not yours")


def echo_stream(request):
    body = request.body_file

    def pieces():
        while True:
            piece = body.read(8192)
            if not piece:
                return
            yield piece
    return Response(app_iter=pieces(), content_type="application/octet-stream")


def fds(request):
    return Response(b"%d %d" % (os.getpid(), len(os.listdir("/proc/self/fd"))))


def main():
    gc.disable()
    with Configurator() as config:
        config.include("aiopyramid")
        for name, view in [("refuse", refuse), ("refuse-inline", refuse_inline),
                           ("echo-stream", echo_stream), ("fds", fds)]:
            config.add_route(name, "/" + name)
            config.add_view(view, route_name=name)
        return config.make_wsgi_app()
