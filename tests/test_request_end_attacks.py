"""ATTACK (attack-end): a request that suspended ends in its Task's last
step (441efa7): its spawn calls proto_request_ended as the job returns,
which releases the request and starts the next pipelined one right there,
nested inside the finishing Task's step (an eager Task on 3.12+, the
current task swapped by hand on 3.11); a job that raised still ends
through the Task's done callback.  These tests pipeline requests behind
suspending ones (coroutines that await, plain code through an executor),
with bodies, chunked bodies, Connection: close, half-closes and resets;
raise BaseExceptions after suspending; swallow or provoke cancellations;
and count what is left alive.  Every answer must come, in order, exactly
once; every view must see its own Task; errors are logged once; asyncio
never reports a Task exception nobody retrieved nor a pending Task
destroyed.

In-process on HttpServer (asyncio's loop and uvloop), and through a real
gunicorn with our worker: this module is also the app that one serves
(tests.test_request_end_attacks:main()).
"""
import asyncio
import gc
import json
import socket
import struct
import time

import pytest

from aiopyramid import _core

from .inprocess import run, serving  # noqa: F401 -- fixture
from .rawhttp import blocking_exchange, exchange, parse_all


# ------------------------------------------------------- an app of WSGI

class Custom(BaseException):
    pass


RAISES = {
    "/ki": KeyboardInterrupt("ki"),
    "/sysexit": SystemExit(3),
    "/custom": Custom("custom"),
    "/cancel": asyncio.CancelledError(),
}

STATE = {"cancelled": 0, "swallowed": 0, "started": 0, "tasks": []}


def _run_in_thread(seconds):
    time.sleep(seconds)
    return seconds


def wsgi_app(environ, start_response):
    """/KIND/N: KIND says how the request suspends (or not), N numbers it;
    each answers N, the length of what it read, and whether
    asyncio.current_task() stayed the one Task of this request."""
    path = environ["PATH_INFO"]
    kind, _, n = path[1:].partition("/")
    first = asyncio.current_task()
    STATE["tasks"].append(first)
    if kind in ("sleep", "sleepread"):
        _core.await_(asyncio.sleep(0.002))
    elif kind == "s0":
        _core.await_(asyncio.sleep(0))
    elif kind in ("exec", "execread"):
        loop = asyncio.get_running_loop()
        _core.await_(loop.run_in_executor(None, _run_in_thread, 0.002))
    elif kind == "hang":
        STATE["started"] += 1
        try:
            _core.await_(asyncio.sleep(30))
        except asyncio.CancelledError:
            STATE["cancelled"] += 1
            raise
    elif kind == "swallow":
        STATE["started"] += 1
        try:
            _core.await_(asyncio.sleep(30))
        except asyncio.CancelledError:
            STATE["swallowed"] += 1
        _core.await_(asyncio.sleep(0))
    elif kind == "selfcancel":
        _core.await_(asyncio.sleep(0))
        asyncio.current_task().cancel()  # and returns without awaiting
    elif kind == "selfcancelnow":
        asyncio.current_task().cancel()  # never suspends
    elif "/" + kind in RAISES:
        _core.await_(asyncio.sleep(0.002))
        raise RAISES["/" + kind]
    body = environ["wsgi.input"].read() if kind.endswith("read") or kind == "now" else b""
    same = asyncio.current_task() is first and first is not None
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"%s %d %s" % (n.encode(), len(body), b"same" if same else b"OTHER")]


def post(kind, n, body=b"", chunked=False, close=False):
    head = b"POST /%s/%d HTTP/1.1\r\nHost: t\r\n" % (kind.encode(), n)
    if close:
        head += b"Connection: close\r\n"
    if chunked:
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7])
                          for i in range(0, len(body), 7))
        return head + b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


def expected(kind, n, body=b""):
    read = kind.endswith("read") or kind == "now"
    return b"%d %d same" % (n, len(body) if read else 0)


class Watch:
    """What the server's error_log and the loop's exception handler got."""

    def __init__(self):
        self.errors = []
        self.loop_errors = []

    def error_log(self, message, exc):
        self.errors.append((message, type(exc).__name__ if exc else None))

    def install(self):
        asyncio.get_running_loop().set_exception_handler(
            lambda loop, ctx: self.loop_errors.append(ctx.get("message")))


async def settle():
    for _ in range(5):
        await asyncio.sleep(0.01)
    gc.collect()
    await asyncio.sleep(0.01)


def live(name):
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o).__name__ == name)


def other_tasks():
    return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]


KINDS = ["sleep", "now", "exec", "s0", "sleepread", "execread", "now", "s0"]


