"""Authentication policies whose callbacks are coroutines.

``authn_policy_factory(policy_class, coroutine, *args, **kwargs)`` (also
named ``coroutine_callback_authentication_policy_factory``) builds
``policy_class(*args, callback=coroutine, **kwargs)`` and wraps it in a
``CoroutineAuthenticationPolicyProxy``, so a callback-based policy
such as ``AuthTktAuthenticationPolicy`` may look principals up with I/O::

    authn = authn_policy_factory(AuthTktAuthenticationPolicy, get_principals,
                                 'sekrit', hashalg='sha512')
    config.set_authentication_policy(authn)

Whatever the callback returns that is awaitable (an ``async def``, also
behind an ordinary decorator, an object with ``async def __call__``, a
plain function returning a coroutine) is awaited in place, decided when it
is called: Pyramid tests ``callback(...) is not None``, which a coroutine
object would pass.  The same holds for the wrapped policy's own methods.

When the proxy returns an awaitable
------------------------------------

``request.authenticated_userid``, ``request.unauthenticated_userid``,
``request.effective_principals``, ``request.identity``,
``remember(request, userid)``, ``forget(request)``, and the proxy's own
methods called directly, give

* an awaitable when they are written in the body of a coroutine (an
  ``async def`` or async generator, or a generator coroutine made by
  ``@aiopyramid.helpers.coroutine`` or by the view mappers) that a
  coroutine view runs: the view itself or a coroutine it awaits; and in a
  coroutine running on the event loop outside any request greenlet (a Task
  the view made), where no plain value can be computed;
* the plain value everywhere else: plain code (tweens, traversal,
  ``__acl__``, renderers and templates, legacy views in executor threads,
  plain helpers, even one called from a coroutine view), and a coroutine
  run through ``synchronize`` (a synchronized ``__acl__``,
  ``__getitem__``, groupfinder or helper, also one a coroutine view calls,
  and what it awaits): it was written for plain code, so it gets what
  plain code gets.  Where that
  is impossible (such a coroutine that an executor thread runs on the
  loop, or a Task such a coroutine made with ``asyncio.gather()`` or
  ``wait_for()``) the read raises ``ScopeError``, rather than hand out an
  awaitable that ``is not None`` would take for a user.

Pyramid's own compound checks are plain code and always get plain values:
``request.has_permission(...)`` (and view ``permission=`` checks) and
``request.is_authenticated``.

"The code that asked" is the frame that called Pyramid's public API, found
by stepping over Pyramid's own delegating frames (``LegacySecurityPolicy``,
the property getters, ``zope.deprecation``'s wrapper).  If it is a
coroutine, the frame under the outermost coroutine of its chain (the
coroutines awaiting each other: each frame above is at a ``SEND``) tells
who runs it: Pyramid's renderer wrapper (or ``_call_view``) calling a view,
or code calling a synchronized coroutine.  These Pyramid functions are
looked up at import: if one is missing the import fails, naming the
Pyramid version, instead of the rule silently changing.

A plain value is computed right where it is asked for: a synchronized
callback suspends the request greenlet while it waits (in an executor
thread it runs in a request greenlet on the request's loop and blocks only
that thread; so plain code it calls may call synchronized coroutines: a
synchronized ``__acl__`` under ``request.has_permission()``).  With no
loop (a unit test, WebTest) a coroutine view runs on a fresh loop and gets
awaitables as under a server.  An
awaitable runs the policy's method in a pooled request greenlet
(``spawn_greenlet``) when awaited, at most once: it keeps its result (or
its error), so awaiting it again gives the same; each read of
``request.authenticated_userid`` makes a new one.  Every other use of it
(truth value, comparisons, ``in``, iteration other than ``yield from``,
hashing, ``str()``, attributes) raises ``TypeError``, and one dropped
without being awaited warns, as a coroutine does.  ``x is None`` cannot be
caught: await first.

A comprehension or lambda has a frame of its own (before Python 3.12's
inlined comprehensions), so it counts as plain code; a generator that is not
a coroutine (no ``@coroutine``) counts as plain code too.
"""
import asyncio
import dis
import os
import sys
import types
import warnings
from inspect import CO_ASYNC_GENERATOR, CO_COROUTINE, CO_ITERABLE_COROUTINE

