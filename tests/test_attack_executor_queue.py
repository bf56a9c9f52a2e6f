"""ATTACK (attack-exec): the executor's C work queue (_core.WorkQueue) from
outside: a pool that may still grow must give a view a thread of its own
when every thread it has is taken, whatever ran on the pool before and
however many views came in the same loop iteration (ThreadPoolExecutor
does: a view that blocks until another view runs must not wait for ever
behind it)."""
import asyncio
import sys
import threading
import time

import pytest
from pyramid.response import Response

from aiopyramid import _core
from aiopyramid._executor import Executor

from .conftest import get

needs_work_queue = pytest.mark.skipif(
    not hasattr(_core, "WorkQueue"), reason="no WorkQueue in this build")


def _blocking_app(make_app):
    """/block waits (at most 10 s) until /release has run; /hello."""
    go = threading.Event()

    def block(request):
        return Response(b"released" if go.wait(10) else b"timed out")

    def release(request):
        go.set()
        return Response(b"ok")

    def hello(request):
        return Response(b"hi")

    def configure(config):
        for name, view in [("block", block), ("release", release),
                           ("hello", hello)]:
            config.add_route(name, "/" + name)
            config.add_view(view, route_name=name)

    return make_app(configure)


def _idle(pool, tries=400):
    """Until every thread of pool waits in its queue's get() (its topmost
    Python frame is ThreadPoolExecutor's _worker: a view would be above)."""
    for _ in range(tries):
        frames = sys._current_frames()
        tops = [frames.get(t.ident) for t in pool._threads]
        if all(f is not None and f.f_code.co_name == "_worker" for f in tops):
            return
        time.sleep(0.01)
    raise AssertionError("the pool's threads never went idle")


@needs_work_queue
def test_attack_a_plain_job_first_does_not_stop_the_pool_growing(run, make_app):
    """One loop.run_in_executor job (asyncio.to_thread, getaddrinfo) ran on
    the pool: its thread, idle again, took /block; /release, with the pool
    at 1 of 4 threads, used to wait behind /block (the job's finish counted
    an idle thread in ThreadPoolExecutor's semaphore that the view took
    without saying so, and the semaphore then refused the new thread)."""
    app = _blocking_app(make_app)

    async def main():
        pool = Executor(max_workers=4)
        asyncio.get_running_loop().set_default_executor(pool)
        await asyncio.wait_for(
            asyncio.get_running_loop().run_in_executor(None, int), 20)
        _idle(pool)
        block = asyncio.ensure_future(get(app, "/block"))
        for _ in range(400):
            if pool._work_queue.qsize() == 0:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # /block running in its thread
        release = await asyncio.wait_for(get(app, "/release"), 20)
        return release.body, (await asyncio.wait_for(block, 20)).body

    assert run(main()) == (b"ok", b"released")


@needs_work_queue
def test_attack_two_views_in_one_iteration_with_one_idle_thread(run, make_app):
    """The pool has one thread, idle, and may grow to 4; /block and
    /release come in the same loop iteration: /release used to be left in
    the queue behind /block (the idle thread was to be woken for both, and
    no thread was added)."""
    app = _blocking_app(make_app)

    async def main():
        pool = Executor(max_workers=4)
        asyncio.get_running_loop().set_default_executor(pool)
        assert (await asyncio.wait_for(get(app, "/hello"), 20)).body == b"hi"
        _idle(pool)
        assert len(pool._threads) == 1
        block, release = await asyncio.wait_for(asyncio.gather(
            get(app, "/block"), get(app, "/release")), 30)
        return block.body, release.body

    assert run(main()) == (b"released", b"ok")
