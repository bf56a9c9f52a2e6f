"""The greenlet <-> asyncio bridge: spawn_greenlet, synchronize and friends."""
import asyncio
import contextvars
import gc
import sys
import threading
import traceback
import weakref

import greenlet
import pytest
from pyramid.exceptions import ConfigurationError

from aiopyramid import _core
from aiopyramid.exceptions import ScopeError
from aiopyramid.helpers import (
    coroutine,
    is_generator,
    run_in_greenlet,
    spawn_greenlet,
    synchronize,
    use_executor,
)

var = contextvars.ContextVar("var", default="unset")


@synchronize
async def double(x):
    return 2 * x


@synchronize
async def sleepy_double(x, delay=0.001):
    await asyncio.sleep(delay)
    return 2 * x


@synchronize
@coroutine
def seed_style(x):
    yield from asyncio.sleep(0)
    return x + 1


class TestSpawnGreenlet:
    def test_returns_result_with_args_and_kwargs(self, run):
        def f(a, b, *, c):
            return (a, b, c)

        assert run(spawn_greenlet(f, 1, 2, c=3)) == (1, 2, 3)

    def test_is_a_coroutine_for_asyncio(self, run):
        coro = spawn_greenlet(lambda: 5)
        assert asyncio.iscoroutine(coro)
        assert run(coro) == 5  # asyncio.run refuses non-coroutines

        async def main():
            task = asyncio.create_task(spawn_greenlet(lambda: 6))
            both = await asyncio.gather(spawn_greenlet(lambda: 7), task)
            return both

        assert run(main()) == [7, 6]

    def test_cannot_be_awaited_twice(self, run):
        async def main():
            coro = spawn_greenlet(lambda: 1)
            await coro
            with pytest.raises(RuntimeError,
                               match="cannot reuse already awaited coroutine"):
                await coro

        run(main())

    def test_exception_surfaces_with_traceback(self, run):
        def inner():
            raise KeyError("deep")

        def outer():
            inner()

        with pytest.raises(KeyError) as info:
            run(spawn_greenlet(outer))
        names = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
        assert names[-2:] == ["outer", "inner"]

    def test_architecture_example_prints_in_order(self, run, capsys):
        import runpy
        import pathlib

        path = pathlib.Path(__file__).parent.parent / "examples" / "architecture.py"
        runpy.run_path(str(path), run_name="__main__")
        assert capsys.readouterr().out.splitlines() == [
            "I am a traditional coroutine that needs to call the naive normal_function",
            "I am normal function that needs to call some_async_task",
            "I am a synchronized coroutine.",
            "Synchronized task done.",
            "I (normal_function) called it, and it is done now like I expect.",
            "All is done.",
        ]

    def test_nested_spawns_suspend_through_both(self, run):
        def inner():
            return sleepy_double(3)

        def outer():
            return run_sync(spawn_greenlet(inner)) + 1

        run_sync = synchronize(lambda aw: aw, strict=False)
        assert run(spawn_greenlet(outer)) == 7

    def test_many_interleave(self, run):
        order = []

        def job(i):
            order.append(("start", i))
            sleepy_double(i, delay=0.01)
            order.append(("end", i))
            return i

        async def main():
            return await asyncio.gather(*(spawn_greenlet(job, i) for i in range(50)))

        assert run(main()) == list(range(50))
        # every job started before any finished: they waited concurrently
        assert [kind for kind, _ in order[:50]] == ["start"] * 50


