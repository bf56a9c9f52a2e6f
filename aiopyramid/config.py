"""View mappers that run Pyramid views on asyncio.

Each mapper decides once, at configuration time and with Pyramid's own
rules, how a view is called (its shape) and how it runs (its kind); the
mapped view it returns is a C object doing the per-request work:

* a coroutine view (``async def``, a generator coroutine, a class whose
  ``attr`` method is one) is driven in the request greenlet and suspends it
  only when the coroutine waits;
* any other view runs in the loop's executor (a thread), with Pyramid's
  threadlocals and the request's contextvars, so it cannot block the loop;
  if it returns a coroutine (a plain def wrapping one), that coroutine is
  awaited in the request greenlet;
* a plain view that does not block (``blocking=False`` in its view
  configuration, or every plain view with ``aiopyramid.plain_views =
  inline``) runs inline in the request greenlet instead: no thread, and a
  synchronized coroutine it calls suspends only its request;
* an async generator function can never give a response: refused with a
  ``ConfigurationError``.  A ``functools.partial`` is classified by what it
  calls.

Outside any request (a unit test calling ``render_view_to_response``), a
plain view runs inline and a coroutine view runs on a fresh event loop, in
a request greenlet driven by a Task, as under a server.
"""
import functools
import inspect

from pyramid.config import PHASE1_CONFIG
from pyramid.exceptions import ConfigurationError
from pyramid.threadlocal import get_current_registry
from pyramid.util import is_unbound_method, object_description
from pyramid.viewderivers import DefaultViewMapper, requestonly
from zope.interface import Interface

from . import _core
from ._core import coroutine, is_coroutine_function

__all__ = [
    "CoroutineOrExecutorMapper",
    "CoroutineMapper",
    "ExecutorMapper",
    "IPlainViews",
    "IViewExecutor",
    "blocking_deriver",
    "includeme",
]

EXECUTOR_THREADS_SETTING = "aiopyramid.executor_threads"
BODY_PREREAD_SETTING = "aiopyramid.body_preread"
BODY_PREREAD_DEFAULT = 65536
PLAIN_VIEWS_SETTING = "aiopyramid.plain_views"
PLAIN_VIEWS = ("executor", "inline")
STREAM_BODIES_SETTING = "aiopyramid.stream_bodies"


class IViewExecutor(Interface):
    """The utility naming the executor legacy views run in (the pool that
    ``aiopyramid.executor_threads`` creates); when none is registered they
    run in the loop's default executor."""


def _target(view, attr):
    """The callable whose nature decides the view's kind."""
    while isinstance(view, functools.partial) and not inspect.isclass(view.func):
        view = view.func  # what a partial calls decides, not the partial
    if inspect.isclass(view):
        return getattr(view, attr or "__call__", None)
    if attr is not None:
        return getattr(view, attr, None)
    if inspect.isroutine(view) or is_coroutine_function(view):
        return view
    return getattr(type(view), "__call__", None)


def _refuse_async_generator(view, attr):
    target = _target(view, attr)
    if target is not None and inspect.isasyncgenfunction(target):
        raise ConfigurationError(
            "{!r} is an async generator function ('async def' with 'yield'): "
            "calling it gives an async iterator, never a response, so it "
            "cannot be a view. Make it an 'async def' that returns a "
            "response (to stream a body, return a Response whose app_iter "
            "yields the chunks)".format(target)
        )


def _is_coroutine_view(view, attr):
    target = _target(view, attr)
    return target is not None and is_coroutine_function(target)


class IPlainViews(Interface):
    """The utility holding how plain views run by default, ``"executor"`` or
    ``"inline"`` (the ``aiopyramid.plain_views`` setting)."""


def _plain_views(settings):
    value = (settings or {}).get(PLAIN_VIEWS_SETTING)
    if value is None:
        return "executor"
    word = value.strip().lower() if isinstance(value, str) else value
    if word not in PLAIN_VIEWS:
        raise ConfigurationError(
            "{} must be 'executor' (plain views run in a thread, the "
            "default) or 'inline' (plain views run in the request greenlet: "
            "only for views that never block); got {!r}".format(
                PLAIN_VIEWS_SETTING, value))
    return word