def test_pipeline_behind_suspending_requests_answers_all_in_order(run):
    """Many requests in one packet, suspending and not, with bodies (some
    chunked, some unread): each answered once, in order, each in a Task of
    its own that stays its own; nothing logged, nothing left running."""
    w = Watch()
    STATE["tasks"].clear()

    async def main():
        w.install()
        reqs, want = [], []
        for i in range(40):
            kind = KINDS[i % len(KINDS)]
            body = b"b" * (i * 13 % 200)
            reqs.append(post(kind, i, body, chunked=i % 3 == 0))
            want.append(expected(kind, i, body))
        reqs.append(post("s0", 40, close=True))
        want.append(expected("s0", 40))
        async with serving(wsgi_app, error_log=w.error_log) as (port, srv):
            rs, closed = await exchange(port, b"".join(reqs), count=len(want))
        await settle()
        return rs, closed, want, other_tasks()

    rs, closed, want, left = run(main())
    assert [r.body for r in rs] == want
    assert closed
    tasks = STATE["tasks"]
    assert len(tasks) == len(want) and len({id(t) for t in tasks}) == len(want)
    assert all(t.done() and not t.cancelled() for t in tasks)
    assert left == []
    assert w.errors == [] and w.loop_errors == []
    STATE["tasks"].clear()


@pytest.mark.parametrize("split", [1, 5, 64, 1 << 20])
def test_pipeline_split_in_pieces_behind_suspending_requests(run, split):
    """The same pipeline trickling in (bodies cut mid-way, heads split):
    the request ending in its Task's step starts the next only once it is
    whole."""
    w = Watch()

    async def main():
        w.install()
        reqs, want = [], []
        for i in range(12):
            kind = ["sleep", "exec", "now", "s0", "sleepread"][i % 5]
            body = b"x" * (i * 31)
            reqs.append(post(kind, i, body, chunked=i % 2 == 0))
            want.append(expected(kind, i, body))
        data = b"".join(reqs)
        pieces = [data[i:i + split] for i in range(0, len(data), split)]
        async with serving(wsgi_app, error_log=w.error_log) as (port, srv):
            rs, closed = await exchange(port, *pieces, count=len(want),
                                        delay=0.0005 if split < 64 else 0.002)
        await settle()
        return rs, want

    rs, want = run(main())
    assert [r.body for r in rs] == want
    assert w.errors == [] and w.loop_errors == []


def test_connection_close_in_the_middle_of_a_suspended_pipeline(run):
    """Connection: close on a suspending request: it is the last answer,
    the connection closes, the requests after it never start."""
    w = Watch()
    STATE["tasks"].clear()

    async def main():
        w.install()
        data = (post("sleep", 0) + post("now", 1, b"abc") +
                post("exec", 2, close=True) + post("now", 3) + post("s0", 4))
        async with serving(wsgi_app, error_log=w.error_log) as (port, srv):
            rs, closed = await exchange(port, data, count=3, timeout=5)
        await settle()
        return rs, closed, other_tasks()

    rs, closed, left = run(main())
    assert [r.body for r in rs] == [b"0 0 same", b"1 3 same", b"2 0 same"]
    assert closed
    assert len(STATE["tasks"]) == 3 and left == []
    assert w.errors == [] and w.loop_errors == []
    STATE["tasks"].clear()


def test_half_close_after_a_pipeline_of_suspending_requests(run):
    """The client sends its pipeline and half-closes: every request is
    answered (each one starting in the Task step of the one before), then
    the server closes."""
    w = Watch()

    async def main():
        w.install()
        data = b"".join(post(k, i) for i, k in
                        enumerate(["sleep", "exec", "s0", "now", "sleep"]))
        async with serving(wsgi_app, error_log=w.error_log) as (port, srv):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(data)
            writer.write_eof()
            buf = b""
            async with asyncio.timeout(10):
                while True:
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    buf += chunk
            writer.close()
        await settle()
        return parse_all(buf)

    rs = run(main())
    assert [r.body for r in rs] == [b"%d 0 same" % i for i in range(5)]
    assert w.errors == [] and w.loop_errors == []


