"""An app whose authorization the attack tests (tests/test_auth_fail_closed.py)
try to get past, in-process and under gunicorn.

Users come in the X-User header (the login itself is not what is attacked):
george is an admin, fred an ordinary user, mallory an admin whose account
is disabled (the groupfinder returns None for him), eve is banned.  Every
coroutine in the policy is written in one of the shapes a build-time
"is this a coroutine function?" test misses."""
import asyncio
import functools
import os

from pyramid.authentication import (
    BasicAuthAuthenticationPolicy,
    CallbackAuthenticationPolicy,
)
from pyramid.authorization import (
    ALL_PERMISSIONS,
    ACLAuthorizationPolicy,
    ACLHelper,
    Allow,
    Authenticated,
    Deny,
    Everyone,
)
from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPForbidden
from pyramid.response import Response
from pyramid.security import forget, remember

from aiopyramid.auth import authn_policy_factory
from aiopyramid.helpers import coroutine, synchronize
from aiopyramid.security import CoroutineSecurityPolicyProxy

USERS = {
    "george": {"userid": "george", "groups": ["group:admin"]},
    "fred": {"userid": "fred", "groups": []},
    "mallory": {"userid": "mallory", "groups": ["group:admin"],
                "disabled": True},
    "eve": {"userid": "eve", "groups": ["group:banned"]},
}

CALLS = []  # what the policy was asked, for the once-only checks


async def load_user(name):
    await asyncio.sleep(0)
    return USERS.get(name)


# the shapes -------------------------------------------------------------

def logged(func):
    """An ordinary decorator (logging, caching...): the result is a plain
    function, not a coroutine function."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, **kwargs)

    return wrapper


class AsyncCallable:
    """An object whose ``__call__`` is ``async def``."""

    def __init__(self, func):
        self.func = func

    def __get__(self, obj, objtype=None):
        return self if obj is None else functools.partial(self, obj)

    async def __call__(self, *args, **kwargs):
        return await self.func(*args, **kwargs)


def returning(func):
    """A plain def that returns a coroutine."""
    def plain(*args, **kwargs):
        return func(*args, **kwargs)

    return plain


SHAPES = {
    "async": lambda func: func,
    "wrapped": logged,
    "callable": AsyncCallable,
    "returns": returning,
}


# the groupfinder and the two kinds of policy ------------------------------

async def groupfinder(userid, request):
    CALLS.append(("groupfinder", userid))
    user = await load_user(userid)
    if user is None or user.get("disabled"):
        return None
    return user["groups"]


async def basic_check(username, password, request):
    """For BasicAuthAuthenticationPolicy: everyone's password is 'secret'."""
    CALLS.append(("check", username))
    user = await load_user(username)
    if user is None or user.get("disabled") or password != "secret":
        return None
    return user["groups"]


class HeaderAuthenticationPolicy(CallbackAuthenticationPolicy):
    def __init__(self, callback=None):
        self.callback = callback

    def unauthenticated_userid(self, request):
        return request.headers.get("X-User")

    def remember(self, request, userid, **kw):
        return [("X-Login", userid)]

    def forget(self, request, **kw):
        return [("X-Logout", "1")]


def principals_of(user):
    if user is None or user.get("disabled"):
        return [Everyone]
    return [Everyone, Authenticated, user["userid"], *user["groups"]]


def security_policy(shape):
    wrap = SHAPES[shape]

    async def identity(self, request):
        CALLS.append(("identity", request.headers.get("X-User")))
        user = await load_user(request.headers.get("X-User"))
        return None if user is None or user.get("disabled") else user

    async def authenticated_userid(self, request):
        user = await identity(self, request)
        return None if user is None else user["userid"]

    async def permits(self, request, context, permission):
        user = await identity(self, request)
        return ACLHelper().permits(context, principals_of(user), permission)

    async def remember_(self, request, userid, **kw):
        await asyncio.sleep(0)
        return [("X-Login", userid)]

    async def forget_(self, request, **kw):
        await asyncio.sleep(0)
        return [("X-Logout", "1")]

    namespace = {
        "identity": wrap(identity),
        "authenticated_userid": wrap(authenticated_userid),
        "permits": wrap(permits),
        "remember": wrap(remember_),
        "forget": wrap(forget_),
    }
    return type("SecurityPolicy_" + shape, (), namespace)()


class Root:
    __acl__ = [(Deny, "group:banned", ALL_PERMISSIONS),
               (Allow, "group:admin", "admin"),
               (Allow, Authenticated, "view")]

    def __init__(self, request):
        pass


# views --------------------------------------------------------------------

async def hello(request):
    return Response("hello")


async def admin(request):
    return Response("the admin page")


def legacy_admin(request):
    return Response("the admin page, legacy")


def check(request):
    """Plain code that trusts what Pyramid says: 200 only if it may."""
    what = request.params["what"]
    if what == "authenticated":
        ok = request.is_authenticated
    elif what == "admin":
        ok = request.has_permission("admin")
    elif what == "userid":
        ok = request.authenticated_userid is not None
    else:
        ok = request.identity is not None
    if ok:
        return Response("granted")
    raise HTTPForbidden()


