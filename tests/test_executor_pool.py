"""The executor path at volume: an aiopyramid Executor's WorkQueue wakes
idle threads one at a time (a thread that finishes a job takes the next one
without sleeping), and finished views reach their loop through one
call_soon_threadsafe for every view that finished meanwhile.  What must
hold: every request answered with its own outcome, many more requests than
threads, views that block still spread over the whole pool, one thread runs
views in the order they came, and errors still become 500s.  (On Linux the
pool's threads wake their loop through an eventfd it reads, so that a
thread going idle wakes it after letting go of the GIL; a loop that cannot
watch one gets call_soon_threadsafe.)"""
import asyncio
import gc
import os
import queue
import selectors
import socket
import sys
import threading
import time

import pytest
from pyramid.response import Response

from aiopyramid import _core
from aiopyramid.config import IViewExecutor

from .conftest import get

needs_work_queue = pytest.mark.skipif(
    not hasattr(_core, "WorkQueue"), reason="no WorkQueue in this build")


def _app(make_app, views, threads):
    def configure(config):
        for name, (pattern, view) in views.items():
            config.add_route(name, pattern)
            config.add_view(view, route_name=name)

    return make_app(configure, {"aiopyramid.executor_threads": str(threads)})


def _loop_factory(kind, counts):
    """A loop whose wake-ups from other threads are counted: its
    call_soon_threadsafe calls, and the calls of the callbacks of its
    readers (the pool's threads wake the loop through an eventfd it reads)."""
    if kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        base = uvloop.Loop
    else:
        base = asyncio.SelectorEventLoop

    class Counting(base):
        def call_soon_threadsafe(self, *args, **kwargs):
            counts.append(args[0])
            return super().call_soon_threadsafe(*args, **kwargs)

        def add_reader(self, fd, callback, *args):
            def counted(*args):
                counts.append(callback)
                return callback(*args)
            return super().add_reader(fd, counted, *args)

    return Counting


# ---- the queue itself ------------------------------------------------------

@needs_work_queue
def test_work_queue_is_a_fifo_with_simplequeue_methods():
    q = _core.WorkQueue()
    assert q.empty() and q.qsize() == 0
    for i in range(200):  # past its first buffer
        q.put(i) if i % 2 else q.put_nowait(i)
    assert q.qsize() == 200 and not q.empty()
    assert [q.get_nowait() for _ in range(100)] == list(range(100))
    q.put("more")
    assert [q.get() for _ in range(101)] == list(range(100, 200)) + ["more"]
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get(block=False)
    with pytest.raises(queue.Empty):
        q.get(timeout=0.05)
    with pytest.raises(ValueError):
        q.get(timeout=-1)
    with pytest.raises(TypeError):
        _core.WorkQueue(1)