class TestSynchronize:
    def test_non_suspending_call_never_switches(self, run):
        switches = []

        def body():
            old = greenlet.settrace(lambda event, args: switches.append(event))
            try:
                return [double(i) for i in range(10)]
            finally:
                greenlet.settrace(old)

        assert run(spawn_greenlet(body)) == [2 * i for i in range(10)]
        assert switches == []

    def test_suspending_call(self, run):
        assert run(spawn_greenlet(sleepy_double, 21)) == 42
        assert run(spawn_greenlet(seed_style, 1)) == 2

    def test_exception_inside_synchronized_coroutine(self, run):
        @synchronize
        async def failing():
            await asyncio.sleep(0)
            raise ValueError("from the coroutine")

        def caller():
            try:
                failing()
            except ValueError as exc:
                names = [f.name for f in traceback.extract_tb(exc.__traceback__)]
                return str(exc), names
            return None

        message, names = run(spawn_greenlet(caller))
        assert message == "from the coroutine"
        assert "failing" in names

    def test_current_task_and_timeout(self, run):
        @synchronize
        async def which_task():
            return asyncio.current_task()

        @synchronize
        async def too_slow():
            async with asyncio.timeout(0.01):
                await asyncio.sleep(10)

        async def main():
            task = asyncio.create_task(spawn_greenlet(which_task))
            assert await task is task
            with pytest.raises(TimeoutError):
                await spawn_greenlet(too_slow)

        run(main())

    def test_cancellation_lands_at_suspension_point(self, run):
        seen = []

        @synchronize
        async def waits():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                seen.append("cancelled in coroutine")
                raise
            finally:
                seen.append("finally")

        def plain():
            try:
                waits()
            finally:
                seen.append("plain finally")

        async def main():
            task = asyncio.create_task(spawn_greenlet(plain))
            await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        run(main())
        assert seen == ["cancelled in coroutine", "finally", "plain finally"]

    def test_binds_like_a_function(self, run):
        class Resource:
            def __init__(self, name):
                self.name = name

            @synchronize
            async def __getitem__(self, key):
                await asyncio.sleep(0)
                return (self.name, key)

            async def fetch_acl(self):
                return [("Allow", self.name, "view")]

            __acl__ = synchronize(fetch_acl)

        def use():
            a, b = Resource("a"), Resource("b")
            return [a["x"], b["y"], a["z"], a.__acl__(), b.__acl__()]

        assert run(spawn_greenlet(use)) == [
            ("a", "x"), ("b", "y"), ("a", "z"),
            [("Allow", "a", "view")], [("Allow", "b", "view")],
        ]
        assert Resource.__getitem__.__name__ == "__getitem__"
        assert Resource.__dict__["__getitem__"].__wrapped__.__qualname__.endswith(
            "Resource.__getitem__")

    def test_strict_refuses_plain_function(self):
        def plain():
            return 1

        with pytest.raises(ConfigurationError,
                           match=r"Attempted to synchronize a non-coroutine"):
            synchronize(plain)
        assert synchronize(strict=False)(plain)() == 1

    def test_synchronizing_twice_is_harmless(self):
        assert synchronize(double) is double

    def test_scope_error_on_the_loop(self, run):
        async def main():
            with pytest.raises(ScopeError) as info:
                double(1)
            assert "await the coroutine directly" in str(info.value)
            assert "spawn_greenlet" in str(info.value)
            lenient = synchronize(strict=False)(double.__wrapped__)
            coro = lenient(4)
            assert asyncio.iscoroutine(coro)
            assert await coro == 8

        run(main())

    def test_outside_any_loop_runs_on_a_fresh_one(self):
        assert sleepy_double(5) == 10
        assert seed_style(5) == 6

    def test_in_an_executor_thread_uses_the_request_loop(self, run):
        loop_threads = []

        @synchronize
        async def where():
            await asyncio.sleep(0)
            loop_threads.append(threading.current_thread())
            return asyncio.get_running_loop()

        @use_executor
        def blocking():
            return where(), threading.current_thread()

        async def main():
            loop, thread = await blocking()
            assert loop is asyncio.get_running_loop()
            assert thread is not threading.current_thread()
            assert loop_threads == [threading.current_thread()]

        run(main())

    def test_contextvars_are_the_tasks(self, run):
        @synchronize
        async def read_and_set():
            value = var.get()
            var.set("set in coroutine")
            return value

        def plain():
            seen = read_and_set()
            return seen, var.get()

        async def main():
            var.set("task value")
            seen, after = await spawn_greenlet(plain)
            assert (seen, after) == ("task value", "set in coroutine")
            assert var.get() == "set in coroutine"  # one context

        run(main())