def login(request):
    response = Response("logged in")
    response.headerlist.extend(remember(request, "george"))
    return response


def logout(request):
    response = Response("logged out")
    response.headerlist.extend(forget(request))
    return response


async def coroutine_login(request):
    response = Response("logged in")
    response.headerlist.extend(await remember(request, "george"))
    response.headerlist.extend(await forget(request))
    return response


# A coroutine view where the author forgot `await`: each must fail (500),
# never grant.  The checks are a coroutine the views await, so they are
# asked for by coroutine code, as in the view itself.

async def misuse_checks(request):
    kind = request.matchdict["kind"]
    if kind == "ne-none":
        return request.authenticated_userid != None  # noqa: E711
    if kind == "ne-admin":
        return request.authenticated_userid != "nobody"
    if kind == "lt":
        return request.authenticated_userid > ""
    if kind == "not-in":
        return "group:banned" not in request.effective_principals
    if kind == "list":
        return "group:banned" not in list(request.effective_principals)
    if kind == "for":
        for principal in request.effective_principals:
            if principal == "group:banned":
                return False
        return True
    if kind == "unpack":
        everyone, *rest = request.effective_principals
        return "group:banned" not in rest
    if kind == "in-set":
        return request.authenticated_userid not in {None}
    if kind == "format":
        return "{}".format(request.authenticated_userid) != "None"
    if kind == "fstring":
        return f"{request.authenticated_userid}" != "None"
    if kind == "str":
        return str(request.authenticated_userid) != "None"
    if kind == "attr":
        return request.identity.get("userid") is not None
    if kind == "item":
        return "group:banned" not in request.identity["groups"]
    if kind == "bool":
        return bool(request.authenticated_userid)
    raise ValueError(kind)


async def coroutine_misuse(request):
    if await misuse_checks(request):
        return Response("granted")
    raise HTTPForbidden()


@coroutine
def seed_misuse(request):
    """The same in the generator style."""
    if (yield from misuse_checks(request)):
        return Response("granted")
    raise HTTPForbidden()


@synchronize
async def is_logged_in(request):
    """A synchronized helper: written for plain code, it gets values, also
    when a coroutine view calls it."""
    await asyncio.sleep(0)
    return request.authenticated_userid is not None


async def synchronized_helper_view(request):
    if is_logged_in(request):
        return Response("granted")
    raise HTTPForbidden()


class BadACLResource:
    """A synchronized generator ``__acl__`` written against the rule: it is
    run by plain code (Pyramid's ACL check), so it gets values, and
    ``yield from`` a value is a programming error."""

    def __init__(self, request):
        self.request = request

    @synchronize
    @coroutine
    def __acl__(self):
        userid = yield from self.request.authenticated_userid
        return [(Allow, userid, "view")]


def server_error(exc, request):
    return Response("server error: {}".format(type(exc).__name__),
                    status=500)


def main(global_config=None, kind=None, shape=None, error_view=None,
         bad_acl=None, **settings):
    kind = kind or os.environ.get("AUTH_ATTACK_KIND", "security")
    shape = shape or os.environ.get("AUTH_ATTACK_SHAPE", "wrapped")
    with Configurator(settings=settings, root_factory=Root) as config:
        config.include("aiopyramid")
        if kind == "security":
            config.set_security_policy(
                CoroutineSecurityPolicyProxy(security_policy(shape)))
        elif kind == "basic":
            # its callback is a method that returns what check returns
            config.set_authentication_policy(authn_policy_factory(
                BasicAuthAuthenticationPolicy, None,
                SHAPES[shape](basic_check)))
            config.set_authorization_policy(ACLAuthorizationPolicy())
        else:
            config.set_authentication_policy(authn_policy_factory(
                HeaderAuthenticationPolicy, SHAPES[shape](groupfinder)))
            config.set_authorization_policy(ACLAuthorizationPolicy())
        for name, view, extra in [
            ("hello", hello, {}),
            ("admin", admin, {"permission": "admin"}),
            ("legacy-admin", legacy_admin, {"permission": "admin"}),
            ("check", check, {}),
            ("login", login, {}),
            ("logout", logout, {}),
            ("coroutine-login", coroutine_login, {}),
            ("synchronized-helper", synchronized_helper_view, {}),
        ]:
            config.add_route(name, "/" + name)
            config.add_view(view, route_name=name, **extra)
        config.add_route("misuse", "/misuse/{kind}")
        config.add_view(coroutine_misuse, route_name="misuse")
        config.add_route("seed-misuse", "/seed-misuse/{kind}")
        config.add_view(seed_misuse, route_name="seed-misuse")
        if bad_acl or os.environ.get("AUTH_ATTACK_BAD_ACL"):
            config.add_route("bad-acl", "/bad-acl", factory=BadACLResource)
            config.add_view(admin, route_name="bad-acl", permission="view")
        if error_view:
            config.add_exception_view(server_error, context=Exception)
        return config.make_wsgi_app()
