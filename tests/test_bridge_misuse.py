"""Misuse and failure paths of the bridge: errors, never crashes or hangs.
(Each test crashed or hung the process before its fix.)"""
import asyncio
import gc
import sys

import greenlet
import pytest

from aiopyramid import _core
from aiopyramid.helpers import coroutine, run_in_greenlet, spawn_greenlet, synchronize


def test_orphaned_job_waiting_again_while_it_unwinds(run):
    @synchronize
    async def long_wait():
        await asyncio.sleep(10)

    @synchronize
    async def wait_again():
        try:
            await asyncio.sleep(10)
        finally:  # ...then GreenletExit from the kill: another
            await asyncio.sleep(0)

    def cleanup_twice():
        try:
            long_wait()  # closed (PEP 380), GeneratorExit raised here
        finally:  # GeneratorExit from close(): one wait...
            wait_again()

    unraisable = []

    async def main():
        coro = spawn_greenlet(cleanup_twice)
        coro.send(None)
        hook, sys.unraisablehook = sys.unraisablehook, unraisable.append
        try:
            del coro
            gc.collect()
        finally:
            sys.unraisablehook = hook

    run(main())
    assert [str(u.exc_value) for u in unraisable] == [
        "coroutine ignored GeneratorExit", "coroutine ignored GreenletExit"]


def test_coroutine_object_cannot_be_reentered():
    holder = {}

    async def inner():
        with pytest.raises(ValueError, match="coroutine already executing"):
            holder["d"].send(None)
        return "finished"

    def starter():
        with pytest.raises(ValueError, match="coroutine already executing"):
            holder["s"].send(None)
        return "started"

    holder["d"] = d = coroutine(lambda: inner())()
    with pytest.raises(StopIteration) as info:
        d.send(None)
    assert info.value.value == "finished"
    holder["s"] = s = coroutine(starter)()
    with pytest.raises(StopIteration) as info:
        s.send(None)
    assert info.value.value == "started"


def test_throw_validates_what_it_raises():
    class Weird(Exception):
        def __new__(cls, *args):
            return 7

    for coro in (spawn_greenlet(lambda: None), coroutine(lambda: None)()):
        with pytest.raises(TypeError, match="should have returned an instance "
                                            "of BaseException, not int"):
            coro.throw(Weird)
        with pytest.raises(TypeError, match="exceptions must be classes"):
            coro.throw(3)
        coro.close()


@pytest.mark.parametrize("name", ["GreenletSpawn", "Delegate", "Synchronized",
                                  "CoroutineFunction", "ThreadCall", "MappedView"])
def test_internal_types_cannot_be_instantiated(name):
    with pytest.raises(TypeError, match="cannot create"):
        getattr(_core, name)()


def test_stop_iteration_escaping_a_job_is_a_runtime_error(run):
    def job():
        next(iter([]))

    with pytest.raises(RuntimeError, match="coroutine raised StopIteration"):
        run(asyncio.wait_for(spawn_greenlet(job), 5))
    with pytest.raises(RuntimeError, match="coroutine raised StopIteration"):
        run(asyncio.wait_for(coroutine(job)(), 5))


def test_job_throwing_into_its_driver_is_not_pooled(run):
    log = []

    def bad_job():
        try:
            greenlet.getcurrent().parent.throw(ValueError("to the driver"))
        finally:
            log.append("bad job unwound")

    async def main():
        with pytest.raises(ValueError, match="to the driver"):
            await spawn_greenlet(bad_job)
        gc.collect()
        assert await spawn_greenlet(lambda: "good") == "good"

    run(main())
    assert log == ["bad job unwound"]


def test_dead_greenlet_is_not_taken_from_the_pool(run):
    saved = []

    async def main():
        await spawn_greenlet(lambda: saved.append(greenlet.getcurrent()))
        with pytest.raises(RuntimeError, match="idle in aiopyramid's pool"):
            saved[0].switch()  # a stale callback resuming a parked greenlet
        assert not saved[0].dead
        with pytest.raises(ValueError):  # around the guard: it dies of it
            greenlet.greenlet.throw(saved[0], ValueError)
        assert saved[0].dead
        return await asyncio.wait_for(spawn_greenlet(lambda: "ran"), 5)

    assert run(main()) == "ran"


def test_run_in_greenlet_switches_back_even_when_the_future_is_gone(run):
    async def coro():
        await asyncio.sleep(0.001)
        return 42

    async def main():
        loop = asyncio.get_running_loop()
        state = {}

        def child():
            future = loop.create_future()
            task = loop.create_task(
                run_in_greenlet(greenlet.getcurrent(), future, coro))
            future.cancel()  # whoever waited gave up
            greenlet.getcurrent().parent.switch(task)
            state["back"] = True

        g = greenlet.greenlet(child)
        task = g.switch()
        with pytest.raises(asyncio.InvalidStateError):
            await task
        return state.get("back", False), g.dead

    assert run(main()) == (True, True)