import greenlet
from pyramid.interfaces import IAuthenticationPolicy
from zope.interface import implementer

from . import _core
from .exceptions import ScopeError
from .helpers import spawn_greenlet

__all__ = [
    "CoroutineAuthenticationPolicyProxy",
    "PolicyAwaitable",
    "authn_policy_factory",
    "coroutine_callback_authentication_policy_factory",
]

_COROUTINE_FLAGS = CO_COROUTINE | CO_ITERABLE_COROUTINE | CO_ASYNC_GENERATOR


def _pyramid_version():
    try:
        from importlib.metadata import version

        return version("pyramid")
    except Exception:  # pragma: no cover - an unusual install
        return "(unknown version)"


def _code(obj):
    obj = getattr(obj, "prop", obj)  # zope.deprecation's property
    obj = getattr(obj, "fget", obj)
    return getattr(obj, "__code__", None)


def _nested_code(func, name):
    """The code of the function ``name`` defined inside ``func``."""
    code = getattr(func, "__code__", None)
    for const in getattr(code, "co_consts", ()):
        if isinstance(const, types.CodeType) and const.co_name == name:
            return const
    return None


def _pyramid_codes():
    """Code objects of the Pyramid functions the rule depends on, as
    ``(delegating, view_callers)``.

    ``delegating``: the frames between a caller and a policy's method that
    only pass the call on (the request properties, ``remember`` and
    ``forget``, ``LegacySecurityPolicy``, zope's deprecation wrapper).
    ``view_callers``: the frames that call a mapped view and nothing else
    of the user's (the renderer wrappers, ``pyramid.view._call_view``).

    Every one must be found: were one missing (another Pyramid), the rule
    would silently give the wrong kind of value, so the import fails."""
    import pyramid.security as security
    import pyramid.view as view
    import pyramid.viewderivers as viewderivers
    from zope.deprecation.deprecation import DeprecatedGetProperty

    found = {
        "pyramid.security.remember": _code(getattr(security, "remember",
                                                   None)),
        "pyramid.security.forget": _code(getattr(security, "forget", None)),
        "zope.deprecation.deprecation.DeprecatedGetProperty.__get__":
            _code(DeprecatedGetProperty.__get__),
    }
    for cls_name, names in (
        ("SecurityAPIMixin", ("identity", "authenticated_userid")),
        ("AuthenticationAPIMixin", ("unauthenticated_userid",
                                    "effective_principals")),
        ("LegacySecurityPolicy", ("identity", "authenticated_userid",
                                  "remember", "forget")),
    ):
        namespace = vars(getattr(security, cls_name, object))
        for name in names:
            found["pyramid.security.{}.{}".format(cls_name, name)] = _code(
                namespace.get(name))
    callers = {
        "pyramid.viewderivers.rendered_view.<locals>.viewresult_to_response":
            _nested_code(getattr(viewderivers, "rendered_view", None),
                         "viewresult_to_response"),
        "pyramid.viewderivers.rendered_view.<locals>.rendered_view":
            _nested_code(getattr(viewderivers, "rendered_view", None),
                         "rendered_view"),
        "pyramid.view._call_view": _code(getattr(view, "_call_view", None)),
    }
    missing = [name for name, code in {**found, **callers}.items()
               if code is None]
    if missing:
        raise ImportError(
            "aiopyramid.auth cannot work with Pyramid {}: it decides whether "
            "a coroutine gets an awaitable by stepping over Pyramid's own "
            "functions, and {} not found: {}. Use a Pyramid version "
            "aiopyramid supports (2.0 to 2.1 are tested), or report this "
            "version.".format(
                _pyramid_version(),
                "this one was" if len(missing) == 1 else "these were",
                ", ".join(missing),
            )
        )
    return frozenset(found.values()), frozenset(callers.values())


