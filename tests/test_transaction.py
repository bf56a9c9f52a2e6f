"""pyramid_tm at its default settings: ``transaction.manager`` (a
thread-local ThreadTransactionManager) made request-local in place by
``config.include('aiopyramid')``, so that requests interleaved on one
thread each get their own transaction."""
import asyncio
import threading

import pytest
import transaction
import transaction._manager
from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPNotFound
from pyramid.request import Request
from pyramid.response import Response
from transaction.interfaces import IDataManager
from zope.interface import implementer

from aiopyramid.helpers import spawn_greenlet, synchronize

N = 200


@implementer(IDataManager)
class Recorder:
    """A data manager that records, per name, whether its transaction
    committed or aborted (the shape of a database's)."""

    def __init__(self, name, log, manager=None):
        self.name = name
        self.log = log
        self.transaction_manager = manager or transaction.manager

    def abort(self, txn):
        self.log.append(("abort", self.name))

    def tpc_begin(self, txn):
        pass

    def commit(self, txn):
        pass

    def tpc_vote(self, txn):
        pass

    def tpc_finish(self, txn):
        self.log.append(("commit", self.name))

    def tpc_abort(self, txn):
        self.log.append(("abort", self.name))

    def sortKey(self):
        return "recorder-%s" % self.name


def outcome(log):
    committed = {name for what, name in log if what == "commit"}
    aborted = {name for what, name in log if what == "abort"}
    return committed, aborted


def make_app(configure, settings=None):
    with Configurator(settings=settings or {}) as config:
        config.include("aiopyramid")
        config.include("pyramid_tm")  # its defaults: transaction.manager
        configure(config)
        return config.make_wsgi_app()


async def get(app, path):
    request = Request.blank(path)
    return await spawn_greenlet(request.get_response, app)


def interleaved(app, paths):
    async def main():
        return await asyncio.gather(*(get(app, p) for p in paths))

    return asyncio.run(main())


def paths(n=N):
    return ["/%d/%s" % (i, "fail" if i % 2 else "ok") for i in range(n)]


class TestInterleavedOnOneThread:
    def test_each_coroutine_request_commits_or_aborts_its_own(self):
        log = []

        async def view(request):
            name = request.matchdict["name"]
            transaction.get().join(Recorder(name, log))
            await asyncio.sleep(0.001)  # the other requests run meanwhile
            await asyncio.sleep(0)
            if request.matchdict["how"] == "fail":
                raise HTTPNotFound()  # pyramid_tm aborts on an error response
            return Response(name)

        app = make_app(lambda c: (c.add_route("r", "/{name}/{how}"),
                                  c.add_view(view, route_name="r")))
        responses = interleaved(app, paths())
        assert [r.status_int for r in responses] == [
            404 if i % 2 else 200 for i in range(N)]
        committed, aborted = outcome(log)
        assert committed == {str(i) for i in range(0, N, 2)}
        assert aborted == {str(i) for i in range(1, N, 2)}

    def test_a_view_that_raises_aborts_only_its_own(self):
        log = []

        async def view(request):
            name = request.matchdict["name"]
            transaction.get().join(Recorder(name, log))
            await asyncio.sleep(0.001)
            if request.matchdict["how"] == "fail":
                raise ValueError("on purpose")
            return Response(name)

        def error_view(exc, request):
            return Response("failed", status=500)

        def configure(config):
            config.add_route("r", "/{name}/{how}")
            config.add_view(view, route_name="r")
            config.add_view(error_view, context=ValueError)

        responses = interleaved(make_app(configure), paths())
        assert [r.status_int for r in responses] == [
            500 if i % 2 else 200 for i in range(N)]
        committed, aborted = outcome(log)
        assert committed == {str(i) for i in range(0, N, 2)}
        assert aborted == {str(i) for i in range(1, N, 2)}

    def test_executor_views_see_their_own_requests_transaction(self):
        log = []
        seen = {}
        started = threading.Barrier(4, timeout=10)

        def view(request):  # a plain view: in the executor
            name = request.matchdict["name"]
            txn = transaction.get()
            seen[name] = (txn, request.tm.get())
            txn.join(Recorder(name, log))
            try:
                started.wait()  # four at once, in four threads
            except threading.BrokenBarrierError:
                pass
            if request.matchdict["how"] == "fail":
                raise HTTPNotFound()
            return Response(name)

        def configure(config):
            config.add_route("r", "/{name}/{how}")
            config.add_view(view, route_name="r")

        app = make_app(configure, {"aiopyramid.executor_threads": "4"})
        responses = interleaved(app, paths(40))
        assert [r.status_int for r in responses] == [
            404 if i % 2 else 200 for i in range(40)]
        committed, aborted = outcome(log)
        assert committed == {str(i) for i in range(0, 40, 2)}
        assert aborted == {str(i) for i in range(1, 40, 2)}
        # what the view saw is what pyramid_tm gave its request
        assert all(a is b for a, b in seen.values())
        assert len({id(a) for a, b in seen.values()}) == 40

    def test_a_synchronized_coroutine_in_a_tween_joins_its_requests(self):
        log = []

        @synchronize
        async def lookup(name):
            await asyncio.sleep(0.001)
            transaction.get().join(Recorder("tween-" + name, log))

        def tween_factory(handler, registry):
            def tween(request):
                lookup(request.path.split("/")[1])
                return handler(request)
            return tween

        async def view(request):
            await asyncio.sleep(0.001)
            if request.matchdict["how"] == "fail":
                raise HTTPNotFound()
            return Response("ok")

        def configure(config):
            config.add_tween(__name__ + "._tween_factory_holder",
                             under="pyramid_tm.tm_tween_factory")
            config.add_route("r", "/{name}/{how}")
            config.add_view(view, route_name="r")

        _tween_factory_holder.factory = tween_factory
        responses = interleaved(make_app(configure), paths(60))
        assert [r.status_int for r in responses] == [
            404 if i % 2 else 200 for i in range(60)]
        committed, aborted = outcome(log)
        assert committed == {"tween-%d" % i for i in range(0, 60, 2)}
        assert aborted == {"tween-%d" % i for i in range(1, 60, 2)}


