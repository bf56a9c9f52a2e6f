"""Edge cases of the HTTP protocol: paused writes, malformed bodies,
HTTP/1.0 and Expect, Host and limits, freeing finished requests, response
header validation, slow clients.  Each test failed (or, for the first, read
freed memory under ASan) before its fix."""
import gc

import pytest

from .rawhttp import parse_all
from .inprocess import connect, loop, spin  # noqa: F401 -- fixture


def test_list_changed_while_a_paused_write_waits(loop):
    body = [b"a" * 10, b"b" * 10, b"c" * 10]
    holder = {}

    def app(env, start_response):
        write = start_response("200 OK", [])
        write(b"head ")
        holder["proto"].pause_writing()  # the client stopped reading
        return body

    server, proto, t = connect(loop, app)
    holder["proto"] = proto
    proto.data_received(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    body[:] = [b"z"]
    gc.collect()
    proto.resume_writing()
    spin(loop)
    (response,) = parse_all(bytes(t.out))
    assert response.body == b"head " + b"a" * 10 + b"b" * 10 + b"c" * 10
    proto.connection_lost(None)


def test_malformed_body_stops_reading_while_the_app_runs(loop):
    import asyncio

    from aiopyramid import _core

    release = loop.create_future()

    def app(env, start_response):
        try:
            env["wsgi.input"].read()
        except Exception:
            pass
        _core.await_(release)  # the app goes on with other work
        start_response("200 OK", [])
        return [b"done"]

    server, proto, t = connect(loop, app)
    proto.data_received(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    spin(loop)  # the app waits for the body...
    proto.data_received(b"zz\r\n")  # ...which turns out malformed
    spin(loop)
    for _ in range(50):
        proto.data_received(b"x" * 65536)  # a client that keeps sending
    spin(loop)
    assert t.paused and not t.closed  # nothing more is read meanwhile
    release.set_result(None)
    spin(loop)
    assert parse_all(bytes(t.out))[0].body == b"done" and t.closed
    assert asyncio.isfuture(release)


def test_transfer_encoding_in_http10_closes_after_the_response(loop):
    seen = []

    def app(env, start_response):
        seen.append((env["PATH_INFO"], env["wsgi.input"].read()))
        start_response("200 OK", [])
        return [b""]

    server, proto, t = connect(loop, app)
    proto.data_received(b"POST /a HTTP/1.0\r\nConnection: keep-alive\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                        b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n")
    spin(loop)
    assert [path for path, _ in seen] == ["/a"] and t.closed


def test_expect_is_case_insensitive(loop):
    def app(env, start_response):
        body = env["wsgi.input"].read()
        start_response("200 OK", [])
        return [body]

    server, proto, t = connect(loop, app)
    proto.data_received(b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\n"
                        b"Content-Length: 5\r\n\r\n")
    spin(loop)
    assert bytes(t.out) == b"HTTP/1.1 100 Continue\r\n\r\n"
    proto.data_received(b"hello")
    spin(loop)
    assert parse_all(bytes(t.out)[25:])[0].body == b"hello"
    proto.connection_lost(None)


def test_unanswered_expect_announces_the_close(loop):
    def app(env, start_response):
        start_response("200 OK", [("Content-Length", "2")])
        return [b"hi"]

    server, proto, t = connect(loop, app)
    proto.data_received(b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n"
                        b"Content-Length: 5\r\n\r\n")
    spin(loop)
    head = bytes(t.out).split(b"\r\n\r\n", 1)[0]
    assert b"Connection: close" in head and t.closed


def test_no_second_response_after_a_complete_one(loop):
    def app(env, start_response):
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]  # answers without reading the chunked body

    server, proto, t = connect(loop, app)
    proto.data_received(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    spin(loop)
    proto.data_received(b"zz\r\n")
    spin(loop)
    assert [r.status for r in parse_all(bytes(t.out))] == [200]
    assert t.closed


def test_script_name_is_stripped_on_a_segment_boundary(loop):
    seen = []

    def app(env, start_response):
        seen.append((env["SCRIPT_NAME"], env["PATH_INFO"]))
        start_response("200 OK", [])
        return [b""]

    for path, expected in [(b"/app/x", ("/app", "/x")), (b"/app", ("/app", "")),
                           (b"/apple", ("/app", "/apple")),
                           (b"/appx/y", ("/app", "/appx/y"))]:
        seen.clear()
        server, proto, t = connect(loop, app, base_environ={"SCRIPT_NAME": "/app"})
        proto.data_received(b"GET " + path + b" HTTP/1.1\r\nHost: h\r\n\r\n")
        spin(loop)
        assert seen == [expected], path
        proto.connection_lost(None)


def test_request_line_limit_counts_the_whole_line(loop):
    def app(env, start_response):
        start_response("200 OK", [])
        return [b""]

    for url, status in [(b"/" + b"a" * 6, 200), (b"/" + b"a" * 7, 414)]:
        line = b"GET " + url + b" HTTP/1.1"
        server, proto, t = connect(loop, app, limit_request_line=20)
        proto.data_received(line + b"\r\nHost: h\r\n\r\n")
        spin(loop)
        assert len(line) == 20 + (status == 414)
        assert [r.status for r in parse_all(bytes(t.out))] == [status], line
        proto.connection_lost(None)


def test_worker_limits_are_gunicorns():
    from types import SimpleNamespace

    from aiopyramid.gunicorn.worker import _request_limits

    def limits(line, fields, size):
        return _request_limits(SimpleNamespace(
            limit_request_line=line, limit_request_fields=fields,
            limit_request_field_size=size))

    # 0 is never "unbounded" for a server that buffers the head
    assert limits(0, 0, 0) == {"limit_request_line": 1024 * 1024,
                               "limit_request_fields": 32768,
                               "limit_request_field_size": 8190}
    assert limits(4094, 100, 8190) == {"limit_request_line": 4094,
                                       "limit_request_fields": 100,
                                       "limit_request_field_size": 8190}
    assert limits(99999, 99999, 100)["limit_request_line"] == 8190
    assert limits(99999, 99999, 100)["limit_request_fields"] == 32768


def test_host_rules(loop):
    seen = []

    def app(env, start_response):
        seen.append(env.get("HTTP_HOST"))
        start_response("200 OK", [])
        return [b""]

    cases = [
        (b"GET / HTTP/1.1\r\n\r\n", 400, []),  # HTTP/1.1 needs a Host
        (b"GET / HTTP/1.1\r\nHost: good.example\r\nHost: evil.example\r\n\r\n", 400, []),
        (b"GET http://evil.example:8080/x HTTP/1.1\r\nHost: good.example\r\n\r\n",
         200, ["evil.example:8080"]),  # the target's authority wins
        (b"GET / HTTP/1.0\r\n\r\n", 200, [None]),  # HTTP/1.0 may omit it
    ]
    for request, status, hosts in cases:
        seen.clear()
        server, proto, t = connect(loop, app)
        proto.data_received(request)
        spin(loop)
        assert [r.status for r in parse_all(bytes(t.out))] == [status], request
        assert seen == hosts, request
        proto.connection_lost(None)


def test_finished_requests_go_without_the_cyclic_gc(loop):
    def app(env, start_response):
        env["wsgi.input"].read()
        start_response("200 OK", [])
        return [b"ok"]

    request = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\n" + b"x" * 1000
    gc.collect()
    gc.disable()
    try:
        server, proto, t = connect(loop, app)
        for _ in range(20):
            proto.data_received(request)
            spin(loop, 2)
        alive = sum(type(o).__name__ == "HttpRequest" for o in gc.get_objects())
    finally:
        gc.enable()
    assert server.requests == 20
    assert alive <= 1  # at most the one being released
    proto.connection_lost(None)


@pytest.mark.parametrize("headers,message", [
    ([("X Y", "z")], "invalid response header name 'X Y'"),
    ([("X-A\x00", "b")], "invalid response header name 'X-A\\x00'"),
    ([("X-A", "b\x00c")], "response header value 'b\\x00c' contains a NUL"),
    ([("Content-Length", "4"), ("Content-Length", "2")],
     "conflicting Content-Length response headers: 4 and 2"),
])
def test_bad_response_headers_are_the_apps_error(loop, headers, message):
    logged = []

    def app(env, start_response):
        start_response("200 OK", headers)
        return [b"body"]

    server, proto, t = connect(loop, app,
                               error_log=lambda msg, exc: logged.append(str(exc)))
    proto.data_received(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    spin(loop)
    assert [r.status for r in parse_all(bytes(t.out))] == [500]
    assert logged == [message]
    proto.connection_lost(None)


def test_clients_that_keep_a_request_waiting_are_cut_off(loop):
    import time

    from aiopyramid import _core
    from aiopyramid.server import HttpServer

    from .inprocess import FakeTransport

    def app(env, start_response):
        env["wsgi.input"].read()
        start_response("200 OK", [])
        return [b"x"]

    server = HttpServer(app, loop)
    conns = []
    for data in (b"GET / HTT",  # a head sent a byte at a time
                 b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nab",  # stalls
                 b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"):  # answered, kept alive
        proto, t = server(), FakeTransport()
        proto.connection_made(t)
        proto.data_received(data)
        conns.append((proto, t))
    spin(loop)
    assert server.close_idle(60.0, 60.0, 60.0) == 0  # not yet
    time.sleep(0.05)
    conns[0][0].data_received(b"P")  # trickling does not help a head
    assert server.close_idle(60.0, 60.0, 0.02) == 2
    (_, t_head), (_, t_body), (_, t_ok) = conns
    assert t_head.closed and b"408 Request Timeout" in bytes(t_head.out)
    assert t_body.closed and t_body.out == b""  # aborted: nothing to answer
    assert not t_ok.closed  # waiting for nothing: keep-alive rules apply
    for proto, _ in conns:
        proto.connection_lost(None)
    spin(loop)
    assert server.active == 0