_DELEGATING, _VIEW_CALLERS = _pyramid_codes()


def _can_block():
    """True where a plain value can be computed in place: in a request
    greenlet (a synchronized call suspends it), or in a thread with no
    running loop (an executor thread: it blocks only itself)."""
    if asyncio._get_running_loop() is None:
        return True
    return greenlet.getcurrent().parent is not None


def _wants_awaitable(frame, name):
    """Does the code of ``frame`` (skipping Pyramid's delegating frames) get
    an awaitable?  Yes when it is a coroutine that a coroutine view runs
    (the view itself, or a coroutine awaited by it), and when it is a
    coroutine on the event loop outside any request greenlet (a Task),
    where no plain value can be computed.  No for plain code, and for a
    coroutine run through ``synchronize`` (a synchronized ``__acl__``,
    ``__getitem__``, callback, tween, helper...), also when a coroutine
    view calls it: it was written for plain code, it gets values too."""
    while frame is not None and frame.f_code in _DELEGATING:
        frame = frame.f_back
    if frame is None or not frame.f_code.co_flags & _COROUTINE_FLAGS:
        return False
    # up the chain of coroutines awaiting each other, to the frame that
    # drives the outermost one: plain code, or a coroutine that *called*
    # (not awaited) something that runs it, a synchronized function
    driver = frame.f_back
    while driver is not None and driver.f_code.co_flags & _COROUTINE_FLAGS \
            and _current_op(driver) == _SEND:
        driver = driver.f_back
    if driver is not None and driver.f_code in _VIEW_CALLERS:
        return True
    if driver is None and _view_run_outside():
        return True
    if _can_block():
        return False
    if _runs_for_a_synchronized_coroutine():
        raise ScopeError(
            "{} was asked for in a Task that a coroutine run through "
            "synchronize made (asyncio.gather(), wait_for(), create_task() "
            "in a synchronized __acl__, __getitem__, callback or helper): it "
            "runs on the event loop, where no plain value can be computed, "
            "and an awaitable would contradict what synchronized code "
            "gets.  Ask for it in the synchronized coroutine itself (it "
            "gets the value) and pass it in".format(name))
    if _runs_for_a_thread():
        raise ScopeError(
            "{} was asked for in a coroutine that plain code in an executor "
            "thread (a legacy view, a use_executor function) runs through "
            "synchronize: it runs on the event loop, where no plain value "
            "can be computed, and an awaitable would contradict what "
            "synchronized code gets.  Ask for it in the plain code itself "
            "(it gets the value) and pass it in".format(name))
    return True


_ASYNCIO_DIR = os.path.dirname(asyncio.__file__) + os.sep
_MappedView = getattr(_core, "MappedView", None)


def _view_run_outside():
    """Is this greenlet running a coroutine view with no loop around (a
    unit test, WebTest): the view's coroutine is at the bottom of a request
    greenlet whose parent runs a fresh loop (asyncio's frames) for
    Pyramid's call of the view, and the view it calls is a coroutine view?
    A synchronized coroutine that plain code called with no loop looks the
    same, but plain code is under the loop, or (a synchronized view) the
    view Pyramid calls is a plain one."""
    parent = greenlet.getcurrent().parent
    frame = None if parent is None else parent.gr_frame
    for _ in range(_MAX_FRAMES):
        if frame is None or not frame.f_code.co_filename.startswith(
                _ASYNCIO_DIR):
            break
        frame = frame.f_back
    if frame is None or frame.f_code not in _VIEW_CALLERS:
        return False
    local = frame.f_locals
    view = local.get("view", local.get("view_callable"))
    return type(view) is _MappedView and view.kind == "coroutine"


def _runs_for_a_synchronized_coroutine():
    """Is this Task one that a coroutine run through synchronize made (an
    ``__acl__``, a traversal ``__getitem__``, a callback, a helper a
    coroutine view called)?  The bridge's synchronize (and the proxy's own
    awaiting in place) marks the context it drives the coroutine in, and a
    Task copies the context it is made in: one a coroutine view made before
    it called a synchronized helper has no mark, also while the view waits
    in that helper."""
    return _in_synchronized.get(False)


