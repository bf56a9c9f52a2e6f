"""Where the default mapper runs a plain view of a request the server
started: in an executor thread when the server's loop runs (the spawn
carries that loop, asked of asyncio once a loop pass), inline when a
protocol is fed by hand with no loop running, as before the hint."""
import asyncio
import threading

from pyramid.config import Configurator
from pyramid.response import Response

from .inprocess import connect, loop, spin  # noqa: F401 -- fixture
from .rawhttp import parse_all


def make_app():
    def where(request):
        return Response(threading.current_thread().name)

    with Configurator() as config:
        config.include("aiopyramid")
        config.add_route("where", "/where")
        config.add_view(where, route_name="where")
        return config.make_wsgi_app()


REQUESTS = b"GET /where HTTP/1.1\r\nHost: h\r\n\r\n" * 3


def test_fed_with_no_loop_running_the_view_runs_inline(loop):
    server, proto, t = connect(loop, make_app())
    proto.data_received(REQUESTS)
    spin(loop)  # the held writes go out
    rs = parse_all(bytes(t.out))
    assert [r.body for r in rs] == [threading.current_thread().name.encode()] * 3
    proto.connection_lost(None)
    spin(loop)


def test_fed_on_the_running_loop_the_view_runs_in_a_thread(loop):
    server, proto, t = connect(loop, make_app())

    async def feed():
        proto.data_received(REQUESTS)
        for _ in range(500):
            if len(parse_all(bytes(t.out))) == 3:
                break
            await asyncio.sleep(0.01)

    loop.run_until_complete(feed())
    rs = parse_all(bytes(t.out))
    assert len(rs) == 3
    here = threading.current_thread().name.encode()
    assert all(r.status == 200 and r.body and r.body != here for r in rs), rs
    proto.connection_lost(None)
    spin(loop)
    loop.run_until_complete(loop.shutdown_default_executor())


def test_a_loop_pass_without_the_server_loop_running_then_one_with_it(loop):
    """the once-a-pass answer is not kept past its pass: fed by hand first
    (inline), then on the running loop (a thread)"""
    server, proto, t = connect(loop, make_app())
    proto.data_received(b"GET /where HTTP/1.1\r\nHost: h\r\n\r\n")
    spin(loop)
    assert len(parse_all(bytes(t.out))) == 1

    async def feed():
        proto.data_received(b"GET /where HTTP/1.1\r\nHost: h\r\n\r\n")
        for _ in range(500):
            if len(parse_all(bytes(t.out))) == 2:
                break
            await asyncio.sleep(0.01)

    loop.run_until_complete(feed())
    rs = parse_all(bytes(t.out))
    here = threading.current_thread().name.encode()
    assert [r.body == here for r in rs] == [True, False], rs
    proto.connection_lost(None)
    spin(loop)
    loop.run_until_complete(loop.shutdown_default_executor())


def test_a_loop_pass_with_the_server_loop_running_then_one_without_it(loop):
    """nor the other way: on the running loop (a thread), then fed by hand
    with no loop running (inline)"""
    server, proto, t = connect(loop, make_app())

    async def feed():
        proto.data_received(b"GET /where HTTP/1.1\r\nHost: h\r\n\r\n")
        for _ in range(500):
            if len(parse_all(bytes(t.out))) == 1:
                break
            await asyncio.sleep(0.01)

    loop.run_until_complete(feed())
    proto.data_received(b"GET /where HTTP/1.1\r\nHost: h\r\n\r\n")
    spin(loop)
    rs = parse_all(bytes(t.out))
    here = threading.current_thread().name.encode()
    assert [r.body == here for r in rs] == [False, True], rs
    proto.connection_lost(None)
    spin(loop)
    loop.run_until_complete(loop.shutdown_default_executor())