@needs_work_queue
def test_work_queue_wakes_every_waiting_thread_that_is_needed():
    """Eight threads wait; eight items that each block until all eight are
    taken: they are only all taken if a taker wakes the next one."""
    q = _core.WorkQueue()
    barrier = threading.Barrier(8, timeout=20)
    got, errors = [], []

    def taker():
        try:
            item = q.get()
            got.append(item)
            barrier.wait()
        except BaseException as e:  # a broken barrier: not all were taken
            errors.append(e)

    threads = [threading.Thread(target=taker, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.1)  # most of them waiting (the rest take from the queue)
    for i in range(8):
        q.put(i)
    for t in threads:
        t.join(30)
    stuck = sum(t.is_alive() for t in threads)
    for _ in range(stuck):  # never woken: let them go
        q.put(None)
    assert stuck == 0
    assert errors == [] and sorted(got) == list(range(8))
    assert q.empty()


# ---- through Pyramid, in process ---------------------------------------------

def test_many_more_requests_than_threads_all_answered(run, make_app):
    def echo(request):
        return Response(("%s %s" % (request.matchdict["n"],
                                    threading.current_thread().name)).encode())

    app = _app(make_app, {"echo": ("/echo/{n}", echo)}, threads=2)

    async def main():
        rs = await asyncio.wait_for(asyncio.gather(
            *(get(app, "/echo/%d" % i) for i in range(500))), 120)
        return [r.text.split() for r in rs]

    answers = run(main())
    assert [int(n) for n, _ in answers] == list(range(500))
    names = {name for _, name in answers}
    assert names and all(n.startswith("aiopyramid-view") for n in names)
    assert len(names) <= 2  # the pool stays bounded


def test_blocking_views_spread_over_the_whole_pool(run, make_app):
    """Four views that each wait for the others: they only all finish if
    the four run at once, on the pool's four threads."""
    barrier = threading.Barrier(4, timeout=20)
    warm = threading.Barrier(4, timeout=20)

    def meet(request):
        (warm if request.matchdict["n"].startswith("w") else barrier).wait()
        return Response(b"met")

    app = _app(make_app, {"meet": ("/meet/{n}", meet)}, threads=4)

    async def main():
        # the pool's four threads made (each new request finds the others
        # busy), then idle: the four that follow must wake them all
        await asyncio.wait_for(asyncio.gather(
            *(get(app, "/meet/w%d" % i) for i in range(4))), 60)
        await asyncio.sleep(0.1)
        return await asyncio.wait_for(asyncio.gather(
            *(get(app, "/meet/%d" % i) for i in range(4))), 60)

    assert [r.body for r in run(main())] == [b"met"] * 4


def test_one_thread_runs_views_and_answers_in_the_order_they_came(run, make_app):
    started, go = threading.Event(), threading.Event()
    ran = []

    def block(request):
        started.set()
        go.wait(20)
        return Response(b"blocked")

    def record(request):
        ran.append(int(request.matchdict["n"]))
        return Response(request.matchdict["n"].encode())

    app = _app(make_app, {"block": ("/block", block),
                          "record": ("/record/{n}", record)}, threads=1)
    pool = app.registry.queryUtility(IViewExecutor)

    async def main():
        answered = []

        async def one(i):
            r = await get(app, "/record/%d" % i)
            answered.append(int(r.text))

        first = asyncio.ensure_future(get(app, "/block"))
        for _ in range(400):
            if started.is_set():
                break
            await asyncio.sleep(0.01)
        tasks = []
        for i in range(30):
            tasks.append(asyncio.ensure_future(one(i)))
            await asyncio.sleep(0)  # each one queued before the next
        for _ in range(400):
            if pool._work_queue.qsize() == 30:
                break
            await asyncio.sleep(0.01)
        assert pool._work_queue.qsize() == 30
        go.set()
        await asyncio.wait_for(asyncio.gather(first, *tasks), 60)
        return answered

    assert run(main()) == list(range(30))
    assert ran == list(range(30))


@pytest.mark.skipif(sys.version_info >= (3, 14),
                    reason="3.14: views go through loop.run_in_executor")
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_views_that_finish_together_wake_their_loop_once(make_app, loop):
    """Ten views finish while the loop is busy: one call_soon_threadsafe
    carries them all back, and each request gets its own answer."""
    gate, all_done = threading.Event(), threading.Event()
    finished = []

    def work(request):
        gate.wait(20)
        finished.append(request.matchdict["n"])
        if len(finished) == 10:
            all_done.set()
        return Response(request.matchdict["n"].encode())

    app = _app(make_app, {"work": ("/work/{n}", work)}, threads=1)
    counts = []

    async def main():
        tasks = [asyncio.ensure_future(get(app, "/work/%d" % i)) for i in range(10)]
        pool = app.registry.queryUtility(IViewExecutor)
        for _ in range(400):
            if pool._work_queue.qsize() == 9:  # the first one taken
                break
            await asyncio.sleep(0.01)
        assert pool._work_queue.qsize() == 9
        # the loop's thread busy (the GIL let go) while all ten finish
        before = len(counts)
        gate.set()
        assert all_done.wait(20)
        time.sleep(0.05)  # past the last view's hand-back
        rs = await asyncio.wait_for(asyncio.gather(*tasks), 30)
        return [r.text for r in rs], len(counts) - before

    with asyncio.Runner(loop_factory=_loop_factory(loop, counts)) as runner:
        texts, wakeups = runner.run(main())
    assert texts == [str(i) for i in range(10)]
    assert wakeups == 1


@pytest.mark.skipif(sys.version_info >= (3, 14),
                    reason="3.14: views go through loop.run_in_executor")
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_finished_view_is_answered_while_the_next_one_blocks(make_app, loop):
    """One thread takes two views queued together: the first finishes, the
    second blocks.  The thread puts off waking the loop while it holds the
    GIL, but never past the start of the next view: the first request is
    answered while the second view still blocks."""
    go = threading.Event()

    def quick(request):
        return Response(b"quick")

    def block(request):
        go.wait(30)
        return Response(b"blocked")

    app = _app(make_app, {"quick": ("/quick", quick), "block": ("/block", block)},
               threads=1)

    async def main():
        await asyncio.wait_for(get(app, "/quick"), 30)  # the thread made, idle
        q = asyncio.ensure_future(get(app, "/quick"))
        b = asyncio.ensure_future(get(app, "/block"))
        try:
            r = await asyncio.wait_for(q, 10)
            still_blocked = not b.done()
        finally:
            go.set()
        rb = await asyncio.wait_for(b, 30)
        return r.body, still_blocked, rb.body

    with asyncio.Runner(loop_factory=_loop_factory(loop, [])) as runner:
        assert runner.run(main()) == (b"quick", True, b"blocked")


@pytest.mark.skipif(sys.version_info >= (3, 14),
                    reason="3.14: views go through loop.run_in_executor")
def test_views_come_back_to_a_loop_that_cannot_watch_a_descriptor(make_app):
    """A loop without add_reader (the pool's threads cannot wake it through
    an eventfd) gets its views' outcomes through call_soon_threadsafe."""
    counts = []

    class NoReaders(_loop_factory("asyncio", counts)):
        def add_reader(self, fd, callback, *args):
            raise NotImplementedError

    def echo(request):
        return Response(request.matchdict["n"].encode())

    app = _app(make_app, {"echo": ("/echo/{n}", echo)}, threads=2)

    async def main():
        rs = await asyncio.wait_for(asyncio.gather(
            *(get(app, "/echo/%d" % i) for i in range(50))), 60)
        return [r.text for r in rs]

    with asyncio.Runner(loop_factory=NoReaders) as runner:
        assert runner.run(main()) == [str(i) for i in range(50)]
    assert counts  # woken by call_soon_threadsafe


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_loops_that_closed_leave_no_descriptor_behind(make_app, loop):
    """Each loop's pool threads wake it through an eventfd of its own: gone
    once the loop is closed and the next loop hands views over, without
    waiting for the cyclic garbage collector."""
    def echo(request):
        return Response(b"ok")

    app = _app(make_app, {"echo": ("/echo", echo)}, threads=2)

    async def main():
        rs = await asyncio.wait_for(asyncio.gather(
            *(get(app, "/echo") for _ in range(3))), 30)
        return [r.body for r in rs]

    if loop == "uvloop":
        factory = pytest.importorskip("uvloop").Loop
    else:
        factory = asyncio.SelectorEventLoop

    def one_loop():
        with asyncio.Runner(loop_factory=factory) as runner:
            assert runner.run(main()) == [b"ok"] * 3

    one_loop()
    gc.collect()
    gc.disable()
    try:
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(20):
            one_loop()
        after = len(os.listdir("/proc/self/fd"))
    finally:
        gc.enable()
    assert after - before <= 2


def test_a_view_raising_among_many_gets_its_error(run, make_app):
    def maybe(request):
        n = int(request.matchdict["n"])
        if n % 3 == 0:
            raise KeyError(n)
        return Response(str(n).encode())

    app = _app(make_app, {"maybe": ("/maybe/{n}", maybe)}, threads=2)

    async def main():
        return await asyncio.wait_for(asyncio.gather(
            *(get(app, "/maybe/%d" % i) for i in range(90)),
            return_exceptions=True), 60)

    for i, r in enumerate(run(main())):
        if i % 3 == 0:
            assert isinstance(r, KeyError) and r.args == (i,)
        else:
            assert r.text == str(i)


# ---- a real server -------------------------------------------------------------

def _requests_over_connections(port, paths_per_conn, timeout=60):
    """Pipelines each connection's requests; their answers (status, body),
    per connection, in order."""
    sel = selectors.DefaultSelector()
    conns = []
    for paths in paths_per_conn:
        s = socket.create_connection(("127.0.0.1", port), timeout=15)
        s.sendall(b"".join(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % p.encode()
                           for p in paths))
        s.setblocking(False)
        state = {"sock": s, "buf": b"", "want": len(paths), "got": []}
        conns.append(state)
        sel.register(s, selectors.EVENT_READ, state)
    deadline = time.monotonic() + timeout
    open_ = len(conns)
    while open_ and time.monotonic() < deadline:
        for key, _ in sel.select(1.0):
            st = key.data
            chunk = st["sock"].recv(65536)
            if not chunk:
                sel.unregister(st["sock"])
                open_ -= 1
                continue
            st["buf"] += chunk
            while True:
                head, sep, rest = st["buf"].partition(b"\r\n\r\n")
                if not sep:
                    break
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if len(rest) < length:
                    break
                st["got"].append((int(head.split(b" ", 2)[1]), rest[:length]))
                st["buf"] = rest[length:]
            if len(st["got"]) == st["want"]:
                sel.unregister(st["sock"])
                open_ -= 1
    for st in conns:
        st["sock"].close()
    return [st["got"] for st in conns]


def test_server_answers_many_more_requests_than_threads(gunicorn):
    srv = gunicorn(app="executor_pool_app:main()", env={"AIOPYRAMID_LOOP": "uvloop"})
    # an error's 500 closes its connection: last on the connections that
    # have one
    paths = [["/echo/%d-%d" % (c, i) for i in range(7)] +
             ["/boom/%d" % c if c % 5 == 0 else "/echo/%d-7" % c]
             for c in range(50)]
    answers = _requests_over_connections(srv.port, paths)
    for c, got in enumerate(answers):
        assert len(got) == 8, (c, got)
        for i, (status, body) in enumerate(got):
            if i == 7 and c % 5 == 0:
                assert status == 500
            else:
                assert (status, body) == (200, b"echo %d-%d" % (c, i))
    assert "boom" in srv.log()


def test_a_request_without_a_body_goes_to_its_thread_unspooled(gunicorn):
    """No Content-Length, no Transfer-Encoding: nothing to read before the
    view's thread starts (the server says wsgi.input_terminated, so WebOb
    calls the body readable, and it used to be spooled); the view still
    reads an empty body, and a request with a body still gets it."""
    srv = gunicorn(app="executor_pool_app:main()", env={"AIOPYRAMID_LOOP": "uvloop"})
    paths = [["/body", "/body"]]
    [got] = _requests_over_connections(srv.port, paths)
    assert got == [(200, b"0 b'' False")] * 2
    with socket.create_connection(("127.0.0.1", srv.port), timeout=15) as s:
        s.sendall(b"POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                  b"Connection: close\r\n\r\nhello")
        data = b""
        while not data.endswith(b"True"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"5 b'hello' True")


@needs_work_queue
def test_a_pool_still_wakes_its_threads_after_a_loop_closed_under_it(make_app):
    """A view queued on a loop that closes before the loop woke a thread for
    it: the same pool (one per app) still serves the next loop."""
    def hello(request):
        return Response(b"hi")

    app = _app(make_app, {"hello": ("/hello", hello)}, threads=1)

    async def one():
        return (await asyncio.wait_for(get(app, "/hello"), 20)).body

    assert asyncio.run(one()) == b"hi"  # the pool's thread made, now idle
    time.sleep(0.1)

    tasks = []

    async def queue_one():
        tasks.append(asyncio.ensure_future(get(app, "/hello")))
        await asyncio.sleep(0)  # the view queued, its thread not woken yet
        asyncio.get_running_loop().stop()  # before the loop wakes it

    loop = asyncio.new_event_loop()
    try:
        loop.create_task(queue_one())
        loop.run_forever()
    finally:
        loop.close()
    for task in tasks:
        task._log_destroy_pending = False
    del tasks[:]
    assert asyncio.run(one()) == b"hi"