def _runs_for_a_thread():
    """Is this Task one that an executor thread of a request waits for
    (``synchronize`` called there runs the coroutine on the request's loop,
    in a copy of the thread's context, where the bridge has set its
    request-loop variable)?  A Task a coroutine view made has no such
    variable: the request's own context never sets it."""
    return _core._request_loop.get(None) is not None


_SEND = dis.opmap["SEND"]
_CACHE = dis.opmap.get("CACHE", 0)
_YIELD_FROM_ITER = dis.opmap["GET_YIELD_FROM_ITER"]


def _current_op(frame):
    """The opcode ``frame`` is executing (3.12 may point into its inline
    cache)."""
    code = frame.f_code.co_code
    i = frame.f_lasti
    if not 0 <= i < len(code):
        return None
    while i > 0 and code[i] == _CACHE:
        i -= 2
    return code[i]


def _yield_from_awaits(frame):
    """Is ``frame`` at a ``yield from`` that awaits: in a generator
    coroutine, or in a plain generator that a chain of ``yield from``s
    (each frame at ``SEND``) delegates to from one?"""
    if _current_op(frame) != _YIELD_FROM_ITER:
        return False
    for _ in range(_MAX_FRAMES):
        if frame.f_code.co_flags & _COROUTINE_FLAGS:
            return True
        frame = frame.f_back
        if frame is None or _current_op(frame) != _SEND:
            return False
    return False


_MAX_FRAMES = 256
_MAX_NESTED = 16


_in_synchronized = _core._in_synchronized


def _await_in_greenlet(value):
    """Awaits in place, as synchronize does (the bridge's own primitive),
    with synchronize's mark in the context: a Task the policy's coroutine
    makes is one a synchronized coroutine made."""
    token = _in_synchronized.set(True)
    try:
        return _core.await_(value)
    finally:
        _in_synchronized.reset(token)


_getcurrent = greenlet.getcurrent


def _await_here(value):
    """``value`` awaited in place.  In a thread with no loop (an executor
    thread running a legacy view, which the bridge serves on the request's
    loop) it is awaited in a request greenlet there, not in a bare Task:
    the policy's coroutine may call plain code that calls synchronized
    coroutines (``ACLHelper.permits`` and a synchronized ``__acl__``)."""
    if _getcurrent().parent is None \
            and asyncio._get_running_loop() is None:
        return _await_in_greenlet(spawn_greenlet(_await_in_greenlet, value))
    return _await_in_greenlet(value)


# what policies return most: no need to ask further
_PLAIN_TYPES = frozenset({type(None), str, bool, int, list, tuple, dict, set,
                          frozenset})


def _is_pending(value):
    cls = type(value)
    if cls in _PLAIN_TYPES:
        return False
    if cls is types.GeneratorType:
        # a seed-style coroutine, also one made without @coroutine; not a
        # generator expression (a plain iterable of principals, say)
        return value.gi_code.co_name != "<genexpr>"
    if cls is types.AsyncGeneratorType:
        # an `async def` with a `yield`: never a value, and Pyramid would
        # take the object for one (truthy: `permits` would allow)
        raise TypeError(
            "a policy method or callback gave an async generator ({!r}): "
            "an 'async def' with 'yield' never gives a value; 'return' "
            "it".format(value))
    return hasattr(cls, "__await__")  # coroutines, futures, any awaitable


def _resolve(value, name):
    """``value``, awaited (in place) as long as it is awaitable: whatever a
    policy's method or callback gives, Pyramid gets the value."""
    for _ in range(_MAX_NESTED):
        if not _is_pending(value):
            return value
        try:
            value = _await_here(value)
        except BaseException:
            # e.g. a ScopeError before it ever ran: no "never awaited"
            close = getattr(value, "close", None)
            if close is not None:
                close()
            raise
    raise TypeError(
        "{} gave an awaitable whose result is an awaitable, {} levels deep: "
        "return a value".format(name, _MAX_NESTED)
    )


