"""ATTACK (attack-s4): what the last session changed, from outside (raw
bytes over real sockets, both loops)."""
import pytest

from .inprocess import run, serving  # noqa: F401 -- fixture
from .rawhttp import exchange
from .test_http_protocol import echo_app, env_app


@pytest.mark.parametrize("head", [
    # an empty coding before Content-Length: the body was framed by
    # Content-Length (the same fields in the other order got a 400)
    b"Transfer-Encoding: \r\nContent-Length: 26\r\n",
    # alone: the request was served with no body, and what followed it on
    # the connection parsed as the next request
    b"Transfer-Encoding: \r\n",
], ids=["before-content-length", "alone"])
def test_an_empty_transfer_encoding_is_not_implemented(run, head):
    # RFC 9112 6.1: a Transfer-Encoding that does not end in chunked leaves
    # a request's length unknown; gunicorn and nginx answer an empty one
    # 501, as this server does "gzip, chunked"
    async def main():
        async with serving(echo_app) as (port, srv):
            rs, closed = await exchange(
                port, b"POST / HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n"
                b"GET /smuggled HTTP/1.1\r\n\r\n", count=1)
            return rs, closed, srv.requests
    rs, closed, served = run(main())
    assert [r.status for r in rs] == [501] and closed and served == 0, rs


@pytest.mark.parametrize("target", [b"http://", b"https://", b"ftp://h/p",
                                    b"ws://u@h/", b"HTTPX://h/"])
def test_a_target_is_origin_form_or_an_http_absolute_form(run, target):
    # every target but the asterisk and authority forms starts with "/" or
    # is http(s)://host...: these were served with the whole target as
    # PATH_INFO ("http://" alone, which the check of the absolute form's
    # authority did not count as one, and other schemes' URLs, userinfo
    # and all), where gunicorn takes the URL's path and nginx answers 400
    async def main():
        async with serving(env_app) as (port, srv):
            rs, closed = await exchange(
                port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n", count=1)
            return rs, closed, srv.requests
    rs, closed, served = run(main())
    assert [r.status for r in rs] == [400] and closed and served == 0, rs
