"""An app for the interleaved-users attack (tests/test_auth_policy_shapes.py):
every step that decides who the user is or what they may do waits on the
loop, so many requests are in flight at once, each must see only its own
identity.  Users come in the X-User header; /doc/<owner>/ is readable by
its owner only (a synchronized traversal ``__getitem__`` and ``__acl__``
that wait), and each view says who Pyramid thinks is asking."""
import asyncio
import random

from pyramid.authorization import ACLHelper, Allow, Authenticated, Everyone
from pyramid.config import Configurator
from pyramid.request import RequestLocalCache
from pyramid.response import Response
from pyramid.threadlocal import get_current_request

from aiopyramid.helpers import synchronize
from aiopyramid.security import CoroutineSecurityPolicyProxy

USERS = ["u{}".format(i) for i in range(12)]


async def pause():
    await asyncio.sleep(random.random() * 0.002)


def same_request(request):
    current = get_current_request()
    if current is not request:
        raise RuntimeError("get_current_request() is another request")


class Policy:
    def __init__(self):
        self.cache = RequestLocalCache(self.load_identity)

    @synchronize
    async def load_identity(self, request):
        await pause()
        same_request(request)
        user = request.headers.get("X-User")
        return {"userid": user} if user in USERS else None

    async def identity(self, request):
        await pause()
        same_request(request)
        return self.cache.get_or_create(request)

    async def authenticated_userid(self, request):
        identity = await self.identity(request)
        return None if identity is None else identity["userid"]

    async def permits(self, request, context, permission):
        identity = await self.identity(request)
        principals = [Everyone]
        if identity is not None:
            principals += [Authenticated, identity["userid"]]
        return ACLHelper().permits(context, principals, permission)

    def remember(self, request, userid, **kw):
        return []

    def forget(self, request, **kw):
        return []


class Doc:
    def __init__(self, owner, parent):
        self.owner = owner
        self.__name__ = owner
        self.__parent__ = parent

    @synchronize
    async def __acl__(self):
        await pause()
        request = get_current_request()
        # a synchronized __acl__ gets values: a tripwire if it did not
        userid = request.authenticated_userid
        if not (userid is None or isinstance(userid, str)):
            raise RuntimeError("not a value: {!r}".format(userid))
        return [(Allow, self.owner, "view")]


class Docs:
    __name__ = "doc"

    def __init__(self, parent):
        self.__parent__ = parent

    @synchronize
    async def __getitem__(self, owner):
        await pause()
        return Doc(owner, self)


class Root:
    __name__ = ""
    __parent__ = None
    __acl__ = []

    def __init__(self, request):
        self.request = request

    def __getitem__(self, name):
        if name == "doc":
            return Docs(self)
        raise KeyError(name)


def tween_factory(handler, registry):
    def tween(request):
        seen = request.authenticated_userid  # plain code: a value
        response = handler(request)
        response.headers["X-Tween-User"] = str(seen)
        return response

    return tween


async def coroutine_doc(context, request):
    userid = await request.authenticated_userid
    await pause()
    return Response("user={} doc={} perm={}".format(
        userid, context.owner, bool(request.has_permission("view"))))


def legacy_doc(context, request):
    return Response("user={} doc={} perm={}".format(
        request.authenticated_userid, context.owner,
        bool(request.has_permission("view"))))


def main(global_config=None, **settings):
    with Configurator(settings=settings, root_factory=Root) as config:
        config.include("aiopyramid")
        config.set_security_policy(CoroutineSecurityPolicyProxy(Policy()))
        config.add_tween(__name__ + ".tween_factory")
        config.add_view(coroutine_doc, context=Doc, permission="view")
        config.add_view(legacy_doc, context=Doc, name="legacy",
                        permission="view")
        config.add_view(coroutine_doc, context=Doc, name="open")
        config.add_view(legacy_doc, context=Doc, name="legacy-open")
        config.add_view(lambda request: Response("hello"), name="hello",
                        context=Root)
        return config.make_wsgi_app()
