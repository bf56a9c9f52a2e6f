"""Fail-closed authorization for the shapes of user code and of policies
that got past the first fix (plain generators, async generators, Tasks made
by synchronized code, unproxied coroutine policies).  Each test is the
attacker's request (anonymous, banned) against a real app: a 403 or a 500,
never a 200."""
import asyncio
import random
import sys

import pytest
from pyramid.authorization import ACLHelper, Allow, Authenticated, Everyone
from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPForbidden
from pyramid.request import Request
from pyramid.response import Response
from pyramid.threadlocal import get_current_request

from aiopyramid.helpers import synchronize
from aiopyramid.security import CoroutineSecurityPolicyProxy

from .conftest import get

USERS = {
    "george": {"userid": "george", "groups": ["group:admin"]},
    "fred": {"userid": "fred", "groups": []},
    "eve": {"userid": "eve", "groups": ["group:banned"]},
}

PERMITS = {"shape": "async"}  # how the policy's permits gives its answer


async def load_user(name):
    await asyncio.sleep(0)
    return USERS.get(name)


class Policy:
    async def identity(self, request):
        return await load_user(request.headers.get("X-User"))

    async def authenticated_userid(self, request):
        user = await self.identity(request)
        return None if user is None else user["userid"]

    async def effective_principals(self, request):
        user = await self.identity(request)
        if user is None:
            return [Everyone]
        return [Everyone, Authenticated, user["userid"], *user["groups"]]

    async def _permits(self, request, context, permission):
        principals = await self.effective_principals(request)
        return ACLHelper().permits(context, principals, permission)

    def permits(self, request, context, permission):
        if PERMITS["shape"] == "async-generator":
            # an `async def` with a stray `yield` (a debugging line, a
            # refactoring): an async generator object, truthy
            async def answer():
                yield await self._permits(request, context, permission)

            return answer()
        return self._permits(request, context, permission)

    def remember(self, request, userid, **kw):
        return []

    def forget(self, request, **kw):
        return []


class Root:
    __acl__ = [(Allow, "group:admin", "admin"),
               (Allow, Authenticated, "view")]

    def __init__(self, request):
        pass


def flatten(*iterables):
    """A plain generator helper, as in any code base."""
    for iterable in iterables:
        yield from iterable


async def not_banned(request):
    # forgot `await`: the awaitable goes into a plain generator helper,
    # whose `yield from` must not iterate the awaitable's steps
    principals = set(flatten([Everyone], request.identity))
    if "group:banned" in principals or None in principals:
        raise HTTPForbidden()
    return Response("granted")


async def admin(request):
    return Response("the admin page")


def legacy_admin(request):
    return Response("the admin page, legacy")


async def is_logged_in(request):
    # a coroutine that a synchronized __acl__ runs: the README's table
    # says it gets values
    return get_current_request().authenticated_userid is not None


class GatheredACL:
    """A synchronized ``__acl__`` that runs its checks with
    ``asyncio.gather`` (concurrent I/O: the usual reason to use it)."""

    def __init__(self, request):
        self.request = request

    @synchronize
    async def __acl__(self):
        logged_in, = await asyncio.gather(is_logged_in(self.request))
        if logged_in:
            return [(Allow, Everyone, "view")]
        return []


class WaitForACL(GatheredACL):
    @synchronize
    async def __acl__(self):
        if await asyncio.wait_for(is_logged_in(self.request), 5):
            return [(Allow, Everyone, "view")]
        return []


def server_error(exc, request):
    return Response("server error: {}".format(type(exc).__name__),
                    status=500)


def make_app():
    with Configurator(root_factory=Root) as config:
        config.include("aiopyramid")
        config.set_security_policy(CoroutineSecurityPolicyProxy(Policy()))
        for name, view, extra in [
            ("not-banned", not_banned, {}),
            ("admin", admin, {"permission": "admin"}),
            ("legacy-admin", legacy_admin, {"permission": "admin"}),
        ]:
            config.add_route(name, "/" + name)
            config.add_view(view, route_name=name, **extra)
        for name, factory in [("gathered-acl", GatheredACL),
                              ("wait-for-acl", WaitForACL)]:
            config.add_route(name, "/" + name, factory=factory)
            config.add_view(admin, route_name=name, permission="view")
        config.add_exception_view(server_error, context=Exception)
        return config.make_wsgi_app()


@pytest.fixture(scope="module")
def app():
    return make_app()


@pytest.fixture(autouse=True)
def permits_shape():
    PERMITS["shape"] = "async"
    yield
    PERMITS["shape"] = "async"


