"""aiopyramid.auth: callback authentication policies whose callback is a
coroutine, values for plain code and awaitables for coroutines."""
import asyncio
import threading

import pytest
from pyramid.authentication import (
    AuthTktAuthenticationPolicy,
    CallbackAuthenticationPolicy,
)
from pyramid.authorization import ACLAuthorizationPolicy, Allow, Authenticated
from pyramid.config import Configurator
from pyramid.request import Request
from pyramid.security import forget, remember

from aiopyramid.exceptions import ScopeError
from aiopyramid.helpers import coroutine, spawn_greenlet, synchronize

from .conftest import LEGACY_AUTH_WARNINGS

pytestmark = LEGACY_AUTH_WARNINGS

EVERYONE_GEORGE = ["system.Everyone", "system.Authenticated", "george",
                   "group:editors"]
GEORGE_HEADERS = [("X-Login", "george")]
FORGET_HEADERS = [("X-Logout", "1")]


async def get(app, path, **kw):
    request = Request.blank(path, **kw)
    return await spawn_greenlet(request.get_response, app)


class Recorder:
    """What the callbacks and views saw, in order."""

    def __init__(self):
        self.events = []
        self.gates = {}

    def gate(self, name):
        if name not in self.gates:
            self.gates[name] = asyncio.Event()
        return self.gates[name]


# the callback in both styles: looks the user's groups up "with I/O"

def async_get_principals(rec):
    async def get_principals(userid, request):
        rec.events.append(("lookup", userid))
        await asyncio.sleep(0)
        if userid == "nobody":
            return None
        return ["group:editors"] if userid == "george" else []

    return get_principals


def seed_get_principals(rec):
    @coroutine
    def get_principals(userid, request):
        rec.events.append(("lookup", userid))
        yield from asyncio.sleep(0)
        if userid == "nobody":
            return None
        return ["group:editors"] if userid == "george" else []

    return get_principals


STYLES = {"async": async_get_principals, "generator": seed_get_principals}


class HeaderAuthenticationPolicy(CallbackAuthenticationPolicy):
    """Dummy callback policy: the claimed userid is the X-User header."""

    def __init__(self, callback=None, debug=False):
        self.callback = callback
        self.debug = debug

    def unauthenticated_userid(self, request):
        return request.headers.get("X-User")

    def remember(self, request, userid, **kw):
        return [("X-Login", userid)]

    def forget(self, request, **kw):
        return [("X-Logout", "1")]


class Root:
    __acl__ = [(Allow, "group:editors", "edit"), (Allow, Authenticated, "view")]

    def __init__(self, request):
        pass


@pytest.fixture(params=sorted(STYLES))
def style(request):
    return request.param


@pytest.fixture
def rec():
    return Recorder()


@pytest.fixture
def policy(style, rec):
    from aiopyramid.auth import authn_policy_factory

    return authn_policy_factory(HeaderAuthenticationPolicy,
                                STYLES[style](rec))


def make_app(policy, configure):
    with Configurator(root_factory=Root) as config:
        config.include("aiopyramid")
        config.set_authorization_policy(ACLAuthorizationPolicy())
        config.set_authentication_policy(policy)
        configure(config)
        return config.make_wsgi_app()


class TestFactory:
    def _callFUT(self, *args, **kw):
        from aiopyramid.auth import (
            coroutine_callback_authentication_policy_factory,
        )

        return coroutine_callback_authentication_policy_factory(*args, **kw)

    def test_alias(self):
        from aiopyramid.auth import (
            authn_policy_factory,
            coroutine_callback_authentication_policy_factory,
        )

        assert authn_policy_factory is \
            coroutine_callback_authentication_policy_factory

    def test_coroutine_is_passed_as_callback(self):
        from aiopyramid.auth import CoroutineAuthenticationPolicyProxy

        async def groups(userid, request):
            return ["g"]

        proxy = self._callFUT(AuthTktAuthenticationPolicy, groups, "sekrit",
                              hashalg="sha512")
        assert isinstance(proxy, CoroutineAuthenticationPolicyProxy)
        assert isinstance(proxy._policy, AuthTktAuthenticationPolicy)
        assert proxy.callback.__wrapped__ is groups
        # outside any loop the coroutine runs on a fresh one
        assert proxy.callback("u", None) == ["g"]
        assert proxy.cookie.secret == "sekrit"  # attributes of the policy

    def test_plain_or_synchronized_callback_is_called_as_it_is(self):
        def plain(userid, request):
            return ["p"]

        sync = synchronize(async_get_principals(Recorder()))
        proxy = self._callFUT(HeaderAuthenticationPolicy, plain)
        assert proxy.callback.__wrapped__ is plain
        assert proxy.callback("u", None) == ["p"]
        proxy = self._callFUT(HeaderAuthenticationPolicy, sync)
        assert proxy.callback.__wrapped__ is sync
        assert proxy.callback("george", None) == ["group:editors"]

    def test_no_callback(self):
        proxy = self._callFUT(HeaderAuthenticationPolicy, None, None, True)
        assert proxy.callback is None
        assert proxy.debug is True

    def test_implements_the_interface(self):
        from pyramid.interfaces import IAuthenticationPolicy
        from zope.interface.verify import verifyObject

        verifyObject(IAuthenticationPolicy,
                     self._callFUT(HeaderAuthenticationPolicy))


