"""Pyramid 2 security policies whose methods are coroutines.

Wrap the policy in ``CoroutineSecurityPolicyProxy`` and any of its
``identity``, ``authenticated_userid``, ``permits``, ``remember`` and
``forget`` may be an ``async def`` (or a ``@coroutine`` generator)::

    from aiopyramid.security import CoroutineSecurityPolicyProxy

    class SecurityPolicy:
        async def identity(self, request):
            return await load_user(request.headers.get('X-User'))  # yours

        async def authenticated_userid(self, request):
            user = await self.identity(request)
            return None if user is None else user.id

        async def permits(self, request, context, permission):
            ...

        def remember(self, request, userid, **kw):
            return []

        def forget(self, request, **kw):
            return []

    config.set_security_policy(CoroutineSecurityPolicyProxy(SecurityPolicy()))

Whatever a method returns that is awaitable is awaited before Pyramid sees
it, decided each time it is called (so an ``async def`` behind an ordinary
decorator, an object with ``async def __call__`` or a plain function that
returns a coroutine work too).

The proxy follows the rule of ``aiopyramid.auth``: ``request.identity``,
``request.authenticated_userid``, ``remember(request, userid)``,
``forget(request)`` and the proxy's methods called directly give an
awaitable in a coroutine that a coroutine view runs (``await
request.identity``) and the plain value to plain code (tweens, traversal,
legacy views in executor threads, renderers) and to coroutines that plain
code runs through ``synchronize`` (a synchronized ``__acl__``).  Pyramid's
predicates are plain code and always give plain values, in views of both
kinds: ``request.is_authenticated``, ``request.has_permission(...)`` and
the ``permission=`` check of a view.

A coroutine method's plain value is computed in place: it is awaited in the
request greenlet, which it suspends while it waits (in an executor thread
it runs on the request's loop and blocks only that thread).  An awaitable
runs the method in a pooled request greenlet when awaited, and keeps its
result.  Plain methods are called as they are.

Each call runs the method again.  Cache values, never coroutine objects (an
awaited coroutine cannot be awaited again): Pyramid's ``RequestLocalCache``
around a synchronized loader caches the identity once per request::

    class SecurityPolicy:
        def __init__(self):
            self.identity_cache = RequestLocalCache(self.load_identity)

        @synchronize
        async def load_identity(self, request):
            ...

        def identity(self, request):
            return self.identity_cache.get_or_create(request)
"""
from pyramid.interfaces import ISecurityPolicy
from zope.interface import implementer

from . import _core
from .auth import _route

__all__ = ["CoroutineSecurityPolicyProxy"]


@implementer(ISecurityPolicy)
class CoroutineSecurityPolicyProxy:
    """Proxies a security policy whose methods may be coroutines: plain
    values for plain code, awaitables for coroutines.  Whether a method is
    a coroutine is decided when it is called, by what it returns: anything
    awaitable is awaited before Pyramid sees it.  Other attributes are read
    from the wrapped policy."""

    def __init__(self, policy):
        self._policy = policy
        _core._mark_synchronized()  # what aiopyramid.auth's rule reads in Tasks

    def _method(self, name):
        try:
            return getattr(self._policy, name)
        except AttributeError:
            raise AttributeError(
                "{!r} has no {} method".format(self._policy, name)
            ) from None

    def identity(self, request):
        return _route(self._method("identity"), (request,), {},
                      "request.identity")

    def authenticated_userid(self, request):
        return _route(self._method("authenticated_userid"), (request,), {},
                      "request.authenticated_userid")

    def permits(self, request, context, permission):
        return _route(self._method("permits"), (request, context, permission),
                      {}, "permits()")

    def remember(self, request, userid, **kw):
        return _route(self._method("remember"), (request, userid), kw,
                      "remember()")

    def forget(self, request, **kw):
        return _route(self._method("forget"), (request,), kw, "forget()")

    def __getattr__(self, name):
        if name == "_policy":  # not set yet (copy, pickle)
            raise AttributeError(name)
        return getattr(self._policy, name)

    def __repr__(self):
        return "<CoroutineSecurityPolicyProxy of {!r}>".format(self._policy)
