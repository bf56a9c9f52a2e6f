"""Authentication policies whose callbacks are coroutines.

``authn_policy_factory(policy_class, coroutine, *args, **kwargs)`` (also
named ``coroutine_callback_authentication_policy_factory``) builds
``policy_class(*args, callback=synchronize(coroutine), **kwargs)`` and wraps
it in a ``CoroutineAuthenticationPolicyProxy``, so a callback-based policy
such as ``AuthTktAuthenticationPolicy`` may look principals up with I/O::

    authn = authn_policy_factory(AuthTktAuthenticationPolicy, get_principals,
                                 'sekrit', hashalg='sha512')
    config.set_authentication_policy(authn)

When the proxy returns an awaitable
------------------------------------

The rule: **a value is awaitable exactly when the code that asked for it is
a coroutine.**  ``request.authenticated_userid``,
``request.unauthenticated_userid``, ``request.effective_principals``,
``request.identity``, ``remember(request, userid)``, ``forget(request)``,
and the proxy's own methods called directly, give

* an awaitable when they are written in the body of a coroutine function:
  an ``async def`` (or async generator), or a generator coroutine made by
  ``@aiopyramid.helpers.coroutine`` (or by the view mappers, for views);
* the plain value everywhere else: tweens, traversal, ``__acl__``,
  renderers and templates, legacy views in executor threads, plain helper
  functions, even a plain helper called from a coroutine view.

So a coroutine view writes ``userid = await request.authenticated_userid``
(or ``yield from``), plain code writes ``request.authenticated_userid``, and
each gets what it can use.  Pyramid's own compound checks are plain code and
always get plain values: ``request.has_permission(...)`` (and view
``permission=`` checks) and ``request.is_authenticated`` work unchanged in
views of both kinds.

"The code that asked" is the frame that called Pyramid's public API (the
``request`` property, ``remember``/``forget``), found by stepping over
Pyramid's own delegating frames (``LegacySecurityPolicy``, the property
getters, ``zope.deprecation``'s wrapper).  A coroutine flag on that frame's
code is a fact of the source, the same in a request greenlet, on the event
loop itself (a Task the view created) and in any thread; whereas "is a
coroutine view running in this greenlet" (``_core.in_coroutine_view()``,
which is also true while Pyramid's ``has_permission`` runs inside a
coroutine view) cannot tell ``request.is_authenticated`` from
``request.authenticated_userid``, and is false on the loop, where a plain
value cannot be computed.

A plain value is computed right where it is asked for: the synchronized
callback suspends the request greenlet while it waits (in an executor
thread it runs on the request's loop and blocks only that thread).  An
awaitable runs the policy's method in a pooled request greenlet
(``spawn_greenlet``) when awaited, so it works wherever it is awaited, the
event loop included.  It keeps its result: awaiting it again gives the same
value without running the policy again; each read of
``request.authenticated_userid`` makes a new one.  Its truth value is an
error (``if request.authenticated_userid:`` in a coroutine would otherwise
always be true): ``await`` it.

A comprehension or lambda has a frame of its own (before Python 3.12's
inlined comprehensions), so it counts as plain code; a generator that is not
a coroutine (no ``@coroutine``) counts as plain code too.
"""
import sys
from inspect import CO_ASYNC_GENERATOR, CO_COROUTINE, CO_ITERABLE_COROUTINE

from pyramid.interfaces import IAuthenticationPolicy
from zope.interface import implementer

from .helpers import is_coroutine_function, spawn_greenlet, synchronize

__all__ = [
    "CoroutineAuthenticationPolicyProxy",
    "PolicyAwaitable",
    "authn_policy_factory",
    "coroutine_callback_authentication_policy_factory",
]

_COROUTINE_FLAGS = CO_COROUTINE | CO_ITERABLE_COROUTINE | CO_ASYNC_GENERATOR


