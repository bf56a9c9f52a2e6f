/* Shared declarations of aiopyramid._core: module state, the bridge API
 * that mappers.c and http.c call, and small compatibility helpers. */
#ifndef AIOPYRAMID_H
#define AIOPYRAMID_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

typedef struct {
    /* types */
    PyTypeObject *BridgeGreenletType;
    PyTypeObject *SpawnType;
    PyTypeObject *DelegateType;
    PyTypeObject *SynchronizedType;
    PyTypeObject *CoroutineFunctionType;
    PyTypeObject *ThreadCallType;
    PyTypeObject *WorkQueueType;
    PyTypeObject *CompletionsType;
    PyTypeObject *MappedViewType;

    /* exceptions and objects imported once */
    PyObject *ScopeError;          /* aiopyramid.exceptions.ScopeError */
    PyObject *ConfigurationError;  /* pyramid.exceptions.ConfigurationError */
    PyObject *GreenletExit;
    PyObject *CancelledError;
    PyObject *gr_context_descr;    /* greenlet.gr_context getset descriptor */
    PyObject *get_running_loop;    /* asyncio._get_running_loop */
    PyObject *asyncio_run;
    PyObject *types_coroutine;
    PyObject *update_wrapper;      /* functools.update_wrapper */
    PyObject *is_coroutine_marker; /* asyncio.coroutines._is_coroutine, or NULL */
    PyObject *inspect_marker;      /* inspect._is_coroutine_mark (3.12+), or NULL */
    PyObject *iscoroutinefunction; /* inspect.iscoroutinefunction */
    PyObject *request_loop;        /* ContextVar: the loop of the request that
                                      started an executor thread */
    PyObject *waiting_thread;      /* ContextVar: the executor thread that
                                      waits for this coroutine (see
                                      aiopyramid/_executor.py) */
    PyObject *in_synchronized;     /* ContextVar: True while a synchronized
                                      call drives its coroutine in this
                                      context, once mark_synchronized is
                                      set (aiopyramid/auth.py) */
    PyObject *worker;              /* the run() of every pooled greenlet */

    /* interned strings */
    PyObject *str_throw;
    PyObject *str_close;
    PyObject *str_pool_key;
    PyObject *str_add_done_callback;
    PyObject *str_call_soon;
    PyObject *str_run_in_executor;
    PyObject *str_blocking;        /* _asyncio_future_blocking */
    PyObject *str_set_result;
    PyObject *str_set_exception;
    PyObject *str_result;
    PyObject *str_push;
    PyObject *str_pop;
    PyObject *str_registry;
    PyObject *str_request;
    PyObject *str_view_attr;       /* __view__ */
    PyObject *str_make_body_seekable;
    PyObject *str_content_length;  /* CONTENT_LENGTH */
    PyObject *str_transfer_encoding; /* HTTP_TRANSFER_ENCODING */
    PyObject *str_app_iter;        /* _app_iter (WebOb's Response) */
    PyObject *str_foreign_wait;    /* _aiopyramid_wait: a foreign driver's
                                      wait(yielded), on its greenlet */
    PyObject *executor_strs;       /* tuple of interned strings, see
                                      bridge/executor.c */
    PyObject *threadlocal_manager; /* pyramid.threadlocal.manager, once an
                                      executor thread has needed it */
    PyObject *tl_class;            /* aiopyramid's ContextLocalManager and */
    PyObject *tl_stack;            /* its stack's ContextVar: a push in C,
                                      see bridge/executor.c */
    PyObject *completers;          /* {weakref(loop): Completions}, see
                                      bridge/executor.c */
    PyObject *cf_thread;           /* concurrent.futures.thread */
    PyObject *queue_empty;         /* queue.Empty */

    /* http/ */
    PyTypeObject *HttpServerType;
    PyTypeObject *HttpProtocolType;
    PyTypeObject *HttpRequestType;
    PyTypeObject *HttpInputType;
    PyTypeObject *FileWrapperType;
    PyObject *http_strs;           /* tuple of interned strings, see http/http.h */
    PyObject *http_methods;        /* tuple: llhttp method number -> name */
    PyObject *http_run;            /* the job of a request greenlet */
    PyObject *io_base;             /* io.IOBase: a spooled body, closed
                                      as its request's run ends */
    PyObject *io_bytesio;          /* io.BytesIO: a body kept in memory,
                                      left open (no descriptor, no disk) */

    /* websocket/ */
    PyTypeObject *WebSocketType;
    PyTypeObject *WebsocketResultType;
    PyObject *WebsocketHandshakeError;
    PyObject *WebsocketClosed;     /* aiopyramid.websocket.exceptions', at
                                      the first WebSocket */
    PyObject *ws_sha1;             /* hashlib.sha1 */
    PyObject *ws_strs;             /* tuple of interned strings (protocol.c) */
    PyObject *ws_none_result;      /* the finished awaitable of None */

    Py_ssize_t pool_limit;         /* idle greenlets kept per thread */
    int mark_synchronized;         /* synchronize sets in_synchronized (once
                                      a coroutine policy proxy exists) */
    unsigned long long greenlets_created;
} modstate;

