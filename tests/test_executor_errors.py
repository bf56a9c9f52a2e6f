"""The executor hand-off's error paths (csrc/bridge/executor.c): an outcome
handed back to the loop is never lost, even when an allocation fails on
the way, and a work item handed back twice is resolved once.  Each case
runs in a fresh interpreter with a timeout: a hang or a crash fails its
test, not the run."""
import textwrap

import pytest

from .conftest import run_python

pytest.importorskip("_testcapi")

PRELUDE = textwrap.dedent(
    """
    import asyncio, threading
    import _testcapi
    from aiopyramid import _executor
    from aiopyramid.helpers import use_executor

    @use_executor
    def job(x):
        return x

    async def until_done(fut, what):
        for _ in range(500):
            if fut.done():
                return
            await asyncio.sleep(0.01)
        print("HUNG:", what)
        raise SystemExit(3)
    """
)


def run_fresh(body, timeout=60):
    return run_python(PRELUDE + textwrap.dedent(body), timeout)


def test_a_drain_whose_allocation_fails_still_resolves_every_future():
    # the loop's drain of finished executor calls runs with the first
    # allocation failing (the free list of lists emptied first, so a list
    # the drain makes is that allocation): the finished call's future is
    # resolved all the same, not left waiting for the next call to finish
    out = run_fresh(
        """
        async def main():
            loop = asyncio.get_running_loop()
            pool = _executor.Executor(max_workers=1)
            loop.set_default_executor(pool)
            real = loop.call_soon_threadsafe

            def drain_failing(drain):
                hold = [[] for _ in range(200)]
                _testcapi.set_nomemory(0, 1)
                try:
                    drain()
                except MemoryError:
                    pass
                finally:
                    _testcapi.remove_mem_hooks()
                del hold

            loop.call_soon_threadsafe = lambda cb, *a, **k: real(drain_failing, cb)
            coro = job(1)
            # the executor's future, nothing waiting on it yet (a waiter's
            # wake-up is asyncio's own allocation)
            fut = coro.send(None)
            try:
                await until_done(fut, "the future of a drain that failed")
            finally:
                coro.close()
                del loop.call_soon_threadsafe
            print("result", fut.result())
            print("next", await asyncio.wait_for(job(2), 10))
            pool.shutdown()

        asyncio.run(main())
        """
    )
    assert "result 1" in out and "next 2" in out, out


def test_a_work_item_handed_back_twice_is_resolved_once():
    # the pool's shutdown calls item.future.cancel(), a broken pool
    # item.future.set_exception(): called again before the loop drains,
    # the item is on the loop's list once, and everything after it runs
    out = run_fresh(
        """
        async def main():
            loop = asyncio.get_running_loop()
            pool = _executor.Executor(max_workers=1)
            loop.set_default_executor(pool)
            started, go = threading.Event(), threading.Event()

            @use_executor
            def block():
                started.set()
                go.wait(20)
                return "blocked"

            first = asyncio.ensure_future(block())
            for _ in range(500):
                if started.is_set():
                    break
                await asyncio.sleep(0.01)
            queued = [asyncio.ensure_future(job(i)) for i in range(3)]
            for _ in range(500):
                if pool._work_queue.qsize() == 3:
                    break
                await asyncio.sleep(0.01)
            item = pool._work_queue.get_nowait()
            item.future.cancel()
            item.future.cancel()
            item.future.set_exception(KeyError("again"))
            go.set()
            results = await asyncio.wait_for(
                asyncio.gather(first, *queued, return_exceptions=True), 10)
            print([type(r).__name__ if isinstance(r, BaseException) else r
                   for r in results])
            print("after", await asyncio.wait_for(job(9), 10))
            pool.shutdown()

        asyncio.run(main())
        """
    )
    assert "['blocked', 'CancelledError', 1, 2]" in out, out
    assert "after 9" in out, out
