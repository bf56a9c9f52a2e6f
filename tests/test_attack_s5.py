"""ATTACK (attack-s5): what the last session changed, from outside (raw
bytes over real sockets on both loops; real gunicorn with our worker)."""
import asyncio

import pytest

from aiopyramid import _core

from .inprocess import loop, run, serving  # noqa: F401 -- fixture
from .rawhttp import exchange

BIG = b"x" * (128 * 1024)  # past what a connection holds back (HELD_MAX)


def big_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return [BIG]


def waiting_app(environ, start_response):
    _core.await_(asyncio.sleep(30))  # a long poll
    start_response("200 OK", [])
    return [b"late"]


# -- the GC pacer's count of the requests a pass starts ---------------------

def test_started_in_pass_ends_with_the_pass_when_responses_are_large(run):
    # started_in_pass was reset only by the flush of held writes: a
    # response past HELD_MAX is written at once and holds none, so every
    # request ever served counted on (the pacer then took every open
    # connection, idle ones too, for a request in flight: its ceiling at
    # 100 young objects per idle connection, for good)
    async def main():
        async with serving(big_app) as (port, srv):
            seen = []
            for _ in range(5):
                rs, _ = await exchange(
                    port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", count=1)
                assert [len(r.body) for r in rs] == [len(BIG)]
                await asyncio.sleep(0.05)
                seen.append(srv.started_in_pass)
            return seen
    assert run(main()) == [0] * 5


def test_started_in_pass_ends_with_the_pass_when_requests_wait(run):
    # requests that wait (long polls) write nothing in the pass that
    # started them: they are counted in `active`, and were counted again
    # in started_in_pass until some other response was flushed
    async def main():
        async with serving(waiting_app) as (port, srv):
            writers = []
            try:
                for _ in range(5):
                    _, w = await asyncio.open_connection("127.0.0.1", port)
                    w.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    writers.append(w)
                for _ in range(100):
                    if srv.active == 5:
                        break
                    await asyncio.sleep(0.02)
                await asyncio.sleep(0.05)
                return srv.active, srv.started_in_pass
            finally:
                for w in writers:
                    w.close()
    assert run(main()) == (5, 0)


def test_attack_idle_connections_do_not_raise_the_gc_ceiling(gunicorn):
    """200 keep-alive connections each fetch one 128 KiB response, then
    stay idle.  The pacer took them all for requests in flight, for good
    (started_in_pass counted every request served since no write was
    held): its ceiling stayed at 100 young objects per idle connection,
    which the README says idle connections never raise."""
    import json
    import socket
    import time

    from .conftest import get_ok

    srv = gunicorn("--worker-connections", "1000", "--keep-alive", "60",
                   app="attack_s5_app:main()", env={"AIOPYRAMID_GC": "tuned"})
    held = []
    try:
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=15)
            s.sendall(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
            data = b""
            while len(data.partition(b"\r\n\r\n")[2]) < 128 * 1024:
                chunk = s.recv(65536)
                assert chunk, data[:200]
                data += chunk
            held.append(s)
        time.sleep(2.5)  # the worker's once-a-second follow(), twice
        state = json.loads(get_ok(srv.port, "/gc"))
    finally:
        for s in held:
            s.close()
    young, ceiling, earned = state["pacer"]
    assert ceiling < 100 * 200, state


# -- request targets ---------------------------------------------------------

def _env_of(run, request):
    import json

    from .test_http_protocol import env_app

    async def main():
        async with serving(env_app) as (port, srv):
            rs, closed = await exchange(port, request, count=1)
            return rs, closed, srv.requests
    rs, closed, served = run(main())
    env = json.loads(rs[0].body) if rs and rs[0].status == 200 else None
    return rs, closed, served, env


@pytest.mark.parametrize("target", [
    # the absolute form's checks were skipped for CONNECT, and the target
    # still parsed as one: HTTP_HOST 'u@evil:8' (what 56e7f88 answers
    # 400 for every other method), PATH_INFO '/x'
    b"http://u@evil:8/x",
    # another scheme's URL, whole as PATH_INFO (b9c69c2's 400 elsewhere)
    b"ftp://h/p",
    # origin form: RFC 9112 3.2.3, a CONNECT's target is host:port only
    b"/path",
    b"u@evil:443",
])
def test_attack_a_connect_target_is_authority_form(run, target):
    rs, closed, served, env = _env_of(
        run, b"CONNECT " + target + b" HTTP/1.1\r\nHost: good\r\n\r\n")
    assert ([r.status for r in rs], closed, served) == ([400], True, 0), env


def test_a_connect_to_host_port_is_still_the_apps(run):
    # authority form: the app answers it (and the connection closes after,
    # as llhttp hands it over)
    rs, closed, served, env = _env_of(
        run, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    assert [r.status for r in rs] == [200] and served == 1
    assert env["REQUEST_METHOD"] == "CONNECT"
    assert env["HTTP_HOST"] == "example.com:443"


# -- the response head --------------------------------------------------------

def _answer(run, status, headers):
    logged = []

    def app(environ, start_response):
        start_response(status, headers)
        return [b"body"]

    async def main():
        async with serving(app, error_log=lambda msg, exc: logged.append(
                str(exc))) as (port, srv):
            rs, closed = await exchange(
                port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", count=1)
            return rs
    return run(main()), logged


@pytest.mark.parametrize("status,headers,message", [
    # a NUL went out in the status line (it is refused in a header value)
    ("200 O\x00K", [], "response status '200 O\\x00K' contains a control "
                       "character"),
    ("200 O\x1bK", [], "response status '200 O\\x1bK' contains a control "
                       "character"),
    # control bytes besides HTAB are no field-vchar (RFC 9110 5.5); HTTP
    # clients built on llhttp refuse the response ("Invalid header value
    # char"); gunicorn's workers refuse them as the app's error
    ("200 OK", [("X-A", "a\x01b")], "response header value 'a\\x01b' "
                                    "contains a control character"),
    ("200 OK", [("X-A", "a\x7fb")], "response header value 'a\\x7fb' "
                                    "contains a control character"),
], ids=["status-nul", "status-esc", "value-soh", "value-del"])
def test_attack_control_bytes_in_the_head_are_the_apps_error(
        run, status, headers, message):
    rs, logged = _answer(run, status, headers)
    assert [r.status for r in rs] == [500] and logged == [message], (rs, logged)


@pytest.mark.parametrize("status,headers", [
    ("200 caf\xe9 \t ok", []),  # obs-text, HTAB and SP in a reason
    ("200 OK", [("X-A", "caf\xe9\tau\xff lait")]),
    ("200 OK", [("Set-Cookie", "c%d=%s" % (i, "v" * 100)) for i in range(200)]),
    ("200 " + "R" * 3000, [("X-Big", "a" * 1020), ("X-Bigger", "b" * 5000)]),
], ids=["latin1-reason", "latin1-value", "many-cookies", "past-1kib"])
def test_heads_in_and_past_the_stack_buffer(run, status, headers):
    rs, logged = _answer(run, status, headers)
    assert [r.status for r in rs] == [200] and logged == [], (rs, logged)
    r = rs[0]
    assert r.reason == status[4:] and r.body == b"body"
    got = [(k, v) for k, v in r.headers if k not in ("date", "content-length")]
    assert got == [(k.lower(), v.strip()) for k, v in headers]


def test_control_bytes_are_found_at_every_place_of_a_value(loop):
    # the scan goes eight bytes at a time: a control byte at each offset
    # of values of lengths around the word's, after obs-text and HTAB
    from .inprocess import connect, spin
    from .rawhttp import parse_all

    cases = []
    for n in range(1, 26):
        for at in range(n):
            for bad in ("\x00", "\x01", "\x1f", "\x7f", "\r"):
                v = ["\xff\t~ "[(at + k) % 4] for k in range(n)]
                v[at] = bad
                cases.append(("".join(v), 500))
        cases.append(("".join("\x80\t\x20\x7e\xa0"[k % 5] for k in range(n)), 200))
    statuses = []
    for value, want in cases:
        def app(environ, start_response, value=value):
            start_response("200 OK", [("X-V", value)])
            return [b"ok"]
        server, proto, t = connect(loop, app, error_log=lambda msg, exc: None)
        proto.data_received(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        spin(loop, 2)
        statuses.append([r.status for r in parse_all(bytes(t.out))])
        proto.connection_lost(None)
    assert statuses == [[want] for _, want in cases]
