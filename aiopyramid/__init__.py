"""aiopyramid: run Pyramid applications on asyncio.

``config.include('aiopyramid')`` makes coroutine views run on the event loop
and every other view run in the loop's executor.
"""
import warnings

# One version for the package and its metadata (pyproject.toml reads it);
# above the original's 0.4.x so that no tool takes one for the other.
__version__ = "1.0.0.dev0"

# Pyramid 2.1 imports pkg_resources (pyramid.asset, pyramid.path), and the
# setuptools it requires (<82, the last with pkg_resources) warns on that
# import at every start: nothing a user can act on.  aiopyramid's import
# pulls Pyramid in (the gunicorn worker's arbiter does it first), so hide
# that one warning here, only when Pyramid is the importer; appended, so
# that -W, PYTHONWARNINGS, -X dev and any filter set before take precedence.
warnings.filterwarnings(
    "ignore", message="pkg_resources is deprecated as an API",
    category=UserWarning, module=r"pyramid\.", append=True)


def includeme(config):
    from .config import includeme as _includeme

    _includeme(config)
