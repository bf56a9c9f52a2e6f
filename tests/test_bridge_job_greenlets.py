"""The bridge under hostile use (issue 13): request greenlets resumed by
anything but their driver, nesting deep enough to exhaust the C stack, the
original run_in_greenlet protocol.  Each case that could crash runs in a
fresh interpreter, so a crash fails its test and not the run."""
import asyncio
import sys
import textwrap

import greenlet
import pytest

from aiopyramid import _core
from aiopyramid.helpers import (
    coroutine,
    run_in_greenlet,
    spawn_greenlet,
    synchronize,
)

from .conftest import run_python

PRELUDE = textwrap.dedent(
    """
    import asyncio, gc, sys, threading
    import greenlet
    from aiopyramid import _core
    from aiopyramid.helpers import (run_in_greenlet, spawn_greenlet,
                                    synchronize)

    @synchronize
    async def tick(v=None):
        await asyncio.sleep(0)
        return v

    @synchronize
    async def nap(v=None):
        await asyncio.sleep(0.01)
        return v
    """
)


def run_fresh(body, timeout=120):
    """Runs PRELUDE + body in a fresh interpreter; returns its stdout."""
    return run_python(PRELUDE + textwrap.dedent(body), timeout)


@pytest.mark.parametrize("then", ["tick", "nap", "tick tick", "nap tick"])
def test_plain_greenlet_finishing_into_a_suspended_job(then):
    # a plain greenlet made in a job calls a synchronized coroutine that
    # suspends (the foreign-driver path), then the job suspends on other
    # synchronized calls; the plain greenlet ends while the job waits
    out = run_fresh(
        """
        log = []

        def inner():
            log.append(("inner", tick("a")))
            return "inner done"

        def job():
            g = greenlet.greenlet(inner)
            g.switch()                      # back here when inner suspends
            for name in %r.split():
                log.append(("job", globals()[name](name)))
            return "job done"

        async def main():
            r = await asyncio.wait_for(spawn_greenlet(job), 10)
            for _ in range(5):
                await asyncio.sleep(0)
            return r

        print(asyncio.run(main()), sorted(log))
        """ % then
    )
    expected = sorted([("inner", "a")] + [("job", n) for n in then.split()])
    assert out.split("\n")[0] == "job done %s" % expected


def test_plain_greenlets_in_a_job_keep_working_many_times():
    out = run_fresh(
        """
        def inner(i):
            return tick(i) + tick(i)

        def job(i):
            results = []
            gs = [greenlet.greenlet(inner) for _ in range(3)]
            for g in gs:
                g.switch(i)
            results.append(tick(i))
            return results

        async def main():
            rs = await asyncio.wait_for(
                asyncio.gather(*(spawn_greenlet(job, i) for i in range(50))), 20)
            for _ in range(10):
                await asyncio.sleep(0)
            return rs

        print(asyncio.run(main()) == [[i] for i in range(50)])
        """
    )
    assert out.strip() == "True"


def test_throw_into_a_suspended_job_greenlet_is_refused():
    out = run_fresh(
        """
        saved = {}

        def job():
            saved["g"] = greenlet.getcurrent()
            return tick("resumed by its driver")

        async def main():
            t = asyncio.ensure_future(spawn_greenlet(job))
            await asyncio.sleep(0)          # the job waits in tick()
            try:
                saved["g"].throw(ValueError("hostile"))
            except RuntimeError as e:
                print("refused:", "only its driver" in str(e))
            return await asyncio.wait_for(t, 10)

        print(asyncio.run(main()))
        """
    )
    assert out.split("\n")[:2] == ["refused: True", "resumed by its driver"]


def test_stale_switch_after_the_future_is_done_is_refused():
    out = run_fresh(
        """
        saved = {}

        def job():
            saved["g"] = greenlet.getcurrent()
            a = tick("first")
            b = tick("second")
            return a + " " + b

        async def main():
            t = asyncio.ensure_future(spawn_greenlet(job))
            await asyncio.sleep(0)
            await asyncio.sleep(0)          # the sleep's future is done
            for _ in range(3):
                try:
                    saved["g"].switch("stale")
                except RuntimeError as e:
                    print("refused:", "only its driver" in str(e))
            return await asyncio.wait_for(t, 10)

        print(asyncio.run(main()))
        """
    )
    lines = out.split("\n")
    assert lines[:3] == ["refused: True"] * 3
    assert lines[3] == "first second"


