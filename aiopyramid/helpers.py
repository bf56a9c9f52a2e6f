"""Helpers that join plain code and coroutines (implemented in C).

``spawn_greenlet(func, *args, **kwargs)``
    A coroutine: runs ``func`` in a pooled greenlet, where synchronized
    coroutines may be called like plain functions; returns its result.
``run_in_greenlet(back, future, func, *args, **kwargs)``
    A coroutine: awaits ``func(*args, **kwargs)``, sets the result (or the
    exception) on ``future``, then switches back to greenlet ``back``.
    Under ``spawn_greenlet``, plain code may switch such a task up to its
    parent, as aiopyramid 0.4 did: the driving Task awaits it and resumes
    the switch (``synchronize`` does this job with less work).
``synchronize`` / ``synchronize(strict=False)``
    Makes a coroutine function a plain callable for code running in a
    request greenlet (tweens, traversal, ``__acl__``, auth callbacks).
``use_executor`` / ``use_executor(executor=ex)``
    Makes a blocking function a coroutine function run in a thread.
``coroutine``
    A drop-in for the removed ``asyncio.coroutine``.
``is_generator``
    True for generator functions, generators and futures.
"""
from . import _core
from ._core import (
    coroutine,
    is_coroutine_function,
    is_generator,
    run_in_greenlet,
    spawn_greenlet,
)


def synchronize(func=None, *, strict=True):
    """Make a coroutine function callable from plain code running in a
    request greenlet: ``@synchronize`` or ``@synchronize(strict=False)``."""
    if func is None:
        return lambda func: _core.synchronize(func, strict=strict)
    return _core.synchronize(func, strict=strict)


def use_executor(func=None, *, executor=None):
    """Make a blocking function a coroutine function run in a thread:
    ``@use_executor`` or ``@use_executor(executor=ex)``."""
    if func is None:
        return lambda func: _core.use_executor(func, executor=executor)
    return _core.use_executor(func, executor=executor)

__all__ = [
    "coroutine",
    "is_coroutine_function",
    "is_generator",
    "run_in_greenlet",
    "spawn_greenlet",
    "synchronize",
    "use_executor",
]
