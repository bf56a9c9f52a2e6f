"""aiopyramid.security: Pyramid 2 security policies with coroutine methods."""
import asyncio
import threading

import pytest
from pyramid.authorization import ACLHelper, Allow, Authenticated, Everyone
from pyramid.config import Configurator
from pyramid.request import Request, RequestLocalCache
from pyramid.security import forget, remember

from aiopyramid.exceptions import ScopeError
from aiopyramid.helpers import coroutine, spawn_greenlet, synchronize

USERS = {
    "george": {"userid": "george", "groups": ["group:editors"]},
    "fred": {"userid": "fred", "groups": []},
}


async def get(app, path, **kw):
    request = Request.blank(path, **kw)
    return await spawn_greenlet(request.get_response, app)


def principals_of(identity):
    if identity is None:
        return [Everyone]
    return [Everyone, Authenticated, identity["userid"], *identity["groups"]]


class AsyncSecurityPolicy:
    """Every method a coroutine: the user database is "remote"."""

    def __init__(self, events):
        self.events = events
        self.acl = ACLHelper()

    async def identity(self, request):
        name = request.headers.get("X-User")
        self.events.append(("identity", name))
        await asyncio.sleep(0)
        return USERS.get(name)

    async def authenticated_userid(self, request):
        identity = await self.identity(request)
        return None if identity is None else identity["userid"]

    async def permits(self, request, context, permission):
        identity = await self.identity(request)
        return self.acl.permits(context, principals_of(identity), permission)

    async def remember(self, request, userid, **kw):
        await asyncio.sleep(0)
        return [("X-Login", userid)]

    async def forget(self, request, **kw):
        await asyncio.sleep(0)
        return [("X-Logout", "1")]


class SeedSecurityPolicy:
    """The same in the original's generator style."""

    def __init__(self, events):
        self.events = events
        self.acl = ACLHelper()

    @coroutine
    def identity(self, request):
        name = request.headers.get("X-User")
        self.events.append(("identity", name))
        yield from asyncio.sleep(0)
        return USERS.get(name)

    @coroutine
    def authenticated_userid(self, request):
        identity = yield from self.identity(request)
        return None if identity is None else identity["userid"]

    @coroutine
    def permits(self, request, context, permission):
        identity = yield from self.identity(request)
        return self.acl.permits(context, principals_of(identity), permission)

    @coroutine
    def remember(self, request, userid, **kw):
        yield from asyncio.sleep(0)
        return [("X-Login", userid)]

    @coroutine
    def forget(self, request, **kw):
        yield from asyncio.sleep(0)
        return [("X-Logout", "1")]


class CachedSecurityPolicy:
    """The documented caching recipe: a synchronized loader behind
    Pyramid's RequestLocalCache, plain methods around it."""

    def __init__(self, events):
        self.events = events
        self.acl = ACLHelper()
        self.identity_cache = RequestLocalCache(self.load_identity)

    @synchronize
    async def load_identity(self, request):
        name = request.headers.get("X-User")
        self.events.append(("identity", name))
        await asyncio.sleep(0)
        return USERS.get(name)

    def identity(self, request):
        return self.identity_cache.get_or_create(request)

    def authenticated_userid(self, request):
        identity = self.identity(request)
        return None if identity is None else identity["userid"]

    def permits(self, request, context, permission):
        return self.acl.permits(context, principals_of(self.identity(request)),
                                permission)

    def remember(self, request, userid, **kw):
        return [("X-Login", userid)]

    def forget(self, request, **kw):
        self.identity_cache.clear(request)
        return [("X-Logout", "1")]


POLICIES = {
    "async": AsyncSecurityPolicy,
    "generator": SeedSecurityPolicy,
    "cached": CachedSecurityPolicy,
}


class Root:
    __acl__ = [(Allow, "group:editors", "edit"), (Allow, Authenticated, "view")]

    def __init__(self, request):
        pass


@pytest.fixture(params=sorted(POLICIES))
def policy_kind(request):
    return request.param


@pytest.fixture
def events():
    return []


@pytest.fixture
def policy(policy_kind, events):
    from aiopyramid.security import CoroutineSecurityPolicyProxy

    return CoroutineSecurityPolicyProxy(POLICIES[policy_kind](events))


def make_app(policy, configure):
    with Configurator(root_factory=Root) as config:
        config.include("aiopyramid")
        config.set_security_policy(policy)
        configure(config)
        return config.make_wsgi_app()