def test_stale_switch_from_a_loop_callback_is_refused():
    out = run_fresh(
        """
        saved = {}
        errors = []

        def job():
            saved["g"] = greenlet.getcurrent()
            return nap("ok")

        async def main():
            loop = asyncio.get_running_loop()
            loop.set_exception_handler(
                lambda loop, ctx: errors.append(ctx.get("exception")))
            t = asyncio.ensure_future(spawn_greenlet(job))
            await asyncio.sleep(0)
            loop.call_soon(saved["g"].switch)
            loop.call_soon(saved["g"].switch)
            r = await asyncio.wait_for(t, 10)
            await asyncio.sleep(0)
            return r

        print(asyncio.run(main()), [type(e).__name__ for e in errors])
        """
    )
    assert out.strip() == "ok ['RuntimeError', 'RuntimeError']"


def test_bypassing_the_guard_still_leaves_the_job_intact():
    # greenlet.greenlet.switch(g) skips BridgeGreenlet's own switch(): the
    # job still refuses the resume where it waits
    out = run_fresh(
        """
        saved = {}
        unraisable = []
        sys.unraisablehook = unraisable.append

        def job():
            saved["g"] = greenlet.getcurrent()
            return tick("a") + tick("b")

        async def main():
            t = asyncio.ensure_future(spawn_greenlet(job))
            await asyncio.sleep(0)
            greenlet.greenlet.switch(saved["g"], "bypass")
            greenlet.greenlet.throw(saved["g"], ValueError("bypass"))
            return await asyncio.wait_for(t, 10)

        print(asyncio.run(main()), len(unraisable) >= 1)
        """
    )
    assert out.strip() == "ab True"


def original_synchronized_call(coro_func, *args):
    """aiopyramid 0.4's synchronize, as its users wrote it by hand: switch a
    run_in_greenlet task up to the parent, which awaits it."""



    this = greenlet.getcurrent()
    future = asyncio.get_running_loop().create_future()
    sub_task = asyncio.ensure_future(
        run_in_greenlet(this, future, coro_func, *args))
    while not future.done():
        this.parent.switch(sub_task)
    return future.result()


def test_original_run_in_greenlet_protocol_under_spawn_greenlet(run):


    async def add(a, b):
        await asyncio.sleep(0.001)
        return a + b

    async def fails():
        await asyncio.sleep(0)
        raise KeyError("inside")

    @synchronize
    async def new_style(x):
        await asyncio.sleep(0)
        return x

    def job():
        first = original_synchronized_call(add, 1, 2)
        second = original_synchronized_call(add, first, 10)
        try:
            original_synchronized_call(fails)
        except KeyError as e:
            caught = e.args[0]
        return first, second, caught, new_style("mixed")

    async def main():
        results = await asyncio.wait_for(
            asyncio.gather(*(spawn_greenlet(job) for _ in range(20))), 10)
        # the pooled greenlets survived and are reused
        assert await spawn_greenlet(job) == (3, 13, "inside", "mixed")
        return results

    assert run(main()) == [(3, 13, "inside", "mixed")] * 20


def test_original_protocol_job_cancelled_while_it_waits(run):


    log = []

    async def slow():
        await asyncio.sleep(10)

    def job():
        try:
            original_synchronized_call(slow)
        except asyncio.CancelledError:
            log.append("cancelled at the switch")
            raise

    async def main():
        task = asyncio.ensure_future(spawn_greenlet(job))
        await asyncio.sleep(0.01)
        task.cancel()
        try:
            await asyncio.wait_for(task, 5)
        except asyncio.CancelledError:
            log.append("task cancelled")
        assert await spawn_greenlet(lambda: "next job") == "next job"

    run(main())
    assert log == ["cancelled at the switch", "task cancelled"]


def test_run_in_greenlet_task_outliving_its_job_leaves_the_pool_alone(run):



    async def short():
        await asyncio.sleep(0.02)
        return "late"

    def job(box):
        this = greenlet.getcurrent()
        future = asyncio.get_running_loop().create_future()
        box.append(future)
        box.append(asyncio.ensure_future(
            run_in_greenlet(this, future, short)))
        this.parent.switch(asyncio.shield(box[1]))  # the shield is cancelled

    async def main():
        box = []
        task = asyncio.ensure_future(spawn_greenlet(job, box))
        await asyncio.sleep(0)
        task.cancel()
        try:
            await asyncio.wait_for(task, 5)
        except asyncio.CancelledError:
            pass
        created = _core.pool_stats()["created"]
        # the job is over, its greenlet idle in the pool: the task ends
        # without switching into it
        assert await asyncio.wait_for(box[1], 5) is None
        assert box[0].result() == "late"
        assert await spawn_greenlet(lambda: "reused") == "reused"
        return _core.pool_stats()["created"] - created

    assert run(main()) == 0


