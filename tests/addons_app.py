"""A Pyramid app with the usual add-ons and coroutine views: Jinja2 and
Chameleon renderers, the debug toolbar, signed-cookie sessions with CSRF
checks, response and finished callbacks.  Run in-process and under
gunicorn by tests/test_addons.py."""
import asyncio

from pyramid.config import Configurator
from pyramid.response import Response
from pyramid.session import SignedCookieSessionFactory

CALLBACKS = []  # (tag, what) in the order they ran


async def hello(request):
    return Response("hello")


async def jinja(request):
    await asyncio.sleep(0.001)
    n = int(request.params.get("n", "3"))
    return {"name": request.matchdict["name"], "items": list(range(n))}


async def chameleon(request):
    await asyncio.sleep(0.001)
    n = int(request.params.get("n", "3"))
    return {"name": request.matchdict["name"], "items": list(range(n))}


async def page(request):
    await asyncio.sleep(0.01)
    return {"title": "a coroutine page"}


async def session_set(request):
    await asyncio.sleep(0)
    request.session["value"] = request.params["value"]
    return {"csrf": request.session.get_csrf_token()}


async def session_get(request):
    await asyncio.sleep(0)
    return {"value": request.session.get("value")}


async def post(request):  # CSRF-checked: a POST needs the session's token
    await asyncio.sleep(0)
    return {"posted": request.POST.get("thing"), "value": request.session.get("value")}


async def callbacks(request):
    tag = request.matchdict["tag"]

    def on_response(name):
        def callback(request, response):
            CALLBACKS.append((tag, name))
            response.headers["X-" + name] = tag
        return callback

    def on_finished(name):
        return lambda request: CALLBACKS.append((tag, name))

    request.add_response_callback(on_response("response-1"))
    request.add_finished_callback(on_finished("finished-1"))
    await asyncio.sleep(0.001)  # others run meanwhile
    request.add_response_callback(on_response("response-2"))
    request.add_finished_callback(on_finished("finished-2"))
    CALLBACKS.append((tag, "view"))
    return Response(tag)


def main(global_config=None, toolbar="yes", **settings):
    settings.setdefault("debugtoolbar.hosts", "127.0.0.1")
    with Configurator(settings=settings) as config:
        config.include("aiopyramid")
        config.include("pyramid_jinja2")
        config.include("pyramid_chameleon")
        if toolbar == "yes":
            config.include("pyramid_debugtoolbar")
        config.set_session_factory(SignedCookieSessionFactory("not a real secret"))
        config.set_default_csrf_options(require_csrf=True)
        config.add_route("hello", "/hello")
        config.add_view(hello, route_name="hello")
        config.add_route("jinja", "/jinja/{name}")
        config.add_view(jinja, route_name="jinja", renderer="tests:templates/greeting.jinja2")
        config.add_route("chameleon", "/chameleon/{name}")
        config.add_view(chameleon, route_name="chameleon", renderer="tests:templates/greeting.pt")
        config.add_route("page", "/page")
        config.add_view(page, route_name="page", renderer="tests:templates/page.jinja2")
        config.add_route("session_set", "/session/set")
        config.add_view(session_set, route_name="session_set", renderer="json")
        config.add_route("session_get", "/session/get")
        config.add_view(session_get, route_name="session_get", renderer="json")
        config.add_route("post", "/post")
        config.add_view(post, route_name="post", renderer="json", request_method="POST")
        config.add_route("callbacks", "/callbacks/{tag}")
        config.add_view(callbacks, route_name="callbacks")
        return config.make_wsgi_app()
