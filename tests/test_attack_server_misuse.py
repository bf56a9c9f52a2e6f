"""ATTACK (attack-exec): HttpServer made without the loop that serves it
(None, or something else): a clear error saying what to pass, not an
AttributeError about create_future from deep inside."""
import pytest

from aiopyramid.server import HttpServer


def _app(environ, start_response):
    start_response("200 OK", [])
    return [b"x"]


@pytest.mark.parametrize("loop", [None, "a loop", 0])
def test_attack_http_server_without_a_loop_says_what_to_pass(loop):
    with pytest.raises(TypeError, match="get_running_loop"):
        HttpServer(_app, loop)