extern PyModuleDef aiopyramid_module;

static inline modstate *
state_of_module(PyObject *module)
{
    return (modstate *)PyModule_GetState(module);
}

/* For instances of our own types, which cannot be subclassed: the type's
 * module is ours, found without a walk of the MRO. */
static inline modstate *
state_of_type(PyTypeObject *tp)
{
    return (modstate *)PyType_GetModuleState(tp);
}

/* Exceptions as single objects, on 3.11 as on 3.12+. */
static inline PyObject *
exc_take(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    if (t == NULL)
        return NULL;
    PyErr_NormalizeException(&t, &v, &tb);
    if (tb != NULL && v != NULL)
        PyException_SetTraceback(v, tb);
    Py_XDECREF(t);
    Py_XDECREF(tb);
    return v;
#endif
}

/* Steals exc. */
static inline void
exc_restore(PyObject *exc)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(exc);
#else
    PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(exc)), exc,
                  PyException_GetTraceback(exc));
#endif
}

#if PY_VERSION_HEX < 0x030D0000
static inline int
PyObject_GetOptionalAttr(PyObject *obj, PyObject *name, PyObject **result)
{
    return _PyObject_LookupAttr(obj, name, result);
}

static inline int
PyObject_GetOptionalAttrString(PyObject *obj, const char *name,
                               PyObject **result)
{
    PyObject *n = PyUnicode_FromString(name);
    if (n == NULL) {
        *result = NULL;
        return -1;
    }
    int rc = _PyObject_LookupAttr(obj, n, result);
    Py_DECREF(n);
    return rc;
}
#endif

/* tp_dealloc of our GC types: weak references, then tp_clear, then the
 * memory and the reference to the heap type. */
static inline void
gc_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    if (tp->tp_weaklistoffset > 0 &&
        *(PyObject **)((char *)op + tp->tp_weaklistoffset) != NULL)
        PyObject_ClearWeakRefs(op);
    tp->tp_clear(op);
    tp->tp_free(op);
    Py_DECREF(tp);
}

/* What 'await' accepts: coroutines, generators, objects with __await__. */
static inline int
is_awaitable(PyObject *obj)
{
    if (PyCoro_CheckExact(obj) || PyGen_Check(obj))
        return 1;
    PyAsyncMethods *am = Py_TYPE(obj)->tp_as_async;
    return am != NULL && am->am_await != NULL;
}

/* coro.c: coroutine-protocol pieces shared by the coroutine types */
#pragma GCC visibility push(hidden)

/* PEP 479: StopIteration leaving a coroutine body becomes RuntimeError.
 * Steals exc, returns the exception to raise. */
PyObject *stop_iteration_to_runtime_error(PyObject *exc);
/* send()/__next__ as Python sees them, from a PySendResult. */
PyObject *send_result_to_python(PySendResult r, PyObject *result);
/* throw(exc) / throw(type[, value[, tb]]) to an exception instance. */
PyObject *exception_from_throw_args(PyObject *const *args, Py_ssize_t nargs);
/* __await__ and __iter__ of an object that is its own iterator. */
PyObject *coro_return_self(PyObject *self);
/* send(value) and __next__ of a type with am_send. */
PyObject *coro_send(PyObject *self, PyObject *arg);
PyObject *coro_iternext(PyObject *self);
/* A vectorcall's arguments as a new tuple and a new dict (NULL without
 * keywords): args[0..nargs) positional, then a value per name in kwnames.
 * 0, or -1 with an exception set and nothing made
 * (inline: spawn_greenlet and use_executor calls are per-call paths) */
