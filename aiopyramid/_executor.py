"""Executor threads that wait on the loop run the loop's executor work.

A legacy view runs in an executor thread.  When it calls a synchronized
coroutine, the thread blocks until that coroutine, run on the loop,
finishes.  If the coroutine itself waits on executor work (a
``use_executor`` function, ``loop.run_in_executor(None, ...)``), that work
would queue behind the very threads that wait for it, and with more such
requests than threads none would ever finish.  As asgiref's
``CurrentThreadExecutor`` does, the waiting thread runs that work itself:
the coroutine's Task inherits a mark (a ContextVar) naming the waiting
thread, and executor work submitted from that Task, on the loop, is handed
to it instead of queued.

The mark is read by ``_core`` (views and ``use_executor`` functions) and by
:class:`Executor`, the pool the gunicorn worker makes the loop's default
and ``aiopyramid.executor_threads`` creates, for plain
``loop.run_in_executor`` calls.

A waiting thread is bounded by its loop's life: when the loop closes, or
the worker stops (:func:`stop_waiting`), it wakes with an error.
"""
import collections
import concurrent.futures
import sys
import threading
import weakref
from asyncio import events, futures, run_coroutine_threadsafe

import greenlet

from . import _core
from ._core import _waiting_thread

# 3.14 changed the pool's work items and its workers' loop: its own queue
_WorkQueue = None
if sys.version_info < (3, 14):
    from ._core import WorkQueue as _WorkQueue

__all__ = ["Executor", "shutdown_pools", "stop_waiting", "tracking_loop_class",
           "wait_in_thread"]

#: seconds between a waiting thread's checks that its loop is still open
POLL = 0.5

_waiters = set()
_waiters_lock = threading.Lock()
_pools = weakref.WeakSet()  # every Executor, for shutdown_pools()


class WaitingThread:
    """An executor thread blocked on a coroutine running on ``loop``, which
    meanwhile runs the executor jobs that coroutine submits."""

    __slots__ = ("loop", "_cond", "_jobs", "_open", "_error")

    def __init__(self, loop):
        self.loop = loop
        self._cond = threading.Condition(threading.Lock())
        self._jobs = collections.deque()
        self._open = True
        self._error = None

    def submit(self, fn, *args, **kwargs):
        """A concurrent Future of ``fn(*args, **kwargs)`` run by the waiting
        thread; None once it no longer waits, or when not called on the
        loop's own thread (a job running here must not queue work behind
        itself)."""
        if events._get_running_loop() is not self.loop:
            return None
        f = concurrent.futures.Future()
        with self._cond:
            if not self._open:
                return None
            self._jobs.append((f, fn, args, kwargs))
            self._cond.notify()
        return f

    def run_in_executor(self, loop, fn):
        """``loop.run_in_executor`` done by the waiting thread (for _core);
        None when it cannot take the job."""
        f = self.submit(fn)
        return None if f is None else futures.wrap_future(f, loop=loop)

    def stop(self, error):
        """Wakes the waiting thread, which raises ``error``."""
        with self._cond:
            if self._error is None:
                self._error = error
            self._cond.notify()

    def _wake(self, _future):
        with self._cond:
            self._cond.notify()

    def wait(self, cf):
        """Runs handed jobs until ``cf`` (the coroutine's) is done; its
        result."""
        cf.add_done_callback(self._wake)
        while True:
            with self._cond:
                while not self._jobs and not cf.done() and self._error is None:
                    self._cond.wait(POLL)
                    if self._error is None and self.loop.is_closed():
                        self._error = RuntimeError(
                            "the event loop closed while this thread waited "
                            "for a synchronized coroutine"
                        )
                if self._error is not None:
                    self._open = False
                    dropped = list(self._jobs)
                    self._jobs.clear()
                    error = self._error
                    break
                if not self._jobs:
                    self._open = False
                    return cf.result()
                f, fn, args, kwargs = self._jobs.popleft()
            if f.set_running_or_notify_cancel():
                try:
                    r = fn(*args, **kwargs)
                except BaseException as e:
                    f.set_exception(e)
                    del e
                else:
                    f.set_result(r)
        # the loop is gone or the worker stops: nothing will finish these
        if not self.loop.is_closed():
            cf.cancel()
            for f, *_ in dropped:
                f.cancel()
        raise error


def wait_in_thread(coro, loop):
    """Runs ``coro`` on ``loop`` (running in another thread) and waits for
    its result here, running the executor jobs it submits meanwhile."""
    waiter = WaitingThread(loop)
    # known to stop_waiting() before the coroutine can start: a stop that
    # comes as soon as it runs must still find this thread
    with _waiters_lock:
        _waiters.add(waiter)
    try:
        token = _waiting_thread.set(waiter)
        try:
            cf = run_coroutine_threadsafe(coro, loop)
        except BaseException:
            coro.close()
            raise
        finally:
            _waiting_thread.reset(token)
        return waiter.wait(cf)
    finally:
        with _waiters_lock:
            _waiters.discard(waiter)


