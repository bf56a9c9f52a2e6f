"""A Pyramid app on the common stack: pyramid_tm at its default settings,
SQLAlchemy 2 both ways on SQLite files (the asyncio extension on aiosqlite
from coroutine views, a tween and traversal; the sync ORM through
zope.sqlalchemy from plain views in the executor).  Served by gunicorn in
tests/test_sqlalchemy.py and run in-process there too.

Each ``/{way}/{n}/{how}`` request inserts row ``n`` in its own pyramid_tm
transaction; ``how == "fail"`` answers 409 after the insert, so pyramid_tm
aborts it.
"""
import asyncio
import os

import transaction
import zope.sqlalchemy
from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPConflict
from pyramid.response import Response
from sqlalchemy import String, create_engine, select
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from transaction.interfaces import IDataManager
from zope.interface import implementer

from aiopyramid.helpers import synchronize


class Base(DeclarativeBase):
    pass


class Row(Base):
    __tablename__ = "rows"
    id: Mapped[int] = mapped_column(primary_key=True)
    way: Mapped[str] = mapped_column(String(16))


# ---- the asyncio extension joined to pyramid_tm's transaction ----------

@synchronize
async def _commit(session):
    await session.commit()


@synchronize
async def _rollback(session):
    await session.rollback()


@synchronize
async def _close(session):
    await session.close()


@implementer(IDataManager)
class AsyncSessionDataManager:
    """Joins an AsyncSession to a ``transaction`` transaction: pyramid_tm
    commits or aborts it from its tween, plain code in the request's
    greenlet, where synchronized coroutines may be called."""

    def __init__(self, session, transaction_manager):
        self.session = session
        self.transaction_manager = transaction_manager
        self.committed = False

    def abort(self, txn):
        try:
            _rollback(self.session)
        finally:
            _close(self.session)

    def tpc_begin(self, txn):
        pass

    def commit(self, txn):
        pass

    def tpc_vote(self, txn):
        _commit(self.session)  # the one resource: its vote is its commit
        self.committed = True

    def tpc_finish(self, txn):
        _close(self.session)

    def tpc_abort(self, txn):
        try:
            if not self.committed:
                _rollback(self.session)
        finally:
            _close(self.session)

    def sortKey(self):
        return "~asyncsession:%d" % id(self)


def async_session(request):
    """``request.async_session``: one per request, in its transaction."""
    session = AsyncSession(request.registry.async_engine, expire_on_commit=False)
    request.tm.get().join(AsyncSessionDataManager(session, request.tm))
    return session


def dbsession(request):
    """``request.dbsession``: the sync ORM, as Pyramid's cookiecutter makes
    it (zope.sqlalchemy with pyramid_tm's manager)."""
    session = request.registry.session_factory()
    zope.sqlalchemy.register(session, transaction_manager=request.tm)
    return session


# ---- views ----------------------------------------------------------------

async def hello(request):
    return Response("hello")


def _outcome(request, n):
    if request.matchdict["how"] == "fail":
        raise HTTPConflict("row %d: failing on purpose after its insert" % n)
    return Response("row %d" % n)


async def async_insert(request):
    """The asyncio extension from a coroutine view; odd rows go through
    ``run_sync`` (SQLAlchemy's greenlet nested in the request's)."""
    n = int(request.matchdict["n"])
    session = request.async_session
    if n % 4 < 2:
        session.add(Row(id=n, way="async"))
        await session.flush()
    else:
        def add(sync_session):
            sync_session.add(Row(id=n, way="async"))
            sync_session.flush()
            return sync_session.get(Row, n).way

        assert await session.run_sync(add) == "async"
    await asyncio.sleep(0)  # interleave with the others
    return _outcome(request, n)


def sync_insert(request):
    """The sync ORM from a plain view, in an executor thread."""
    n = int(request.matchdict["n"])
    request.dbsession.add(Row(id=n, way="sync"))
    request.dbsession.flush()
    assert transaction.get() is request.tm.get()
    return _outcome(request, n)


async def after_tween(request):
    """The row was inserted by the tween (a synchronized coroutine)."""
    n = int(request.matchdict["n"])
    await asyncio.sleep(0)
    return _outcome(request, n)


@synchronize
async def _tween_insert(session, n):
    session.add(Row(id=n, way="tween"))
    await session.flush()
    await asyncio.sleep(0)


def insert_tween_factory(handler, registry):
    def tween(request):
        if request.path.startswith("/tween/"):
            _tween_insert(request.async_session, int(request.path.split("/")[2]))
        return handler(request)

    return tween


class Item:
    def __init__(self, row, parent):
        self.row = row
        self.__name__ = str(row.id)
        self.__parent__ = parent


class Items:
    """Traversal whose ``__getitem__`` reads with an AsyncSession."""

    __name__ = ""
    __parent__ = None

    def __init__(self, request):
        self.request = request

    @synchronize
    async def __getitem__(self, key):
        if not key.isdigit():
            raise KeyError(key)
        async with AsyncSession(self.request.registry.async_engine) as session:
            row = await session.get(Row, int(key))
        if row is None:
            raise KeyError(key)
        return Item(row, self)


async def item_view(context, request):
    return Response("%d %s" % (context.row.id, context.row.way))


async def count(request):
    async with AsyncSession(request.registry.async_engine) as session:
        ids = (await session.scalars(select(Row.id).order_by(Row.id))).all()
    return Response(" ".join(map(str, ids)))


def main(global_config=None, **settings):
    db_dir = settings.get("db_dir") or os.environ["ECOSYSTEM_DB_DIR"]
    async_path = os.path.join(db_dir, "async.sqlite")
    sync_path = os.path.join(db_dir, "sync.sqlite")
    sync_engine = create_engine("sqlite:///" + sync_path, connect_args={"timeout": 60})
    Base.metadata.create_all(sync_engine)
    setup_engine = create_engine("sqlite:///" + async_path)
    Base.metadata.create_all(setup_engine)
    setup_engine.dispose()
    with Configurator(settings=settings) as config:
        config.include("aiopyramid")
        config.include("pyramid_tm")
        config.registry.async_engine = create_async_engine(
            "sqlite+aiosqlite:///" + async_path, connect_args={"timeout": 60},
            pool_size=20, max_overflow=0, pool_timeout=60)
        config.registry.sync_engine = sync_engine
        config.registry.session_factory = sessionmaker(bind=sync_engine, class_=Session)
        config.add_request_method(async_session, reify=True)
        config.add_request_method(dbsession, reify=True)
        config.add_tween(__name__ + ".insert_tween_factory",
                         under="pyramid_tm.tm_tween_factory")
        config.add_route("hello", "/hello")
        config.add_view(hello, route_name="hello")
        config.add_route("async", "/async/{n}/{how}")
        config.add_view(async_insert, route_name="async")
        config.add_route("sync", "/sync/{n}/{how}")
        config.add_view(sync_insert, route_name="sync")
        config.add_route("tween", "/tween/{n}/{how}")
        config.add_view(after_tween, route_name="tween")
        config.add_route("count", "/count")
        config.add_view(count, route_name="count")
        config.add_route("items", "/items/*traverse", factory=Items)
        config.add_view(item_view, route_name="items", context=Item)
        return config.make_wsgi_app()