class TestProxyDirectly:
    """The proxy's methods called by plain code and by coroutines (the
    original's own test, without a Pyramid app)."""

    def _makeRequest(self, user="george"):
        return Request.blank("/", headers={"X-User": user})

    def call_plain(self, policy, request):
        return (
            policy.unauthenticated_userid(request),
            policy.authenticated_userid(request),
            policy.effective_principals(request),
            policy.remember(request, "george"),
            policy.forget(request),
        )

    async def call_async(self, policy, request):
        return (
            await policy.unauthenticated_userid(request),
            await policy.authenticated_userid(request),
            await policy.effective_principals(request),
            await policy.remember(request, "george"),
            await policy.forget(request),
        )

    @coroutine
    def call_seed(self, policy, request):
        return (
            (yield from policy.unauthenticated_userid(request)),
            (yield from policy.authenticated_userid(request)),
            (yield from policy.effective_principals(request)),
            (yield from policy.remember(request, "george")),
            (yield from policy.forget(request)),
        )

    EXPECTED = ("george", "george", EVERYONE_GEORGE, GEORGE_HEADERS,
                FORGET_HEADERS)

    def test_plain_code_in_a_request_greenlet(self, policy):
        out = asyncio.run(spawn_greenlet(self.call_plain, policy,
                                         self._makeRequest()))
        assert out == self.EXPECTED

    def test_plain_code_outside_any_loop(self, policy):
        assert self.call_plain(policy, self._makeRequest()) == self.EXPECTED

    async def call_values(self, policy, request):
        return self.call_plain(policy, request)

    @coroutine
    def call_seed_values(self, policy, request):
        yield from asyncio.sleep(0)
        return self.call_plain(policy, request)

    async def call_async_values(self, policy, request):
        await asyncio.sleep(0)
        return self.call_plain(policy, request)

    def test_synchronized_coroutines_in_a_request_greenlet(self, policy):
        # a coroutine that plain code runs through synchronize gets values,
        # as the plain code that asked would
        for caller in (self.call_async_values, self.call_seed_values):
            out = asyncio.run(spawn_greenlet(synchronize(caller), policy,
                                             self._makeRequest()))
            assert out == self.EXPECTED

    def test_awaiting_a_value_in_a_synchronized_coroutine_fails(self, policy):
        # written the other way, it fails loudly: never a wrong answer
        with pytest.raises(TypeError, match="can't be used in 'await'"):
            asyncio.run(spawn_greenlet(synchronize(self.call_async), policy,
                                       self._makeRequest()))

    def test_coroutines_on_the_loop(self, policy):
        # no greenlet at all: the awaitables bring their own
        for caller in (self.call_async, self.call_seed):
            out = asyncio.run(caller(policy, self._makeRequest()))
            assert out == self.EXPECTED

    def test_plain_code_on_the_loop_is_a_scope_error(self, policy):
        async def main():
            self.call_plain(policy, self._makeRequest())

        with pytest.raises(ScopeError, match="called on the event loop"):
            asyncio.run(main())

    def test_awaiting_twice_gives_the_same_value(self, policy, rec):
        from aiopyramid.auth import PolicyAwaitable

        async def main():
            request = self._makeRequest()
            pending = policy.effective_principals(request)
            assert isinstance(pending, PolicyAwaitable)
            first = await pending
            second = await pending
            again = await policy.effective_principals(request)
            return first, second, again

        first, second, again = asyncio.run(main())
        assert first == second == again == EVERYONE_GEORGE
        assert first is second  # kept, not computed again
        # the kept value ran the callback once; the second read, once more
        assert rec.events == [("lookup", "george")] * 2

    def test_awaitable_truth_value_is_an_error(self, policy):
        async def main():
            pending = policy.authenticated_userid(self._makeRequest())
            try:
                bool(pending)
            finally:
                await pending

        with pytest.raises(TypeError) as exc:
            asyncio.run(main())
        assert str(exc.value) == (
            "request.authenticated_userid was asked for in a coroutine, which "
            "gets an awaitable: 'await' it (or 'yield from' it) to get the "
            "value"
        )

    def test_error_of_the_callback_reaches_the_awaiter(self):
        from aiopyramid.auth import authn_policy_factory

        async def broken(userid, request):
            await asyncio.sleep(0)
            raise LookupError("no database")

        policy = authn_policy_factory(HeaderAuthenticationPolicy, broken)

        async def main():
            pending = policy.authenticated_userid(self._makeRequest())
            with pytest.raises(LookupError, match="no database"):
                await pending
            with pytest.raises(LookupError, match="no database"):
                await pending  # the error is kept: not asked again

        asyncio.run(main())


