"""Code run with no event loop at all (a user's unit tests with WebTest or
render_view_to_response, a script): coroutine views and synchronized
coroutines run on a fresh loop, in a request greenlet, as under the
server."""
import asyncio

import greenlet
import pytest
import webtest
from pyramid.authorization import ACLHelper, Allow, Everyone
from pyramid.config import Configurator
from pyramid.response import Response
from pyramid.view import render_view_to_response

from aiopyramid.helpers import spawn_greenlet, synchronize
from aiopyramid.security import CoroutineSecurityPolicyProxy


class Root:
    __acl__ = [(Allow, "editor", "edit"), (Allow, Everyone, "view")]


class SecurityPolicy:
    """The README's async-permits recipe, with the I/O faked."""

    def __init__(self):
        self.acl = ACLHelper()

    async def identity(self, request):
        await asyncio.sleep(0)
        user = request.headers.get("X-User")
        return None if user is None else {"userid": user, "groups": [user]}

    async def authenticated_userid(self, request):
        identity = await self.identity(request)
        return None if identity is None else identity["userid"]

    async def permits(self, request, context, permission):
        identity = await self.identity(request)
        principals = [Everyone]
        if identity is not None:
            principals += [identity["userid"], *identity["groups"]]
        return self.acl.permits(context, principals, permission)

    def remember(self, request, userid, **kw):
        return []

    def forget(self, request, **kw):
        return []


async def can_edit(request):
    await asyncio.sleep(0)
    task = asyncio.current_task()
    return Response("edit=%s task=%s" % (bool(request.has_permission("edit")),
                                         task is not None))


async def guarded(request):
    await asyncio.sleep(0)
    return Response("guarded ok")


def make_app():
    with Configurator(root_factory=lambda request: Root()) as config:
        config.include("aiopyramid")
        config.set_security_policy(CoroutineSecurityPolicyProxy(SecurityPolicy()))
        config.add_view(can_edit, name="can-edit")
        config.add_view(guarded, name="guarded", permission="edit")
        return config.make_wsgi_app()


def test_webtest_coroutine_view_calls_has_permission_with_async_permits():
    assert asyncio._get_running_loop() is None
    app = webtest.TestApp(make_app())
    assert app.get("/can-edit").text == "edit=False task=True"
    assert app.get("/can-edit", headers={"X-User": "editor"}).text == (
        "edit=True task=True")
    assert app.get("/guarded", headers={"X-User": "editor"}).text == "guarded ok"
    app.get("/guarded", status=403)


def test_render_view_to_response_of_a_coroutine_view_that_synchronizes():
    from pyramid import testing

    @synchronize
    async def lookup(x):
        await asyncio.sleep(0)
        return x * 2

    def plain_helper(x):  # plain code called by the view
        return lookup(x) + 1

    async def view(request):
        await asyncio.sleep(0)
        return Response("%d" % plain_helper(20))

    config = testing.setUp()
    try:
        config.include("aiopyramid")
        config.add_view(view, name="v")
        response = render_view_to_response(None, testing.DummyRequest(), name="v")
        assert response.text == "41"
    finally:
        testing.tearDown()


def test_synchronized_call_with_no_loop_runs_in_a_request_greenlet():
    @synchronize
    async def outer():
        await asyncio.sleep(0)
        return type(greenlet.getcurrent()).__name__, inner_plain()

    @synchronize
    async def inner():
        await asyncio.sleep(0)
        return "inner"

    def inner_plain():
        return inner()

    assert asyncio._get_running_loop() is None
    assert outer() == ("BridgeGreenlet", "inner")


def test_synchronize_not_strict_with_no_loop_runs_to_completion():
    async def coro(x):
        await asyncio.sleep(0)
        return x + 1

    loose = synchronize(strict=False)(coro)
    assert loose(1) == 2  # as the README says: no loop, a fresh one

    async def on_the_loop():
        aw = loose(41)  # on the loop itself: the coroutine, to await
        assert asyncio.iscoroutine(aw)
        return await aw

    assert asyncio.run(on_the_loop()) == 42

    async def in_a_greenlet():
        return await spawn_greenlet(loose, 9)

    assert asyncio.run(in_a_greenlet()) == 10


def test_strict_synchronize_on_the_loop_is_still_a_scope_error():
    from aiopyramid.exceptions import ScopeError

    @synchronize
    async def coro():
        return 1

    async def main():
        with pytest.raises(ScopeError):
            coro()

    asyncio.run(main())