def test_switching_a_non_future_to_the_driver_says_what_to_do(run):



    def job():
        greenlet.getcurrent().parent.switch(42)

    with pytest.raises(RuntimeError, match="with 42, which is not a future"):
        run(asyncio.wait_for(spawn_greenlet(job), 5))


NESTING = """
deepest = [0]

@synchronize
async def deeper(n):
    return await spawn_greenlet(nest, n)

def nest(n):
    deepest[0] = max(deepest[0], n)
    return 0 if n == LEVELS else deeper(n + 1) + 1

def run_nested():
    try:
        r = asyncio.run(spawn_greenlet(nest, 0))
    except RecursionError as e:
        r = "RecursionError: %s" % e
    # the pool and the loop still work afterwards
    assert asyncio.run(spawn_greenlet(lambda: tick("ok"))) == "ok"
    return r
"""


def test_nested_spawn_on_the_main_thread_stops_before_the_stack_ends():
    out = run_fresh(NESTING + """
LEVELS = 5000
sys.setrecursionlimit(1000000)   # Python's own limit would stop it first
r = run_nested()
print(r.split(":")[0], deepest[0] > 100)
""")
    assert out.split("\n")[0] == "RecursionError True"


def test_nested_spawn_in_a_small_thread_stack_stops_before_the_guard_page():
    out = run_fresh(NESTING + """
LEVELS = 1000
sys.setrecursionlimit(1000000)
threading.stack_size(256 * 1024)
box = []
t = threading.Thread(target=lambda: box.append(run_nested()))
t.start()
t.join(60)
print(box[0].split(":")[0], deepest[0] > 2)
""")
    assert out.split("\n")[0] == "RecursionError True"


def test_moderate_nesting_still_works():
    out = run_fresh(NESTING + """
LEVELS = 30
print(run_nested())
threading.stack_size(1024 * 1024)
box = []
t = threading.Thread(target=lambda: box.append(run_nested()))
t.start()
t.join(60)
print(box[0])
""")
    assert out.split("\n")[:2] == ["30", "30"]


class RecordingIterator:
    """An awaitable's iterator with send, throw and close of its own."""
    def __init__(self, log):
        self.log = log

    def __iter__(self):
        return self

    def __next__(self):
        return self.send(None)

    def send(self, value):
        self.log.append("send")
        return None  # a bare yield, for ever

    def throw(self, *args):
        self.log.append("throw %s" % args[0].__name__
                        if isinstance(args[0], type) else
                        "throw %s" % type(args[0]).__name__)
        raise args[0]

    def close(self):
        self.log.append("close")


class RecordingAwaitable:
    def __init__(self, log):
        self.log = log

    def __await__(self):
        return RecordingIterator(self.log)


def test_generator_exit_closes_a_delegated_iterator_as_yield_from_does():


    async def native(log):
        await RecordingAwaitable(log)

    expected = []
    c = native(expected)
    c.send(None)
    with pytest.raises(GeneratorExit):
        c.throw(GeneratorExit)
    assert expected == ["send", "close"]  # CPython: close(), not throw()

    log = []
    d = coroutine(lambda: RecordingAwaitable(log))()
    d.send(None)
    with pytest.raises(GeneratorExit):
        d.throw(GeneratorExit)
    assert log == expected

    log = []
    d = coroutine(lambda: RecordingAwaitable(log))()
    d.send(None)
    with pytest.raises(KeyError):
        d.throw(KeyError)  # anything else is thrown in, as before
    assert log == ["send", "throw KeyError"]


def test_closing_a_spawn_closes_the_iterator_its_job_waits_on():


    log = []

    def job():
        _core.await_(RecordingAwaitable(log))

    async def main():
        s = spawn_greenlet(job)
        s.send(None)
        s.close()

    asyncio.run(main())
    assert log == ["send", "close"]


def test_plain_greenlets_in_a_job_may_switch_to_it_by_hand(run):
    # a running job's greenlet is not waiting for its driver: ordinary
    # greenlet ping-pong with it works, with values both ways



    def job():
        me = greenlet.getcurrent()

        def producer():
            for i in range(3):
                me.switch(i)           # BridgeGreenlet.switch, allowed here
            return "end"

        g = greenlet.greenlet(producer)
        got = [g.switch()]
        while not g.dead:
            got.append(g.switch())
        try:
            me.throw(KeyError("to myself"))  # the current greenlet: raises here
        except KeyError:
            got.append("threw to itself")
        return got

    assert run(asyncio.wait_for(spawn_greenlet(job), 5)) == [
        0, 1, 2, "end", "threw to itself"]
