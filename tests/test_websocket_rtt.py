"""A message resumes the view waiting in recv() right in data_received (no
loop iteration, no call_soon): what recv() returns when it must wait is a
future of _core's (_WebsocketWaiter) whose one done-callback, the Task's
wakeup, runs at once, in the Task's context, when the loop's read brings
the message; everywhere else (a Task running, more callbacks, a cancel) its
callbacks go through call_soon as an asyncio Future's do."""
import asyncio
import contextvars

import pytest

from aiopyramid import _core

from .test_websocket_core import FakeTransport
from .wsclient import TEXT, frame

LOOPS = ["asyncio", "uvloop"]


def run(coro, loop_name):
    if loop_name == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        factory = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(asyncio.wait_for(coro, 30))


def echo_frame(text):
    data = text.encode()
    return bytes([0x81, len(data)]) + data


@pytest.mark.parametrize("loop_name", LOOPS)
def test_the_echo_is_written_inside_data_received(loop_name):
    """data_received called from a loop callback (as the transport does):
    the waiting view has run and written its echo before data_received
    returns, and runs as its own Task, in its own context."""
    var = contextvars.ContextVar("var", default="unset")

    async def go():
        loop = asyncio.get_running_loop()
        ws = _core.WebSocket(loop)
        t = FakeTransport()
        ws.attach(t, b"")
        seen = []

        async def view():
            var.set("view")
            while (m := await ws.recv()) is not None:
                seen.append((m, asyncio.current_task() is task, var.get()))
                await ws.send(m)

        task = asyncio.create_task(view())
        await asyncio.sleep(0)  # the view waits in recv()
        written = []

        def feed(text):
            var.set("loop callback")
            ws.data_received(frame(TEXT, text))
            written.append(bytes(t.written))
            t.written.clear()

        for text in ("one", "two"):
            done = loop.create_future()
            loop.call_soon(lambda: (feed(text), done.set_result(None)))
            await done
        assert written == [echo_frame("one"), echo_frame("two")]
        assert seen == [("one", True, "view"), ("two", True, "view")]
        ws.connection_lost(None)
        await task

    run(go(), loop_name)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_two_messages_in_one_read_resume_the_view_twice(loop_name):
    async def go():
        loop = asyncio.get_running_loop()
        ws = _core.WebSocket(loop)
        t = FakeTransport()
        ws.attach(t, b"")

        async def view():
            while (m := await ws.recv()) is not None:
                await ws.send(m)

        task = asyncio.create_task(view())
        await asyncio.sleep(0)
        done = loop.create_future()

        def feed():
            ws.data_received(frame(TEXT, "a") + frame(TEXT, "b") +
                             frame(TEXT, "c"))
            done.set_result(bytes(t.written))

        loop.call_soon(feed)
        assert await done == echo_frame("a") + echo_frame("b") + echo_frame("c")
        ws.connection_lost(None)
        await task

    run(go(), loop_name)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_data_received_from_inside_a_task_wakes_the_view_later(loop_name):
    """When a Task is running (code feeding the websocket by hand, from a
    coroutine), the view cannot run inside it: it is woken through the
    loop, as before, and gets every message."""

    async def go():
        loop = asyncio.get_running_loop()
        ws = _core.WebSocket(loop)
        t = FakeTransport()
        ws.attach(t, b"")
        got = []

        async def view():
            while (m := await ws.recv()) is not None:
                got.append(m)
                await ws.send(m)

        task = asyncio.create_task(view())
        await asyncio.sleep(0)
        ws.data_received(frame(TEXT, "x"))
        assert got == [] and not t.written
        for _ in range(10):
            await asyncio.sleep(0)
        assert got == ["x"] and bytes(t.written) == echo_frame("x")
        ws.connection_lost(None)
        await task

    run(go(), loop_name)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_recv_waiter_is_an_asyncio_future(loop_name):
    """wait_for, gather, cancel and done-callbacks work on what recv()
    returns; a recv() that timed out keeps its message for the next."""

    async def go():
        loop = asyncio.get_running_loop()
        ws = _core.WebSocket(loop)
        ws.attach(FakeTransport(), b"")
        w = ws.recv()
        assert asyncio.isfuture(w) and not w.done() and w.get_loop() is loop
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(w, 0.01)
        assert w.cancelled() and w.done()
        with pytest.raises(asyncio.CancelledError):
            w.result()
        loop.call_soon(ws.data_received, frame(TEXT, "kept"))
        assert await asyncio.wait_for(ws.recv(), 10) == "kept"

        w = ws.recv()
        calls = []
        cb = lambda f: calls.append(("cb", f.result()))  # noqa: E731
        w.add_done_callback(cb)
        w.add_done_callback(lambda f: calls.append(("other", f.result())))
        assert w.remove_done_callback(cb) == 1
        w.add_done_callback(cb)
        loop.call_soon(ws.data_received, frame(TEXT, "both"))
        assert await asyncio.gather(w) == ["both"]
        await asyncio.sleep(0)
        assert sorted(calls) == [("cb", "both"), ("other", "both")]
        late = []
        w.add_done_callback(late.append)  # done already: soon, not now
        assert late == []
        await asyncio.sleep(0)
        assert late == [w]

        w = ws.recv()
        with pytest.raises(RuntimeError, match="one recv"):
            ws.recv()
        assert w.cancel("why") and not w.cancel()
        with pytest.raises(asyncio.CancelledError, match="why"):
            await w
        assert w.exception  # an asyncio Future's API
        with pytest.raises(asyncio.CancelledError):
            w.exception()

        w = ws.recv()
        ws.connection_lost(None)
        assert await w is None and w.exception() is None

    run(go(), loop_name)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_failing_callback_run_in_data_received_goes_to_the_loop(loop_name):
    """A done-callback that raises, run inside data_received, is reported to
    the loop's exception handler (as a callback the loop runs is), and the
    websocket reads on."""

    async def go():
        loop = asyncio.get_running_loop()
        reported = []
        loop.set_exception_handler(lambda lp, ctx: reported.append(ctx))
        ws = _core.WebSocket(loop)
        ws.attach(FakeTransport(), b"")
        w = ws.recv()

        def bad(f):
            raise ValueError("from the callback")

        w.add_done_callback(bad)
        done = loop.create_future()
        loop.call_soon(lambda: (ws.data_received(frame(TEXT, "1") +
                                                 frame(TEXT, "2")),
                                done.set_result(None)))
        await done
        assert w.result() == "1"
        assert [type(c["exception"]) for c in reported] == [ValueError]
        assert "Exception in callback" in reported[0]["message"]
        assert await ws.recv() == "2"

    run(go(), loop_name)
