"""Views registered by @view_config, for test_mappers' scan."""
import asyncio
import threading

from pyramid.view import view_config

from aiopyramid.config import CoroutineMapper, ExecutorMapper


@view_config(route_name="scan_json", mapper=CoroutineMapper, renderer="json")
async def json_view(request):
    await asyncio.sleep(0)
    return {"ok": True, "on_loop": threading.current_thread() is threading.main_thread()}


@view_config(route_name="scan_legacy", mapper=ExecutorMapper, renderer="string")
def legacy_view(request):
    return "on loop: %s" % (threading.current_thread() is threading.main_thread())