def _check_blocking(value, view=None):
    if value is not None and not isinstance(value, bool):
        raise ConfigurationError(
            "the view option blocking= must be True (a plain view runs in "
            "the executor, a thread), False (it runs inline in the request "
            "greenlet) or None (the aiopyramid.plain_views setting "
            "decides); got {!r}{}".format(
                value, "" if view is None else " for {!r}".format(view)))
    return value


def blocking_deriver(view, info):
    """The ``blocking`` view option (``@view_config(..., blocking=False)``):
    read by aiopyramid's mappers, which run such a plain view inline; this
    deriver only checks it and adds nothing to the request's path."""
    _check_blocking(info.options.get("blocking"), view)
    return view


blocking_deriver.options = ("blocking",)


class AsyncioMapperBase(DefaultViewMapper):
    """Maps a view with Pyramid's shapes into a C mapped view of the kind
    that ``_kind`` chooses.  Subclasses decide the kind."""

    def __init__(self, **kw):
        super().__init__(**kw)
        registry = get_current_registry()
        self.executor = registry.queryUtility(IViewExecutor)
        self.body_preread = _body_preread(registry.settings)
        self.stream_bodies = _stream_bodies(registry.settings)
        self.blocking = _check_blocking(kw.get("blocking"))
        if self.blocking is None:
            default = registry.queryUtility(IPlainViews)
            if default is None:
                default = _plain_views(getattr(registry, "settings", None))
            self.blocking = default != "inline"

    def _plain_kind(self):
        return _core.KIND_EXECUTOR if self.blocking else _core.KIND_INLINE

    def _kind(self, view):
        raise NotImplementedError

    def __call__(self, view):
        if is_unbound_method(view) and self.attr is None:
            raise ConfigurationError(
                "Unbound method calls are not supported, please set the "
                "class as your `view` and the method as your `attr`"
            )
        _refuse_async_generator(view, self.attr)
        kind = self._kind(view)
        if kind == _core.KIND_COROUTINE:
            self._make_awaitable(view)
        attr = self.attr
        if inspect.isclass(view):
            shape = (
                _core.SHAPE_CLASS_REQUESTONLY
                if requestonly(view, attr)
                else _core.SHAPE_CLASS_NATIVE
            )
            text = "method {} of {}".format(
                attr or "__call__", object_description(view)
            )
        else:
            if requestonly(view, attr):
                shape = _core.SHAPE_REQUESTONLY
            elif attr:
                shape = _core.SHAPE_ATTR
            else:
                shape = _core.SHAPE_FUNC
            if attr is not None:
                text = "attr {} of {}".format(attr, object_description(view))
            else:
                text = object_description(view)
        mapped = _core.map_view(view, shape, kind, attr, self.executor,
                                self.body_preread, self.stream_bodies)
        mapped.__text__ = text
        return mapped

    def _make_awaitable(self, view):
        """Seed-style generator views get CO_ITERABLE_COROUTINE, as
        asyncio.coroutine gave them, so they may 'yield from' coroutines."""
        target = _target(view, self.attr)
        func = getattr(target, "__func__", target)
        if inspect.isgeneratorfunction(func):
            coroutine(func)


class CoroutineMapper(AsyncioMapperBase):
    """Only coroutine views; ``ConfigurationError`` for any other."""

    def _kind(self, view):
        if not _is_coroutine_view(view, self.attr):
            raise ConfigurationError(
                "Non-coroutine {!r} mapped to coroutine: make it an "
                "'async def' view or use ExecutorMapper".format(view)
            )
        return _core.KIND_COROUTINE


