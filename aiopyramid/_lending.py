"""An executor thread that waits for a coroutine on its request's loop (a
legacy view calling a synchronized coroutine) lends itself to the executor
calls that coroutine makes on the loop's default executor (use_executor, an
executor view): they run in the waiting thread, as asgiref's
CurrentThreadExecutor does for Django.  Without that, with every executor
thread waiting so, the calls queued behind them would never run, and the
executor would be wedged for good.  Used by _core; not public."""
import asyncio
import concurrent.futures
import contextvars
import functools
import queue
import threading

#: the _Lender of the thread waiting for the coroutine that runs in this
#: context (set around run_coroutine_threadsafe, so the coroutine's Task has
#: it)
lender = contextvars.ContextVar("aiopyramid_lender")


class _Lender:
    __slots__ = ("loop", "calls", "open", "lock")

    def __init__(self, loop):
        self.loop = loop
        self.calls = queue.SimpleQueue()
        self.open = True
        self.lock = threading.Lock()


def _run(item):
    future, fn = item
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = fn()
    except BaseException as exc:
        future.set_exception(exc)
    else:
        future.set_result(result)


def wait_in_thread(coro, loop):
    """Runs coro on loop (another thread's) and waits for its result,
    running the executor calls it lends this thread meanwhile."""
    me = _Lender(loop)
    token = lender.set(me)
    try:
        done = asyncio.run_coroutine_threadsafe(coro, loop)
    finally:
        lender.reset(token)
    done.add_done_callback(lambda _: me.calls.put(None))
    try:
        while True:
            item = me.calls.get()
            if item is None:
                break
            _run(item)
    finally:
        with me.lock:
            me.open = False
        # what was lent before it closed still runs here
        while True:
            try:
                item = me.calls.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                _run(item)
    return done.result()


def _lend(loop, fn):
    """A concurrent future for fn() run in the thread waiting for the
    current coroutine, or None when no thread waits for it.  Only calls made
    on the loop it waits for are lent: a loop of another thread's (or of
    the waiting thread's own, run by a lent call) never waits on it."""
    me = lender.get(None)
    if me is None or me.loop is not loop:
        return None
    future = concurrent.futures.Future()
    with me.lock:
        if not me.open:
            return None
        me.calls.put((future, fn))
    return future


def lend(loop, fn):
    """An asyncio future for fn() run in the thread waiting for the current
    coroutine, or None when no thread waits for it."""
    future = _lend(loop, fn)
    return None if future is None else asyncio.wrap_future(future, loop=loop)


class LendingExecutor(concurrent.futures.ThreadPoolExecutor):
    """The default executor of aiopyramid's gunicorn worker: what a
    coroutine that an executor thread waits for submits by hand
    (loop.run_in_executor(None, ...), asyncio.to_thread) runs in that
    thread too."""

    def submit(self, fn, /, *args, **kwargs):
        future = _lend(asyncio._get_running_loop(),
                       functools.partial(fn, *args, **kwargs))
        if future is not None:
            return future
        return super().submit(fn, *args, **kwargs)
