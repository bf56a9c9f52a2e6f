"""Leak checks: repeat bridge work in a fresh interpreter, compare memory
and object counts (the way multidict's and greenlet's leak checks do)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

asan = bool(os.environ.get("AIOPYRAMID_ASAN"))

def run_fresh(tmp_path, text, n):
    """Runs a measuring script in a fresh interpreter; its last line of
    output, as JSON."""
    script = tmp_path / "leak.py"
    script.write_text(text)
    out = subprocess.run(
        [sys.executable, "-W", "ignore", str(script), str(n)],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout
    return json.loads(out.splitlines()[-1])


SCRIPT = textwrap.dedent(
    """
    import asyncio, gc, json, sys
    import psutil
    from aiopyramid import _core
    from aiopyramid.helpers import spawn_greenlet, synchronize, use_executor

    counted = [0]

    @synchronize
    async def quick(x):
        counted[0] += 1
        return x

    @synchronize
    async def suspends(x):
        await asyncio.sleep(0)
        return x

    @synchronize
    async def fails(x):
        raise ValueError(x)

    def calls(n):
        for i in range(n):
            quick(i)
            if i % 10 == 0:
                suspends(i)
                try:
                    fails(i)
                except ValueError:
                    pass

    async def round_(n):
        await asyncio.gather(*(spawn_greenlet(calls, n // 10) for _ in range(10)))
        task = asyncio.ensure_future(spawn_greenlet(suspends, 1))
        await asyncio.sleep(0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    def measure(n):
        asyncio.run(round_(n))
        gc.collect()
        return psutil.Process().memory_info().rss, len(gc.get_objects())

    n = int(sys.argv[1])
    measure(n)  # warm up: pools, caches, allocator arenas
    rss0, objs0 = measure(n)
    for _ in range(3):
        rss1, objs1 = measure(n)
    print(json.dumps({"calls": counted[0],
                      "rss_growth": rss1 - rss0, "object_growth": objs1 - objs0,
                      "refs_spawn": sys.getrefcount(_core.GreenletSpawn)}))
    """
)


@pytest.mark.skipif(asan, reason="RSS under ASan measures the sanitizer")
def test_100k_synchronized_calls_leave_memory_flat(tmp_path):
    result = run_fresh(tmp_path, SCRIPT, 100000)
    # 300k further calls: a leak of even one small object per call would
    # show as megabytes and hundreds of thousands of objects
    assert result["calls"] == 5 * 100000, result
    assert result["object_growth"] < 1000, result
    assert result["rss_growth"] < 4 * 1024 * 1024, result


APP_SCRIPT = textwrap.dedent(
    """
    import asyncio, gc, json, sys
    import psutil
    from pyramid.config import Configurator
    from pyramid.request import Request
    from pyramid.response import Response
    from aiopyramid.helpers import spawn_greenlet

    served = [0]

    async def coro_view(request):
        await asyncio.sleep(0)
        served[0] += 1
        return Response("c")

    def legacy_view(request):
        served[0] += 1
        return Response("l")

    async def failing_view(request):
        raise LookupError("nope")

    with Configurator() as config:
        config.include("aiopyramid")
        config.add_route("c", "/c")
        config.add_view(coro_view, route_name="c")
        config.add_route("l", "/l")
        config.add_view(legacy_view, route_name="l")
        config.add_route("f", "/f")
        config.add_view(failing_view, route_name="f")
        app = config.make_wsgi_app()

    async def one(path):
        try:
            await spawn_greenlet(Request.blank(path).get_response, app)
        except LookupError:
            pass

    async def round_(n):
        for _ in range(n // 50):
            await asyncio.gather(*(one(p) for p in ["/c"] * 40 + ["/l"] * 5 + ["/f"] * 5))

    def measure(n):
        asyncio.run(round_(n))
        gc.collect()
        return psutil.Process().memory_info().rss, len(gc.get_objects())

    n = int(sys.argv[1])
    measure(n)
    rss0, objs0 = measure(n)
    for _ in range(3):
        rss1, objs1 = measure(n)
    print(json.dumps({"served": served[0], "rss_growth": rss1 - rss0,
                      "object_growth": objs1 - objs0}))
    """
)


@pytest.mark.skipif(asan, reason="RSS under ASan measures the sanitizer")
def test_requests_through_mapped_views_leave_memory_flat(tmp_path):
    result = run_fresh(tmp_path, APP_SCRIPT, 5000)
    assert result["served"] == 5 * 5000 * 45 // 50, result
    assert result["object_growth"] < 1000, result
    assert result["rss_growth"] < 4 * 1024 * 1024, result