class TestRule:
    """What kind of code gets an awaitable: exactly coroutines."""

    def _makeOne(self):
        from aiopyramid.auth import CoroutineAuthenticationPolicyProxy

        return CoroutineAuthenticationPolicyProxy(HeaderAuthenticationPolicy())

    def _ask(self, caller):
        from aiopyramid.auth import PolicyAwaitable

        policy = self._makeOne()
        request = Request.blank("/", headers={"X-User": "george"})
        got = asyncio.run(caller(policy, request))
        return "awaitable" if isinstance(got, PolicyAwaitable) else got

    def test_async_def(self):
        async def caller(policy, request):
            got = policy.unauthenticated_userid(request)
            assert await got == "george"
            return got

        assert self._ask(caller) == "awaitable"

    def test_generator_coroutine(self):
        @coroutine
        def caller(policy, request):
            got = policy.unauthenticated_userid(request)
            assert (yield from got) == "george"
            return got

        assert self._ask(caller) == "awaitable"

    def test_async_generator(self):
        async def agen(policy, request):
            yield await policy.unauthenticated_userid(request)

        async def caller(policy, request):
            return [value async for value in agen(policy, request)][0]

        assert self._ask(caller) == "george"

    def test_plain_function_lambda_and_generator_called_by_a_coroutine(self):
        def plain(policy, request):
            return policy.unauthenticated_userid(request)

        def gen(policy, request):
            yield policy.unauthenticated_userid(request)

        async def caller(policy, request):
            via_lambda = (lambda: policy.unauthenticated_userid(request))()
            return (plain(policy, request), via_lambda,
                    next(gen(policy, request)))

        assert self._ask(caller) == ("george", "george", "george")


# ---------------------------------------------------------------------------
# End to end, through Pyramid, in coroutine views, legacy views and tweens


async def coroutine_auth_view(request):
    """The documented recipe in a coroutine view."""
    maybe = await request.unauthenticated_userid
    checked = await request.authenticated_userid
    principals = await request.effective_principals
    identity = await request.identity
    headers = await remember(request, "george")
    fheaders = await forget(request)
    # Pyramid's compound checks are plain code: plain values
    can_edit = request.has_permission("edit")
    authenticated = request.is_authenticated
    return {
        "maybe": maybe, "checked": checked, "principals": principals,
        "identity": identity, "remember": headers, "forget": fheaders,
        "can_edit": bool(can_edit), "authenticated": authenticated,
    }


@coroutine
def seed_auth_view(request):
    """The documented recipe, as the original wrote it."""
    maybe = yield from request.unauthenticated_userid
    checked = yield from request.authenticated_userid
    principals = yield from request.effective_principals
    identity = yield from request.identity
    headers = yield from remember(request, "george")
    fheaders = yield from forget(request)
    can_edit = request.has_permission("edit")
    authenticated = request.is_authenticated
    return {
        "maybe": maybe, "checked": checked, "principals": principals,
        "identity": identity, "remember": headers, "forget": fheaders,
        "can_edit": bool(can_edit), "authenticated": authenticated,
    }


