"""The ``transaction`` package's default manager, made local to the request.

``transaction.manager`` (what pyramid_tm uses at its default settings, and
what ``transaction.get()``, ``commit()``, ``abort()`` and the rest are bound
to) is a ``ThreadTransactionManager``: a ``threading.local`` holding one
``TransactionManager`` per thread.  With many requests interleaved on one
thread they would all share one transaction, and the first to finish would
commit or abort the others' work.

``config.include('aiopyramid')`` changes that object in place (its class
only, as for Pyramid's threadlocal manager, so every module that imported
it by name sees the change): its ``manager`` attribute, the wrapped
``TransactionManager`` it delegates to, becomes

* within a request served on an event loop, one of the request's own,
  made the first time the request asks and kept with the request's entry
  on Pyramid's threadlocal stack (which the request's Task, its greenlet,
  the Tasks it makes and its executor threads all share, and which goes
  away with the request);
* anywhere else (no request, or a request handled with no loop running,
  as WebTest's ``TestApp`` or ``pyramid.testing.setUp()`` make them, one
  at a time per thread), the thread's own, as it always was.

The choice is made once per request, on its first use, and holds for the
rest of it wherever it runs.  A new request's manager takes the
``explicit`` mode of the thread's; synchronizers registered on the thread's
manager outside any request (``registerSynch``) are not copied to it.
"""
import asyncio

import pyramid.threadlocal  # noqa: F401  (the stack below is its manager's)

from . import _core
from ._threadlocal import _stack

try:
    import transaction
    from transaction._manager import ThreadTransactionManager, TransactionManager
except ImportError:  # pragma: no cover - transaction is optional
    transaction = None

# the key, in the request's entry on the threadlocal stack, of its manager
_KEY = "aiopyramid.transaction_manager"
_THREAD = object()  # that entry's mark for "the thread's manager"
_running_loop = asyncio._get_running_loop
_request_loop = _core._request_loop


def _scope(info, thread_manager):
    """The manager for the request whose stack entry is ``info``, chosen on
    its first use: its own when it is served on a loop (this thread runs
    one, or this is one of its executor threads), else the thread's."""
    if info.get("request") is not None and (
            _running_loop() is not None or
            _request_loop.get(None) is not None):
        mine = TransactionManager(explicit=thread_manager.explicit)
        chosen = info.setdefault(_KEY, mine)  # atomic: one wins
        return thread_manager if chosen is _THREAD else chosen
    info.setdefault(_KEY, _THREAD)
    return thread_manager


if transaction is not None:
    class RequestTransactionManager(ThreadTransactionManager):
        """``transaction.manager`` once aiopyramid is included: the
        ``manager`` it delegates to is the request's own during a request
        served on a loop, the thread's elsewhere (see the module)."""

        def __init__(self):
            # threading.local runs this in each new thread: its manager
            self.__dict__["manager"] = TransactionManager()

        @property
        def manager(self):
            thread_manager = self.__dict__["manager"]
            stack = _stack.get()
            if stack:
                info = stack[0]
                if type(info) is dict:
                    chosen = info.get(_KEY)
                    if chosen is None:
                        return _scope(info, thread_manager)
                    if chosen is not _THREAD:
                        return chosen
            return thread_manager

        @manager.setter
        def manager(self, value):
            # the thread's, as before (a request's own is not replaceable)
            self.__dict__["manager"] = value


def install():
    """Make ``transaction.manager`` request-local (idempotent), in place.
    Does nothing when the ``transaction`` package is not installed, or when
    an application has replaced ``transaction.manager`` with a manager of
    another kind (its choice is kept)."""
    if transaction is None:
        return None
    manager = transaction.manager
    if type(manager) is ThreadTransactionManager:
        manager.__class__ = RequestTransactionManager
    return manager
