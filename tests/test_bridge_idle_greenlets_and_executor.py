"""Executor threads that wait for coroutines (no wedged executor), idle
pooled greenlets and jobs switched to by hand, asyncio's Task-bound helpers
at a view's first line.  Cases
that could hang or crash run in a fresh interpreter with a timeout, so they
fail their test and not the run."""
import concurrent.futures
import sys
import textwrap

import pytest

from .conftest import http_get, run_python

PRELUDE = textwrap.dedent(
    """
    import asyncio, concurrent.futures, gc, sys, threading, time
    import greenlet
    from pyramid.config import Configurator
    from pyramid.request import Request
    from pyramid.response import Response
    from aiopyramid import _core
    from aiopyramid.helpers import spawn_greenlet, synchronize, use_executor

    @synchronize
    async def tick(v=None):
        await asyncio.sleep(0)
        return v
    """
)


def run_fresh(body, timeout=60):
    return run_python(PRELUDE + textwrap.dedent(body), timeout)


LEGACY_CALLS_EXECUTOR = """
    @use_executor
    def blocking(x):
        time.sleep(0.01)
        return x

    @synchronize
    async def through_executor(x):
        return await blocking(x)

    def legacy(request):
        # a legacy view (in an executor thread) calling a coroutine that
        # itself runs blocking code in the executor
        return Response(str(through_executor(int(request.params["i"]))))

    with Configurator() as config:
        config.include("aiopyramid")
        config.add_route("legacy", "/legacy")
        config.add_view(legacy, route_name="legacy")
        app = config.make_wsgi_app()
"""


def test_more_legacy_views_calling_executor_coroutines_than_threads():
    # every executor thread waits for a coroutine whose own executor call
    # is queued behind the other views: the executor wedged for good
    out = run_fresh(LEGACY_CALLS_EXECUTOR + """
    async def one(i):
        request = Request.blank("/legacy?i=%d" % i)
        response = await spawn_greenlet(request.get_response, app)
        return response.text

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(2))
        return await asyncio.wait_for(
            asyncio.gather(*(one(i) for i in range(12))), 20)

    print(asyncio.run(main()) == [str(i) for i in range(12)])
    """, timeout=60)
    assert out.split() == ["True"]



def test_nested_legacy_subrequests_with_a_single_executor_thread():
    # legacy view -> synchronized coroutine -> subrequest to a legacy view
    # -> ...: each level's executor call runs in the thread waiting for it
    out = run_fresh("""
    @use_executor
    def blocking(x):
        time.sleep(0.005)
        return x

    @synchronize
    async def inner(x):
        return await blocking(x)

    @synchronize
    async def outer(request, n):
        sub = Request.blank("/legacy?n=%d" % n)
        r = await spawn_greenlet(request.invoke_subrequest, sub)
        return r.text

    def legacy(request):
        n = int(request.params["n"])
        if n == 0:
            return Response(str(inner(0)))
        return Response("%d<%s" % (n, outer(request, n - 1)))

    with Configurator() as config:
        config.include("aiopyramid")
        config.add_route("legacy", "/legacy")
        config.add_view(legacy, route_name="legacy")
        app = config.make_wsgi_app()

    async def one():
        r = await spawn_greenlet(Request.blank("/legacy?n=3").get_response, app)
        return r.text

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(1))
        return await asyncio.wait_for(asyncio.gather(*(one() for _ in range(5))), 20)

    print(asyncio.run(main()))
    """)
    assert out.strip() == str(["3<2<1<0"] * 5)


def test_a_lent_call_running_a_loop_of_its_own_keeps_its_executor_calls():
    # the waiting thread runs a legacy subrequest (lent), which runs a loop
    # of its own whose coroutine uses use_executor: that call must go to
    # that loop's executor, not be lent to the thread busy running it
    out = run_fresh("""
    @use_executor
    def blocking(x):
        return x

    async def inner_main():
        return await blocking("inner")

    @synchronize
    async def outer(request):
        sub = Request.blank("/legacy?n=sub")
        return (await spawn_greenlet(request.invoke_subrequest, sub)).text

    def legacy(request):
        if request.params["n"] == "sub":
            return Response(asyncio.run(inner_main()))
        return Response("top:" + outer(request))

    with Configurator() as config:
        config.include("aiopyramid")
        config.add_route("legacy", "/legacy")
        config.add_view(legacy, route_name="legacy")
        app = config.make_wsgi_app()

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(1))
        r = await asyncio.wait_for(
            spawn_greenlet(Request.blank("/legacy?n=top").get_response, app), 10)
        return r.text

    print(asyncio.run(main()))
    """, timeout=30)
    assert out.strip() == "top:inner"

