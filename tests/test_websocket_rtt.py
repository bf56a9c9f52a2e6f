"""What a view's round trip relies on, kept whatever resumes the view:
recv() that must wait returns an asyncio future (wait_for, gather, cancel,
done-callbacks, a timed-out recv() keeping its message), a message fed
from inside a running Task wakes the view later and is not lost, and a
done-callback that raises goes to the loop's exception handler.

(Tried on this branch and reverted: a future of _core's whose Task wakeup
runs inside data_received. asyncio's C Task takes its fast paths only for
an exact asyncio.Future; for any other future it looks up
_asyncio_future_blocking, calls get_loop(), binds add_done_callback and
calls result() by name at every step, which cost as much as the call_soon,
Handle and Future it saved: bench/callgrind_websocket.py measured -2% of
instructions per round trip with 1 client and +2% with 100.)"""
import asyncio
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
def test_a_failing_recv_callback_goes_to_the_loop(loop_name):
    """A done-callback of recv() that raises is reported to the loop's
    exception handler, and the websocket reads on."""

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