class TestPool:
    def test_reuses_greenlets_across_jobs_and_errors(self, run):
        def fail():
            raise RuntimeError("job failed")

        async def main():
            await spawn_greenlet(lambda: None)
            before = _core.pool_stats()["created"]
            for _ in range(20):
                await spawn_greenlet(lambda: None)
                with pytest.raises(RuntimeError):
                    await spawn_greenlet(fail)
            return _core.pool_stats()["created"] - before

        assert run(main()) == 0

    def test_each_job_gets_fresh_state(self, run):
        def first():
            greenlet.getcurrent().leftover = "from the first job"
            var.set("first job")
            return id(greenlet.getcurrent())

        def second():
            return (id(greenlet.getcurrent()),
                    getattr(greenlet.getcurrent(), "leftover", None), var.get())

        async def task_one():
            return await spawn_greenlet(first)

        async def main():
            g1 = await asyncio.create_task(task_one(), context=contextvars.Context())
            g2, leftover, value = await asyncio.create_task(
                spawn_greenlet(second), context=contextvars.Context())
            assert g1 == g2  # the same pooled greenlet...
            assert leftover is None  # ...with clean greenlet-local state
            assert value == "unset"  # ...and the new Task's context

        run(main())

    def test_pool_limit(self, run):
        old = _core.set_pool_limit(2)
        try:
            async def main():
                await asyncio.gather(*(spawn_greenlet(sleepy_double, i) for i in range(5)))
                return _core.pool_stats()

            stats = run(main())
            assert stats["idle"] == 2 and stats["limit"] == 2
            with pytest.raises(ValueError, match="pool limit must be between"):
                _core.set_pool_limit(-1)
        finally:
            _core.set_pool_limit(old)

    def test_unfinished_spawn_is_closed_when_collected(self, run):
        seen = []

        @synchronize
        async def waits():
            try:
                await asyncio.sleep(10)
            finally:
                seen.append("coroutine finally")

        def plain():
            try:
                waits()
            finally:
                seen.append("plain finally")

        async def main():
            coro = spawn_greenlet(plain)
            fut = coro.send(None)  # suspended inside waits()
            assert isinstance(fut, asyncio.Future)
            del coro
            gc.collect()
            fut.cancel()

        run(main())
        assert seen == ["coroutine finally", "plain finally"]

    def test_job_ignoring_close_is_orphaned_not_leaked(self, run):
        refs = []

        def stubborn():
            refs.append(weakref.ref(greenlet.getcurrent()))
            while True:
                try:
                    sleepy_double(1, delay=10)
                except GeneratorExit:
                    continue
                except greenlet.GreenletExit:
                    raise

        unraisable = []

        async def main():
            coro = spawn_greenlet(stubborn)
            coro.send(None)
            with pytest.raises(RuntimeError, match="ignored GeneratorExit"):
                coro.close()
            hook, sys.unraisablehook = sys.unraisablehook, unraisable.append
            try:
                del coro  # finalizer: closes again, then gives the job up
                gc.collect()
            finally:
                sys.unraisablehook = hook
            # the orphaned greenlet was killed, not put back in the pool
            assert refs[0]() is None or refs[0]().dead

        run(main())
        assert [str(u.exc_value) for u in unraisable] == [
            "coroutine ignored GeneratorExit"]


class TestCoroutineDecorator:
    def test_generator_function(self, run):
        @coroutine
        def gen(x):
            yield from asyncio.sleep(0)
            return x

        assert asyncio.iscoroutinefunction(gen)
        assert asyncio.iscoroutine(gen(1)) or asyncio.isfuture(gen(1))
        assert run(gen(3)) == 3

    def test_plain_function(self, run):
        @coroutine
        def plain(x):
            return x * 3

        assert asyncio.iscoroutinefunction(plain)
        assert run(plain(2)) == 6

    def test_async_def_is_returned_unchanged(self):
        async def native():
            return 1

        assert coroutine(native) is native

    def test_is_generator(self):
        def gen():
            yield

        async def native():
            pass

        loop = asyncio.new_event_loop()
        try:
            assert is_generator(gen) and is_generator(gen())
            assert is_generator(loop.create_future())
            assert not is_generator(native) and not is_generator(lambda: 1)
        finally:
            loop.close()


class TestUseExecutor:
    def test_runs_in_a_thread(self, run):
        @use_executor
        def blocking(a, b=0):
            return a + b, threading.current_thread()

        assert asyncio.iscoroutinefunction(blocking)

        async def main():
            coro = blocking(1, b=2)
            assert asyncio.iscoroutine(coro)
            total, thread = await coro
            assert total == 3 and thread is not threading.current_thread()

        run(main())

    def test_custom_executor_and_methods(self, run):
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(1, thread_name_prefix="custom-pool")

        class Db:
            @use_executor(executor=pool)
            def query_it(self, q):
                return q, threading.current_thread().name

        try:
            q, name = run(Db().query_it("select"))
            assert q == "select" and name.startswith("custom-pool")
        finally:
            pool.shutdown()

    def test_contextvars_reach_the_thread(self, run):
        @use_executor
        def read():
            return var.get()

        async def main():
            var.set("request value")
            return await read()

        assert run(main()) == "request value"


class TestRunInGreenlet:
    def test_original_protocol(self, run):
        async def coro(x):
            await asyncio.sleep(0)
            return x * 2

        async def main():
            loop = asyncio.get_running_loop()
            got = []

            def child():
                future = loop.create_future()
                task = loop.create_task(
                    run_in_greenlet(greenlet.getcurrent(), future, coro, 21))
                # the original: wait in the parent until run_in_greenlet
                # switches back
                while not future.done():
                    greenlet.getcurrent().parent.switch(task)
                got.append(future.result())

            g = greenlet.greenlet(child)
            task = g.switch()
            while not g.dead:
                await task
                if not g.dead:
                    task = g.switch()
            return got

        assert run(main()) == [42]

    def test_rejects_non_greenlet(self):
        with pytest.raises(TypeError, match="expects a greenlet"):
            run_in_greenlet(object(), None, lambda: None)


