"""Pyramid's threadlocal manager, made local to the request.

Pyramid keeps the current request and registry in ``threading.local``
storage; with many requests interleaved on one thread each would see the
others'.  Each request runs in its own contextvars context (the Task's,
shared by its greenlet), so a stack kept in a ContextVar is request-local,
and still thread-local for plain threads, which have contexts of their own.
"""
import contextvars
import threading

import pyramid.threadlocal
from pyramid.threadlocal import ThreadLocalManager

from . import _core

_stack = contextvars.ContextVar("aiopyramid_threadlocal_stack", default=())


class ContextLocalManager(ThreadLocalManager):
    """ThreadLocalManager whose stack lives in the current contextvars
    context.  The stack is a tuple, so a context copied into an executor
    thread never sees that thread's pushes."""

    def __init__(self, default=None):
        threading.local.__init__(self)
        self.default = default

    @property
    def stack(self):
        return list(_stack.get())

    def push(self, info):
        _stack.set(_stack.get() + (info,))

    set = push

    def pop(self):
        stack = _stack.get()
        if stack:
            _stack.set(stack[:-1])
            return stack[-1]
        return None

    def get(self):
        stack = _stack.get()
        if stack:
            return stack[-1]
        return self.default()

    def clear(self):
        _stack.set(())


def install():
    """Make Pyramid's manager request-local (idempotent), in place: the
    object stays the one that pyramid.testing, pyramid.view and
    pyramid.config imported by name, only its class changes.  What the
    calling thread had pushed (a Configurator in a ``with`` block) is kept."""
    manager = pyramid.threadlocal.manager
    if isinstance(manager, ContextLocalManager):
        return manager
    pushed = list(manager.stack)
    manager.clear()
    manager.__class__ = ContextLocalManager
    # the thread-local list is shadowed by the property now; drop it here
    # (other threads' copies go with their threads)
    manager.__dict__.pop("stack", None)
    for info in pushed:
        manager.push(info)
    return manager


def _register():
    """Tells _core the manager's class and stack: an executor thread pushes
    Pyramid's threadlocals for a view as ``ContextLocalManager.push`` does,
    in C."""
    _core._threadlocal_vars(ContextLocalManager, _stack)


_register()