def test_lent_calls_fail_and_get_cancelled_like_executor_calls():
    out = run_fresh("""
    @use_executor
    def fails():
        raise KeyError("in thread")

    @use_executor
    def slow():
        time.sleep(0.05)
        return "slow"

    @synchronize
    async def errors():
        try:
            await fails()
        except KeyError as e:
            return e.args[0]

    @synchronize
    async def outlives():
        # a lent call the coroutine gives up on; and a task that outlives
        # the wait, whose executor call goes to the executor
        t = asyncio.ensure_future(slow())
        await asyncio.sleep(0)
        return t

    def legacy(request):
        t = outlives()
        return Response("%s %s" % (errors(), type(t).__name__))

    with Configurator() as config:
        config.include("aiopyramid")
        config.add_route("legacy", "/legacy")
        config.add_view(legacy, route_name="legacy")
        app = config.make_wsgi_app()

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(1))
        r = await asyncio.wait_for(
            spawn_greenlet(Request.blank("/legacy").get_response, app), 20)
        return r.text

    print(asyncio.run(main()))
    """)
    assert out.strip() == "in thread Task"


@pytest.mark.parametrize("how", ["switch", "throw"])
def test_switching_into_another_jobs_idle_greenlet_is_refused(how):
    # job A gets hold of job B's greenlet, idle in the pool once B is done,
    # and switches into it: refused at the call, and neither job suffers
    out = run_fresh("""
    saved = {}

    def job_b():
        saved["b"] = greenlet.getcurrent()
        return "b done"

    def job_a(how):
        tick(); tick()
        b = saved["b"]
        assert b is not greenlet.getcurrent()
        try:
            getattr(b, how)()
            said = "accepted"
        except RuntimeError as e:
            said = "refused: idle" if "idle" in str(e) else "other: %s" % e
        return said, tick("a done")

    async def main():
        a = asyncio.ensure_future(spawn_greenlet(job_a, "HOW"))
        b = asyncio.ensure_future(spawn_greenlet(job_b))
        results = await asyncio.wait_for(
            asyncio.gather(a, b, return_exceptions=True), 10)
        results.append(await spawn_greenlet(tick, "pool ok"))
        return results

    print(asyncio.run(main()))
    """.replace("HOW", how))
    assert out.strip() == str([("refused: idle", "a done"), "b done", "pool ok"])


def test_run_in_greenlet_back_to_a_dead_greenlet_of_a_finished_job():
    # 0.4's protocol, unluckily: `back` is a greenlet that died inside a job
    # that is over; switching to it goes to its parent, the job's greenlet,
    # now idle in the pool: that must neither fail the task nor kill the
    # pooled greenlet
    out = run_fresh('''
    from aiopyramid.helpers import run_in_greenlet
    holder = {}

    async def slow(v):
        await asyncio.sleep(0.01)
        return v

    def job():
        g = greenlet.greenlet(lambda: None)
        g.switch()                      # dead; its parent is this greenlet
        holder["g"] = g
        return "job done"

    async def main():
        assert await spawn_greenlet(job) == "job done"
        created = _core.pool_stats()["created"]
        fut = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(run_in_greenlet(holder["g"], fut, slow, 3))
        await asyncio.wait({task}, timeout=10)
        r = [task.done() and task.exception(), fut.result()]
        r.append(await spawn_greenlet(tick, "pool ok"))
        r.append(_core.pool_stats()["created"] - created)
        return r

    print(asyncio.run(main()))
    ''')
    assert out.strip() == str([None, 3, "pool ok", 0])


@pytest.mark.parametrize("path, body", [
    ("/timeout-first", b"timeout ok"),
    ("/taskgroup-first", b"taskgroup ok"),
    ("/same-task", b"same task"),
    ("/tween-timeout", b"tween timeout ok"),
])
def test_task_bound_helpers_at_a_views_first_line_under_the_server(gunicorn, path, body):
    srv = gunicorn(app="task_helpers_app:main()")
    assert http_get(srv.port, path) == (200, body)