def test_spawn_requires_a_function():
    with pytest.raises(TypeError, match="missing the function"):
        spawn_greenlet()


def test_refcounts_stable():
    """Repeated bridge work leaves no references behind."""
    def work():
        for i in range(200):
            double(i)
            sleepy_double(i, delay=0)

    async def main():
        for _ in range(5):
            await spawn_greenlet(work)

    asyncio.run(main())
    gc.collect()
    before = sys.getrefcount(_core.GreenletSpawn), sys.getrefcount(None)
    asyncio.run(main())
    gc.collect()
    after = sys.getrefcount(_core.GreenletSpawn), sys.getrefcount(None)
    assert after[0] == before[0]
    if sys.version_info < (3, 12):  # None is immortal from 3.12 on
        assert abs(after[1] - before[1]) < 50


@pytest.mark.parametrize("result", [(1, 2), (), None, [3], StopIteration()])
def test_results_survive_every_protocol(run, result):
    """Tuples and other values come back whole through await, send() and
    next() (StopIteration would take a tuple for its arguments)."""
    async def via_await():
        return await spawn_greenlet(lambda: result)

    assert run(via_await()) is result
    for make in (lambda: spawn_greenlet(lambda: result),
                 lambda: coroutine(lambda: result)()):
        with pytest.raises(StopIteration) as info:
            make().send(None)
        assert info.value.value is result
        with pytest.raises(StopIteration) as info:
            next(make())
        assert info.value.value is result


class TestForeignDriver:
    """Greenlets that are not ours (uWSGI's request greenlets): their parent
    runs the loop and ignores what is switched to it, so a suspension is
    resumed by a done-callback."""

    def test_synchronized_call_in_a_foreign_greenlet(self, run):
        results = []

        def request_handler(n):
            # a plain function on a greenlet the bridge did not make
            results.append(("start", n))
            value = sleepy_double(n, delay=0.01)
            results.append(("got", value))
            results.append(("seed", seed_style(n)))

        async def main():
            loop = asyncio.get_running_loop()
            greenlets = [greenlet.greenlet(request_handler) for _ in range(3)]
            for n, g in enumerate(greenlets):
                loop.call_soon(g.switch, n)
            async with asyncio.timeout(10):
                while not all(g.dead for g in greenlets):
                    await asyncio.sleep(0.005)

        run(main())
        assert sorted(results[:3]) == [("start", 0), ("start", 1), ("start", 2)]
        assert sorted(r for r in results if r[0] == "got") == [
            ("got", 0), ("got", 2), ("got", 4)]
        assert sorted(r for r in results if r[0] == "seed") == [
            ("seed", 1), ("seed", 2), ("seed", 3)]

    def test_hand_switched_greenlet_inside_a_job(self, run):
        """A greenlet the job switches to by hand runs synchronized
        coroutines that complete at once; the job itself still suspends."""
        def inner():
            return double(21)

        def job():
            value = greenlet.greenlet(inner).switch()
            return value, sleepy_double(value)

        assert run(spawn_greenlet(job)) == (42, 84)

    def test_bare_yield_is_not_a_future(self, run):
        @synchronize
        @coroutine
        def bad():
            yield "not a future"

        errors = []

        def handler():
            try:
                bad()
            except RuntimeError as exc:
                errors.append(str(exc))

        async def main():
            g = greenlet.greenlet(handler)
            asyncio.get_running_loop().call_soon(g.switch)
            async with asyncio.timeout(10):
                while not g.dead:
                    await asyncio.sleep(0)

        run(main())
        assert errors == ["coroutine yielded 'not a future', which is not a "
                          "future: use 'await' or 'yield from', not a bare "
                          "'yield'"]


def test_decorators_with_arguments_are_built_in_python():
    from aiopyramid import _core, helpers

    async def coro():
        return 1

    loose = helpers.synchronize(strict=False)(coro)
    assert loose.strict == 0 and loose.__wrapped__ is coro
    with pytest.raises(TypeError, match="expects a coroutine function"):
        helpers.synchronize(strict=False)(1)
    with pytest.raises(TypeError, match="expected a callable"):
        helpers.use_executor(executor=None)(1)
    # the C cores take the function itself, the options as keywords
    with pytest.raises(TypeError):
        _core.synchronize(strict=False)
    with pytest.raises(TypeError):
        _core.use_executor(executor=None)