def _call_resolved(method, args, kwargs, name):
    return _resolve(method(*args, **kwargs), name)


def _route(method, args, kwargs, name):
    """``method(*args, **kwargs)``, resolved, for a caller that gets values;
    a ``PolicyAwaitable`` of it for one that gets awaitables.  Frame 1 is
    the proxy's method, 2 its caller."""
    if _wants_awaitable(sys._getframe(2), name):
        return PolicyAwaitable(_call_resolved, (method, args, kwargs, name),
                               {}, name)
    value = method(*args, **kwargs)
    if type(value) in _PLAIN_TYPES:
        return value
    if type(value) is types.CoroutineType:  # an async def: the common case
        try:
            if _getcurrent().parent is not None:  # a request greenlet
                value = _await_in_greenlet(value)
            else:
                value = _await_here(value)
        except BaseException:
            value.close()  # e.g. a ScopeError before it ran
            raise
        if type(value) in _PLAIN_TYPES:
            return value
    return _resolve(value, name)


class _ResolvedCallback:
    """A policy's callback (groupfinder) whose result, if awaitable, is
    awaited in place: Pyramid tests ``callback(...) is not None``, which a
    coroutine object would always pass."""

    __slots__ = ("__wrapped__",)

    def __init__(self, callback):
        self.__wrapped__ = callback

    def __call__(self, *args, **kwargs):
        value = self.__wrapped__(*args, **kwargs)
        if type(value) in _PLAIN_TYPES:
            return value
        return _resolve(value, "the callback")

    def __repr__(self):
        return "<resolved callback {!r}>".format(self.__wrapped__)


def _resolved_callback(callback):
    if callback is None or isinstance(callback, _ResolvedCallback):
        return callback
    return _ResolvedCallback(callback)


_PENDING, _RUNNING, _DONE, _FAILED = range(4)

# asyncio's functions that key their arguments in a dict or set
_HASHING_HELPERS = frozenset(
    func.__code__ for func in (
        asyncio.gather,
        asyncio.as_completed,
        getattr(getattr(asyncio.tasks, "_AsCompletedIterator", None),
                "__init__", None),  # Python 3.13
    ) if hasattr(func, "__code__")
)


def _misuse(self, what):
    object.__setattr__(self, "_reported", True)
    return TypeError(
        "{} was asked for in a coroutine, which gets an awaitable: "
        "'await' it (or 'yield from' it) to get the value{}".format(
            self._name, what
        )
    )


