"""config.include('aiopyramid') makes Pyramid's threadlocal manager
request-local in place: every module that imported `manager` by name
(pyramid.testing, pyramid.view, pyramid.config) sees the same stack."""
import pyramid.config
import pyramid.testing
import pyramid.threadlocal
import pyramid.view
from pyramid.config import Configurator
from pyramid.request import Request
from pyramid.threadlocal import get_current_request


def include():
    with Configurator() as config:
        config.include("aiopyramid")


def test_every_holder_sees_one_manager():
    include()
    manager = pyramid.threadlocal.manager
    assert pyramid.testing.manager is manager
    assert pyramid.view.manager is manager
    assert pyramid.config.Configurator.manager is manager


def test_testing_setup_and_teardown_leave_nothing_behind():
    include()
    request = Request.blank("/")
    try:
        pyramid.testing.setUp(request=request)
        assert get_current_request() is request
        pyramid.testing.tearDown()
        assert get_current_request() is None
    finally:
        pyramid.threadlocal.manager.clear()


def test_include_twice_and_in_a_with_block_keeps_the_pushed_config():
    with Configurator() as config:
        config.include("aiopyramid")
        config.include("aiopyramid")
        assert pyramid.threadlocal.get_current_registry() is config.registry
    assert get_current_request() is None
