"""aiopyramid.auth depends on a hand-kept list of Pyramid's functions (the
ones its rule steps over or recognises): on Pyramid 2.0 and the newest 2.x
it imports and its rule holds; on a Pyramid lacking one of them the import
fails, naming the Pyramid version and the missing function.

Each check runs in a fresh interpreter.  The Pyramid versions are installed
with pip into a temporary folder (``--target``, no dependencies: the rest
comes from this environment); if the package registry cannot be reached
those tests are skipped, any other pip failure fails them."""
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

UNREACHABLE = (
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "Could not fetch URL",
    "ConnectionError",
    "ConnectTimeoutError",
    "No matching distribution found",
    "Could not find a version that satisfies",
)


def run_python(code, path=(), timeout=120):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*path, ROOT])
    env["PYTHONWARNINGS"] = "ignore"
    env.pop("PYTHONDEVMODE", None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=timeout)


@pytest.fixture(scope="module")
def pyramid_at(tmp_path_factory):
    """pyramid_at(requirement) -> a folder holding that Pyramid alone."""
    installed = {}

    def install(requirement):
        if requirement not in installed:
            target = tmp_path_factory.mktemp("pyramid")
            try:
                proc = subprocess.run(
                    [sys.executable, "-m", "pip", "install", "--quiet",
                     "--disable-pip-version-check", "--no-deps",
                     "--target", str(target), requirement],
                    capture_output=True, text=True, timeout=240)
            except subprocess.TimeoutExpired:
                pytest.skip("pip install {} timed out: registry "
                            "unreachable?".format(requirement))
            out = proc.stdout + proc.stderr
            if proc.returncode != 0:
                if any(sign in out for sign in UNREACHABLE):
                    pytest.skip("the package registry cannot be reached:\n"
                                + out[-2000:])
                pytest.fail("pip install {} failed:\n{}".format(requirement,
                                                                out))
            installed[requirement] = str(target)
        return installed[requirement]

    return install


CHECK = """
    import asyncio
    from importlib.metadata import version

    import pyramid
    from pyramid.authorization import ACLHelper, Allow, Authenticated, Everyone
    from pyramid.config import Configurator
    from pyramid.request import Request
    from pyramid.response import Response
    from pyramid.threadlocal import get_current_request

    assert pyramid.__file__.startswith({where!r}), pyramid.__file__
    assert version("pyramid").startswith({expect!r}), version("pyramid")

    import aiopyramid.auth  # the list of Pyramid's functions is checked here
    from aiopyramid.helpers import spawn_greenlet, synchronize
    from aiopyramid.security import CoroutineSecurityPolicyProxy

    USERS = {{"george": ["group:editors"]}}

    class Policy:
        async def identity(self, request):
            await asyncio.sleep(0)
            name = request.headers.get("X-User")
            return name if name in USERS else None

        async def authenticated_userid(self, request):
            return await self.identity(request)

        async def permits(self, request, context, permission):
            userid = await self.identity(request)
            principals = [Everyone]
            if userid is not None:
                principals += [Authenticated, userid, *USERS[userid]]
            return ACLHelper().permits(context, principals, permission)

        def remember(self, request, userid, **kw):
            return []

        def forget(self, request, **kw):
            return []

    class Root:
        def __init__(self, request):
            pass

        @synchronize
        async def __acl__(self):
            # plain code (the ACL check) asked: values here
            if get_current_request().authenticated_userid is not None:
                return [(Allow, Everyone, "edit")]
            return []

    async def edit(request):
        userid = await request.authenticated_userid  # awaitable here
        identity = await request.identity
        assert request.is_authenticated is (userid is not None)
        return Response("edited by {{}} {{}}".format(userid, identity))

    with Configurator(root_factory=Root) as config:
        config.include("aiopyramid")
        config.set_security_policy(CoroutineSecurityPolicyProxy(Policy()))
        config.add_view(edit, name="edit", permission="edit")
        config.add_view(edit, name="who")
        app = config.make_wsgi_app()

    async def get(path, user=None):
        request = Request.blank(path,
                                headers={{"X-User": user}} if user else {{}})
        return await spawn_greenlet(request.get_response, app)

    async def main():
        return [(await get("/edit")).status_int,
                (await get("/edit", "george")).text,
                (await get("/who")).text]

    print(asyncio.run(main()))
"""

EXPECTED = "[403, 'edited by george george', 'edited by None None']"


@pytest.mark.parametrize("requirement, expect", [
    ("pyramid==2.0", "2.0"),
    ("pyramid>=2,<3", "2."),  # the newest 2.x
])
def test_rule_holds_on(pyramid_at, requirement, expect):
    where = pyramid_at(requirement)
    proc = run_python(CHECK.format(where=where, expect=expect), path=[where])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == EXPECTED


@pytest.mark.parametrize("remove, name", [
    ("del pyramid.view._call_view", "pyramid.view._call_view"),
    ("del pyramid.security.SecurityAPIMixin.authenticated_userid",
     "pyramid.security.SecurityAPIMixin.authenticated_userid"),
    ("del pyramid.security.LegacySecurityPolicy.remember",
     "pyramid.security.LegacySecurityPolicy.remember"),
    ("pyramid.viewderivers.rendered_view = lambda view, info: view",
     "pyramid.viewderivers.rendered_view.<locals>.viewresult_to_response"),
])
def test_missing_function_fails_the_import(remove, name):
    proc = run_python("""
        from importlib.metadata import version

        import pyramid.security
        import pyramid.view
        import pyramid.viewderivers

        {remove}
        try:
            import aiopyramid.auth
        except ImportError as exc:
            print(version("pyramid"))
            print(exc)
        else:
            print("imported")
    """.format(remove=remove))
    assert proc.returncode == 0, proc.stderr
    pyramid_version, message = proc.stdout.strip().split("\n", 1)
    assert message.startswith(
        "aiopyramid.auth cannot work with Pyramid {}:".format(pyramid_version))
    assert name in message
    # and so does everything built on it
    proc = run_python("""
        import pyramid.security
        import pyramid.view
        import pyramid.viewderivers

        {remove}
        import aiopyramid.security
    """.format(remove=remove))
    assert proc.returncode == 1
    assert "ImportError: aiopyramid.auth cannot work with Pyramid" \
        in proc.stderr
