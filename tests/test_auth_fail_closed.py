"""Authorization fails closed: the attacker's requests (anonymous, disabled,
banned) against a real app get a 403 or a 500, never a 200, whatever shape
the policy's coroutines take and whatever the view's author forgot."""
import asyncio
import gc
import warnings

import pytest
from pyramid.request import Request

from . import auth_policies_app as policies_app
from .conftest import LEGACY_AUTH_WARNINGS, get

pytestmark = LEGACY_AUTH_WARNINGS

SHAPES = sorted(policies_app.SHAPES)
KINDS = ["security", "authn"]


def fetch(app, path, user=None):
    return asyncio.run(get(app, path, headers={"X-User": user} if user else {}))


@pytest.fixture(scope="module")
def apps():
    made = {}

    def app(kind, shape):
        if (kind, shape) not in made:
            made[kind, shape] = policies_app.main(kind=kind, shape=shape,
                                                error_view=True)
        return made[kind, shape]

    return app


@pytest.fixture(autouse=True)
def clear_calls():
    policies_app.CALLS.clear()
    yield
    policies_app.CALLS.clear()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
class TestPolicyShapes:
    """Each coroutine of the policy (methods, groupfinder) in each shape a
    build-time test misses: Pyramid must see values."""

    @pytest.mark.parametrize("path", ["/admin", "/legacy-admin"])
    @pytest.mark.parametrize("user", [None, "fred", "mallory", "eve"])
    def test_admin_page_refused(self, apps, kind, shape, path, user):
        resp = fetch(apps(kind, shape), path, user)
        assert resp.status_int == 403, resp.text

    @pytest.mark.parametrize("path", ["/admin", "/legacy-admin"])
    def test_admin_page_granted_to_the_admin(self, apps, kind, shape, path):
        # the control: the checks work, they do not just refuse everyone
        resp = fetch(apps(kind, shape), path, "george")
        assert resp.status_int == 200, resp.text

    @pytest.mark.parametrize("what",
                             ["authenticated", "admin", "userid", "identity"])
    @pytest.mark.parametrize("user", [None, "mallory"])
    def test_plain_code_gets_the_truth(self, apps, kind, shape, what, user):
        # is_authenticated, has_permission, authenticated_userid, identity
        # in a plain view, for an anonymous and a disabled account
        resp = fetch(apps(kind, shape), "/check?what=" + what, user)
        assert resp.status_int == 403, resp.text
        resp = fetch(apps(kind, shape), "/check?what=" + what, "george")
        assert resp.status_int == 200, resp.text

    @pytest.mark.parametrize("path", ["/login", "/coroutine-login"])
    def test_remember_and_forget_give_headers(self, apps, kind, shape, path):
        resp = fetch(apps(kind, shape), path, "george")
        assert resp.status_int == 200, resp.text
        assert resp.headers["X-Login"] == "george"
        if path == "/coroutine-login":  # remember, then forget
            assert resp.headers["X-Logout"] == "1"
        resp = fetch(apps(kind, shape), "/logout", "george")
        assert resp.status_int == 200, resp.text
        assert resp.headers["X-Logout"] == "1"

    @pytest.mark.parametrize("user", [None, "mallory"])
    def test_synchronized_helper_called_by_a_coroutine_view(
            self, apps, kind, shape, user):
        # `request.authenticated_userid is not None` in a synchronized
        # coroutine: it gets the value, even when a coroutine view calls it
        resp = fetch(apps(kind, shape), "/synchronized-helper", user)
        assert resp.status_int == 403, resp.text
        resp = fetch(apps(kind, shape), "/synchronized-helper", "george")
        assert resp.status_int == 200, resp.text

    def test_disabled_account_is_not_authenticated(self, apps, kind, shape):
        resp = fetch(apps(kind, shape), "/check?what=authenticated",
                     "mallory")
        assert resp.status_int == 403
        if kind == "authn":
            assert ("groupfinder", "mallory") in policies_app.CALLS


MISUSES_USERID = ["ne-none", "ne-admin", "lt", "in-set", "format", "fstring",
                  "str", "bool", "attr"]
MISUSES_PRINCIPALS = ["not-in", "list", "for", "unpack"]


@pytest.mark.parametrize("style", ["misuse", "seed-misuse"])
class TestForgottenAwait:
    """A coroutine view whose author forgot `await`: a 500, never a 200."""

    @pytest.mark.parametrize("misuse", MISUSES_USERID + ["item"])
    @pytest.mark.parametrize("kind", KINDS)
    def test_anonymous(self, apps, kind, style, misuse):
        resp = fetch(apps(kind, "async"), "/{}/{}".format(style, misuse))
        assert resp.status_int == 500, resp.text
        assert resp.text == "server error: TypeError"

    @pytest.mark.parametrize("misuse", MISUSES_PRINCIPALS)
    def test_banned(self, apps, style, misuse):
        resp = fetch(apps("authn", "async"), "/{}/{}".format(style, misuse),
                     "eve")
        assert resp.status_int == 500, resp.text
        assert resp.text == "server error: TypeError"