def _delegating_codes():
    """Code objects of the frames between a caller and a policy's method
    that only pass the call on: Pyramid's request properties, ``remember``
    and ``forget``, ``LegacySecurityPolicy``, zope's deprecation wrapper."""
    import pyramid.security as security

    codes = set()

    def add(obj):
        obj = getattr(obj, "prop", obj)  # zope.deprecation's property
        obj = getattr(obj, "fget", obj)
        code = getattr(obj, "__code__", None)
        if code is not None:
            codes.add(code)

    add(getattr(security, "remember", None))
    add(getattr(security, "forget", None))
    for cls_name, names in (
        ("SecurityAPIMixin", ("identity", "authenticated_userid")),
        ("AuthenticationAPIMixin", ("unauthenticated_userid",
                                    "effective_principals")),
        ("LegacySecurityPolicy", ("identity", "authenticated_userid",
                                  "remember", "forget")),
    ):
        namespace = vars(getattr(security, cls_name, object))
        for name in names:
            add(namespace.get(name))
    try:
        from zope.deprecation.deprecation import DeprecatedGetProperty
    except ImportError:  # pragma: no cover - pyramid depends on it
        pass
    else:
        add(DeprecatedGetProperty.__get__)
    return frozenset(codes)


_DELEGATING = _delegating_codes()


def _route(call, args, kwargs, name):
    """``call(*args, **kwargs)`` for a plain caller; a ``PolicyAwaitable``
    of it for a coroutine.  Frame 1 is the proxy's method, 2 its caller."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code in _DELEGATING:
        frame = frame.f_back
    if frame is not None and frame.f_code.co_flags & _COROUTINE_FLAGS:
        return PolicyAwaitable(call, args, kwargs, name)
    return call(*args, **kwargs)


class PolicyAwaitable:
    """What a policy proxy gives a coroutine: awaiting it runs
    ``call(*args, **kwargs)`` in a pooled request greenlet, where a
    synchronized callback may suspend, and returns its result.  The result
    is kept, so awaiting again gives the same value; ``yield from`` works
    too, for generator coroutines."""

    __slots__ = ("_call", "_args", "_kwargs", "_name", "_value")

    def __init__(self, call, args, kwargs, name):
        self._call = call
        self._args = args
        self._kwargs = kwargs
        self._name = name
        self._value = None

    def __await__(self):
        if self._call is not None:
            value = yield from spawn_greenlet(
                self._call, *self._args, **self._kwargs
            )
            self._value = value
            self._call = self._args = self._kwargs = None
        return self._value

    __iter__ = __await__

    def __bool__(self):
        raise TypeError(
            "{} was asked for in a coroutine, which gets an awaitable: "
            "'await' it (or 'yield from' it) to get the value".format(
                self._name
            )
        )

    def __repr__(self):
        state = "pending" if self._call is not None else "done"
        return "<PolicyAwaitable {} {}>".format(self._name, state)


@implementer(IAuthenticationPolicy)
class CoroutineAuthenticationPolicyProxy:
    """Proxies an authentication policy whose callback may be a
    synchronized coroutine.  Each method gives the plain value to plain
    code and an awaitable to a coroutine (see the module's documentation).
    Other attributes are read from the wrapped policy."""

    def __init__(self, policy):
        self._policy = policy

    def remember(self, request, userid, **kw):
        return _route(self._policy.remember, (request, userid), kw,
                      "remember()")

    def forget(self, request, **kw):
        return _route(self._policy.forget, (request,), kw, "forget()")

    def unauthenticated_userid(self, request):
        return _route(self._policy.unauthenticated_userid, (request,), {},
                      "unauthenticated_userid")

    def authenticated_userid(self, request):
        return _route(self._policy.authenticated_userid, (request,), {},
                      "authenticated_userid")

    def effective_principals(self, request):
        return _route(self._policy.effective_principals, (request,), {},
                      "effective_principals")

    def __getattr__(self, name):
        if name == "_policy":  # not set yet (copy, pickle)
            raise AttributeError(name)
        return getattr(self._policy, name)

    def __repr__(self):
        return "<CoroutineAuthenticationPolicyProxy of {!r}>".format(
            self._policy
        )


def coroutine_callback_authentication_policy_factory(
    policy_class, coroutine=None, *args, **kwargs
):
    """``policy_class(*args, callback=..., **kwargs)`` wrapped in a
    ``CoroutineAuthenticationPolicyProxy``.

    A coroutine function given as ``coroutine`` is synchronized and passed
    as ``callback``; a plain or already synchronized callable is passed as
    it is; with ``None`` no callback is passed.  A policy that takes its
    callback under another name gets a synchronized coroutine in
    ``kwargs`` instead (or use the proxy directly)."""
    if coroutine is not None:
        if is_coroutine_function(coroutine):
            coroutine = synchronize(coroutine)
        kwargs["callback"] = coroutine
    return CoroutineAuthenticationPolicyProxy(policy_class(*args, **kwargs))


authn_policy_factory = coroutine_callback_authentication_policy_factory