class PolicyAwaitable:
    """What a policy proxy gives a coroutine: awaiting it runs the policy's
    method in a pooled request greenlet, where a synchronized callback may
    suspend, and returns its result.  The method runs at most once: the
    result (or the error) is kept, so awaiting again gives the same.
    ``yield from`` works too, for generator coroutines.

    Any other use is an error, never a wrong answer: truth value,
    comparisons, ``in``, iteration, hashing, ``str()``, attributes.  One
    dropped without being awaited warns (``RuntimeWarning``), as a
    coroutine does.  ``x is None`` cannot be caught: await first."""

    __slots__ = ("_call", "_args", "_kwargs", "_name", "_value", "_state",
                 "_reported")

    def __init__(self, call, args, kwargs, name):
        self._call = call
        self._args = args
        self._kwargs = kwargs
        self._name = name
        self._value = None
        self._state = _PENDING
        self._reported = False

    def __await__(self):
        state = self._state
        if state == _DONE:
            return self._value
        if state == _FAILED:
            raise self._value
        if state == _RUNNING:
            raise RuntimeError(
                "{} is already being awaited".format(self._name))
        call, args, kwargs = self._call, self._args, self._kwargs
        self._call = self._args = self._kwargs = None
        self._state = _RUNNING
        try:
            value = yield from spawn_greenlet(call, *args, **kwargs)
        except GeneratorExit:
            self._state = _FAILED
            self._value = RuntimeError(
                "{}: its first await was abandoned before it finished (the "
                "policy is not asked twice)".format(self._name))
            raise
        except BaseException as exc:
            self._state = _FAILED
            self._value = exc
            raise
        self._state = _DONE
        self._value = value
        return value

    def __iter__(self):
        # `yield from` in a generator coroutine is awaiting; `for`, list(),
        # unpacking... are not, nor `yield from` in a plain generator that
        # plain code iterates (its items would be the awaitable's steps)
        if _yield_from_awaits(sys._getframe(1)):
            return self.__await__()
        raise _misuse(self, ", not iterate over it")

    def __bool__(self):
        raise _misuse(self, "")

    def _compare(self, other):
        raise _misuse(self, ", then compare the value")

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = _compare

    def __hash__(self):
        if sys._getframe(1).f_code in _HASHING_HELPERS:
            # asyncio.gather(), as_completed() key their arguments
            return object.__hash__(self)
        raise _misuse(self, ", not hash it")

    def __contains__(self, item):
        raise _misuse(self, ", then test membership in the value")

    def __len__(self):
        raise _misuse(self, ", not take its length")

    def __getitem__(self, key):
        raise _misuse(self, ", then index the value")

    def __str__(self):
        raise _misuse(self, ", not format it")

    def __format__(self, spec):
        raise _misuse(self, ", not format it")

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        raise _misuse(self, ", then read .{} of the value".format(name))

    def __reduce_ex__(self, protocol):
        # copy.copy(), deepcopy(), pickle: a copy would run the policy again
        raise _misuse(self, ", not copy or pickle it")

    def __repr__(self):
        state = ("pending", "running", "done", "failed")[self._state]
        return "<PolicyAwaitable {} {}>".format(self._name, state)

    def __del__(self):
        if self._state == _PENDING and not self._reported:
            warnings.warn(
                "{} was never awaited: in a coroutine it is an awaitable, "
                "'await' it to get the value".format(self._name),
                RuntimeWarning, stacklevel=2, source=self)


@implementer(IAuthenticationPolicy)
class CoroutineAuthenticationPolicyProxy:
    """Proxies an authentication policy whose callback may be a
    synchronized coroutine.  Each method gives the plain value to plain
    code and an awaitable to a coroutine (see the module's documentation).
    Other attributes are read from the wrapped policy."""

    def __init__(self, policy):
        self._policy = policy
        _core._mark_synchronized()  # for _runs_for_a_synchronized_coroutine
        callback = getattr(policy, "callback", None)
        if callback is not None:
            # decided when called, not here: whatever it returns that is
            # awaitable is awaited before Pyramid sees it
            policy.callback = _resolved_callback(callback)

    def remember(self, request, userid, **kw):
        return _route(self._policy.remember, (request, userid), kw,
                      "remember()")

    def forget(self, request, **kw):
        return _route(self._policy.forget, (request,), kw, "forget()")

    def unauthenticated_userid(self, request):
        return _route(self._policy.unauthenticated_userid, (request,), {},
                      "request.unauthenticated_userid")

    def authenticated_userid(self, request):
        return _route(self._policy.authenticated_userid, (request,), {},
                      "request.authenticated_userid")

    def effective_principals(self, request):
        return _route(self._policy.effective_principals, (request,), {},
                      "request.effective_principals")

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

    ``coroutine`` is passed as ``callback``, wrapped so that whatever it
    returns that is awaitable (an ``async def``, also behind a decorator,
    an object with ``async def __call__``, a plain function returning a
    coroutine) is awaited in place; with ``None`` no callback is passed.
    A policy that takes its callback under another name gets a
    synchronized coroutine in ``kwargs`` instead (or use the proxy
    directly)."""
    if coroutine is not None:
        kwargs["callback"] = _resolved_callback(coroutine)
    return CoroutineAuthenticationPolicyProxy(policy_class(*args, **kwargs))


authn_policy_factory = coroutine_callback_authentication_policy_factory