class TestPolicyAwaitable:
    """The awaitable itself, on the loop."""

    def _policy(self):
        return policies_app.security_policy("async")

    def _awaitable(self):
        from aiopyramid.security import CoroutineSecurityPolicyProxy

        proxy = CoroutineSecurityPolicyProxy(self._policy())
        request = Request.blank("/", headers={"X-User": "george"})

        async def ask():
            return proxy.authenticated_userid(request)

        return ask

    def test_every_use_but_await_is_a_type_error(self):
        ask = self._awaitable()

        async def main():
            pending = await ask()
            uses = {
                "==": lambda: pending == "george",
                "!=": lambda: pending != None,  # noqa: E711
                "reflected ==": lambda: None == pending,  # noqa: E711
                "<": lambda: pending < "z",
                ">=": lambda: pending >= "a",
                "in": lambda: "g" in pending,
                "in a list": lambda: pending in ["george"],
                "hash": lambda: hash(pending),
                "iter": lambda: list(pending),
                "len": lambda: len(pending),
                "str": lambda: str(pending),
                "format": lambda: "{}".format(pending),
                "bool": lambda: not pending,
                "attr": lambda: pending.upper(),
                "item": lambda: pending[0],
            }
            failed = {}
            for name, use in uses.items():
                try:
                    use()
                except TypeError as exc:
                    failed[name] = str(exc)
            assert "PolicyAwaitable request.authenticated_userid pending" \
                in repr(pending)
            return failed, await pending

        failed, value = asyncio.run(main())
        assert value == "george"
        assert sorted(failed) == sorted([
            "==", "!=", "reflected ==", "<", ">=", "in", "in a list", "hash",
            "iter", "len", "str", "format", "bool", "attr", "item"])
        for message in failed.values():
            assert message.startswith(
                "request.authenticated_userid was asked for in a coroutine, "
                "which gets an awaitable: 'await' it")

    def test_runs_at_most_once(self):
        ask = self._awaitable()

        async def main():
            pending = await ask()
            with pytest.raises(TypeError):
                list(pending)
            with pytest.raises(TypeError):
                for _ in pending:
                    pass
            first = await pending
            second = await pending
            return first, second

        assert asyncio.run(main()) == ("george", "george")
        assert policies_app.CALLS == [("identity", "george")]

    def test_an_abandoned_await_is_not_run_again(self):
        ask = self._awaitable()
        gate = []

        async def main():
            pending = await ask()
            steps = pending.__await__()
            next(steps)  # suspended inside the policy
            steps.close()
            gate.append(repr(pending))
            with pytest.raises(RuntimeError, match="abandoned"):
                await pending

        asyncio.run(main())
        assert policies_app.CALLS == [("identity", "george")]
        assert "failed" in gate[0]

    def test_dropped_without_await_warns(self):
        ask = self._awaitable()

        async def main():
            await ask()  # the awaitable is dropped at once

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            asyncio.run(main())
            gc.collect()
        messages = [str(w.message) for w in caught
                    if issubclass(w.category, RuntimeWarning)]
        assert messages == [
            "request.authenticated_userid was never awaited: in a coroutine "
            "it is an awaitable, 'await' it to get the value"]
        assert policies_app.CALLS == []  # and the policy was never asked

    def test_asyncio_helpers_still_work(self):
        ask = self._awaitable()

        async def main():
            first, second = await asyncio.gather(await ask(), await ask())
            third = await asyncio.wait_for(await ask(), 5)
            fourth = await asyncio.ensure_future(await ask())
            fifth = [await f for f in asyncio.as_completed([await ask()])]
            return first, second, third, fourth, *fifth

        assert asyncio.run(main()) == ("george",) * 5

    def test_yield_from_still_works(self):
        from aiopyramid.helpers import coroutine

        ask = self._awaitable()

        @coroutine
        def seed():
            pending = yield from ask()
            return (yield from pending)

        assert asyncio.run(seed()) == "george"


class TestGenerator500:
    """A synchronized generator `__acl__` that `yield from`s a value (plain
    code's values are not awaitable): the request ends in a 500."""

    def test_in_process(self):
        resp = fetch(policies_app.main(kind="security", shape="async",
                                     error_view=True, bad_acl=True),
                     "/bad-acl", "george")
        assert resp.status_int == 500


def test_through_gunicorn(gunicorn):
    """The attacker's requests through a real gunicorn with our worker,
    with no exception view: the server turns errors into 500s."""
    from .conftest import http_get

    for kind, shape in [("security", "wrapped"), ("authn", "callable")]:
        srv = gunicorn(app="auth_policies_app:main()",
                       env={"AUTH_ATTACK_KIND": kind,
                            "AUTH_ATTACK_SHAPE": shape,
                            "AUTH_ATTACK_BAD_ACL": "1"})
        try:
            results = {
                path: http_get(srv.port, path)[0]
                for path in ["/admin", "/legacy-admin",
                             "/check?what=admin", "/check?what=authenticated",
                             "/misuse/ne-none", "/seed-misuse/ne-none",
                             "/bad-acl"]
            }
        finally:
            srv.stop()
        assert results == {
            "/admin": 403, "/legacy-admin": 403, "/check?what=admin": 403,
            "/check?what=authenticated": 403, "/misuse/ne-none": 500,
            "/seed-misuse/ne-none": 500, "/bad-acl": 500,
        }, (kind, shape, srv.log())


@pytest.mark.parametrize("shape", SHAPES)
class TestBasicAuth:
    """Pyramid's BasicAuthAuthenticationPolicy with a coroutine `check`: its
    `callback` is a method that returns what `check` returns."""

    def _get(self, app, path, user=None, password=None):
        import base64

        headers = {}
        if user:
            token = "{}:{}".format(user, password).encode()
            headers["Authorization"] = \
                "Basic " + base64.b64encode(token).decode()
        return asyncio.run(get(app, path, headers=headers))

    @pytest.mark.parametrize("path", ["/admin", "/legacy-admin",
                                      "/check?what=authenticated"])
    def test_wrong_password_and_disabled_refused(self, apps, shape, path):
        app = apps("basic", shape)
        assert self._get(app, path).status_int == 403
        assert self._get(app, path, "george", "guess").status_int == 403
        assert self._get(app, path, "mallory", "secret").status_int == 403
        assert self._get(app, path, "george", "secret").status_int == 200
