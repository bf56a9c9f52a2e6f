"""End to end under a real uWSGI (built by ``make test`` with its asyncio
and greenlet plugins), started from the original guide's ini on a free port:
coroutine and legacy views, synchronize in tweens and traversal, auth with a
coroutine callback, uWSGI's request pointer across suspensions, a client
going away, and websockets through UWSGIWebsocketMapper driven by the
``websockets`` client."""
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from .conftest import HERE, ROOT, ServerProcess, free_port, http_get
from .rawhttp import read_to_eof

UWSGI = os.path.join(os.path.dirname(sys.executable), "uwsgi")

# the original guide's ini; the tests add the app and the port
GUIDE_INI = """\
[uwsgi]
http-socket = 127.0.0.1:6543
workers = 1
plugins = asyncio
asyncio = 50
greenlet = true
"""


class UWSGIServer(ServerProcess):
    def stop(self, timeout=15.0):
        # SIGINT: uWSGI exits (SIGTERM would make it reload)
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode


def start_uwsgi(tmp_path, env=None, extra=""):
    assert os.path.exists(UWSGI), (
        "no uwsgi in the virtualenv: `make test` builds it (make uwsgi)")
    port = free_port()
    ini = tmp_path / "uwsgi.ini"
    ini.write_text(GUIDE_INI.replace("6543", str(port)) +
                   "module = uwsgi_app:application\n" + extra)
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join([HERE, ROOT])
    full_env.pop("PYTHONDEVMODE", None)
    full_env["PYTHONWARNINGS"] = "default"  # a loop warning must show
    full_env.update(env or {})
    log_path = tmp_path / ("uwsgi-%d.log" % port)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([UWSGI, "--ini", str(ini)], stdout=log,
                                stderr=subprocess.STDOUT, env=full_env,
                                cwd=HERE, start_new_session=True)
    server = UWSGIServer(proc, port, log_path)
    try:
        server.wait_ready("/hello", timeout=60)
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_uwsgi(tmp_path_factory.mktemp("uwsgi"))
    yield srv
    srv.stop()


def get(server, path, headers=(), timeout=10.0):
    """(status, body) of a GET, with extra headers."""
    with socket.create_connection(("127.0.0.1", server.port),
                                  timeout=timeout) as s:
        head = "".join("%s: %s\r\n" % h for h in headers)
        s.sendall(("GET %s HTTP/1.1\r\nHost: t\r\n%sConnection: close\r\n\r\n"
                   % (path, head)).encode())
        data = read_to_eof(s)
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def aget(port, path, timeout=10.0):
    async def go():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(("GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
                      % path).encode())
        data = await reader.read()
        writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), body

    return await asyncio.wait_for(go(), timeout)


