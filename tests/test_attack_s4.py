"""ATTACK (attack-s4): what the last session changed, from outside (raw
bytes over real sockets, both loops)."""

import pytest

from .inprocess import run, serving  # noqa: F401 -- fixture
from .rawhttp import exchange, parse_all
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


# -- the GC pacer against requests in flight -------------------------------

@pytest.mark.parametrize("kind", [
    "python",
    # tuned: 300 waiting requests earned a threshold of 11,200, and up to
    # 3,000 of the cycles that followed waited for it (190 MB)
    "tuned",
])
def test_attack_requests_in_flight_do_not_let_cycles_pile_up(gunicorn, kind):
    """300 requests wait in flight (long polls, a slow upstream), then
    3,000 requests on one kept-alive connection each leave a cycle holding
    64 KiB.  Under Python's
    threshold a few hundred are alive at once; the README says an app
    whose requests leave cycles keeps about as much garbage under the
    tuning."""
    import socket
    import time

    from .conftest import get_ok

    srv = gunicorn("--worker-connections", "1000", app="attack_s4_app:main()",
                   env={"AIOPYRAMID_GC": kind})
    held = []
    try:
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=15)
            s.sendall(b"GET /wait?s=600 HTTP/1.1\r\nHost: t\r\n\r\n")
            held.append(s)
        for _ in range(1000):  # all of them waiting (at most 100 s)
            if get_ok(srv.port, "/live").split() == [b"0", b"300"]:
                break
            time.sleep(0.1)
        # one kept-alive connection: the cycles are the only garbage made
        c = socket.create_connection(("127.0.0.1", srv.port), timeout=15)
        held.append(c)
        most = 0
        for i in range(300):
            c.sendall(b"GET /cycle HTTP/1.1\r\nHost: t\r\n\r\n" * 10
                      + b"GET /live HTTP/1.1\r\nHost: t\r\n\r\n")
            buf = b""
            while True:
                rs = parse_all(buf, eof=False)
                if len(rs) == 11:
                    break
                chunk = c.recv(65536)
                assert chunk, "closed"
                buf += chunk
            assert [r.status for r in rs] == [200] * 11
            most = max(most, int(rs[-1].body.split()[0]))
    finally:
        for s in held:
            s.close()
    import gc
    # Python's own young threshold in this interpreter: 700, 2,000 from 3.13
    assert most < gc.get_threshold()[0], "%d cycles of 64 KiB alive at once" % most
