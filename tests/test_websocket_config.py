"""WebsocketMapper without a server: settings checked with clear errors,
the Origin rule, a clear answer outside aiopyramid's server (WebTest,
pyramid.testing), UWSGIWebsocketMapper's import."""
import pytest
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError
from webtest import TestApp

from aiopyramid.websocket import config as wsconfig
from aiopyramid.websocket.config import WebsocketMapper, websocket_settings
from aiopyramid.websocket.view import WebsocketConnectionView

HANDSHAKE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


def test_settings_defaults():
    assert websocket_settings({}) == {
        "max_message_size": 1048576,
        "compression": True,
        "ping_interval": 0.0,
        "ping_timeout": 20.0,
        "close_timeout": 10.0,
        "allowed_origins": None,
    }


def test_settings_parsed():
    values = websocket_settings({
        "aiopyramid.websocket.max_message_size": "2048",
        "aiopyramid.websocket.compression": "off",
        "aiopyramid.websocket.ping_interval": "15",
        "aiopyramid.websocket.ping_timeout": "2.5",
        "aiopyramid.websocket.allowed_origins":
            "https://Example.com:443\n  http://localhost:6543,http://a.b",
    })
    assert values["max_message_size"] == 2048
    assert values["compression"] is False
    assert values["ping_interval"] == 15.0
    assert values["ping_timeout"] == 2.5
    assert values["allowed_origins"] == frozenset([
        ("https", "example.com", None), ("http", "localhost", 6543),
        ("http", "a.b", None)])
    assert websocket_settings({
        "aiopyramid.websocket.allowed_origins": "*"})["allowed_origins"] == "*"
    assert websocket_settings({
        "aiopyramid.websocket.ping_interval": "off"})["ping_interval"] == 0


@pytest.mark.parametrize("name, value, words", [
    ("max_message_size", "1MB", "whole number of bytes"),
    ("max_message_size", "0", "whole number of bytes"),
    ("compression", "maybe", "true or false"),
    ("ping_interval", "-1", "number of seconds"),
    ("ping_timeout", "0", "more than 0"),
    ("ping_timeout", "nan", "number of seconds"),
    ("allowed_origins", "example.com", "scheme://host"),
    ("allowed_origins", "http://example.com/path", "no path"),
    ("allowed_origins", "* http://a.b", "'*' alone"),
    ("max_mesage_size", "10", "unknown setting"),
])
def test_bad_settings_say_what_is_wrong(name, value, words):
    with pytest.raises(ConfigurationError) as info:
        websocket_settings({"aiopyramid.websocket." + name: value})
    assert words in str(info.value)
    assert "aiopyramid.websocket." + name in str(info.value)


def test_bad_setting_fails_at_include():
    with pytest.raises(ConfigurationError, match="compression"):
        with Configurator(settings={
                "aiopyramid.websocket.compression": "sometimes"}) as config:
            config.include("aiopyramid")


@pytest.mark.parametrize("origin, host, ok", [
    (None, "example.com", True),                     # not a browser
    ("http://example.com", "example.com", True),
    ("https://example.com", "example.com", True),     # TLS at a proxy
    ("https://example.com:443", "example.com", True),
    ("http://EXAMPLE.com", "example.com:80", True),
    ("http://example.com:8080", "example.com:8080", True),
    ("http://example.com", "example.com:8080", False),
    ("http://example.com:8080", "example.com", False),
    ("http://evil.com", "example.com", False),
    ("http://example.com.evil.com", "example.com", False),
    ("null", "example.com", False),
    ("http://[::1]:6543", "[::1]:6543", True),
    ("garbage", "example.com", False),
])
def test_origin_default_rule(origin, host, ok):
    environ = {"HTTP_HOST": host}
    if origin is not None:
        environ["HTTP_ORIGIN"] = origin
    assert wsconfig._origin_allowed(environ, None) is ok


def test_origin_allowed_list():
    allowed = websocket_settings({
        "aiopyramid.websocket.allowed_origins": "https://a.example"
    })["allowed_origins"]
    check = wsconfig._origin_allowed
    assert check({"HTTP_HOST": "b", "HTTP_ORIGIN": "https://a.example"},
                 allowed)
    assert not check({"HTTP_HOST": "a.example",
                      "HTTP_ORIGIN": "http://a.example"}, allowed)
    assert check({"HTTP_HOST": "b", "HTTP_ORIGIN": "http://x"}, "*")


async def echo(ws):
    while (m := await ws.recv()) is not None:
        await ws.send(m)


class Chat(WebsocketConnectionView):
    __view_mapper__ = WebsocketMapper
    subprotocols = ("chat",)


def make_app():
    with Configurator() as config:
        config.include("aiopyramid")
        config.add_route("ws", "/ws")
        config.add_view(echo, route_name="ws", mapper=WebsocketMapper)
        config.add_route("chat", "/chat")
        config.add_view(Chat, route_name="chat")
        return config.make_wsgi_app()


@pytest.mark.parametrize("path", ["/ws", "/chat"])
def test_outside_aiopyramids_server_a_clear_error(path):
    app = TestApp(make_app())
    response = app.get(path, headers=HANDSHAKE, status=501)
    assert "needs aiopyramid's server" in response.text
    assert "AsyncGunicornWorker" in response.text


def test_pyramid_testing_calls_the_view():
    from pyramid import testing
    from pyramid.view import render_view_to_response

    with testing.testConfig() as config:
        config.include("aiopyramid")
        config.add_view(echo, name="ws", mapper=WebsocketMapper)
        request = testing.DummyRequest()
        response = render_view_to_response(None, request, name="ws")
    assert response.status_int == 501


def test_bad_subprotocols_refused_at_configuration():
    class Bad(WebsocketConnectionView):
        __view_mapper__ = WebsocketMapper
        subprotocols = ("has space",)

    with pytest.raises(ConfigurationError, match="subprotocols"):
        with Configurator() as config:
            config.add_route("bad", "/bad")
            config.add_view(Bad, route_name="bad")
            config.commit()


def test_uwsgi_mapper_import():
    try:
        from aiopyramid.websocket import _uwsgi  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="uWSGI"):
            from aiopyramid.websocket.config import UWSGIWebsocketMapper  # noqa
    else:  # pragma: no cover - once the uWSGI side is there
        from aiopyramid.websocket.config import UWSGIWebsocketMapper
        assert UWSGIWebsocketMapper is _uwsgi.UWSGIWebsocketMapper