def wait_for(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


# HTTP -------------------------------------------------------------------

def test_fifty_coroutine_views_wait_together(server):
    """50 views each awaiting a 0.2 s sleep all wait at once (the guide's
    asyncio = 50): together they take about 0.2 s, not 10 s."""
    assert get(server, "/sleeping?reset=1")[0] == 200

    async def all_of_them():
        start = time.monotonic()
        results = await asyncio.gather(*[
            aget(server.port, "/sleep?s=0.2&tag=t%d" % i, timeout=30)
            for i in range(50)])
        return results, time.monotonic() - start

    results, elapsed = asyncio.run(all_of_them())
    assert [r[0] for r in results] == [200] * 50
    assert sorted(r[1] for r in results) == sorted(
        b"t%d" % i for i in range(50))
    # several were waiting at the same moment (serially, at most 1 is)
    assert int(get(server, "/sleeping")[1]) > 1
    assert elapsed < 5.0, elapsed  # 50 x 0.2 s one after another is 10 s


def test_fifty_requests_in_flight_at_once(server):
    """Each waits until all 50 (the ini's asyncio = 50) are in: answered
    only if they all wait at the same time."""
    async def all_of_them():
        return await asyncio.gather(*[
            aget(server.port, "/together?n=50&group=g", timeout=60)
            for i in range(50)])

    results = asyncio.run(all_of_them())
    assert results == [(200, b"together")] * 50


def test_legacy_view_runs_in_a_thread(server):
    status, body = get(server, "/legacy")
    assert status == 200
    assert body.split()[0] == b"False", body  # not the loop's thread


def test_synchronized_coroutine_in_a_tween(server):
    assert get(server, "/tweened") == (200, b"FROM THE TWEEN")


def test_synchronized_getitem_in_traversal(server):
    assert get(server, "/tree/n1/n22") == (200, b"n1/n22")
    assert get(server, "/tree/x")[0] == 404


def test_auth_with_a_coroutine_callback(server):
    assert get(server, "/secret", [("X-User", "george")]) == (
        200, b"secret for george")
    assert get(server, "/secret", [("X-User", "fred")])[0] == 403
    assert get(server, "/secret")[0] == 403
    assert get(server, "/plain_secret", [("X-User", "fred")]) == (
        200, b"plain secret for fred")
    assert get(server, "/plain_secret", [("X-User", "nobody")])[0] == 403


def test_use_executor_and_spawn_greenlet(server):
    assert get(server, "/helpers") == (200, b"True SPAWNED")


def test_uwsgi_request_stays_right_in_interleaved_requests(server):
    """Each request sees its own uWSGI request (request_id, connection fd)
    and environ after every resume from a loop callback, while others run
    in between; each runs with aiopyramid's driver on uWSGI's greenlet."""
    async def many():
        return await asyncio.gather(*[
            aget(server.port, "/whoami?tag=%d&n=6&s=0.0%d" % (i, i % 4 + 1))
            for i in range(12)])

    results = asyncio.run(many())
    fds = set()
    for status, body in results:
        assert status == 200, body
        out = json.loads(body)
        seen = out["seen"]
        assert len(seen) == 6
        assert all(s == seen[0] for s in seen), seen
        request_id, fd, query, driven = seen[0]
        assert query.startswith("tag=%s&" % out["tag"])
        assert driven is True
        fds.add(fd)
    assert len(fds) == 12  # twelve connections at once, each its own


def test_client_going_away_cancels_the_view(server):
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        s.sendall(b"GET /hang?tag=gone HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_for(lambda: b"started gone" in get(server, "/events")[1],
                 what="the view to start")
    finally:
        s.close()
    events = wait_for(
        lambda: (lambda b: b if b"cancelled gone" in b else None)(
            get(server, "/events")[1]),
        what="the view to be cancelled")
    assert b"finished gone" not in events
    assert get(server, "/hello") == (200, b"Hello, world!")


# websockets -----------------------------------------------------------

def ws_url(server, path):
    return "ws://127.0.0.1:%d/%s" % (server.port, path)


async def echo_conversation(url, n=100, tag=""):
    async with connect(url, open_timeout=10, close_timeout=10) as ws:
        for i in range(n):
            message = ("text %s %d" % (tag, i)) if i % 2 == 0 else \
                bytes([i % 256, 0, 255]) + tag.encode()
            await ws.send(message)
            reply = await asyncio.wait_for(ws.recv(), 10)
            assert reply == message, (reply, message)
    return n


def test_websocket_echo_twenty_clients_at_once(server):
    async def all_clients():
        return await asyncio.gather(*[
            echo_conversation(ws_url(server, "ws"), 100, "c%d" % i)
            for i in range(20)])

    assert asyncio.run(all_clients()) == [100] * 20


@pytest.mark.parametrize("path", ["ws_gen", "ws_class"])
def test_websocket_view_shapes(server, path):
    assert asyncio.run(echo_conversation(ws_url(server, path), 10)) == 10


def test_websocket_use_str(server):
    async def types(path):
        async with connect(ws_url(server, path), open_timeout=10) as ws:
            out = []
            for m in ["text", b"\xff\x00binary", "é"]:
                await ws.send(m)
                out.append(await asyncio.wait_for(ws.recv(), 10))
            return out

    assert asyncio.run(types("ws_types")) == ["str", "bytes", "str"]
    assert asyncio.run(types("ws_types_bytes")) == ["bytes"] * 3


def test_plain_request_to_a_websocket_route_is_refused(server):
    assert get(server, "/ws")[0] == 400


def test_peer_closing_mid_conversation(server):
    async def talk():
        async with connect(ws_url(server, "ws_until_closed"),
                           open_timeout=10) as ws:
            await ws.send("a")
            return await asyncio.wait_for(ws.recv(), 10)

    assert asyncio.run(talk()) == "got a"
    log = wait_for(lambda: (lambda b: b if b"WebsocketClosed" in b else None)(
        get(server, "/ws_log")[1]), what="the view to end")
    assert json.loads(log) == ["recv gave None", "send raised WebsocketClosed"]
    assert get(server, "/hello") == (200, b"Hello, world!")


@pytest.mark.parametrize("route, code, logged", [
    ("ws_broken", 1000, None),
    ("ws_fails", 1011, "ValueError: a bug in the view"),
])
def test_view_ending_closes_the_websocket(server, route, code, logged):
    """A view that returns ends the websocket with a close frame 1000; one
    that raises, with 1011, and its error is in uWSGI's log."""
    async def talk():
        async with connect(ws_url(server, route), open_timeout=10) as ws:
            await ws.send("x")
            try:
                await asyncio.wait_for(ws.recv(), 10)
            except ConnectionClosed as e:
                return e.rcvd.code if e.rcvd else None
        return "open"

    assert asyncio.run(talk()) == code
    if logged:
        wait_for(lambda: logged in server.log(),
                 what="the view's error in uWSGI's log")


def test_recv_given_up_by_wait_for(server):
    async def talk():
        async with connect(ws_url(server, "ws_timeout"), open_timeout=10) as ws:
            first = await asyncio.wait_for(ws.recv(), 10)
            await ws.send("late")
            return first, await asyncio.wait_for(ws.recv(), 10)

    assert asyncio.run(talk()) == ("timed out", "then late")


def test_idle_websocket_is_no_busy_loop(server):
    worker = psutil.Process(server.proc.pid)

    async def idle():
        async with connect(ws_url(server, "ws"), open_timeout=10) as ws:
            await ws.send("hi")
            assert await asyncio.wait_for(ws.recv(), 10) == "hi"
            before = worker.cpu_times()
            await asyncio.sleep(1.5)
            after = worker.cpu_times()
            await ws.send("still here")
            assert await asyncio.wait_for(ws.recv(), 10) == "still here"
        return (after.user + after.system) - (before.user + before.system)

    assert asyncio.run(idle()) < 0.5


# uWSGI's log ------------------------------------------------------------

def _log_without_noise(server):
    return server.log()


def test_log_clean_with_ignore_websocket_closed_real_error_still_logged(tmp_path):
    srv = start_uwsgi(tmp_path, env={"IGNORE_WEBSOCKET_CLOSED": "1"})
    try:
        asyncio.run(echo_conversation(ws_url(srv, "ws"), 10))

        async def until_closed():
            async with connect(ws_url(srv, "ws_until_closed"),
                               open_timeout=10) as ws:
                await ws.send("a")
                await asyncio.wait_for(ws.recv(), 10)

        asyncio.run(until_closed())
        wait_for(lambda: b"WebsocketClosed" in get(srv, "/ws_log")[1],
                 what="the view to end")
        assert get(srv, "/hello")[0] == 200
        log = srv.log()
        assert "Traceback" not in log, log
        assert "WebsocketClosed" not in log, log

        async def broken():
            async with connect(ws_url(srv, "ws_broken"), open_timeout=10) as ws:
                await ws.send("x")
                try:
                    await asyncio.wait_for(ws.recv(), 10)
                except ConnectionClosed:
                    pass

        asyncio.run(broken())
        log = wait_for(lambda: (lambda t: t if "the real cause" in t else None)(
            srv.log()), what="the real error in the log")
        assert "KeyError: 'the real cause'" in log
    finally:
        srv.stop()


def test_without_the_helper_websocket_closed_shows_in_the_log(tmp_path):
    srv = start_uwsgi(tmp_path)
    try:
        asyncio.run(echo_conversation(ws_url(srv, "ws"), 4))
        wait_for(lambda: "WebsocketClosed" in srv.log(),
                 what="WebsocketClosed in uWSGI's log")
    finally:
        srv.stop()


def test_log_has_no_loop_warning_nor_bug_lines(server):
    get(server, "/hello")
    log = server.log()
    assert "enabled greenlet engine" in log
    assert "running asyncio loop engine" in log
    for bad in ("no current event loop", "get_event_loop", "[BUG]",
                "current_wsgi_req NOT FOUND", "Segmentation", "DAMN"):
        assert bad not in log, (bad, log)


def test_uwsgi_has_both_plugins():
    out = subprocess.run([UWSGI, "--plugins-list"], capture_output=True,
                         text=True, timeout=30)
    names = set((out.stdout + out.stderr).split())
    assert {"asyncio", "greenlet"} <= names


def test_master_with_two_workers_each_gets_its_own_loop(tmp_path):
    """The app is loaded before uWSGI forks its workers: each worker must
    run a loop of its own (one inherited from the master would share its
    epoll set with the other worker)."""
    srv = start_uwsgi(tmp_path, extra="master = true\nworkers = 2\n")
    try:
        async def many():
            return await asyncio.gather(*[
                aget(srv.port, "/sleep?s=0.1&tag=w%d" % i, timeout=30)
                for i in range(40)])

        for _ in range(3):
            assert [r[0] for r in asyncio.run(many())] == [200] * 40
        log = srv.log()
        assert "spawned uWSGI worker 2" in log
        for bad in ("Traceback", "is not registered", "DAMN", "[BUG]"):
            assert bad not in log, (bad, log)
    finally:
        srv.stop()


def test_mapper_and_helper_import_without_uwsgi():
    """Importable where uWSGI is not (this test process): uwsgi is imported
    only when a view is called."""
    code = ("import sys\n"
            "from aiopyramid.websocket._uwsgi import UWSGIWebsocketMapper\n"
            "from aiopyramid.websocket.helpers import ignore_websocket_closed\n"
            "import aiopyramid.uwsgi as u\n"
            "assert 'uwsgi' not in sys.modules\n"
            "assert not u.running_under_uwsgi()\n"
            "assert UWSGIWebsocketMapper.use_str is True\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr


def test_ignore_websocket_closed_in_process():
    from aiopyramid.websocket.exceptions import WebsocketClosed
    from aiopyramid.websocket.helpers import ignore_websocket_closed

    def closed(environ, start_response):
        raise WebsocketClosed("closed")

    def real(environ, start_response):
        try:
            raise KeyError("cause")
        except KeyError as e:
            raise WebsocketClosed("gave up") from e

    def other(environ, start_response):
        raise ValueError("boom")

    assert list(ignore_websocket_closed(closed)({}, None)) == []
    with pytest.raises(WebsocketClosed) as info:
        ignore_websocket_closed(real)({}, None)
    assert isinstance(info.value.__cause__, KeyError)
    with pytest.raises(ValueError):
        ignore_websocket_closed(other)({}, None)


# control frames ----------------------------------------------------------

def raw_ws_connect(port, path, timeout=10.0):
    """A websocket client on a raw socket: the handshake only."""
    import base64

    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(("GET /%s HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n" % (path, key)).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def raw_ws_send(s, opcode, payload):
    mask = os.urandom(4)
    assert len(payload) < 126
    s.sendall(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask +
              bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))


def raw_ws_frame(s):
    def exactly(n):
        data = b""
        while len(data) < n:
            chunk = s.recv(n - len(data))
            assert chunk, "connection closed"
            data += chunk
        return data

    b1, b2 = exactly(2)
    n = b2 & 0x7F
    if n == 126:
        n = int.from_bytes(exactly(2), "big")
    elif n == 127:
        n = int.from_bytes(exactly(8), "big")
    return b1 & 0x0F, exactly(n)


def test_uwsgi_pings_never_reach_the_view(tmp_path):
    """With websocket-ping-freq = 1 uWSGI pings an idle connection (from
    websocket_recv_nb, which the pump calls now and then); the client's
    pongs and pings are handled by uWSGI, and the view sees only the
    messages."""
    srv = start_uwsgi(tmp_path, extra="websocket-ping-freq = 1\n")
    try:
        s = raw_ws_connect(srv.port, "ws")
        try:
            pings = 0
            deadline = time.monotonic() + 10
            while pings < 2 and time.monotonic() < deadline:
                opcode, payload = raw_ws_frame(s)
                assert opcode == 0x9, (opcode, payload)  # nothing else yet
                pings += 1
                raw_ws_send(s, 0xA, payload)  # pong
            assert pings == 2
            raw_ws_send(s, 0x9, b"client ping")
            raw_ws_send(s, 0x1, b"hello")
            frames = []
            while len(frames) < 2:
                opcode, payload = raw_ws_frame(s)
                if opcode != 0x9:  # uWSGI may ping again meanwhile
                    frames.append((opcode, payload))
            # uWSGI 2.0 pongs without echoing the ping's payload
            assert [f[0] for f in frames] == [0xA, 0x1]
            assert frames[1] == (0x1, b"hello")
        finally:
            s.close()

        async def with_pings():
            async with connect(ws_url(srv, "ws"), open_timeout=10) as ws:
                for i in range(3):
                    await ws.ping()  # (uWSGI's pong does not echo it)
                    await ws.send("m%d" % i)
                    assert await asyncio.wait_for(ws.recv(), 10) == "m%d" % i
                await asyncio.sleep(2.5)  # uWSGI's pings, answered by websockets
                await ws.send("after")
                return await asyncio.wait_for(ws.recv(), 10)

        assert asyncio.run(with_pings()) == "after"
    finally:
        srv.stop()


def test_big_messages_and_a_slow_reader(server):
    """Messages larger than a socket buffer, sent to a client that reads
    late: uWSGI's send waits in its own hook, the pump goes on after."""
    big = os.urandom(512 * 1024)

    async def talk():
        async with connect(ws_url(server, "ws"), open_timeout=10,
                           max_size=None) as ws:
            for _ in range(4):
                await ws.send(big)
            await asyncio.sleep(0.5)
            got = [await asyncio.wait_for(ws.recv(), 20) for _ in range(4)]
            await ws.send("small")
            got.append(await asyncio.wait_for(ws.recv(), 10))
            return got

    assert asyncio.run(talk()) == [big] * 4 + ["small"]


def test_security_policy_proxy(tmp_path):
    srv = start_uwsgi(tmp_path, env={"SECURITY_POLICY": "1"})
    try:
        assert get(srv, "/secret", [("X-User", "george")]) == (
            200, b"secret for george")
        assert get(srv, "/secret", [("X-User", "fred")])[0] == 403
        assert get(srv, "/secret")[0] == 403
        assert get(srv, "/plain_secret", [("X-User", "fred")]) == (
            200, b"plain secret for fred")
        assert get(srv, "/tree/n1") == (200, b"n1")
    finally:
        srv.stop()


def test_cross_origin_handshake_is_refused_as_under_gunicorn(server):
    """The Origin rule (cross-site websocket hijacking) is the same under
    uWSGI: a browser page from another site gets 403 and no upgrade; the
    server's own host and a client sending no Origin are let in."""
    from websockets.exceptions import InvalidStatus

    async def talk(origin):
        kw = {} if origin is None else {"origin": origin}
        async with connect(ws_url(server, "ws"), open_timeout=10, **kw) as ws:
            await ws.send("hi")
            return await asyncio.wait_for(ws.recv(), 10)

    with pytest.raises(InvalidStatus) as refused:
        asyncio.run(talk("http://evil.example"))
    assert refused.value.response.status_code == 403
    assert asyncio.run(talk(None)) == "hi"
    assert asyncio.run(talk("http://127.0.0.1:%d" % server.port)) == "hi"