def fetch(app, path, user=None):
    return asyncio.run(get(app, path, headers={"X-User": user} if user else {}))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("user", [None, "eve", "george"])
def test_yield_from_in_a_plain_generator_is_not_awaiting(app, user):
    # a forgotten await whose awaitable a plain generator `yield from`s:
    # list()/set() would collect the policy's steps (None) instead of the
    # principals, and the banned user would pass
    resp = fetch(app, "/not-banned", user)
    assert resp.status_int == 500, resp.text
    assert resp.text == "server error: TypeError"


def test_yield_from_through_plain_generators_still_awaits():
    # the legitimate shape: a generator coroutine delegating to a plain
    # generator helper that `yield from`s the awaitable
    from aiopyramid.helpers import coroutine

    proxy = CoroutineSecurityPolicyProxy(Policy())
    request = Request.blank("/", headers={"X-User": "george"})

    def helper(pending):
        return (yield from pending)

    @coroutine
    def seed():
        pending = yield from ask()
        return (yield from helper(pending))

    async def ask():
        return proxy.authenticated_userid(request)

    assert asyncio.run(seed()) == "george"


@pytest.mark.parametrize("path", ["/admin", "/legacy-admin"])
@pytest.mark.parametrize("user", [None, "fred", "george"])
def test_permits_giving_an_async_generator_is_refused(app, path, user):
    # an async generator object is truthy: Pyramid would allow everyone
    PERMITS["shape"] = "async-generator"
    resp = fetch(app, path, user)
    assert resp.status_int == 500, resp.text
    assert resp.text == "server error: TypeError"


def test_callback_giving_an_async_generator_is_refused():
    from aiopyramid.auth import _ResolvedCallback

    async def groupfinder(userid, request):
        yield ["group:admin"]

    with pytest.raises(TypeError, match="async generator"):
        _ResolvedCallback(groupfinder)("george", None)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # never awaited
@pytest.mark.parametrize("path", ["/gathered-acl", "/wait-for-acl"])
@pytest.mark.parametrize("user", [None, "george"])
def test_task_run_by_a_synchronized_acl(app, path, user):
    # the coroutine runs as a Task on the loop (gather, wait_for), where no
    # value can be computed; an awaitable would pass `is not None` (the
    # README's table promises values to what synchronized code runs): a
    # ScopeError, for everyone
    resp = fetch(app, path, user)
    if path == "/wait-for-acl" and sys.version_info >= (3, 12):
        # wait_for() awaits a coroutine in place since 3.12 (no Task): it
        # is what the synchronized __acl__ awaits, it gets values
        assert resp.status_int == (403 if user is None else 200), resp.text
        return
    assert resp.status_int == 500, resp.text
    assert resp.text == "server error: ScopeError"


async def is_logged_in_awaiting(request):
    return (await get_current_request().authenticated_userid) is not None


async def gathering_view(request):
    # the same gather in a coroutine view: its Tasks get awaitables
    logged_in, = await asyncio.gather(is_logged_in_awaiting(request))
    if not logged_in:
        raise HTTPForbidden()
    return Response("granted")


@pytest.mark.parametrize("renderer", [None, "string"])
def test_task_run_by_a_coroutine_view_gets_an_awaitable(renderer):
    with Configurator(root_factory=Root) as config:
        config.include("aiopyramid")
        config.set_security_policy(CoroutineSecurityPolicyProxy(Policy()))
        config.add_route("gather", "/gather")
        config.add_view(gathering_view, route_name="gather",
                        renderer=renderer)
        config.add_exception_view(server_error, context=Exception)
        app = config.make_wsgi_app()
    assert fetch(app, "/gather").status_int == 403
    resp = fetch(app, "/gather", "george")
    assert resp.status_int == 200, resp.text


# no loop running: WebTest, render_view_to_response -----------------------

@synchronize
async def synchronized_is_logged_in(request):
    # written for plain code: gets values, with no loop too
    await asyncio.sleep(0)
    return request.authenticated_userid is not None


async def awaiting_view(request):
    userid = await request.authenticated_userid
    if userid is None:
        raise HTTPForbidden()
    return Response("hello " + userid)


def plain_view_with_helper(request):
    if not synchronized_is_logged_in(request):
        raise HTTPForbidden()
    return Response("granted")


async def coroutine_view_with_helper(request):
    if not synchronized_is_logged_in(request):
        raise HTTPForbidden()
    return Response("granted")


