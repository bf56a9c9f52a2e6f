"""The README's authentication, security policy and ACL recipes, executed as
printed (each code block read from README.md), then attacked: anonymous,
disabled and unknown users get a 403, 404 or 500, never a 200."""
import asyncio
import os
import re

import pytest
from pyramid.authentication import AuthTktAuthenticationPolicy
from pyramid.authorization import ACLHelper, Authenticated, Everyone
from pyramid.config import Configurator
from pyramid.response import Response
from pyramid.security import remember

from aiopyramid.auth import authn_policy_factory
from aiopyramid.security import CoroutineSecurityPolicyProxy

from .conftest import LEGACY_AUTH_WARNINGS, get

pytestmark = LEGACY_AUTH_WARNINGS

README = os.path.join(os.path.dirname(os.path.dirname(__file__)),
                      "README.md")
START = "### Authorization: an `__acl__` that does I/O"
END = "### Tweens"


def readme_blocks():
    """(line, code) of each python block of the auth sections."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    start, end = text.index(START), text.index(END)
    blocks = []
    for m in re.finditer(r"```python\n(.*?)```", text[start:end], re.S):
        line = text[:start + m.start()].count("\n") + 2
        blocks.append((line, m.group(1)))
    return blocks


def recipe(*marks):
    """Execute, as printed, the one block that contains every mark."""
    found = [(line, code) for line, code in readme_blocks()
             if all(mark in code for mark in marks)]
    assert len(found) == 1, (marks, [line for line, _ in found])
    line, code = found[0]
    namespace = {"__name__": "readme_recipe_%d" % line}
    exec(compile(code, "README.md:%d" % line, "exec"), namespace)
    return namespace


def fetch(app, path, user=None, cookie=None):
    headers = {}
    if user:
        headers["X-User"] = user
    if cookie:
        headers["Cookie"] = cookie
    return asyncio.run(get(app, path, headers=headers))


def server_error(exc, request):
    return Response("server error: {}".format(type(exc).__name__),
                    status=500)


def make_app(configure, root_factory=None):
    with Configurator(root_factory=root_factory) as config:
        config.include("aiopyramid")
        config.add_exception_view(server_error, context=Exception)
        configure(config)
        return config.make_wsgi_app()


class HeaderPolicy:
    """A plain security policy: the user is the X-User header, george an
    editor.  For recipes that are not about the policy."""

    GROUPS = {"george": ["group:editors"], "fred": []}

    def identity(self, request):
        name = request.headers.get("X-User")
        return name if name in self.GROUPS else None

    def authenticated_userid(self, request):
        return self.identity(request)

    def permits(self, request, context, permission):
        userid = self.identity(request)
        principals = [Everyone]
        if userid is not None:
            principals += [Authenticated, userid, *self.GROUPS[userid]]
        return ACLHelper().permits(context, principals, permission)

    def remember(self, request, userid, **kw):
        return []

    def forget(self, request, **kw):
        return []


async def granted(request):
    return Response("granted")


def legacy_granted(request):
    return Response("granted, legacy")


def test_every_block_runs_as_printed():
    blocks = readme_blocks()
    assert len(blocks) >= 8
    for line, code in blocks:
        exec(compile(code, "README.md:%d" % line, "exec"),
             {"__name__": "readme_recipe_%d" % line})


@pytest.mark.parametrize("cls", ["MyResource", "MyMethodResource",
                                 "MySeedResource"])
@pytest.mark.parametrize("view", [granted, legacy_granted])
def test_acl_recipe(cls, view):
    ns = recipe("async def fetch_acl(resource)")
    resource = ns[cls]

    def configure(config):
        config.set_security_policy(HeaderPolicy())
        config.add_view(view, name="edit", permission="edit")

    app = make_app(configure, root_factory=lambda request: resource())
    assert fetch(app, "/edit").status_int == 403
    assert fetch(app, "/edit", "fred").status_int == 403
    assert fetch(app, "/edit", "george").status_int == 200


class TestCallbackRecipe:
    def _app(self, ns):
        def configure(config):
            if "includeme" in ns:
                ns["includeme"](config)
            else:  # the generator-style groupfinder
                config.set_authentication_policy(authn_policy_factory(
                    AuthTktAuthenticationPolicy, ns["get_principals"],
                    "sekrit", hashalg="sha512"))
                from pyramid.authorization import ACLAuthorizationPolicy

                config.set_authorization_policy(ACLAuthorizationPolicy())

            async def login(request):
                response = Response("logged in")
                response.headerlist.extend(
                    await remember(request, request.params["user"]))
                return response

            config.add_view(login, name="login")
            config.add_view(granted, name="edit", permission="edit")
            config.add_view(legacy_granted, name="legacy-edit",
                            permission="edit")

        class Root:
            from pyramid.authorization import Allow

            __acl__ = [(Allow, "group:editors", "edit")]

            def __init__(self, request):
                pass

        return make_app(configure, root_factory=Root)

    @pytest.mark.parametrize("marks", [("def includeme", "get_principals"),
                                       ("@coroutine\ndef get_principals",)])
    def test_disabled_and_anonymous_refused(self, marks):
        ns = recipe(*marks)
        ns["USERS"]["mallory"] = {"groups": ["group:editors"],
                                  "disabled": True}
        app = self._app(ns)

        def cookie_of(user):
            resp = fetch(app, "/login?user=" + user)
            return resp.headers.getall("Set-Cookie")[0].split(";")[0]

        for path in ["/edit", "/legacy-edit"]:
            assert fetch(app, path).status_int == 403
            assert fetch(app, path, cookie=cookie_of("mallory")).status_int \
                == 403
            assert fetch(app, path, cookie=cookie_of("nobody")).status_int \
                == 403
            assert fetch(app, path, cookie=cookie_of("george")).status_int \
                == 200

    @pytest.mark.parametrize("view", ["my_view", "my_seed_view"])
    def test_view_recipe_runs(self, view):
        views = recipe("async def my_view", "my_seed_view")
        policy = recipe("def includeme", "get_principals")

        def configure(config):
            policy["includeme"](config)
            config.add_view(views[view], name="v", renderer="json")

        resp = fetch(make_app(configure), "/v")
        assert resp.status_int == 200, resp.text
        assert resp.json is None  # the recipe's views end with `...`


class TestDraftRecipe:
    """`__acl__` and `__getitem__` written from the table."""

    def _app(self, root_factory, configure_views, cached=False):
        # a README security policy in our proxy: its values are awaitables
        # in coroutines, so a rule that handed them to the __acl__ or
        # __getitem__ would be caught here
        if cached:
            policy = recipe("RequestLocalCache(self.load_identity)")
        else:
            policy = recipe("async def permits", "def includeme")

        def configure(config):
            config.set_security_policy(
                CoroutineSecurityPolicyProxy(policy["SecurityPolicy"]()))
            configure_views(config)

        return make_app(configure, root_factory=root_factory)

    @pytest.mark.parametrize("cached", [False, True])
    def test_getitem_hides_drafts_from_anonymous(self, cached):
        ns = recipe("class Drafts", "class Draft")

        def views(config):
            # no permission: only __getitem__ stands in the way
            config.add_view(granted, context=ns["Draft"])
            config.add_view(legacy_granted, context=ns["Draft"],
                            name="legacy")

        app = self._app(ns["Drafts"], views, cached=cached)
        assert fetch(app, "/plan").status_int == 404
        assert fetch(app, "/plan/legacy").status_int == 404
        assert fetch(app, "/plan", "george").status_int == 200
        assert fetch(app, "/plan/legacy", "george").status_int == 200

    @pytest.mark.parametrize("cached", [False, True])
    def test_acl_grants_view_to_the_authenticated_only(self, cached):
        ns = recipe("class Drafts", "class Draft")

        async def coroutine_checks(request):
            # has_permission from a coroutine view: the synchronized
            # __acl__ is run by Pyramid's plain ACL check, it gets values
            return Response("granted") if request.has_permission("view") \
                else Response("denied", status=403)

        def views(config):
            config.add_view(granted, name="c", permission="view")
            config.add_view(legacy_granted, name="l", permission="view")
            config.add_view(coroutine_checks, name="check")

        app = self._app(lambda request: ns["Draft"]("text"), views,
                        cached=cached)
        for path in ["/c", "/l", "/check"]:
            assert fetch(app, path).status_int == 403, path
            assert fetch(app, path, "george").status_int == 200, path

    @pytest.mark.parametrize("cached", [False, True])
    def test_acl_asked_from_a_legacy_views_thread_fails_closed(self, cached):
        # the legacy view's own body asks.  With the coroutine `permits`
        # (cached=False) the proxy runs it in a request greenlet on the
        # loop, where the synchronized __acl__ gets values: the right
        # answer.  With a plain `permits` the thread calls the synchronized
        # __acl__ itself, which runs on the loop for that thread, where no
        # value exists: an error, not an awaitable that `is not None`
        # would take for a user
        ns = recipe("class Drafts", "class Draft")

        def check(request):
            if request.has_permission("view"):
                return Response("granted")
            return Response("denied", status=403)

        app = self._app(lambda request: ns["Draft"]("text"),
                        lambda config: config.add_view(check, name="check"),
                        cached=cached)
        for user, status in [(None, 403), ("george", 200)]:
            resp = fetch(app, "/check", user)
            if cached:
                assert resp.status_int == 500
                assert resp.text == "server error: ScopeError"
            else:
                assert resp.status_int == status, resp.text


def test_is_none_recipe():
    ns = recipe("async def edit_view")

    def configure(config):
        config.set_security_policy(CoroutineSecurityPolicyProxy(
            recipe("async def permits", "def includeme")["SecurityPolicy"]()))
        config.add_view(ns["edit_view"], name="edit", renderer="json")

    app = make_app(configure)
    assert fetch(app, "/edit").json == {"error": "log in first"}
    assert fetch(app, "/edit", "mallory").json == {"error": "log in first"}
    assert fetch(app, "/edit", "george").json == {"userid": "george"}


@pytest.mark.parametrize("marks", [("async def permits", "def includeme"),
                                   ("RequestLocalCache(self.load_identity)",)])
class TestSecurityPolicyRecipe:
    def _app(self, marks):
        ns = recipe(*marks)

        class Root:
            from pyramid.authorization import Allow

            __acl__ = [(Allow, "group:editors", "edit")]

            def __init__(self, request):
                pass

        view_ns = recipe("async def my_view(request):\n    identity")

        def configure(config):
            if "includeme" in ns:
                ns["includeme"](config)
            else:
                config.set_security_policy(
                    CoroutineSecurityPolicyProxy(ns["SecurityPolicy"]()))
            config.add_view(granted, name="edit", permission="edit")
            config.add_view(legacy_granted, name="legacy-edit",
                            permission="edit")
            config.add_view(view_ns["my_view"], name="me", renderer="json")

        return make_app(configure, root_factory=Root)

    @pytest.mark.parametrize("path", ["/edit", "/legacy-edit"])
    def test_refused(self, marks, path):
        app = self._app(marks)
        assert fetch(app, path).status_int == 403
        assert fetch(app, path, "mallory").status_int == 403
        assert fetch(app, path, "george").status_int == 200

    def test_view_recipe_runs(self, marks):
        app = self._app(marks)
        assert fetch(app, "/me", "george").status_int == 200
        assert fetch(app, "/me").status_int == 200
