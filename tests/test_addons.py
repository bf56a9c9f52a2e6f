"""Templates and add-ons with coroutine views: pyramid_jinja2 and
pyramid_chameleon renderers, pyramid_debugtoolbar (its page for a coroutine
request, the timing panel included), signed-cookie sessions with CSRF
checks, response and finished callbacks in order.  In-process, and the
toolbar, templates and sessions through gunicorn with our worker."""
import asyncio
import http.cookiejar
import json
import re
import urllib.parse
import urllib.request

import pytest
from webtest import TestApp

from aiopyramid.testing import Runner, get_response

from . import addons_app
from .conftest import WORKER, free_port


def greeting(name, n):
    return "<p>Hello %s, %d items: %s</p>" % (name, n, "".join("%d;" % i for i in range(n)))


@pytest.fixture(params=["runner", "webtest"])
def testapp(request):
    """WebTest on our Runner's loop, and WebTest's own TestApp."""
    app = addons_app.main()
    env = {"REMOTE_ADDR": "127.0.0.1"}
    if request.param == "webtest":
        yield TestApp(app, extra_environ=env)
    else:
        with Runner() as runner:
            yield runner.testapp(app, extra_environ=env)


def test_jinja2_and_chameleon_render_coroutine_views_dicts(testapp):
    assert testapp.get("/jinja/ann", {"n": "4"}).text.strip() == greeting("ann", 4)
    chameleon = testapp.get("/chameleon/bob", {"n": "2"}).text
    assert re.sub(r"\s+", "", chameleon) == "<p>Hellobob,<span>0;</span><span>1;</span></p>"


def test_interleaved_renders_each_get_their_own_values():
    app = addons_app.main(toolbar="no")

    async def main():
        return await asyncio.gather(
            *(get_response(app, "/jinja/j%d?n=%d" % (i, i % 5)) for i in range(50)),
            *(get_response(app, "/chameleon/c%d?n=%d" % (i, i % 5)) for i in range(50)))

    responses = asyncio.run(main())
    assert [r.text.strip() for r in responses[:50]] == [greeting("j%d" % i, i % 5) for i in range(50)]
    for i, r in enumerate(responses[50:]):
        assert "Hello c%d," % i in r.text
        assert r.text.count("<span>") == i % 5


def test_session_round_trips_and_csrf_is_checked(testapp):
    token = testapp.get("/session/set", {"value": "v1"}).json["csrf"]
    assert testapp.get("/session/get").json == {"value": "v1"}
    testapp.post("/post", {"thing": "x"}, status=400)  # no token
    testapp.post("/post", {"thing": "x", "csrf_token": "wrong"}, status=400)
    assert testapp.post("/post", {"thing": "x", "csrf_token": token}).json == {
        "posted": "x", "value": "v1"}
    assert testapp.post("/post", {"thing": "y"}, headers={"X-CSRF-Token": token}).json == {
        "posted": "y", "value": "v1"}


def toolbar_url(html):
    match = re.search(r'href="https?://[^/"]+(/_debug_toolbar/[0-9a-f]+)"', html)
    assert match, html
    return match.group(1)


def check_toolbar_page(html):
    assert "/page" in html  # the request's URL
    for panel in ("pDebugPanel-performance", "pDebugPanel-request_vars",
                  "pDebugPanel-renderings", "pDebugPanel-tweens", "pDebugPanel-headers"):
        assert panel in html, panel
    # the timing panel's badge: the whole view, its 10 ms await included
    badge = re.search(r'id="pDebugPanel-performance">.*?<span class="badge[^"]*">([0-9.]+)ms<',
                      html, re.S)
    assert badge, html
    assert float(badge.group(1)) >= 9.0


def test_the_toolbar_shows_a_coroutine_request(testapp):
    page = testapp.get("/page")
    assert "<h1>a coroutine page</h1>" in page.text
    check_toolbar_page(testapp.get(toolbar_url(page.text)).text)


def test_response_then_finished_callbacks_in_order():
    app = addons_app.main(toolbar="no")
    del addons_app.CALLBACKS[:]

    async def main():
        return await asyncio.gather(*(get_response(app, "/callbacks/t%d" % i) for i in range(30)))

    responses = asyncio.run(main())
    for i, r in enumerate(responses):
        tag = "t%d" % i
        assert (r.text, r.headers["X-response-1"], r.headers["X-response-2"]) == (tag, tag, tag)
        assert [what for t, what in addons_app.CALLBACKS if t == tag] == [
            "view", "response-1", "response-2", "finished-1", "finished-2"]


def test_through_gunicorn(gunicorn):
    """Templates render, the toolbar's page for a coroutine request loads,
    session values round-trip (cookies kept by a real HTTP client)."""
    server = gunicorn(app="addons_app:main()")
    base = "http://127.0.0.1:%d" % server.port
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def fetch(path, data=None, status=200):
        try:
            with opener.open(base + path, data=data, timeout=30) as r:
                assert r.status == status
                return r.read().decode()
        except urllib.error.HTTPError as e:
            assert e.code == status, e.read()
            return e.read().decode()

    assert fetch("/jinja/ann?n=2").strip() == greeting("ann", 2)
    assert "Hello bob," in fetch("/chameleon/bob")
    page = fetch("/page")
    assert "<h1>a coroutine page</h1>" in page
    check_toolbar_page(fetch(toolbar_url(page)))
    token = json.loads(fetch("/session/set?value=v2"))["csrf"]
    assert json.loads(fetch("/session/get")) == {"value": "v2"}
    fetch("/post", urllib.parse.urlencode({"thing": "x"}).encode(), status=400)
    assert json.loads(fetch("/post", urllib.parse.urlencode(
        {"thing": "x", "csrf_token": token}).encode())) == {"posted": "x", "value": "v2"}