class ExecutorMapper(AsyncioMapperBase):
    """Only plain views, run in the loop's executor; ``ConfigurationError``
    for a coroutine view, and for ``blocking=False`` (which asks for the
    request greenlet, not a thread)."""

    def _kind(self, view):
        if _is_coroutine_view(view, self.attr):
            raise ConfigurationError(
                "Coroutine {!r} mapped to executor: use CoroutineMapper or "
                "CoroutineOrExecutorMapper".format(view)
            )
        if self.blocking_option is False:
            raise ConfigurationError(
                "{!r} is mapped to the executor by ExecutorMapper but says "
                "blocking=False: drop one of the two (the default mapper, "
                "CoroutineOrExecutorMapper, runs it inline)".format(view))
        return _core.KIND_EXECUTOR

    def __init__(self, **kw):
        super().__init__(**kw)
        self.blocking_option = kw.get("blocking")


class CoroutineOrExecutorMapper(AsyncioMapperBase):
    """Coroutine views are awaited on the loop; every other view runs in
    the loop's executor, or inline in the request greenlet when it says
    ``blocking=False`` (or ``aiopyramid.plain_views = inline`` is set and
    it does not say ``blocking=True``).  The default once aiopyramid is
    included."""

    def _kind(self, view):
        if _is_coroutine_view(view, self.attr):
            return _core.KIND_COROUTINE
        return self._plain_kind()


def _body_preread(settings):
    """``aiopyramid.body_preread``: a plain view's request body of known
    length up to this many bytes is read before its thread starts (in
    memory, seekable); a larger or chunked one is spooled (to a temporary
    file past WebOb's limit) before it starts, or streamed to the thread
    with ``aiopyramid.stream_bodies``, so memory stays bounded whatever the
    upload's size."""
    value = (settings or {}).get(BODY_PREREAD_SETTING)
    if value in (None, ""):
        return BODY_PREREAD_DEFAULT
    try:
        size = int(value)
    except (TypeError, ValueError):
        size = -1
    if size < 0:
        raise ConfigurationError(
            "{} must be a whole number of bytes, 0 or more (0: spool, or "
            "stream, every body); got {!r}".format(
                BODY_PREREAD_SETTING, value))
    return size


def _stream_bodies(settings):
    """``aiopyramid.stream_bodies``: 1 to stream a plain view's body past
    body_preread (or chunked) to its thread as the view reads it, 0 (the
    default) to spool it in the request greenlet before the thread starts."""
    value = (settings or {}).get(STREAM_BODIES_SETTING)
    if value in (None, ""):
        return 0
    if isinstance(value, bool):
        return int(value)
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return 1
    if text in ("false", "no", "off", "0"):
        return 0
    raise ConfigurationError(
        "{} must be true or false (true: stream a plain view's big or "
        "chunked request body to its thread as it comes, holding the "
        "thread while the client sends; false: spool it first); got "
        "{!r}".format(STREAM_BODIES_SETTING, value))


def _executor_threads(settings):
    value = (settings or {}).get(EXECUTOR_THREADS_SETTING)
    if value in (None, ""):
        return None
    try:
        threads = int(value)
    except (TypeError, ValueError):
        threads = 0
    if threads < 1:
        raise ConfigurationError(
            "{} must be a whole number of threads, 1 or more; got {!r}".format(
                EXECUTOR_THREADS_SETTING, value
            )
        )
    return threads


# a policy's methods that Pyramid calls and tests as values, by interface
_POLICY_METHODS = (
    ("ISecurityPolicy", "set_security_policy",
     ("identity", "authenticated_userid", "permits", "remember", "forget"),
     "wrap it in aiopyramid.security.CoroutineSecurityPolicyProxy"),
    ("IAuthenticationPolicy", "set_authentication_policy",
     ("authenticated_userid", "unauthenticated_userid",
      "effective_principals", "remember", "forget", "callback",
      "check"),  # BasicAuthAuthenticationPolicy's callback calls check
     "build it with aiopyramid.auth.authn_policy_factory, or wrap it in "
     "aiopyramid.auth.CoroutineAuthenticationPolicyProxy"),
    ("IAuthorizationPolicy", "set_authorization_policy",
     ("permits", "principals_allowed_by_permission"),
     "make the method a plain def that calls a synchronized coroutine "
     "(aiopyramid.helpers.synchronize), or use a security policy wrapped in "
     "aiopyramid.security.CoroutineSecurityPolicyProxy"),
)


