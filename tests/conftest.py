import asyncio

import pytest
from pyramid.request import Request

from aiopyramid.helpers import spawn_greenlet


@pytest.fixture
def run():
    """Run a coroutine to completion on a fresh event loop."""
    return asyncio.run


async def get(app, path, **kw):
    """One request through the whole app, in a pooled request greenlet (the
    way the servers run it)."""
    request = Request.blank(path, **kw)
    return await spawn_greenlet(request.get_response, app)


@pytest.fixture
def make_app():
    """A Pyramid app with aiopyramid included; configure(config) adds views."""
    from pyramid.config import Configurator

    def make(configure, settings=None):
        with Configurator(settings=settings or {}) as config:
            config.include("aiopyramid")
            configure(config)
            return config.make_wsgi_app()

    return make