def _tween_factory_holder(handler, registry):
    return _tween_factory_holder.factory(handler, registry)


class TestOutsideARequest:
    """Outside a request served on a loop, ``transaction.manager`` is what
    it always was: one per thread."""

    def test_module_functions_follow_the_manager(self):
        make_app(lambda c: None)
        assert type(transaction.manager) is not transaction._manager.ThreadTransactionManager
        assert isinstance(transaction.manager, transaction._manager.ThreadTransactionManager)
        txn = transaction.begin()
        try:
            assert transaction.get() is txn
            assert transaction.manager.get() is txn
        finally:
            transaction.abort()

    def test_per_thread_as_before(self):
        make_app(lambda c: None)
        txn = transaction.begin()
        try:
            other = []
            t = threading.Thread(target=lambda: other.append(transaction.get()))
            t.start()
            t.join(10)
            assert other and other[0] is not txn
            assert transaction.get() is txn
        finally:
            transaction.abort()

    def test_the_cookiecutter_test_pattern(self):
        """pyramid.testing.setUp(), work in transaction.manager, tearDown(),
        then transaction.abort(): the abort reaches the test's work."""
        import pyramid.testing

        make_app(lambda c: None)
        log = []
        pyramid.testing.setUp(request=pyramid.testing.DummyRequest())
        try:
            transaction.get().join(Recorder("t", log))
        finally:
            pyramid.testing.tearDown()
        transaction.abort()
        assert log == [("abort", "t")]

    def test_webtest_without_a_loop_shares_the_threads_manager(self):
        """No loop, no interleaving: a request handled inline uses the
        thread's manager, as it always did (a coroutine view included)."""
        from webtest import TestApp

        log = []
        seen = []

        async def view(request):
            seen.append(transaction.manager.manager)
            transaction.get().join(Recorder("w", log))
            await asyncio.sleep(0)
            return Response("ok")

        app = TestApp(make_app(lambda c: (c.add_route("r", "/"),
                                          c.add_view(view, route_name="r"))))
        assert app.get("/").text == "ok"
        assert log == [("commit", "w")]
        assert transaction.manager.manager is seen[0]


class TestInstall:
    def test_idempotent_and_in_place(self):
        from aiopyramid import _transaction

        before = transaction.manager
        make_app(lambda c: None)
        make_app(lambda c: None)
        assert transaction.manager is before
        assert type(before) is _transaction.RequestTransactionManager
        assert _transaction.install() is before

    def test_a_replaced_manager_is_left_alone(self, monkeypatch):
        from aiopyramid import _transaction

        mine = transaction.TransactionManager(explicit=True)
        monkeypatch.setattr(transaction, "manager", mine)
        _transaction.install()
        assert type(mine) is transaction.TransactionManager

    def test_a_requests_manager_takes_the_threads_explicit_mode(self):
        seen = []

        async def view(request):
            seen.append(transaction.manager.manager)
            await asyncio.sleep(0)
            return Response("ok")

        with Configurator() as config:
            config.include("aiopyramid")
            config.add_route("r", "/")
            config.add_view(view, route_name="r")
            app = config.make_wsgi_app()
        thread_manager = transaction.manager.manager
        thread_manager.explicit = True
        try:
            responses = interleaved(app, ["/", "/"])
        finally:
            thread_manager.explicit = False
        assert [r.status_int for r in responses] == [200, 200]
        assert seen[0] is not seen[1] and thread_manager not in seen
        assert seen[0].explicit and seen[1].explicit