@synchronize
async def synchronized_view(request):
    # a synchronized coroutine as the view: a plain view that gets values
    if request.authenticated_userid is not None:
        return Response("granted")
    raise HTTPForbidden()


async def awaiting_forbidden_view(request):
    userid = await request.authenticated_userid
    return Response("forbidden for {}".format(userid), status=403)


def no_loop_app():
    with Configurator(root_factory=Root) as config:
        config.include("aiopyramid")
        config.set_security_policy(CoroutineSecurityPolicyProxy(Policy()))
        for name, view, extra in [
            ("awaiting", awaiting_view, {}),
            ("awaiting-json", awaiting_view, {"renderer": "json"}),
            ("plain-helper", plain_view_with_helper, {}),
            ("coroutine-helper", coroutine_view_with_helper, {}),
            ("admin", admin, {"permission": "admin"}),
            ("synchronized-view", synchronized_view, {}),
        ]:
            config.add_route(name, "/" + name)
            config.add_view(view, route_name=name, **extra)
        config.add_view(awaiting_view, name="direct")
        config.add_forbidden_view(awaiting_forbidden_view)
        return config.make_wsgi_app()


class TestNoLoop:
    """WebTest drives the app with no loop running: coroutine views run on
    a fresh loop in a request greenlet, and the rule must hold there too
    (an awaitable for the view, values for synchronized helpers)."""

    @pytest.fixture
    def testapp(self):
        import webtest

        return webtest.TestApp(no_loop_app())

    @pytest.mark.parametrize("path", ["/awaiting", "/awaiting-json"])
    def test_a_coroutine_view_awaits(self, testapp, path):
        assert testapp.get(path, status=403).text == "forbidden for None"
        resp = testapp.get(path, headers={"X-User": "george"}, status=200)
        assert resp.text == "hello george"

    @pytest.mark.parametrize("path", ["/plain-helper", "/coroutine-helper"])
    def test_a_synchronized_helper_gets_values(self, testapp, path):
        testapp.get(path, status=403)
        testapp.get(path, headers={"X-User": "george"}, status=200)

    def test_a_synchronized_view_is_not_a_coroutine_view(self, testapp):
        # it runs inline, its coroutine at the bottom of a greenlet under
        # Pyramid's call of a view, as a coroutine view's does: an
        # awaitable there would pass `is not None`
        resp = testapp.get("/synchronized-view", expect_errors=True)
        assert resp.status_int == 403, resp.text

    def test_permission_and_forbidden_view(self, testapp):
        resp = testapp.get("/admin", headers={"X-User": "fred"}, status=403)
        assert resp.text == "forbidden for fred"
        testapp.get("/admin", headers={"X-User": "george"}, status=200)

    def test_render_view_to_response(self):
        from pyramid.scripting import prepare
        from pyramid.view import render_view_to_response

        app = no_loop_app()
        for user, expected in [(None, HTTPForbidden), ("george", None)]:
            request = Request.blank(
                "/", headers={"X-User": user} if user else {})
            env = prepare(request=request, registry=app.registry)
            try:
                if expected is None:
                    resp = render_view_to_response(
                        env["root"], request, name="direct")
                    assert resp.text == "hello george"
                else:
                    with pytest.raises(expected):
                        render_view_to_response(env["root"], request,
                                                name="direct")
            finally:
                env["closer"]()


# many interleaved users through a real gunicorn ---------------------------

@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_interleaved_users_through_gunicorn(gunicorn, loop):
    """Twelve users, 8 connections at a time, 480 requests: each response
    names its own user (coroutine views, legacy views in executor threads,
    a tween, synchronized traversal and __acl__), each document is
    readable by its owner only."""
    import concurrent.futures
    import socket

    from .rawhttp import read_to_eof

    if loop == "uvloop":
        pytest.importorskip("uvloop")
    srv = gunicorn(app="auth_interleave_app:main()",
                   env={"AIOPYRAMID_LOOP": loop})

    def ask(path, user):
        with socket.create_connection(("127.0.0.1", srv.port),
                                      timeout=20) as s:
            s.sendall("GET {} HTTP/1.1\r\nHost: t\r\nX-User: {}\r\n"
                      "Connection: close\r\n\r\n".format(path, user).encode())
            data = read_to_eof(s)
        head, _, body = data.partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in
                       head.decode().split("\r\n")[1:])
        return (int(head.split(b" ", 2)[1]), body.decode(),
                headers.get("X-Tween-User"))

    from . import auth_interleave_app

    rng = random.Random(15)
    users = auth_interleave_app.USERS
    jobs = []
    for i in range(480):
        user, owner = rng.choice(users), rng.choice(users)
        if i % 3 == 0:
            owner = user
        view = rng.choice(["", "legacy", "open", "legacy-open"])
        jobs.append((user, owner, view))
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(
                lambda job: ask("/doc/{}/{}".format(job[1], job[2]), job[0]),
                jobs, timeout=300))
    finally:
        srv.stop()
    wrong = []
    for (user, owner, view), (status, body, tween_user) in zip(jobs, results):
        allowed = user == owner
        if view in ("", "legacy"):
            expected = (200 if allowed else 403)
        else:
            expected = 200
        ok = status == expected and tween_user == user
        if status == 200:
            ok = ok and body == "user={} doc={} perm={}".format(
                user, owner, allowed)
        if not ok:
            wrong.append((user, owner, view, status, body[:200], tween_user))
    assert not wrong, (wrong[:10], srv.log()[-3000:])
    assert sum(1 for user, owner, view in jobs
               if user == owner and view in ("", "legacy")) > 50


