"""What the per-request cuts of the coroutine and inline paths must keep
(README, "Ours against bjoern, the server alone"): each request's environ
is its own (the connection's environ is presized, and each request's a copy
of it), the request's Task (its name included) is its own and unique."""
import asyncio
import json
import sys

from .inprocess import loop, run, serving  # noqa: F401 -- fixture
from .rawhttp import exchange


def test_what_an_app_adds_to_its_environ_stays_in_that_request(run):
    """Requests on one connection each get a fresh copy of the connection's
    environ: keys one request's app adds (more than a presized table holds)
    are in no later request's environ, nor in the server's base environ,
    and the server's own keys are there every time."""
    seen = []
    base = {"wsgi.version": (1, 0), "SCRIPT_NAME": "", "base.key": "b"}

    def app(environ, start_response):
        seen.append(sorted(k for k in environ if k.startswith("app.")))
        size = sys.getsizeof(environ)
        for i in range(16):
            environ["app.%d.%s" % (i, environ["PATH_INFO"])] = i
        grown = sys.getsizeof(environ) != size
        for i in range(100):  # past any presized room
            environ["app.more.%d" % i] = i
        out = {"grown": grown, "path": environ["PATH_INFO"],
               "base": environ["base.key"], "host": environ["HTTP_HOST"],
               "method": environ["REQUEST_METHOD"], "len": len(environ)}
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(out).encode()]

    async def main():
        from aiopyramid.server import HttpServer
        loop = asyncio.get_running_loop()
        srv = HttpServer(app, loop, base_environ=base)
        server = await loop.create_server(srv, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            rs, _ = await exchange(
                port, b"".join(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i
                               for i in range(3)), count=3)
            return [json.loads(r.body) for r in rs]
        finally:
            server.close()
            srv.abort()
            await server.wait_closed()
    outs = run(main())
    assert seen == [[], [], []]
    assert [o["path"] for o in outs] == ["/0", "/1", "/2"]
    assert all(o["base"] == "b" and o["host"] == "x" and o["method"] == "GET"
               for o in outs)
    assert len({o["len"] for o in outs}) == 1
    # the connection's environ leaves room: 16 keys added grow no request's
    assert [o["grown"] for o in outs] == [False] * 3
    assert base == {"wsgi.version": (1, 0), "SCRIPT_NAME": "", "base.key": "b"}


def test_each_request_task_has_a_unique_name_of_its_own(run):
    """The request's Task is named aiopyramid-request-N (N counting the
    process's requests): the same from the app's first line and after it
    suspends, a new one per request, never asyncio's own Task-N (whose
    counter is asyncio's), on every Python the server runs on."""
    import re

    from aiopyramid import _core

    seen = []

    def app(environ, start_response):
        task = asyncio.current_task()
        first = task.get_name()
        if environ["PATH_INFO"] == "/wait":
            _core.await_(asyncio.sleep(0))
        seen.append((first, asyncio.current_task().get_name(),
                     asyncio.current_task() is task))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    async def main():
        other = asyncio.current_task().get_name()
        async with serving(app) as (port, srv):
            rs, _ = await exchange(
                port, b"GET /now HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /now HTTP/1.1\r\nHost: x\r\n\r\n", count=3)
        return other, [r.status for r in rs]
    other, statuses = run(main())
    assert statuses == [200, 200, 200]
    assert [same for _, _, same in seen] == [True] * 3
    assert [a == b for a, b, _ in seen] == [True] * 3
    names = [a for a, _, _ in seen]
    assert all(re.fullmatch(r"aiopyramid-request-[1-9][0-9]*", n)
               for n in names), names
    numbers = [int(n.rsplit("-", 1)[1]) for n in names]
    assert numbers == sorted(set(numbers))  # distinct, in order
    assert re.fullmatch(r"Task-[0-9]+", other)  # asyncio's own, unchanged


def test_the_shared_read_buffer_is_one_view_no_reader_can_release(loop):
    """A connection with nothing unparsed reads into its server's shared
    buffer through one memoryview given at every get_buffer(): a reader that
    tries to release() it gets a BufferError and the next reads (of this
    connection and another) still work, a head cut short included."""
    import pytest

    from .inprocess import connect

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["PATH_INFO"].encode()]

    def feed(proto, data):
        buf = proto.get_buffer(-1)
        buf[:len(data)] = data
        proto.buffer_updated(len(data))
        return buf

    server, a, ta = connect(loop, app, base_environ={"wsgi.version": (1, 0)})
    b = server()
    from .inprocess import FakeTransport
    tb = FakeTransport()
    b.connection_made(tb)
    first = feed(a, b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises(BufferError):
        first.release()
    second = feed(b, b"GET /two HTTP/1.1\r\nHo")  # cut short
    assert second is first  # one view for every read
    third = feed(a, b"GET /three HTTP/1.1\r\nHost: x\r\n\r\n")
    fourth = feed(b, b"st: x\r\n\r\n")  # the rest of b's head
    assert third is first and fourth is first
    for _ in range(10):
        loop.run_until_complete(asyncio.sleep(0))
    assert ta.out.count(b"HTTP/1.1 200 OK") == 2
    assert ta.out.endswith(b"/three") and b"/one" in ta.out
    assert tb.out.count(b"HTTP/1.1 200 OK") == 1 and tb.out.endswith(b"/two")


class Held:
    pass


def test_a_pooled_greenlet_runs_each_job_in_its_context_and_keeps_none(run):
    """A job runs in its driver's context (what it sets there stays set
    across its suspensions, and its Task sees it), two interleaved jobs
    each see their own, and once a job is over its parked greenlet holds
    no context: gr_context is None, and what the job set is freed with its
    Task's context."""
    import contextvars
    import gc
    import weakref

    import greenlet

    from aiopyramid.helpers import spawn_greenlet, synchronize

    var = contextvars.ContextVar("fast_path_var", default="unset")
    refs, greenlets = [], []

    @synchronize
    async def pause():
        await asyncio.sleep(0)

    def job(tag):
        greenlets.append(greenlet.getcurrent())
        before = var.get()
        held = Held()
        refs.append(weakref.ref(held))
        var.set((tag, held))
        pause()
        after = var.get()[0]
        return before, after

    async def in_task(tag):
        got = await spawn_greenlet(job, tag)
        return got, var.get()[0]

    async def main():
        tasks = [asyncio.create_task(in_task(t), context=contextvars.Context())
                 for t in ("a", "b")]
        out = [await t for t in tasks]
        del tasks
        parked = [g.dead for g in greenlets]
        # a later job on a reused greenlet starts from its own context
        again = await asyncio.create_task(
            spawn_greenlet(var.get), context=contextvars.Context())
        gc.collect()
        return out, parked, again, [r() is None for r in refs]

    out, parked, again, freed = run(main())
    assert out == [(("unset", "a"), "a"), (("unset", "b"), "b")]
    assert parked == [False, False]  # parked in the pool, not ended
    assert again == "unset"
    assert freed == [True, True]
