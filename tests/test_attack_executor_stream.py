"""ATTACK (attack-exec): a plain view's streamed response.  The view runs
in the executor, but its app_iter was iterated on the event loop: a
generator that does blocking work between pieces (a database cursor, a
file being made: what plain views are for) held the whole worker, every
other request waiting for it.  gunicorn's gthread iterates it in the
view's thread."""
import socket

import pytest

from .rawhttp import read_to_eof

pytest.importorskip("gunicorn")


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_attack_a_plain_views_generator_does_not_hold_the_loop(gunicorn, loop):
    srv = gunicorn(app="attack_stream_app:main()", env={"AIOPYRAMID_LOOP": loop})
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
        s.sendall(b"GET /stream HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        got = b""
        while b"first" not in got:
            chunk = s.recv(65536)
            assert chunk, got
            got += chunk
        # the generator now waits for /go, which the loop must still serve
        with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as g:
            g.sendall(b"GET /go HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            assert read_to_eof(g).endswith(b"went")
        got += read_to_eof(s)
    assert b"released" in got and b"timed out" not in got, got


def test_attack_a_streamed_plain_response_read_outside_the_request(run, make_app):
    """Read where no request greenlet can wait (the body read by the test
    after the request, on the loop's own greenlet): its pieces are made
    right there, in order, and its generator closed."""
    import threading

    from pyramid.response import Response

    from .conftest import get

    closed = []

    def view(request):
        def pieces():
            try:
                for i in range(3):
                    yield b"%d %s;" % (i, threading.current_thread().name.encode())
            finally:
                closed.append(True)

        return Response(app_iter=pieces())

    def configure(config):
        config.add_route("s", "/s")
        config.add_view(view, route_name="s")

    app = make_app(configure)

    async def main():
        r = await get(app, "/s")
        return r.body

    body = run(main())
    assert body.count(b";") == 3 and body.startswith(b"0 ") and closed


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_attack_head_of_a_streamed_plain_response(gunicorn, loop):
    srv = gunicorn(app="attack_stream_app:main()", env={"AIOPYRAMID_LOOP": loop})
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
        s.sendall(b"HEAD /stream HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        got = read_to_eof(s)
    assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"\r\n\r\n"), got


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_attack_clients_leaving_mid_stream_get_their_generators_closed(
        gunicorn, loop):
    """Clients that reset (or close) while a plain view's generator is
    making its pieces in a thread: every generator is closed (its
    `finally` runs) soon after, not left to the cyclic collector."""
    import struct
    import time

    srv = gunicorn(app="attack_stream_app:main()", env={"AIOPYRAMID_LOOP": loop})
    n = 6
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
        s.sendall(b"GET /long HTTP/1.1\r\nHost: t\r\n\r\n")
        assert s.recv(1000).startswith(b"HTTP/1.1 200")
        if i % 2:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()

    def closed():
        with socket.create_connection(("127.0.0.1", srv.port), timeout=15) as c:
            c.sendall(b"GET /closed HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            return int(read_to_eof(c).partition(b"\r\n\r\n")[2])

    for _ in range(300):
        if closed() == n:
            break
        time.sleep(0.05)
    assert closed() == n
    assert "already executing" not in srv.log()
