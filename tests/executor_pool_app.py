"""Legacy views in a small pool (aiopyramid.executor_threads = 2), for many
more requests than threads.

/hello      ready check
/echo/{n}   answers n, from its thread
/boom/{n}   raises in its thread (a 500)
/body       the body its thread reads, and whether it was spooled before
"""
from pyramid.config import Configurator
from pyramid.response import Response


def hello(request):
    return Response(b"Hello, world!")


def echo(request):
    return Response(("echo %s" % request.matchdict["n"]).encode())


def boom(request):
    raise ValueError("boom %s" % request.matchdict["n"])


def body(request):
    spooled = bool(request.environ.get("webob.is_body_seekable"))
    data = request.body
    return Response(("%d %r %s" % (len(data), data, spooled)).encode())


def main(global_config=None, **settings):
    settings["aiopyramid.executor_threads"] = "2"
    with Configurator(settings=settings) as config:
        config.include("aiopyramid")
        for name, pattern, view in [("hello", "/hello", hello),
                                    ("echo", "/echo/{n}", echo),
                                    ("boom", "/boom/{n}", boom),
                                    ("body", "/body", body)]:
            config.add_route(name, pattern)
            config.add_view(view, route_name=name)
        return config.make_wsgi_app()