RAW_WAIT_RESUMED = """
    def job():
        loop = asyncio.get_running_loop()
        f = loop.create_future()
        loop.call_later(0.02, f.set_result, "fine")
        me = greenlet.getcurrent()

        def poke():
            try:
                if "HOW" == "switch":
                    greenlet.greenlet.switch(me, "poked")
                else:
                    greenlet.greenlet.throw(me, KeyError("poked"))
            except BaseException as e:
                print("poke raised", repr(e))

        loop.call_soon(poke)
        # aiopyramid 0.4's protocol: switch a future up to the driver, which
        # awaits it and switches back; poke() resumes the switch first
        return me.parent.switch(f)

    async def main():
        try:
            r = await asyncio.wait_for(spawn_greenlet(job), 10)
        except KeyError as e:
            r = "KeyError " + e.args[0]
        return r, await spawn_greenlet(tick, "pool ok")

    print(asyncio.run(main()))
"""


@pytest.mark.parametrize("how, result", [("switch", "poked"), ("throw", "KeyError poked")])
def test_job_waiting_in_its_own_switch_resumed_around_the_guard(how, result):
    # nothing of ours is on the job's stack while it waits in a switch of
    # its own (0.4's protocol), so a resume that goes around
    # BridgeGreenlet.switch/throw runs it on; the driver must then take the
    # job as it finds it, never switch into its finished greenlet (which
    # called the job's cleared function: a segfault)
    out = run_fresh(RAW_WAIT_RESUMED.replace("HOW", how))
    assert out.strip().splitlines() == [str((result, "pool ok"))]


def test_job_waiting_in_its_own_switch_resumed_by_a_greenlet_ending_into_it():
    # the unlucky shape, all 0.4 code: a plain greenlet made in the job
    # waits through run_in_greenlet by switching the task up to its parent
    # (the job), which switches it on up to the driver; when the task is
    # done it switches back to the plain greenlet, which ends into the job
    # while the job still waits in its own switch
    out = run_fresh('''
    from aiopyramid.helpers import run_in_greenlet

    async def add(a, b):
        await asyncio.sleep(0.01)
        return a + b

    def waiter():
        this = greenlet.getcurrent()
        fut = asyncio.get_running_loop().create_future()
        sub = asyncio.ensure_future(run_in_greenlet(this, fut, add, 1, 2))
        this.parent.switch(sub)          # to the job, which is its parent
        return fut.result()

    def job():
        g = greenlet.greenlet(waiter)
        sub = g.switch()                 # the task waiter switched up
        got = greenlet.getcurrent().parent.switch(sub)
        return got, g.dead

    async def main():
        r = await asyncio.wait_for(spawn_greenlet(job), 10)
        return r, await spawn_greenlet(tick, "pool ok")

    print(asyncio.run(main()))
    ''')
    assert out.strip().splitlines() == [str(((3, True), "pool ok"))]


def test_legacy_views_waiting_for_run_in_executor_under_the_server(gunicorn):
    # more legacy views than executor threads, each waiting for a coroutine
    # that calls loop.run_in_executor(None, ...) itself: the worker's
    # executor runs such calls in the waiting thread
    srv = gunicorn(app="task_helpers_app:main()")
    n = 24
    with concurrent.futures.ThreadPoolExecutor(n) as clients:
        got = list(clients.map(
            lambda i: http_get(srv.port, "/legacy-by-hand?i=%d" % i, timeout=15), range(n)))
    assert got == [(200, str(i).encode()) for i in range(n)]
    assert http_get(srv.port, "/hello") == (200, b"Hello, world!")


def test_nested_plain_greenlets_each_waiting_in_a_job():
    # plain greenlets nested in a job (g inside p inside the job), each
    # calling a synchronized coroutine that suspends: g, resumed by the loop,
    # ends while p waits for its own coroutine; that must not resume p, nor
    # reach the job (which waits for its driver) through p
    out = run_fresh("""
    unraisable = []
    sys.unraisablehook = lambda u: unraisable.append(repr(u.exc_value))

    @synchronize
    async def nap(v, t):
        await asyncio.sleep(t)
        return v

    log = []

    def g_f():
        log.append(("g got", nap("g", 0.01)))
        return "g done"

    def p_f():
        g = greenlet.greenlet(g_f)
        g.switch()                  # back here when g suspends
        log.append(("p got", nap("p", 0.03)))
        return "p done"

    def job():
        p = greenlet.greenlet(p_f)
        p.switch()                  # back here when p suspends
        return nap("job", 0.06), p.dead

    async def main():
        r = await asyncio.wait_for(spawn_greenlet(job), 10)
        await asyncio.sleep(0.05)
        return r, await spawn_greenlet(tick, "pool ok")

    print(asyncio.run(main()), log, unraisable)
    """)
    assert out.strip() == " ".join(map(str, [(("job", True), "pool ok"),
                                             [("g got", "g"), ("p got", "p")], []]))