@pytest.mark.parametrize("view", ["legacy", "legacy-open", "", "open"])
def test_has_permission_with_a_synchronized_acl_in_every_view(view):
    """request.has_permission() with a coroutine permits whose ACLHelper
    calls a synchronized __acl__: in a legacy view (an executor thread) the
    policy ran in a bare Task on the loop, where the __acl__ raised
    ScopeError (a 500 for the owner)."""
    from . import auth_interleave_app

    app = auth_interleave_app.main()
    resp = fetch(app, "/doc/u1/" + view, "u1")
    assert resp.status_int == 200, resp.text
    assert resp.text == "user=u1 doc=u1 perm=True"
    resp = fetch(app, "/doc/u1/" + view, "u2")
    if view.endswith("open"):
        assert resp.status_int == 200, resp.text
        assert resp.text == "user=u2 doc=u1 perm=False"
    else:
        assert resp.status_int == 403, resp.text


@pytest.mark.parametrize("use", ["copy", "deepcopy", "pickle"])
def test_a_policy_awaitable_cannot_be_copied(use):
    # a copy would be a second awaitable of the same call: the policy would
    # run twice (and a half-made deep copy complained in __del__)
    import copy
    import pickle

    proxy = CoroutineSecurityPolicyProxy(Policy())
    request = Request.blank("/", headers={"X-User": "george"})
    uses = {"copy": copy.copy, "deepcopy": copy.deepcopy,
            "pickle": pickle.dumps}

    async def main():
        pending = proxy.authenticated_userid(request)
        with pytest.raises(TypeError, match="not copy or pickle it"):
            uses[use](pending)
        return await pending

    assert asyncio.run(main()) == "george"


# a coroutine policy registered without its proxy ---------------------------

class AsyncAuthorizationPolicy:
    async def permits(self, context, principals, permission):
        return False

    def principals_allowed_by_permission(self, context, permission):
        return []