def _is_async(obj):
    """A coroutine function, also behind ``functools.wraps``, or an object
    whose ``__call__`` is one."""
    seen = 0
    while obj is not None and seen < 32:
        if inspect.iscoroutinefunction(obj) or \
                inspect.isasyncgenfunction(obj):
            return True
        if not inspect.isroutine(obj) and not inspect.isclass(obj):
            call = getattr(type(obj), "__call__", None)
            if call is not None and (inspect.iscoroutinefunction(call) or
                                     inspect.isasyncgenfunction(call)):
                return True
        obj = getattr(obj, "__wrapped__", None)
        seen += 1
    return False


def _refuse_coroutine_policies(registry):
    """A policy with coroutine methods registered as it is: Pyramid would
    take the coroutine object each gives for the answer (truthy: every
    permission check passes).  Refused when the app is configured."""
    import pyramid.interfaces

    for iface_name, setter, methods, remedy in _POLICY_METHODS:
        policy = registry.queryUtility(getattr(pyramid.interfaces,
                                               iface_name))
        if policy is None or \
                type(policy).__module__ in ("aiopyramid.auth",
                                            "aiopyramid.security"):
            continue
        for name in methods:
            if _is_async(getattr(policy, name, None)):
                raise ConfigurationError(
                    "{!r}, given to config.{}(), has a coroutine {}: Pyramid "
                    "would take the coroutine object it returns for the "
                    "answer (truthy: every permission check would pass); "
                    "{}".format(policy, setter, name, remedy))


def includeme(config):
    """``config.include('aiopyramid')``: coroutine views on the loop, other
    views in the executor, request-local threadlocals (Pyramid's, and the
    ``transaction`` package's default manager when it is installed).

    Setting ``aiopyramid.executor_threads = N`` gives legacy views a pool of
    N threads of their own instead of the loop's default executor;
    ``aiopyramid.body_preread = BYTES`` (64 KiB by default) is the largest
    request body read in memory before a legacy view's thread starts:
    larger or chunked bodies are spooled before it starts (a temporary file
    past WebOb's limit), or streamed to it with
    ``aiopyramid.stream_bodies = true``.
    ``aiopyramid.plain_views = inline`` runs plain views in the request
    greenlet unless they say ``blocking=True`` (default ``executor``).
    """
    from ._threadlocal import install
    from ._transaction import install as install_transaction

    install_transaction()  # transaction.manager, as pyramid_tm uses it
    config.include("aiopyramid.watchdog")  # aiopyramid.slow_callback_ms
    install()
    _body_preread(config.registry.settings)  # a bad value fails here
    _stream_bodies(config.registry.settings)
    # checked now: a bad value fails config.include() with what to write
    plain_views = _plain_views(config.registry.settings)
    config.registry.registerUtility(plain_views, IPlainViews)
    config.add_view_deriver(blocking_deriver, "aiopyramid_blocking")
    threads = _executor_threads(config.registry.settings)
    if threads is not None:
        registry = config.registry

        def register_executor():
            from ._executor import Executor

            registry.registerUtility(
                Executor(max_workers=threads, thread_name_prefix="aiopyramid-view"),
                IViewExecutor,
            )

        # before the views are mapped (they are at the default order, 0);
        # the gunicorn worker shuts every such pool down when it exits
        config.action(IViewExecutor, register_executor, order=PHASE1_CONFIG)
    # the websocket settings are checked now: a typo fails at start-up
    from .websocket.config import websocket_settings

    websocket_settings(config.registry.settings)
    config.set_view_mapper(CoroutineOrExecutorMapper)
    from .uwsgi import running_under_uwsgi

    if running_under_uwsgi():
        config.include("aiopyramid.uwsgi")
    # after the policies are registered (PHASE1, PHASE2)
    config.action(None, _refuse_coroutine_policies, args=(config.registry,))