class TestProxy:
    def _getTargetClass(self):
        from aiopyramid.security import CoroutineSecurityPolicyProxy

        return CoroutineSecurityPolicyProxy

    def _makeOne(self, policy):
        return self._getTargetClass()(policy)

    def _makeRequest(self, user="george"):
        return Request.blank("/", headers={"X-User": user})

    def test_implements_the_interface(self, events):
        from pyramid.interfaces import ISecurityPolicy
        from zope.interface.verify import verifyObject

        verifyObject(ISecurityPolicy,
                     self._makeOne(AsyncSecurityPolicy(events)))

    def test_methods_are_read_from_the_policy_when_called(self, events):
        # decided when called, by what the method returns: a method set on
        # the policy after the proxy was made is used
        policy = AsyncSecurityPolicy(events)
        proxy = self._makeOne(policy)

        async def other(request):
            return "other"

        policy.authenticated_userid = other
        assert proxy.authenticated_userid(self._makeRequest()) == "other"

    def test_other_attributes_are_the_policys(self, events):
        policy = AsyncSecurityPolicy(events)
        assert self._makeOne(policy).acl is policy.acl

    def test_missing_method(self):
        class OnlyIdentity:
            def identity(self, request):
                return None

            def __repr__(self):
                return "<OnlyIdentity>"

        proxy = self._makeOne(OnlyIdentity())
        assert proxy.identity(self._makeRequest()) is None
        with pytest.raises(AttributeError) as exc:
            proxy.permits(self._makeRequest(), None, "view")
        assert str(exc.value) == "<OnlyIdentity> has no permits method"

    def test_plain_code_gets_values(self, policy):
        def plain(request):
            return (policy.identity(request),
                    policy.authenticated_userid(request),
                    bool(policy.permits(request, Root(request), "edit")),
                    policy.remember(request, "george"),
                    policy.forget(request))

        expected = (USERS["george"], "george", True, [("X-Login", "george")],
                    [("X-Logout", "1")])
        # in a request greenlet, and outside any loop
        assert asyncio.run(spawn_greenlet(plain, self._makeRequest())) \
            == expected
        assert plain(self._makeRequest()) == expected

    def test_coroutines_get_awaitables(self, policy):
        async def main(request):
            return (await policy.identity(request),
                    await policy.authenticated_userid(request),
                    bool(await policy.permits(request, Root(request), "edit")),
                    await policy.remember(request, "george"),
                    await policy.forget(request))

        expected = (USERS["fred"], "fred", False, [("X-Login", "george")],
                    [("X-Logout", "1")])
        # on the loop itself (a Task)
        assert asyncio.run(main(self._makeRequest("fred"))) == expected

    def test_synchronized_coroutines_get_values(self, policy):
        # plain code asked (through synchronize): the coroutine it runs
        # gets values, as the plain code would
        async def main(request):
            return (policy.identity(request),
                    policy.authenticated_userid(request),
                    bool(policy.permits(request, Root(request), "edit")),
                    policy.remember(request, "george"),
                    policy.forget(request))

        expected = (USERS["fred"], "fred", False, [("X-Login", "george")],
                    [("X-Logout", "1")])
        assert asyncio.run(spawn_greenlet(synchronize(main),
                                          self._makeRequest("fred"))) \
            == expected

    def test_plain_code_on_the_loop_is_a_scope_error(self, events):
        proxy = self._makeOne(AsyncSecurityPolicy(events))

        def plain(request):
            return proxy.identity(request)

        async def main():
            plain(self._makeRequest())

        with pytest.raises(ScopeError, match="called on the event loop"):
            asyncio.run(main())


async def coroutine_view(request):
    identity = await request.identity
    userid = await request.authenticated_userid
    headers = await remember(request, "george")
    fheaders = await forget(request)
    # predicates are plain code: plain values, in any view
    authenticated = request.is_authenticated
    can_edit = request.has_permission("edit")
    return {"identity": identity, "userid": userid, "remember": headers,
            "forget": fheaders, "authenticated": authenticated,
            "can_edit": bool(can_edit)}


@coroutine
def seed_view(request):
    identity = yield from request.identity
    userid = yield from request.authenticated_userid
    headers = yield from remember(request, "george")
    fheaders = yield from forget(request)
    authenticated = request.is_authenticated
    can_edit = request.has_permission("edit")
    return {"identity": identity, "userid": userid, "remember": headers,
            "forget": fheaders, "authenticated": authenticated,
            "can_edit": bool(can_edit)}


def legacy_view(request):
    assert threading.current_thread() is not threading.main_thread()
    return {"identity": request.identity,
            "userid": request.authenticated_userid,
            "remember": remember(request, "george"),
            "forget": forget(request),
            "authenticated": request.is_authenticated,
            "can_edit": bool(request.has_permission("edit"))}


