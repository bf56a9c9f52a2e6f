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


REQUEST = b"GET /where HTTP/1.1\r\nHost: h\r\n\r\n"
HERE = threading.current_thread().name.encode()


def feed_by_hand(loop, proto, t, data):
    """data in with no loop running; the answers (the loop spun only to let
    the held writes out)"""
    proto.data_received(data)
    spin(loop)
    return parse_all(bytes(t.out))


def feed_on_running_loop(loop, proto, t, data, answers):
    """data in from a callback of the running loop; the answers once there
    are `answers` of them (5 s at most)"""
    async def feed():
        proto.data_received(data)
        for _ in range(500):
            if len(parse_all(bytes(t.out))) >= answers:
                break
            await asyncio.sleep(0.01)

    loop.run_until_complete(feed())
    return parse_all(bytes(t.out))


def close(loop, proto):
    proto.connection_lost(None)
    spin(loop)
    loop.run_until_complete(loop.shutdown_default_executor())


def test_fed_with_no_loop_running_the_view_runs_inline(loop):
    server, proto, t = connect(loop, make_app())
    rs = feed_by_hand(loop, proto, t, REQUEST * 3)
    assert [r.body for r in rs] == [HERE] * 3
    close(loop, proto)


def test_fed_on_the_running_loop_the_view_runs_in_a_thread(loop):
    server, proto, t = connect(loop, make_app())
    rs = feed_on_running_loop(loop, proto, t, REQUEST * 3, 3)
    assert len(rs) == 3
    assert all(r.status == 200 and r.body and r.body != HERE for r in rs), rs
    close(loop, proto)


def test_a_loop_pass_without_the_server_loop_running_then_one_with_it(loop):
    """the once-a-pass answer is not kept past its pass: fed by hand first
    (inline), then on the running loop (a thread)"""
    server, proto, t = connect(loop, make_app())
    assert len(feed_by_hand(loop, proto, t, REQUEST)) == 1
    rs = feed_on_running_loop(loop, proto, t, REQUEST, 2)
    assert [r.body == HERE for r in rs] == [True, False], rs
    close(loop, proto)


def test_a_loop_pass_with_the_server_loop_running_then_one_without_it(loop):
    """nor the other way: on the running loop (a thread), then fed by hand
    with no loop running (inline)"""
    server, proto, t = connect(loop, make_app())
    assert len(feed_on_running_loop(loop, proto, t, REQUEST, 1)) == 1
    rs = feed_by_hand(loop, proto, t, REQUEST)
    assert [r.body == HERE for r in rs] == [False, True], rs
    close(loop, proto)
