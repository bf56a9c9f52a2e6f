"""Legacy views that call synchronized coroutines waiting on executor jobs,
with many more concurrent requests than the pool has threads: every request
is answered (the waiting view thread runs the jobs its coroutine hands to
the executor), through a real gunicorn with aiopyramid's worker."""
import concurrent.futures

import pytest

from .rawhttp import blocking_exchange, parse_all

pytest.importorskip("gunicorn")

REQUESTS = 40


def get_all(port, path, n=REQUESTS, timeout=15.0):
    """n concurrent GETs; each one's status and body, or None if it got no
    answer within timeout."""
    def one(_):
        try:
            data, _ = blocking_exchange(
                port, b"GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
                % path.encode(), timeout=timeout)
        except OSError:  # a timeout: no answer
            return None
        rs = parse_all(data)
        return (rs[0].status, rs[0].body) if rs else None

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n), timeout=timeout * 2))


@pytest.mark.parametrize("threads", [None, 4])
@pytest.mark.parametrize("path", ["/use_executor", "/default", "/nested",
                                  "/view_pool"])
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_many_more_requests_than_threads(gunicorn, threads, path, loop):
    env = {"AIOPYRAMID_LOOP": loop}
    if threads is not None:  # aiopyramid.executor_threads
        env["EXECUTOR_THREADS"] = str(threads)
    srv = gunicorn(app="executor_app:main()", env=env)
    answers = get_all(srv.port, path)
    assert [a and a[0] for a in answers] == [200] * REQUESTS, srv.log()
    # and the worker still serves that view afterwards
    assert [a and a[0] for a in get_all(srv.port, path, n=4)] == [200] * 4


def _waiting_thread_on(loop_closes):
    """A use_executor thread waits on a synchronized coroutine that never
    finishes; then its loop closes (or the server stops waiting). What the
    thread got, within a bound."""
    import asyncio
    import threading

    from aiopyramid.helpers import synchronize, use_executor

    outcome = []
    started = threading.Event()

    @synchronize
    async def forever():
        started.set()
        await asyncio.Event().wait()

    @use_executor
    def blocking():
        try:
            forever()
        except BaseException as e:
            outcome.append(e)
        else:
            outcome.append("returned")

    async def start():
        loop = asyncio.get_running_loop()
        fut = asyncio.ensure_future(blocking())
        assert await loop.run_in_executor(None, started.wait, 10)
        return fut

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(start())
        if not loop_closes:
            from aiopyramid import _executor

            assert _executor.stop_waiting(loop) == 1
            loop.run_until_complete(asyncio.sleep(0.1))
    finally:
        loop.close()  # the executor's shutdown does not wait
    for _ in range(100):
        if outcome:
            break
        threading.Event().wait(0.1)
    return outcome


def test_waiting_thread_wakes_when_the_loop_closes():
    (e,) = _waiting_thread_on(loop_closes=True)
    assert isinstance(e, RuntimeError) and "loop closed" in str(e)


def test_waiting_thread_wakes_when_the_server_stops():
    (e,) = _waiting_thread_on(loop_closes=False)
    assert isinstance(e, RuntimeError) and "stopping" in str(e)


def test_a_stop_as_soon_as_the_coroutine_starts_finds_its_thread(monkeypatch):
    """The waiting thread is known to stop_waiting() before its coroutine can
    run: a worker stopping at that very moment must still wake it."""
    import asyncio
    import threading

    from aiopyramid import _executor
    from aiopyramid.helpers import synchronize, use_executor

    started = threading.Event()
    seen = []
    schedule = _executor.run_coroutine_threadsafe

    def schedule_then_let_it_start(coro, loop):
        cf = schedule(coro, loop)
        started.wait(10)  # the coroutine runs before this thread goes on
        return cf

    monkeypatch.setattr(_executor, "run_coroutine_threadsafe",
                        schedule_then_let_it_start)

    @synchronize
    async def stops_at_once():
        seen.append(_executor.stop_waiting(asyncio.get_running_loop()))
        started.set()
        await asyncio.Event().wait()

    @use_executor
    def blocking():
        try:
            stops_at_once()
        except RuntimeError as e:
            return str(e)

    loop = asyncio.new_event_loop()
    try:
        got = loop.run_until_complete(asyncio.wait_for(blocking(), 10))
    finally:
        loop.close()
    assert seen == [1]
    assert "stopping" in got