VIEWS = {"async": coroutine_view, "generator": seed_view,
         "legacy": legacy_view}

# as JSON gives them back
GEORGE = {"identity": USERS["george"], "userid": "george",
          "remember": [["X-Login", "george"]], "forget": [["X-Logout", "1"]],
          "authenticated": True, "can_edit": True}
ANONYMOUS = {"identity": None, "userid": None,
             "remember": [["X-Login", "george"]],
             "forget": [["X-Logout", "1"]],
             "authenticated": False, "can_edit": False}


@pytest.fixture(params=sorted(VIEWS))
def view_kind(request):
    return request.param


class TestInViews:
    @pytest.mark.parametrize("user, expected", [("george", GEORGE),
                                                 ("mallory", ANONYMOUS)])
    def test_recipe(self, policy, view_kind, user, expected):
        def configure(config):
            config.add_view(VIEWS[view_kind], name="me", renderer="json")

        app = make_app(policy, configure)
        resp = asyncio.run(get(app, "/me", headers={"X-User": user}))
        assert resp.status_int == 200, resp.text
        assert resp.json == expected

    def test_view_permission(self, policy, view_kind):
        def configure(config):
            config.add_view(VIEWS[view_kind], name="edit", renderer="json",
                            permission="edit")

        app = make_app(policy, configure)

        async def main():
            return [(await get(app, "/edit", headers={"X-User": user}))
                    for user in ("george", "fred", "mallory")]

        george, fred, mallory = asyncio.run(main())
        assert george.status_int == 200
        assert george.json["userid"] == "george"
        assert fred.status_int == 403
        assert mallory.status_int == 403

    def test_cache_looks_the_identity_up_once_per_request(self, events,
                                                          view_kind):
        from aiopyramid.security import CoroutineSecurityPolicyProxy

        policy = CoroutineSecurityPolicyProxy(CachedSecurityPolicy(events))

        def configure(config):
            config.add_view(VIEWS[view_kind], name="me", renderer="json",
                            permission="view")

        app = make_app(policy, configure)

        async def main():
            return [await get(app, "/me", headers={"X-User": "george"}),
                    await get(app, "/me", headers={"X-User": "fred"})]

        george, fred = asyncio.run(main())
        assert george.json["can_edit"] is True
        assert fred.json["can_edit"] is False
        # forget() in the views clears the cache once: two lookups each
        assert events == [("identity", "george")] * 2 + \
            [("identity", "fred")] * 2

    def test_tween_gets_plain_values(self, policy, events):
        seen = []

        def tween_factory(handler, registry):
            def tween(request):
                seen.append((request.identity, request.is_authenticated,
                             bool(request.has_permission("edit",
                                                         Root(request)))))
                return handler(request)

            return tween

        def configure(config):
            config.registry.tween_under_test = tween_factory
            config.add_tween(__name__ + ".tween_under_test")
            config.add_view(coroutine_view, name="me", renderer="json")

        app = make_app(policy, configure)
        resp = asyncio.run(get(app, "/me", headers={"X-User": "george"}))
        assert resp.json == GEORGE
        assert seen == [(USERS["george"], True, True)]


def tween_under_test(handler, registry):
    return registry.tween_under_test(handler, registry)


class TestConcurrency:
    def test_two_requests_whose_identity_lookups_wait_interleave(
            self, view_kind):
        """Each user's first lookup waits until the other's has started:
        serialised, the first would wait forever (here: time out)."""
        from aiopyramid.security import CoroutineSecurityPolicyProxy

        events = []
        started = {"george": asyncio.Event(), "fred": asyncio.Event()}
        other = {"george": "fred", "fred": "george"}

        class GatedPolicy(AsyncSecurityPolicy):
            async def identity(self, request):
                name = request.headers.get("X-User")
                events.append(("start", name))
                started[name].set()
                await started[other[name]].wait()
                events.append(("end", name))
                return USERS.get(name)

        policy = CoroutineSecurityPolicyProxy(GatedPolicy(events))

        def configure(config):
            config.add_view(VIEWS[view_kind], name="me", renderer="json")

        app = make_app(policy, configure)

        async def main():
            return await asyncio.wait_for(asyncio.gather(
                get(app, "/me", headers={"X-User": "george"}),
                get(app, "/me", headers={"X-User": "fred"}),
            ), timeout=5)

        george, fred = asyncio.run(main())
        assert george.json["userid"] == "george"
        assert fred.json["userid"] == "fred"
        # both first lookups were in flight at once: neither ended before
        # the other started (the views ask again later)
        assert sorted(events[:2]) == [("start", "fred"), ("start", "george")]
        assert events[2][0] == "end"
