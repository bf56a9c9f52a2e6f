"""Traversal through resources whose __getitem__ is a synchronized
coroutine doing I/O."""
import asyncio

import pytest
from pyramid.config import Configurator
from pyramid.request import Request
from pyramid.traversal import resource_path, traverse

from aiopyramid.helpers import coroutine, spawn_greenlet, synchronize


class Database:
    """Children of each folder, behind an "I/O" wait; records lookups."""

    def __init__(self):
        self.tree = {
            "/": {"docs": "folder", "about": "document"},
            "/docs": {"readme": "document", "drafts": "folder"},
            "/docs/drafts": {"plan": "document"},
        }
        self.events = []
        self.gate = None  # an awaitable factory the test may set

    async def children(self, path):
        self.events.append(("enter", path))
        if self.gate is not None:
            await self.gate(path)
        await asyncio.sleep(0)
        self.events.append(("leave", path))
        return self.tree.get(path, {})


class Node:
    def __init__(self, name, parent, db):
        self.__name__ = name
        self.__parent__ = parent
        self.db = db

    @property
    def path(self):
        return resource_path(self) or "/"

    def child(self, key, kind):
        return (self.folder_class if kind == "folder" else Document)(
            key, self, self.db)


class Folder(Node):
    """This resource performs some asynchronous I/O."""

    @synchronize
    async def __getitem__(self, key):
        children = await self.db.children(self.path)
        return self.child(key, children[key])  # KeyError: not found


class SeedFolder(Node):
    """The same, in the original's generator style."""

    @synchronize
    @coroutine
    def __getitem__(self, key):
        children = yield from self.db.children(self.path)
        return self.child(key, children[key])


Folder.folder_class = Folder
SeedFolder.folder_class = SeedFolder


class Document(Node):
    pass  # a leaf: no __getitem__, traversal stops here


FOLDERS = {"async": Folder, "generator": SeedFolder}


# the user guide's example, in both styles

class MyResource:
    """This resource performs some asynchronous I/O."""

    __name__ = "example"
    __parent__ = None

    @synchronize
    async def __getitem__(self, key):
        await self.example_coroutine()
        return self  # no matter the path, this is the context

    async def example_coroutine(self):
        await asyncio.sleep(0.01)
        print("I am some async task.")


class MySeedResource:
    """This resource performs some asynchronous I/O."""

    __name__ = "example"
    __parent__ = None

    @synchronize
    @coroutine
    def __getitem__(self, key):
        yield from self.example_coroutine()
        return self  # no matter the path, this is the context

    @coroutine
    def example_coroutine(self):
        yield from asyncio.sleep(0.01)
        print("I am some async task.")


@pytest.fixture(params=sorted(FOLDERS))
def folder_class(request):
    return FOLDERS[request.param]


@pytest.fixture
def db():
    return Database()


async def folder_view(request):
    await asyncio.sleep(0)
    return {"folder": request.context.path}


@coroutine
def document_view(request):
    yield from asyncio.sleep(0)
    return {"document": request.context.path}


def edit_view(request):  # a legacy view, in an executor thread
    return {"edit": request.context.path,
            "url": request.resource_url(request.context)}


def make_app(folder_class, db):
    def root_factory(request):
        return folder_class("", None, db)

    with Configurator(root_factory=root_factory) as config:
        config.include("aiopyramid")
        config.add_view(folder_view, context=Node, renderer="json")
        config.add_view(document_view, context=Document, renderer="json")
        config.add_view(edit_view, context=Document, name="edit",
                        renderer="json")
        return config.make_wsgi_app()


async def get(app, path, **kw):
    request = Request.blank(path, **kw)
    return await spawn_greenlet(request.get_response, app)


class TestTraverse:
    """pyramid.traversal.traverse in a request greenlet (the original's
    tests)."""

    def _callFUT(self, root, path):
        return asyncio.run(spawn_greenlet(traverse, root, path))

    def test_root(self, folder_class, db):
        root = folder_class("", None, db)
        out = self._callFUT(root, "/")
        assert out["context"] is root
        assert out["root"] is root
        assert db.events == []

    def test_depth(self, folder_class, db):
        out = self._callFUT(folder_class("", None, db), "/docs/drafts/plan")
        assert isinstance(out["context"], Document)
        assert out["context"].path == "/docs/drafts/plan"
        assert list(out["traversed"]) == ["docs", "drafts", "plan"]
        assert out["view_name"] == ""
        assert [e for e in db.events if e[0] == "leave"] == [
            ("leave", "/"), ("leave", "/docs"), ("leave", "/docs/drafts")]

    def test_view_name_after_missing_key(self, folder_class, db):
        out = self._callFUT(folder_class("", None, db), "/docs/mouse/x")
        assert out["context"].path == "/docs"
        assert list(out["traversed"]) == ["docs"]
        assert out["view_name"] == "mouse"
        assert list(out["subpath"]) == ["x"]

    def test_view_name_after_a_leaf(self, folder_class, db):
        out = self._callFUT(folder_class("", None, db), "/about/edit")
        assert out["context"].path == "/about"
        assert out["view_name"] == "edit"


class TestInApp:
    @pytest.mark.parametrize("path, status, body", [
        ("/", 200, {"folder": "/"}),
        ("/docs", 200, {"folder": "/docs"}),
        ("/docs/readme", 200, {"document": "/docs/readme"}),
        ("/docs/drafts/plan", 200, {"document": "/docs/drafts/plan"}),
        ("/docs/readme/edit", 200, {"edit": "/docs/readme",
                                    "url": "http://localhost/docs/readme/"}),
        ("/docs/nothing", 404, None),
        ("/docs/readme/nothing", 404, None),
    ])
    def test_views_found_by_traversal(self, folder_class, db, path, status,
                                      body):
        resp = asyncio.run(get(make_app(folder_class, db), path))
        assert resp.status_int == status
        if body is not None:
            assert resp.json == body

    @pytest.mark.parametrize("resource_class", [MyResource, MySeedResource])
    def test_guide_example(self, resource_class, capsys):
        resource = resource_class()

        async def view(request):
            return {"context": request.context.__name__,
                    "traversed": list(request.traversed)}

        with Configurator(root_factory=lambda request: resource) as config:
            config.include("aiopyramid")
            config.add_view(view, context=resource_class, renderer="json")
            app = config.make_wsgi_app()
        resp = asyncio.run(get(app, "/any/path"))
        assert resp.json == {"context": "example",
                             "traversed": ["any", "path"]}
        assert capsys.readouterr().out == "I am some async task.\n" * 2

    def test_two_traversals_interleave(self, folder_class, db):
        """Each request's first lookup waits until the other's has started:
        serialised, the first would wait forever (here: time out)."""
        arrived = []
        both = asyncio.Event()

        async def rendezvous(path):
            if path == "/":
                arrived.append(path)
                if len(arrived) == 2:
                    both.set()
                await both.wait()

        db.gate = rendezvous
        app = make_app(folder_class, db)

        async def main():
            return await asyncio.wait_for(asyncio.gather(
                get(app, "/docs/readme"), get(app, "/about")), timeout=5)

        readme, about = asyncio.run(main())
        assert readme.json == {"document": "/docs/readme"}
        assert about.json == {"document": "/about"}
        # both were inside their first lookup at once
        assert db.events[:2] == [("enter", "/"), ("enter", "/")]
        assert db.events[2:4] == [("leave", "/"), ("leave", "/")]
