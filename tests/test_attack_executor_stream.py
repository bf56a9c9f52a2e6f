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
