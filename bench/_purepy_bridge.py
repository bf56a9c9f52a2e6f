"""Comparators for bench/bridge.py, written in plain Python on greenlet.

Two other ways of calling a coroutine from plain code, so the C bridge is
measured against them in the same run:

``greenlet_spawn`` / ``await_only``
    The pure-Python bridge of SQLAlchemy's kind (its
    ``util/_concurrency_py3k.py``, rewritten here from its description, not
    copied): the plain code runs in a child greenlet; ``await_only(aw)``
    switches *up* to the parent with the awaitable, the parent (a coroutine
    driven by the Task) awaits it and switches the result back *down*.  Two
    switches and one Python-level ``await`` per call, even when the
    coroutine never suspends.

``tf_spawn_greenlet`` / ``tf_synchronize``
    The original aiopyramid (0.4.x) design, Task + Future per call: the
    synchronized wrapper makes a Future, schedules ``tf_run_in_greenlet`` as
    a Task on the loop and switches to the parent greenlet (with that Task)
    until the Future is done; the Task awaits the coroutine, sets the
    Future and switches back.  The spawner awaits whatever Task the child
    hands up.  Written with ``async def`` for today's Python.
"""
import asyncio
import sys

import greenlet

getcurrent = greenlet.getcurrent

# ---------------------------------------------------------------------------
# SQLAlchemy's kind: child switches up with the awaitable, parent awaits it


class _BridgedGreenlet(greenlet.greenlet):
    """A child greenlet that knows the greenlet (parent) awaiting for it."""

    def __init__(self, fn, driver):
        super().__init__(fn, driver)
        self.driver = driver
        # as greenlet_spawn does: the child sees the Task's contextvars
        self.gr_context = driver.gr_context


def await_only(awaitable):
    """Called from plain code in a greenlet_spawn child: hand the awaitable
    to the parent and return what it switches back (or raise what it
    throws)."""
    current = getcurrent()
    if not isinstance(current, _BridgedGreenlet):
        raise RuntimeError("await_only() called outside greenlet_spawn()")
    return current.driver.switch(awaitable)


async def greenlet_spawn(fn, *args, **kwargs):
    """Run fn in a new child greenlet; await every awaitable it hands up."""
    child = _BridgedGreenlet(fn, getcurrent())
    try:
        result = child.switch(*args, **kwargs)
        while not child.dead:
            try:
                value = await result
            except BaseException:
                result = child.throw(*sys.exc_info())
            else:
                result = child.switch(value)
    finally:
        del child.driver  # break the child <-> driver cycle
    return result


# ---------------------------------------------------------------------------
# The original aiopyramid design: a Task and a Future per synchronized call


async def tf_run_in_greenlet(back, future, func, *args, **kwargs):
    """Await func(...), report to future, switch back to greenlet `back`.

    What `back` next switches up (the next call's Task, or its final
    result) becomes this Task's result, which the spawner awaits."""
    try:
        result = await func(*args, **kwargs)
    except Exception as exc:
        future.set_exception(exc)
    else:
        future.set_result(result)
    return back.switch()


def tf_synchronize(coro_func):
    """A plain callable: one Future and one Task on the loop per call."""

    def wrapped(*args, **kwargs):
        this = getcurrent()
        if this.parent is None:
            raise RuntimeError("tf_synchronize: called on the main greenlet")
        future = asyncio.get_running_loop().create_future()
        sub_task = asyncio.ensure_future(
            tf_run_in_greenlet(this, future, coro_func, *args, **kwargs))
        while not future.done():
            this.parent.switch(sub_task)
        return future.result()

    wrapped.__wrapped__ = coro_func
    return wrapped


async def tf_spawn_greenlet(func, *args, **kwargs):
    """The original spawn_greenlet: a fresh greenlet; await the Futures
    (Tasks) it switches up until it hands up anything else (its result)."""
    child = greenlet.greenlet(func)
    result = child.switch(*args, **kwargs)
    while isinstance(result, asyncio.Future):
        result = await result
    return result
