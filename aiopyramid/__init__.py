"""aiopyramid: run Pyramid applications on asyncio.

``config.include('aiopyramid')`` makes coroutine views run on the event loop
and every other view run in the loop's executor.
"""


def includeme(config):
    from .config import includeme as _includeme

    _includeme(config)