def stop_waiting(loop, message="the server is stopping"):
    """Wakes every thread waiting on a coroutine of ``loop`` with a
    RuntimeError (the worker calls it when it stops)."""
    with _waiters_lock:
        waiters = [w for w in _waiters if w.loop is loop]
    for w in waiters:
        w.stop(RuntimeError(message))
    return len(waiters)


def shutdown_pools():
    """Shuts every :class:`Executor` down without waiting: queued jobs are
    cancelled, running ones finish in their threads (the worker calls it
    when it exits)."""
    for pool in list(_pools):
        pool.shutdown(wait=False, cancel_futures=True)


class _IdleThreads:
    """ThreadPoolExecutor's ``_idle_semaphore`` for a WorkQueue, which knows
    its idle threads: acquire() (no new thread) is True while the threads
    idle or on their way suffice for what is queued.  A semaphore counted
    wrong here: a thread that runs views inside get() never releases it,
    so a plain job's release counted a thread idle that a view then took,
    and the pool did not grow for the next view."""

    __slots__ = ("_queue",)

    def __init__(self, queue):
        self._queue = queue

    def acquire(self, blocking=True, timeout=None):
        return self._queue._spare()

    def release(self, n=1):
        pass


class Executor(concurrent.futures.ThreadPoolExecutor):
    """A ThreadPoolExecutor that hands a job submitted by a synchronized
    coroutine, whose caller's thread waits for it, to that thread.

    On Python 3.11 to 3.13 its queue is ``_core.WorkQueue`` (SimpleQueue's
    methods): ``_core`` puts legacy views on it as they are (a ThreadCall,
    its own work item, which hands its outcome back to the loop itself),
    idle threads are woken one at a time (a thread that finishes a job takes
    the next without sleeping), and a thread runs the views it takes in C.
    Shutdown, cancellation and a broken pool behave as ThreadPoolExecutor's:
    a ThreadCall is its own ``future`` for ``cancel()`` and
    ``set_exception()``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if _WorkQueue is not None:
            self._work_queue = _WorkQueue()
            self._idle_semaphore = _IdleThreads(self._work_queue)
        _pools.add(self)

    def submit(self, fn, /, *args, **kwargs):
        waiter = _waiting_thread.get(None)
        if waiter is not None:
            f = waiter.submit(fn, *args, **kwargs)
            if f is not None:
                return f
        return super().submit(fn, *args, **kwargs)


_END = object()


def _next_piece(stream):
    with stream._lock:
        if stream._it is None:
            stream._it = iter(stream._app_iter)
        return next(stream._it, _END)


def _close_stream(stream):
    # after the piece in the making, if any (a generator cannot be closed
    # while it runs in another thread)
    with stream._lock:
        close = getattr(stream._app_iter, "close", None)
        if close is not None:
            close()


class ThreadAppIter:
    """A plain view's streamed response (an app_iter that is not a list or
    a tuple: a generator, say) made piece by piece in the view's executor,
    its request greenlet waiting meanwhile, so that blocking work between
    pieces (a database cursor, a file being made) never holds the loop;
    close() runs there too, after the piece in the making.  Iterated where
    no request greenlet can wait (a test reading the body after the
    request), it runs right there.  (Its jobs are module functions given
    the stream: bound methods kept on it would make a cycle, its generator
    left unclosed until the cyclic collector runs.)"""

    __slots__ = ("_app_iter", "_it", "_loop", "_lock", "_step", "_close")

    def __init__(self, app_iter, loop, executor):
        self._app_iter = app_iter
        self._it = None
        self._loop = loop
        self._lock = threading.Lock()
        self._step = _core.use_executor(_next_piece, executor=executor)
        self._close = _core.use_executor(_close_stream, executor=executor)

    def _waits(self):
        return (events._get_running_loop() is self._loop
                and greenlet.getcurrent().parent is not None)

    def __iter__(self):
        return self

    def __next__(self):
        if self._waits():
            piece = _core.await_(self._step(self))
        else:
            piece = _next_piece(self)
        if piece is _END:
            raise StopIteration
        return piece

    def close(self):
        if self._waits():
            _core.await_(self._close(self))
        else:
            _close_stream(self)


def stream_in_thread(response, loop, executor):
    """response, its app_iter made in executor (ThreadAppIter) unless it is
    the server's wsgi.file_wrapper (reads of a file, left as they are);
    called by _core for a plain view whose response's app_iter is not a
    list or a tuple."""
    app_iter = response.app_iter
    if not isinstance(app_iter, (_core.FileWrapper, ThreadAppIter)):
        response.app_iter = ThreadAppIter(app_iter, loop, executor)
    return response


def tracking_loop_class(base):
    """A subclass of the loop class ``base`` that keeps its default
    executor in ``_default_executor``, as asyncio's own loops do (uvloop keeps
    it where Python cannot read it): ``_core`` hands legacy views straight
    to it when it is an :class:`Executor`."""

    class Loop(base):
        _default_executor = None

        def set_default_executor(self, executor):
            super().set_default_executor(executor)
            self._default_executor = executor

    Loop.__name__ = base.__name__
    Loop.__qualname__ = base.__qualname__
    return Loop