def _wrapped_policy():
    import functools

    def logged(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            return func(*args, **kwargs)

        return wrapper

    class WrappedPolicy(Policy):
        permits = logged(Policy._permits)
        identity = authenticated_userid = None

        def identity(self, request):  # noqa: F811 - plain
            return None

        def authenticated_userid(self, request):  # noqa: F811 - plain
            return None

    return WrappedPolicy()


def _callable_policy():
    class AsyncPermits:
        async def __call__(self, request, context, permission):
            return False

    class CallablePolicy:
        permits = AsyncPermits()

        def identity(self, request):
            return None

        def authenticated_userid(self, request):
            return None

        def remember(self, request, userid, **kw):
            return []

        def forget(self, request, **kw):
            return []

    return CallablePolicy()


def _set_authn_with_async_callback(config):
    from pyramid.authentication import RemoteUserAuthenticationPolicy
    from pyramid.authorization import ACLAuthorizationPolicy

    async def groupfinder(userid, request):
        return None

    config.set_authentication_policy(
        RemoteUserAuthenticationPolicy(callback=groupfinder))
    config.set_authorization_policy(ACLAuthorizationPolicy())


def _set_basic_auth_with_async_check(config):
    from pyramid.authentication import BasicAuthAuthenticationPolicy
    from pyramid.authorization import ACLAuthorizationPolicy

    async def check(username, password, request):
        return None

    config.set_authentication_policy(BasicAuthAuthenticationPolicy(check))
    config.set_authorization_policy(ACLAuthorizationPolicy())


def _set_async_authz(config):
    from pyramid.authentication import RemoteUserAuthenticationPolicy

    config.set_authentication_policy(RemoteUserAuthenticationPolicy())
    config.set_authorization_policy(AsyncAuthorizationPolicy())


def _shaped_policy(shape):
    import functools

    async def permits(request, context, permission, extra=None):
        return False

    class Shaped:
        def identity(self, request):
            return None

        def authenticated_userid(self, request):
            return None

        def remember(self, request, userid, **kw):
            return []

        def forget(self, request, **kw):
            return []

    if shape == "staticmethod":
        Shaped.permits = staticmethod(permits)
    elif shape == "classmethod":
        async def permits_(cls, request, context, permission):
            return False

        Shaped.permits = classmethod(permits_)
    else:
        Shaped.permits = staticmethod(functools.partial(permits, extra=1))
    return Shaped()


UNPROXIED = {
    "security-staticmethod": lambda config: config.set_security_policy(
        _shaped_policy("staticmethod")),
    "security-classmethod": lambda config: config.set_security_policy(
        _shaped_policy("classmethod")),
    "security-partial": lambda config: config.set_security_policy(
        _shaped_policy("partial")),
    "security": lambda config: config.set_security_policy(Policy()),
    "security-wrapped": lambda config: config.set_security_policy(
        _wrapped_policy()),
    "security-callable": lambda config: config.set_security_policy(
        _callable_policy()),
    "authn-callback": _set_authn_with_async_callback,
    "authn-basic-check": _set_basic_auth_with_async_check,
    "authz": _set_async_authz,
}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("how", sorted(UNPROXIED))
def test_a_coroutine_policy_without_its_proxy_is_refused(how):
    """Registered as it is, a policy's coroutine gives Pyramid a coroutine
    object, which is truthy: every permission check passed (an anonymous
    request got the admin page).  Refused when the app is configured."""
    from pyramid.exceptions import ConfigurationError

    def build():
        with Configurator(root_factory=Root) as config:
            config.include("aiopyramid")
            UNPROXIED[how](config)
            config.add_route("admin", "/admin")
            config.add_view(admin, route_name="admin", permission="admin")
            return config.make_wsgi_app()

    with pytest.raises(ConfigurationError) as caught:
        app = build()
        # what it gave before: the anonymous request, let in
        assert fetch(app, "/admin").status_int == 403
    assert "aiopyramid" in str(caught.value)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_proxied_and_plain_policies_are_accepted():
    from pyramid.authentication import RemoteUserAuthenticationPolicy
    from pyramid.authorization import ACLAuthorizationPolicy

    from aiopyramid.auth import authn_policy_factory

    async def groupfinder(userid, request):
        return []

    for configure in [
        lambda c: c.set_security_policy(
            CoroutineSecurityPolicyProxy(Policy())),
        lambda c: (c.set_authentication_policy(authn_policy_factory(
            RemoteUserAuthenticationPolicy, groupfinder)),
            c.set_authorization_policy(ACLAuthorizationPolicy())),
        lambda c: (c.set_authentication_policy(
            RemoteUserAuthenticationPolicy()),
            c.set_authorization_policy(ACLAuthorizationPolicy())),
    ]:
        with Configurator(root_factory=Root) as config:
            config.include("aiopyramid")
            configure(config)
            config.add_route("admin", "/admin")
            config.add_view(admin, route_name="admin", permission="admin")
            app = config.make_wsgi_app()
        assert fetch(app, "/admin").status_int == 403


def test_a_views_task_asking_while_the_view_is_in_a_synchronized_helper():
    # a Task is told from one a synchronized coroutine made by where it was
    # made (synchronize's mark in the context it copied), not by where the
    # request greenlet is parked when the Task asks
    async def view(request):
        started, done = asyncio.Event(), asyncio.Event()

        @synchronize
        async def helper():
            started.set()
            await asyncio.wait_for(done.wait(), 10)

        async def task():
            await asyncio.wait_for(started.wait(), 10)
            try:
                return await request.authenticated_userid
            finally:
                done.set()

        pending = asyncio.ensure_future(task())
        helper()
        return Response(str(await pending))

    with Configurator(root_factory=Root) as config:
        config.include("aiopyramid")
        config.set_security_policy(CoroutineSecurityPolicyProxy(Policy()))
        config.add_route("view", "/view")
        config.add_view(view, route_name="view")
        config.add_exception_view(server_error, context=Exception)
        app = config.make_wsgi_app()
    resp = fetch(app, "/view", "george")
    assert resp.status_int == 200, resp.text  # was a ScopeError, a 500
    assert resp.text == "george"
