"""A synchronized coroutine method may be called any number of times, on
any instance, from any of the places synchronized calls are allowed (the
original's tracker: "a synchronized coroutine method can't be called
twice")."""
import asyncio
import threading

import pytest
from pyramid.response import Response

from aiopyramid.helpers import coroutine, spawn_greenlet, synchronize

from .conftest import get

CALLS = 50


class Store:
    def __init__(self, name):
        self.name = name
        self.calls = 0

    @synchronize
    async def fetch(self, key, *, suffix=""):
        self.calls += 1
        if key % 3 == 0:
            await asyncio.sleep(0)  # some suspend, some do not
        return "%s:%s%s" % (self.name, key, suffix)

    @synchronize
    @coroutine
    def seed_fetch(self, key):  # the original style
        self.calls += 1
        if key % 3 == 0:
            yield from asyncio.sleep(0)
        return "%s:%s" % (self.name, key)

    @synchronize(strict=False)
    async def lenient_fetch(self, key):
        self.calls += 1
        await asyncio.sleep(0)
        return "%s:%s" % (self.name, key)

    @classmethod
    def make(cls, name):
        return cls(name)


class SubStore(Store):
    pass


def calls_everywhere(stores, n=CALLS):
    """Plain code: every method, n times, on every store, bound methods
    kept and called again, and through the class."""
    out = []
    for store in stores:
        bound = store.fetch
        for i in range(n):
            out.append(store.fetch(i))
            out.append(bound(i, suffix="!"))
            out.append(type(store).fetch(store, i))
            out.append(store.seed_fetch(i))
            out.append(store.lenient_fetch(i))
    return out


def expected(stores, n=CALLS):
    out = []
    for store in stores:
        for i in range(n):
            out += ["%s:%d" % (store.name, i), "%s:%d!" % (store.name, i),
                    "%s:%d" % (store.name, i), "%s:%d" % (store.name, i),
                    "%s:%d" % (store.name, i)]
    return out


def stores():
    return [Store("a"), Store("b"), SubStore("c"), Store.make("d")]


def test_in_a_request_greenlet_many_times_many_instances():
    s = stores()
    assert asyncio.run(spawn_greenlet(calls_everywhere, s)) == expected(s)
    assert [x.calls for x in s] == [CALLS * 5] * 4


def test_interleaved_greenlets_on_one_instance():
    store = Store("shared")

    async def main():
        return await asyncio.gather(*(
            spawn_greenlet(lambda k=k: [store.fetch(k * 100 + i) for i in range(10)])
            for k in range(20)))

    results = asyncio.run(main())
    assert results == [["shared:%d" % (k * 100 + i) for i in range(10)] for k in range(20)]
    assert store.calls == 200


def test_with_no_loop_many_times():
    s = stores()
    assert calls_everywhere(s, 5) == expected(s, 5)


def test_in_a_plain_thread_many_times():
    """A thread with no loop (the executor case is a legacy view below)."""
    s = stores()
    results = []
    t = threading.Thread(target=lambda: results.append(calls_everywhere(s, 5)))
    t.start()
    t.join(60)
    assert results == [expected(s, 5)]


def test_from_views_tweens_and_traversal(make_app):
    """The same methods from a tween, traversal's __getitem__, a legacy
    view in the executor and a coroutine view, over many requests."""
    store = Store("app")

    class Root:
        __name__ = ""
        __parent__ = None

        def __init__(self, request):
            pass

        def __getitem__(self, key):
            return Leaf(store.fetch(int(key)), self)

    class Leaf:
        def __init__(self, name, parent):
            self.__name__ = name
            self.__parent__ = parent

    def tween_factory(handler, registry):
        def tween(request):
            request.tweened = store.fetch(len(request.path))
            request.tweened_again = store.seed_fetch(len(request.path))
            return handler(request)
        return tween

    _holder.factory = tween_factory

    def legacy(context, request):
        return Response("|".join([context.__name__, request.tweened,
                                  store.fetch(1), store.fetch(3), store.lenient_fetch(2)]))

    async def modern(context, request):
        # in a coroutine view: await the wrapped coroutine, or call the
        # synchronized one from plain code it runs
        value = await Store.fetch.__wrapped__(store, 7)
        plain = await spawn_greenlet(store.fetch, 9)
        return Response("|".join([context.__name__, request.tweened, value, plain]))

    def configure(config):
        config.add_tween(__name__ + "._holder")
        config.add_route("legacy", "/legacy/*traverse", factory=Root)
        config.add_view(legacy, route_name="legacy")
        config.add_route("modern", "/modern/*traverse", factory=Root)
        config.add_view(modern, route_name="modern")

    app = make_app(configure, settings={"aiopyramid.executor_threads": "2"})

    async def main():
        return await asyncio.gather(
            *(get(app, "/legacy/%d" % i) for i in range(20)),
            *(get(app, "/modern/%d" % i) for i in range(20)))

    responses = asyncio.run(main())
    texts = [r.text for r in responses]
    for i in range(20):
        tween = "app:%d" % len("/legacy/%d" % i)
        assert texts[i] == "app:%d|%s|app:1|app:3|app:2" % (i, tween)
        tween = "app:%d" % len("/modern/%d" % i)
        assert texts[20 + i] == "app:%d|%s|app:7|app:9" % (i, tween)
    # per request: traversal 1, tween 2, legacy 3 or modern 2
    assert store.calls == 20 * 6 + 20 * 5


def _holder(handler, registry):
    return _holder.factory(handler, registry)


@pytest.mark.parametrize("n", [2, 3])
def test_a_fresh_instance_each_time_and_gc_between(n):
    import gc

    async def main():
        def plain():
            out = []
            for i in range(n):
                out.append(Store(str(i)).fetch(i))
                gc.collect()
            return out
        return await spawn_greenlet(plain)

    assert asyncio.run(main()) == ["%d:%d" % (i, i) for i in range(n)]


class Odd:
    def __init__(self):
        self.n = 0

    @synchronize
    async def m(self, x):
        self.n += 1
        if x == "raise":
            raise ValueError(x)
        if x == "wait":
            await asyncio.sleep(0.001)
        if x == "nest":  # plain code under it calls the method again
            return await spawn_greenlet(self.m, "wait")
        return x

    @staticmethod
    @synchronize
    async def st(x):
        await asyncio.sleep(0)
        return x

    @property
    @synchronize
    async def prop(self):
        await asyncio.sleep(0)
        return "p"


def test_again_after_a_raise_a_nested_call_and_a_cancellation():
    odd = Odd()

    def plain():
        out = []
        for x in ["raise", "ok", "wait", "raise", "nest", "nest", "ok"]:
            try:
                out.append(odd.m(x))
            except ValueError as e:
                out.append("raised " + str(e))
        return out + [Odd.st(1), odd.st(2), odd.prop, odd.prop]

    want = ["raised raise", "ok", "wait", "raised raise", "wait", "wait", "ok", 1, 2, "p", "p"]
    assert asyncio.run(spawn_greenlet(plain)) == want
    assert plain() == want  # no loop

    async def cancelled_then_again():
        task = asyncio.ensure_future(spawn_greenlet(odd.m, "wait"))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return [await spawn_greenlet(odd.m, "wait") for _ in range(3)]

    assert asyncio.run(cancelled_then_again()) == ["wait"] * 3