def undecorated_seed_auth_view(request):
    """A generator view without @coroutine: the mapper makes it one."""
    maybe = yield from request.unauthenticated_userid
    checked = yield from request.authenticated_userid
    principals = yield from request.effective_principals
    identity = yield from request.identity
    headers = yield from remember(request, "george")
    fheaders = yield from forget(request)
    return {
        "maybe": maybe, "checked": checked, "principals": principals,
        "identity": identity, "remember": headers, "forget": fheaders,
        "can_edit": bool(request.has_permission("edit")),
        "authenticated": request.is_authenticated,
    }


def legacy_auth_view(request):
    """A plain view, run in an executor thread: plain values."""
    assert threading.current_thread() is not threading.main_thread()
    return {
        "maybe": request.unauthenticated_userid,
        "checked": request.authenticated_userid,
        "principals": request.effective_principals,
        "identity": request.identity,
        "remember": remember(request, "george"),
        "forget": forget(request),
        "can_edit": bool(request.has_permission("edit")),
        "authenticated": request.is_authenticated,
    }


# as JSON gives them back (header tuples become lists)
GEORGE = {
    "maybe": "george", "checked": "george", "principals": EVERYONE_GEORGE,
    "identity": "george", "remember": [["X-Login", "george"]],
    "forget": [["X-Logout", "1"]], "can_edit": True, "authenticated": True,
}
NOBODY = {
    "maybe": "nobody", "checked": None, "principals": ["system.Everyone"],
    "identity": None, "remember": [["X-Login", "george"]],
    "forget": [["X-Logout", "1"]], "can_edit": False, "authenticated": False,
}

VIEWS = {
    "async": coroutine_auth_view,
    "generator": seed_auth_view,
    "undecorated-generator": undecorated_seed_auth_view,
    "legacy": legacy_auth_view,
}


@pytest.fixture(params=sorted(VIEWS))
def view_kind(request):
    return request.param


class TestInViews:
    def _makeApp(self, policy, view):
        def configure(config):
            config.add_view(view, name="auth", renderer="json")

        return make_app(policy, configure)

    @pytest.mark.parametrize("user, expected", [("george", GEORGE),
                                                 ("nobody", NOBODY)])
    def test_recipe(self, policy, view_kind, user, expected):
        app = self._makeApp(policy, VIEWS[view_kind])
        resp = asyncio.run(get(app, "/auth", headers={"X-User": user}))
        assert resp.status_int == 200, resp.text
        assert resp.json == expected

    def test_plain_helper_called_from_a_coroutine_view(self, policy):
        def current_user(request):
            return request.authenticated_userid  # plain code: plain value

        async def view(request):
            return {"user": current_user(request)}

        app = self._makeApp(policy, view)
        resp = asyncio.run(get(app, "/auth", headers={"X-User": "george"}))
        assert resp.json == {"user": "george"}

    def test_task_made_by_a_coroutine_view_awaits_on_the_loop(self, policy):
        # a Task runs on the loop, where no greenlet can be suspended; its
        # reads are awaitables that bring their own greenlet
        async def lookup(request):
            return await request.effective_principals

        async def view(request):
            principals = await asyncio.create_task(lookup(request))
            return {"principals": principals}

        app = self._makeApp(policy, view)
        resp = asyncio.run(get(app, "/auth", headers={"X-User": "george"}))
        assert resp.json == {"principals": EVERYONE_GEORGE}

    def test_cancelled_request_cancels_the_awaited_callback(self):
        from aiopyramid.auth import authn_policy_factory

        events = []

        async def get_principals(userid, request):
            events.append("lookup")
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                events.append("lookup cancelled")
                raise

        async def view(request):
            try:
                return {"user": await request.authenticated_userid}
            except asyncio.CancelledError:
                events.append("view cancelled")
                raise

        policy = authn_policy_factory(HeaderAuthenticationPolicy,
                                      get_principals)
        app = self._makeApp(policy, view)

        async def main():
            task = asyncio.create_task(
                get(app, "/auth", headers={"X-User": "george"}))
            while not events:
                await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(main())
        assert events == ["lookup", "lookup cancelled", "view cancelled"]

    def test_view_permission_checked_with_the_coroutine_callback(
            self, policy, view_kind):
        def configure(config):
            config.add_view(VIEWS[view_kind], name="edit", renderer="json",
                            permission="edit")

        app = make_app(policy, configure)

        async def main():
            return (await get(app, "/edit", headers={"X-User": "george"}),
                    await get(app, "/edit", headers={"X-User": "fred"}))

        allowed, denied = asyncio.run(main())
        assert allowed.status_int == 200
        assert allowed.json["principals"] == EVERYONE_GEORGE
        assert denied.status_int == 403


