"""SQLAlchemy 2 on SQLite files under pyramid_tm at its default settings:
the asyncio extension (aiosqlite) from coroutine views, run_sync nested in
the request's greenlet, a synchronized coroutine in a tween and in
traversal; the sync ORM through zope.sqlalchemy from executor views.
Requests interleave, half fail after their insert: exactly the others'
rows are committed.  In-process, and through gunicorn with our worker."""
import asyncio
import sqlite3
import sys
from contextlib import closing

import pytest
from pyramid.request import Request

from aiopyramid.helpers import spawn_greenlet

from .conftest import WORKER, free_port
from .rawhttp import parse_all

N = 200


def committed(db_dir, name):
    # closed, not only committed (a connection's `with` does not close it:
    # 3.13 warns of one left to the collector)
    with closing(sqlite3.connect(str(db_dir / ("%s.sqlite" % name)))) as db:
        return db.execute("select id, way from rows order by id").fetchall()


def paths(way, n=N):
    return ["/%s/%d/%s" % (way, i, "fail" if i % 2 else "ok") for i in range(n)]


def expected(way, n=N):
    return [(i, way) for i in range(0, n, 2)]


@pytest.fixture
def app(tmp_path):
    from . import ecosystem_app

    return ecosystem_app.main(db_dir=str(tmp_path))


def run_in_process(app, request_paths):
    async def main():
        async def one(path):
            return await spawn_greenlet(Request.blank(path).get_response, app)

        try:
            return await asyncio.gather(*(one(p) for p in request_paths))
        finally:
            await app.registry.async_engine.dispose()
            app.registry.sync_engine.dispose()

    return asyncio.run(main())


class TestInProcess:
    @pytest.mark.parametrize("way", ["async", "tween"])
    def test_async_orm_commits_exactly_the_successful_half(self, app, tmp_path, way):
        responses = run_in_process(app, paths(way))
        assert [r.status_int for r in responses] == [409 if i % 2 else 200 for i in range(N)]
        assert committed(tmp_path, "async") == expected(way)

    def test_sync_orm_in_the_executor_commits_exactly_the_successful_half(self, app, tmp_path):
        responses = run_in_process(app, paths("sync"))
        assert [r.status_int for r in responses] == [409 if i % 2 else 200 for i in range(N)]
        assert committed(tmp_path, "sync") == expected("sync")

    def test_traversal_reads_with_an_async_session(self, app, tmp_path):
        run_in_process(app, paths("async", 10))
        responses = run_in_process(app, ["/items/%d" % i for i in range(10)] + ["/count"])
        assert [r.status_int for r in responses[:10]] == [200, 404] * 5
        assert [r.text for r in responses[:10:2]] == ["%d async" % i for i in range(0, 10, 2)]
        assert responses[10].text == "0 2 4 6 8"


async def _fire(port, request_paths, timeout=120):
    async def one(path):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % path.encode())
            return parse_all(await asyncio.wait_for(reader.read(), timeout))[0]
        finally:
            writer.close()

    return await asyncio.gather(*(one(p) for p in request_paths))


def test_through_gunicorn(start_server, tmp_path):
    """200 concurrent requests each way, one worker: exactly the successful
    half of each committed, in SQLite files."""
    port = free_port()
    args = [sys.executable, "-m", "gunicorn", "--bind", "127.0.0.1:%d" % port,
            "--worker-class", WORKER, "--workers", "1", "--no-control-socket",
            "--graceful-timeout", "10", "--timeout", "120", "ecosystem_app:main()"]
    server = start_server(args, port, env={"ECOSYSTEM_DB_DIR": str(tmp_path)})
    for way, db in (("async", "async"), ("sync", "sync"), ("tween", "async")):
        if way == "tween":  # its rows go in the async table, empty it first
            with closing(sqlite3.connect(str(tmp_path / "async.sqlite"))) as conn, conn:
                conn.execute("delete from rows")
        responses = asyncio.run(_fire(port, paths(way)))
        assert [r.status for r in responses] == [409 if i % 2 else 200 for i in range(N)], \
            server.log()[-3000:]
        assert committed(tmp_path, db) == expected(way)
    responses = asyncio.run(_fire(port, ["/items/0", "/items/1", "/items/2"]))
    assert [(r.status, r.body) for r in responses] == [
        (200, b"0 tween"), (404, responses[1].body), (200, b"2 tween")]
