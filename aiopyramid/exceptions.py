"""Exceptions raised by aiopyramid."""


class ScopeError(Exception):
    """A synchronized coroutine was called where no greenlet can be
    suspended, typically on the event loop itself.

    Await the coroutine directly there, or run the plain code that calls it
    with ``await aiopyramid.helpers.spawn_greenlet(func, *args)``.
    """