def _reset(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize("kind", ["hang", "swallow", "exec"])
def test_reset_while_suspended_with_requests_pipelined_behind(run, kind):
    """A client resets while its request waits (a coroutine, one that
    swallows the cancellation and returns, plain code in the executor)
    with more requests pipelined behind it: those never start, the next
    connection is served, and after a bounded loop of such clients no
    request, Task or spawn is left alive and nothing is logged."""
    w = Watch()

    async def main():
        w.install()
        STATE.update(cancelled=0, swallowed=0, started=0)
        loop = asyncio.get_running_loop()
        path = "/%s/0" % kind
        names = ("HttpRequest", "GreenletSpawn", "HttpProtocol")
        # what earlier tests of the session left alive is not this test's
        before = {n: live(n) for n in names}
        async with serving(wsgi_app, error_log=w.error_log) as (port, srv):
            for i in range(30):
                s = socket.socket()
                s.setblocking(False)
                await loop.sock_connect(s, ("127.0.0.1", port))
                await loop.sock_sendall(
                    s, b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path.encode() +
                    post("s0", 1) + post("now", 2))
                await asyncio.sleep(0.005)
                _reset(s)
            await asyncio.sleep(0.05)
            rs, closed = await exchange(port, post("sleep", 7) + post("now", 8, close=True),
                                        count=2)
            await settle()
            for _ in range(100):
                if not other_tasks():
                    break
                await asyncio.sleep(0.01)
            STATE["tasks"].clear()  # the Tasks the app noted hold their requests
            counts = {n: live(n) - before[n] for n in names}
            tasks = other_tasks()
        await settle()
        return rs, counts, tasks

    STATE["tasks"].clear()
    rs, counts, tasks = run(main())
    assert [r.body for r in rs] == [b"7 0 same", b"8 0 same"]
    assert counts == {"HttpRequest": 0, "GreenletSpawn": 0, "HttpProtocol": 0}, counts
    assert tasks == []
    if kind == "hang":
        assert STATE["cancelled"] == STATE["started"] > 0
    if kind == "swallow":
        assert STATE["swallowed"] == STATE["started"] > 0
    assert w.errors == [] and w.loop_errors == []
    STATE["tasks"].clear()


@pytest.mark.parametrize("path,name", [("/ki/0", "KeyboardInterrupt"),
                                       ("/sysexit/0", "SystemExit"),
                                       ("/custom/0", "Custom"),
                                       ("/cancel/0", "CancelledError")])
def test_base_exception_after_suspending_is_answered_and_logged_once(run, path, name):
    """A view that raises a BaseException after it suspended (the client
    still there): a 500, the error logged once, the worker's loop goes on
    (nothing escapes into it), no Task exception left unretrieved."""
    w = Watch()

    async def main():
        w.install()
        data = (b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path.encode() +
                post("now", 1))
        async with serving(wsgi_app, error_log=w.error_log) as (port, srv):
            rs, closed = await exchange(port, data, count=1, timeout=5)
            again, _ = await exchange(port, post("sleep", 2, close=True), count=1)
        await settle()
        return rs, again, other_tasks()

    rs, again, left = run(main())
    assert [r.status for r in rs][:1] == [500]
    assert [r.body for r in again] == [b"2 0 same"]
    assert w.errors == [("Error handling request", name)]
    assert w.loop_errors == []
    assert left == []


def test_generator_exit_raised_after_suspending_closes_quietly(run):
    """GeneratorExit from a view that suspended is taken as the request's
    own end (a killed job): the connection closes without an answer, the
    job's exception goes through the Task's done callback, nothing is
    logged, and the next connection is served."""
    w = Watch()

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/ge":
            _core.await_(asyncio.sleep(0.002))
            raise GeneratorExit
        return wsgi_app(environ, start_response)

    async def main():
        w.install()
        async with serving(app, error_log=w.error_log) as (port, srv):
            rs, closed = await exchange(
                port, b"GET /ge HTTP/1.1\r\nHost: t\r\n\r\n" + post("now", 1), timeout=5)
            again, _ = await exchange(port, post("sleep", 2, close=True), count=1)
        await settle()
        return rs, closed, again, other_tasks()

    rs, closed, again, left = run(main())
    assert rs == [] and closed
    assert [r.body for r in again] == [b"2 0 same"]
    assert w.errors == [] and w.loop_errors == []
    assert left == []


def test_view_cancelling_its_own_task_then_returning(run):
    """A view that cancels its own Task after it suspended and returns
    without awaiting again: its answer goes out and the requests behind
    it (started in that Task's last step, which then ends cancelled) are
    answered in Tasks of their own."""
    w = Watch()
    STATE["tasks"].clear()

    async def main():
        w.install()
        data = (post("selfcancel", 0) + post("now", 1) + post("sleep", 2) +
                post("selfcancel", 3) + post("s0", 4, close=True))
        async with serving(wsgi_app, error_log=w.error_log) as (port, srv):
            rs, closed = await exchange(port, data, count=5)
        await settle()
        return rs, other_tasks()

    rs, left = run(main())
    assert [r.body for r in rs] == [b"0 0 same", b"1 0 same", b"2 0 same",
                                    b"3 0 same", b"4 0 same"]
    tasks = STATE["tasks"]
    assert [t.cancelled() for t in tasks] == [True, False, False, True, False]
    assert left == []
    assert w.errors == [] and w.loop_errors == []
    STATE["tasks"].clear()


def test_view_cancelling_its_own_task_without_suspending(run):
    """A view that cancels its own Task and returns without ever
    suspending: answered, the requests behind it too, nothing logged (the
    Task ends cancelled; on 3.12+ the eager Task's first step ended it,
    and the server took that for an error of its own: "Error finishing
    request: CancelledError()")."""
    w = Watch()
    STATE["tasks"].clear()

    async def main():
        w.install()
        data = (post("selfcancelnow", 0) + post("now", 1) +
                post("selfcancelnow", 2, close=True))
        async with serving(wsgi_app, error_log=w.error_log) as (port, srv):
            rs, closed = await exchange(port, data, count=3)
        await settle()
        return rs, other_tasks()

    rs, left = run(main())
    assert [r.body for r in rs] == [b"0 0 same", b"1 0 same", b"2 0 same"]
    assert left == []
    assert w.errors == [] and w.loop_errors == []
    STATE["tasks"].clear()


def test_many_connections_pipelining_behind_suspending_requests(run):
    """Twenty connections at once, each a pipeline of suspending and
    plain requests (bounded: 20 x 15 requests): every answer, in order,
    on every connection."""
    w = Watch()

    async def one(port, c):
        reqs, want = [], []
        for i in range(15):
            kind = KINDS[(i + c) % len(KINDS)]
            body = b"z" * ((i * c) % 50)
            reqs.append(post(kind, i, body, chunked=(i + c) % 4 == 0))
            want.append(expected(kind, i, body))
        reqs[-1] = reqs[-1].replace(b"Host: t\r\n", b"Host: t\r\nConnection: close\r\n", 1)
        rs, closed = await exchange(port, b"".join(reqs), count=len(want))
        return [r.body for r in rs] == want and closed

    async def main():
        w.install()
        async with serving(wsgi_app, error_log=w.error_log) as (port, srv):
            oks = await asyncio.gather(*(one(port, c) for c in range(20)))
        await settle()
        return oks, other_tasks()

    oks, left = run(main())
    assert all(oks)
    assert left == []
    assert w.errors == [] and w.loop_errors == []
    STATE["tasks"].clear()


# ------------------------------------- through gunicorn, with Pyramid views

async def p_same_task(request):
    first = asyncio.current_task()
    await asyncio.sleep(0)
    ok = asyncio.current_task() is first and request.environ.get("t.task") is first
    return _text("same %s" % ("ok" if ok else "OTHER"))


async def p_timeout(request):
    async with asyncio.timeout(5):
        pass
    return _text("timeout ok")


async def p_taskgroup(request):
    async with asyncio.TaskGroup() as tg:
        a = tg.create_task(asyncio.sleep(0, 1))
        b = tg.create_task(asyncio.sleep(0, 2))
    return _text("taskgroup %d" % (a.result() + b.result()))


async def p_wait_for(request):
    return _text("wait_for %d" % await asyncio.wait_for(asyncio.sleep(0, 3), 5))


async def p_timeout_fires(request):
    try:
        async with asyncio.timeout(0.01):
            await asyncio.sleep(5)
    except TimeoutError:
        return _text("fired %d" % asyncio.current_task().cancelling())
    return _text("not fired")


def p_plain(request):
    # a plain view: aiopyramid hands it to the executor
    time.sleep(float(request.params.get("s", "0.005")))
    return _text("plain %s" % request.params.get("n", ""))


def p_plain_body(request):
    return _text("plain body %d" % len(request.body))


async def p_hang(request):
    STATE["started"] += 1
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        STATE["cancelled"] += 1
        raise
    return _text("not cancelled")


async def p_state(request):
    out = {k: STATE[k] for k in ("started", "cancelled")}
    gc.collect()
    out["requests"] = sum(1 for o in gc.get_objects() if type(o).__name__ == "HttpRequest")
    return _text(json.dumps(out))


def _text(s):
    from pyramid.response import Response
    return Response(s.encode(), content_type="text/plain")


def task_tween_factory(handler, registry):
    def tween(request):
        request.environ["t.task"] = asyncio.current_task()
        return handler(request)
    return tween


PVIEWS = {"/same-task": p_same_task, "/timeout": p_timeout, "/taskgroup": p_taskgroup,
          "/wait-for": p_wait_for, "/timeout-fires": p_timeout_fires, "/plain": p_plain,
          "/plain-body": p_plain_body, "/hang": p_hang, "/state": p_state,
          "/hello": lambda request: _text("Hello, world!")}


def main(global_config=None, **settings):
    from pyramid.config import Configurator
    with Configurator(settings=settings) as config:
        config.include("aiopyramid")
        config.add_tween(__name__ + ".task_tween_factory")
        for path, view in PVIEWS.items():
            config.add_route(path, path)
            config.add_view(view, route_name=path)
        return config.make_wsgi_app()


from .conftest import gunicorn_on_loop  # noqa: E402


@pytest.fixture(scope="module", params=["uvloop", "asyncio"])
def server(request, tmp_path_factory):
    yield from gunicorn_on_loop(request, tmp_path_factory,
                                "tests.test_request_end_attacks:main()", "request_end")


LOUD = ("Task exception was never retrieved", "Task was destroyed but it is pending",
        "Traceback", "Segmentation", "Fatal Python error")


def quiet(log):
    return [line for line in log.splitlines() if any(k in line for k in LOUD)]


def get(path):
    return b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path.encode()


def test_task_helpers_in_requests_started_in_a_finishing_task(server):
    """Each request behind a suspending one starts inside that one's last
    Task step: asyncio.timeout(), TaskGroup, wait_for and a timeout that
    fires still work from its first line, in its own Task, and plain
    views through the executor are answered in order among them."""
    paths = []
    for p in ["/timeout", "/taskgroup", "/wait-for", "/timeout-fires",
              "/plain?n=a", "/same-task", "/plain?n=b", "/timeout"]:
        paths += ["/same-task", p]
    data, closed = blocking_exchange(
        server.port, b"".join(get(p) for p in paths) +
        b"GET /same-task HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    rs = parse_all(data)
    want = {"/same-task": b"same ok", "/timeout": b"timeout ok", "/taskgroup": b"taskgroup 3",
            "/wait-for": b"wait_for 3", "/timeout-fires": b"fired 0",
            "/plain?n=a": b"plain a", "/plain?n=b": b"plain b"}
    assert [(r.status, r.body) for r in rs] == [(200, want[p]) for p in paths + ["/same-task"]]
    assert closed
    assert quiet(server.log()) == []


def test_plain_views_with_bodies_pipelined_behind_executor_views(server):
    """Plain views (the executor) with bodies, pipelined: each one's
    request ends in its Task's step as its thread's result comes back."""
    reqs, want = [], []
    for i in range(12):
        body = b"q" * (i * 101)
        reqs.append(b"POST /plain-body HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n"
                    % len(body) + body)
        want.append(b"plain body %d" % len(body))
        reqs.append(get("/plain?n=%d" % i))
        want.append(b"plain %d" % i)
    reqs.append(b"GET /same-task HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    want.append(b"same ok")
    data, closed = blocking_exchange(server.port, b"".join(reqs))
    assert [r.body for r in parse_all(data)] == want
    assert closed
    assert quiet(server.log()) == []


def _state(port):
    data, _ = blocking_exchange(port, b"GET /state HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    return json.loads(parse_all(data)[0].body)


def test_clients_vanishing_while_suspended_or_in_the_executor(server):
    """Clients that reset while their request waits (a coroutine, a plain
    view in its thread), requests pipelined behind: the worker serves on,
    the waiting coroutines are cancelled once each and nothing loud is
    logged."""
    before = _state(server.port)
    socks = []
    for i in range(6):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        first = "/hang" if i % 2 else "/plain?s=0.1"
        s.sendall(get(first) + get("/same-task") + get("/plain?n=x"))
        socks.append(s)
    time.sleep(0.05)
    for s in socks:
        _reset(s)
    deadline = time.monotonic() + 10
    while True:
        st = _state(server.port)
        # (what is left alive is counted in-process, above: a pooled
        # greenlet under asyncio's loop may hold its last job's exception)
        if st["cancelled"] - before["cancelled"] == 3:
            break
        assert time.monotonic() < deadline, (st, server.log()[-3000:])
        time.sleep(0.05)
    assert st["started"] - before["started"] == 3
    data, closed = blocking_exchange(
        server.port, get("/same-task") + get("/plain?n=z") +
        b"GET /timeout HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert [r.body for r in parse_all(data)] == [b"same ok", b"plain z", b"timeout ok"]
    assert quiet(server.log()) == []
