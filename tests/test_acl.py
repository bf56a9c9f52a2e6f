"""__acl__ fetched by a coroutine, checked by Pyramid's default ACL
authorization."""
import asyncio
import threading

import pytest
from pyramid.authentication import CallbackAuthenticationPolicy
from pyramid.authorization import (
    ACLAuthorizationPolicy,
    ACLHelper,
    Allow,
    Authenticated,
    Deny,
    Everyone,
)
from pyramid.config import Configurator
from pyramid.request import Request

from aiopyramid.helpers import coroutine, spawn_greenlet, synchronize

pytestmark = pytest.mark.filterwarnings(
    "ignore:Authentication and authorization policies have been "
    "deprecated:DeprecationWarning"
)

# the "database" the ACLs come from
ACLS = {
    "root": [(Allow, Authenticated, "view"), (Allow, "george", "edit"),
             (Deny, Everyone, "edit")],
}


async def load_acl(name, events):
    events.append(("acl", name))
    await asyncio.sleep(0)
    return ACLS[name]


# the four ways to write it: an attribute or a method, async def or generator

async def fetch_acl(resource):
    return await load_acl(resource.name, resource.events)


@coroutine
def seed_fetch_acl(resource):
    return (yield from load_acl(resource.name, resource.events))


class Resource:
    name = "root"

    def __init__(self, events):
        self.events = events


class AttributeResource(Resource):
    """This resource uses a callable for its __acl__ that accesses the
    db."""

    __acl__ = synchronize(fetch_acl)


class SeedAttributeResource(Resource):
    __acl__ = synchronize(seed_fetch_acl)


class MethodResource(Resource):
    @synchronize
    async def __acl__(self):
        return await load_acl(self.name, self.events)


class SeedMethodResource(Resource):
    @synchronize
    @coroutine
    def __acl__(self):
        return (yield from load_acl(self.name, self.events))


RESOURCES = {
    "attribute-async": AttributeResource,
    "attribute-generator": SeedAttributeResource,
    "method-async": MethodResource,
    "method-generator": SeedMethodResource,
}


def principals_of(request):
    userid = request.headers.get("X-User")
    if userid is None:
        return [Everyone]
    return [Everyone, Authenticated, userid]


class HeaderSecurityPolicy:
    """A plain Pyramid 2 policy; authorization by Pyramid's ACLHelper."""

    def identity(self, request):
        return request.headers.get("X-User")

    def authenticated_userid(self, request):
        return self.identity(request)

    def permits(self, request, context, permission):
        return ACLHelper().permits(context, principals_of(request),
                                   permission)

    def remember(self, request, userid, **kw):
        return []

    def forget(self, request, **kw):
        return []


class HeaderAuthenticationPolicy(CallbackAuthenticationPolicy):
    """A legacy authentication policy, for ACLAuthorizationPolicy."""

    def unauthenticated_userid(self, request):
        return request.headers.get("X-User")


def secured(config, authz):
    if authz == "security-policy":
        config.set_security_policy(HeaderSecurityPolicy())
    else:
        config.set_authorization_policy(ACLAuthorizationPolicy())
        config.set_authentication_policy(HeaderAuthenticationPolicy())


async def edit_view(request):
    await asyncio.sleep(0)
    return {"edited": True, "can_view": bool(request.has_permission("view"))}


@coroutine
def seed_edit_view(request):
    yield from asyncio.sleep(0)
    return {"edited": True, "can_view": bool(request.has_permission("view"))}


def legacy_edit_view(request):
    assert threading.current_thread() is not threading.main_thread()
    return {"edited": True, "can_view": bool(request.has_permission("view"))}


VIEWS = {"async": edit_view, "generator": seed_edit_view,
         "legacy": legacy_edit_view}


async def get(app, path, **kw):
    request = Request.blank(path, **kw)
    return await spawn_greenlet(request.get_response, app)


@pytest.fixture(params=sorted(RESOURCES))
def resource_kind(request):
    return request.param


@pytest.fixture(params=["security-policy", "legacy-policies"])
def authz(request):
    return request.param


def make_app(resource_class, events, authz, view):
    with Configurator(root_factory=lambda request: resource_class(events)) \
            as config:
        config.include("aiopyramid")
        secured(config, authz)
        config.add_view(view, name="edit", permission="edit", renderer="json")
        return config.make_wsgi_app()


class TestResources:
    def test_synchronized_acl_binds_like_a_method(self, resource_kind):
        events = []
        resource = RESOURCES[resource_kind](events)
        assert callable(resource.__acl__)
        # outside any loop the coroutine runs on a fresh one
        assert resource.__acl__() == ACLS["root"]
        assert events == [("acl", "root")]

    def test_acl_helper_in_a_request_greenlet(self, resource_kind):
        events = []
        resource = RESOURCES[resource_kind](events)
        helper = ACLHelper()

        def check():
            return (
                helper.permits(resource, [Everyone, "george"], "edit"),
                helper.permits(resource, [Everyone, "fred"], "edit"),
                helper.principals_allowed_by_permission(resource, "edit"),
            )

        allowed, denied, principals = asyncio.run(spawn_greenlet(check))
        assert allowed.boolval == 1
        assert allowed.ace == (Allow, "george", "edit")
        assert denied.boolval == 0
        assert denied.ace == (Deny, Everyone, "edit")
        assert denied.acl == ACLS["root"]
        assert principals == {"george"}
        assert events == [("acl", "root")] * 3


class TestInApp:
    @pytest.mark.parametrize("view_kind", sorted(VIEWS))
    def test_default_acl_authorization(self, resource_kind, authz,
                                       view_kind):
        events = []
        app = make_app(RESOURCES[resource_kind], events, authz,
                       VIEWS[view_kind])

        async def main():
            return [await get(app, "/edit", headers=headers)
                    for headers in ({"X-User": "george"},
                                    {"X-User": "fred"}, {})]

        george, fred, anonymous = asyncio.run(main())
        assert george.status_int == 200
        assert george.json == {"edited": True, "can_view": True}
        assert fred.status_int == 403
        assert anonymous.status_int == 403
        # one lookup per permission check: george's two, one each for the
        # others (denied before the view ran)
        assert events == [("acl", "root")] * 4

    def test_two_requests_whose_acls_wait_interleave(self, resource_kind,
                                                     authz, monkeypatch):
        """The first request's ACL cannot load before the second's has
        started loading: serialised, the first would wait forever (here:
        time out)."""
        events = []
        second_started = asyncio.Event()
        first = []

        async def gated_load(name, events):
            me = "first" if not first else "second"
            first.append(me)
            events.append(("start", me))
            if me == "first":
                await second_started.wait()
            else:
                second_started.set()
            events.append(("end", me))
            return ACLS[name]

        monkeypatch.setitem(globals(), "load_acl", gated_load)
        app = make_app(RESOURCES[resource_kind], events, authz, edit_view)

        async def main():
            return await asyncio.wait_for(asyncio.gather(
                get(app, "/edit", headers={"X-User": "george"}),
                get(app, "/edit", headers={"X-User": "george"}),
            ), timeout=5)

        one, two = asyncio.run(main())
        assert one.status_int == two.status_int == 200
        assert events[:3] == [("start", "first"), ("start", "second"),
                              ("end", "second")]
        assert events[3] == ("end", "first")