static inline int
vectorcall_args_to_tuple_dict(PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames, PyObject **tuple,
                              PyObject **dict)
{
    *dict = NULL;
    *tuple = PyTuple_New(nargs);
    if (*tuple == NULL)
        return -1;
    for (Py_ssize_t i = 0; i < nargs; i++)
        PyTuple_SET_ITEM(*tuple, i, Py_NewRef(args[i]));
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames)) {
        *dict = PyDict_New();
        if (*dict == NULL)
            goto error;
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++)
            if (PyDict_SetItem(*dict, PyTuple_GET_ITEM(kwnames, i),
                               args[nargs + i]) < 0)
                goto error;
    }
    return 0;
error:
    Py_CLEAR(*tuple);
    Py_CLEAR(*dict);
    return -1;
}

/* module.c: a heap type from spec (with base, or NULL), in module state and
 * module. */
int add_type(PyObject *module, PyTypeObject **slot, PyType_Spec *spec,
             PyObject *base);

#pragma GCC visibility pop

/* bridge/init.c: module-init helpers */
int bridge_init(PyObject *module, modstate *st);

/* bridge/: the API for mappers.c and http.c */

/* Drives `awaitable` to completion in the calling greenlet, switching to its
 * driver only when it suspends.  Raises
 * ScopeError when the caller has no greenlet to suspend and no loop of its
 * own can be made. */
PyObject *bridge_await(modstate *st, PyObject *awaitable);

/* Runs a coroutine called from plain code outside any request: on a fresh
 * loop when this thread has none, through the request's loop from an
 * executor thread, ScopeError on the loop itself. */
PyObject *bridge_run_outside(modstate *st, PyObject *awaitable, PyObject *name);

/* 1 when the calling greenlet can suspend through the bridge. */
int bridge_can_suspend(modstate *st);

/* A new spawn awaitable: runs func(*args, **kwargs) in a pooled greenlet
 * with `context` (NULL: the driver's at the first send). */
PyObject *bridge_spawn_new(modstate *st, PyObject *func, PyObject *args,
                           PyObject *kwargs, PyObject *context);

/* Runs a new spawn's job until it first suspends or ends, for a Task made
 * for the spawn (asyncio.Task(spawn, ...)) whose first step has not run
 * yet: PYGEN_RETURN/PYGEN_ERROR when the job is done, and the Task's first
 * send(None) then returns None; PYGEN_NEXT with what it yielded (a new ref)
 * when it suspends, and the Task gets that same yield from its first
 * send(None) and drives the rest.  The caller makes that Task asyncio's
 * current task around the call (Python 3.11; 3.12+ has eager tasks). */
PySendResult bridge_spawn_first(PyObject *spawn, PyObject **result);

/* 1 when the spawn's job has ended by returning (not raising). */
int bridge_spawn_returned(PyObject *spawn);

/* After bridge_spawn_first suspended: on_end(owner, task, exc) is called
 * once, in the step where the job ends (its Task's, which has not ended
 * yet), with what it raised (borrowed; NULL when it returned) and no
 * exception set; it must leave none.  The spawn holds owner and task until
 * then (a cycle through the Task, broken at that end). */
typedef void (*bridge_on_end)(PyObject *owner, PyObject *task, PyObject *exc);
void bridge_spawn_on_end(PyObject *spawn, bridge_on_end on_end,
                         PyObject *owner, PyObject *task);

/* The loop that drives the spawn's job, which its maker knows runs (the
 * server's, for its requests).  bridge_job_loop() is then that loop while
 * the job runs, without asking asyncio (whose _get_running_loop() on 3.11
 * asks the kernel for the pid each time); else it is asyncio's running
 * loop, or None.  A new reference, or NULL with an exception. */
void bridge_spawn_set_loop(PyObject *spawn, PyObject *loop);
PyObject *bridge_job_loop(modstate *st);

/* Is `obj` a coroutine function (async def, generator coroutine, marked)? */
int bridge_is_coroutine_function(modstate *st, PyObject *obj);

/* loop.run_in_executor(executor, fn(*args, **kwargs)) in a copy of the
 * caller's contextvars, with the loop recorded for synchronize() and, given
 * a request, Pyramid's threadlocals pushed in the thread; returns the
 * future. */
PyObject *bridge_run_in_executor(modstate *st, PyObject *loop,
                                 PyObject *executor, PyObject *fn,
                                 PyObject *args, PyObject *kwargs,
                                 PyObject *request, PyObject **callp);
int bridge_wait_running_call(modstate *st, PyObject *call);
PyObject *import_attr(const char *module, const char *name, int optional);

/* mappers.c */
int mappers_init(PyObject *module, modstate *st);

/* http/ */
int http_init(PyObject *module, modstate *st);

/* websocket/ */
int websocket_init(PyObject *module, modstate *st);

#endif