class TestInTweens:
    def test_tween_gets_plain_values(self, policy, rec):
        def tween_factory(handler, registry):
            def tween(request):
                allowed = request.has_permission("edit", Root(request))
                rec.events.append(("before", request.authenticated_userid,
                                   bool(allowed)))
                response = handler(request)
                rec.events.append(("after", request.effective_principals))
                return response

            return tween

        def configure(config):
            config.add_tween(__name__ + ".tween_under_test")
            config.registry.tween_under_test = tween_factory
            config.add_view(coroutine_auth_view, name="auth",
                            renderer="json")

        app = make_app(policy, configure)
        resp = asyncio.run(get(app, "/auth", headers={"X-User": "george"}))
        assert resp.json == GEORGE
        assert rec.events[0] == ("lookup", "george")
        assert ("before", "george", True) in rec.events
        assert rec.events[-1] == ("after", EVERYONE_GEORGE)


def tween_under_test(handler, registry):
    return registry.tween_under_test(handler, registry)


class TestConcurrency:
    def test_two_requests_whose_callbacks_wait_interleave(self, style, rec):
        """Alice's lookup cannot finish before Bob's has started: were the
        requests serialised, Alice's would wait forever (here: time out)."""
        from aiopyramid.auth import authn_policy_factory

        async def get_principals(userid, request):
            rec.events.append(("start", userid))
            if userid == "alice":
                await rec.gate("bob started").wait()
            else:
                rec.gate("bob started").set()
            rec.events.append(("end", userid))
            return []

        @coroutine
        def seed_get_principals(userid, request):
            return (yield from get_principals(userid, request))

        callback = get_principals if style == "async" else seed_get_principals
        policy = authn_policy_factory(HeaderAuthenticationPolicy, callback)

        async def view(request):
            return {"user": await request.authenticated_userid}

        def configure(config):
            config.add_view(view, name="who", renderer="json")

        app = make_app(policy, configure)

        async def main():
            return await asyncio.wait_for(asyncio.gather(
                get(app, "/who", headers={"X-User": "alice"}),
                get(app, "/who", headers={"X-User": "bob"}),
            ), timeout=5)

        alice, bob = asyncio.run(main())
        assert alice.json == {"user": "alice"}
        assert bob.json == {"user": "bob"}
        assert rec.events == [("start", "alice"), ("start", "bob"),
                              ("end", "bob"), ("end", "alice")]


class TestAuthTkt:
    """The documented factory call, with the real AuthTkt policy: log in,
    then come back with the cookie."""

    def test_login_then_authenticated(self, style, rec):
        from aiopyramid.auth import authn_policy_factory

        policy = authn_policy_factory(AuthTktAuthenticationPolicy,
                                      STYLES[style](rec), "sekrit",
                                      hashalg="sha512")

        async def login(request):
            headers = await remember(request, request.params["user"])
            request.response.headerlist.extend(headers)
            return {"ok": True}

        @coroutine
        def whoami(request):
            userid = yield from request.authenticated_userid
            return {"userid": userid,
                    "principals": (yield from request.effective_principals)}

        async def logout(request):
            request.response.headerlist.extend(await forget(request))
            return {}

        def configure(config):
            config.add_view(login, name="login", renderer="json")
            config.add_view(whoami, name="whoami", renderer="json")
            config.add_view(logout, name="logout", renderer="json")

        app = make_app(policy, configure)

        async def main():
            login_resp = await get(app, "/login?user=george")
            cookie = login_resp.headers.getall("Set-Cookie")[0].split(";")[0]
            anonymous = await get(app, "/whoami")
            me = await get(app, "/whoami", headers={"Cookie": cookie})
            out = await get(app, "/logout", headers={"Cookie": cookie})
            return cookie, anonymous, me, out

        cookie, anonymous, me, out = asyncio.run(main())
        assert cookie.startswith("auth_tkt=")
        assert anonymous.json == {"userid": None,
                                  "principals": ["system.Everyone"]}
        assert me.json == {"userid": "george", "principals": EVERYONE_GEORGE}
        assert all("auth_tkt=;" in c or 'auth_tkt="";' in c
                   for c in out.headers.getall("Set-Cookie"))
