/* ThreadCall, what an executor thread runs: the call in a copy of the
 * caller's contextvars, with Pyramid's threadlocals pushed.
 *
 * Handed to an aiopyramid Executor (aiopyramid/_executor.py: the gunicorn
 * worker's default executor, the aiopyramid.executor_threads pool), a
 * ThreadCall is itself the pool's work item: no concurrent Future, no
 * asyncio.wrap_future chain.  The thread runs it, then hands the outcome to
 * the loop with one call_soon_threadsafe, and the loop sets it on the
 * asyncio future the request greenlet waits on.  Any other executor gets
 * it through loop.run_in_executor. */
#include "bridge/bridge.h"

/* interned strings of this file, in st->executor_strs */
#define EXECUTOR_STRINGS(X)                                                  \
    X(CALL_SOON_THREADSAFE, "call_soon_threadsafe")                          \
    X(CREATE_FUTURE, "create_future")                                        \
    X(SUBMIT_CALL, "_submit_call")                                           \
    X(DEFAULT_EXECUTOR, "_default_executor")                                 \
    X(CANCELLED, "cancelled")                                                \
    X(DONE, "done")                                                          \
    X(CANCEL, "cancel")

enum {
#define EX_STR_ENUM(name, text) ES_##name,
    EXECUTOR_STRINGS(EX_STR_ENUM)
#undef EX_STR_ENUM
    ES_COUNT
};

#define ESTR(st, name) PyTuple_GET_ITEM((st)->executor_strs, ES_##name)

typedef struct {
    PyObject_HEAD
    PyObject *ctx, *loop, *fn, *args, *kwargs, *request;
    PyObject *future;          /* the loop's future, as a pool's work item */
    PyObject *result, *exc;    /* the outcome, on its way to the loop */
    int cancel;                /* the pool cancelled the work item */
} ThreadCall;

static PyObject *
threadcall_call(PyObject *op, PyObject *args, PyObject *kwargs)
{
    ThreadCall *self = (ThreadCall *)op;
    modstate *st = state_of_type(Py_TYPE(op));
    PyObject *manager = NULL, *pushed = NULL, *token = NULL, *r = NULL;
    if (PyContext_Enter(self->ctx) < 0)
        return NULL;
    token = PyContextVar_Set(st->request_loop, self->loop);
    if (token == NULL)
        goto done;
    if (self->request != NULL && self->request != Py_None) {
        /* Pyramid's threadlocals for this thread: get_current_request();
         * the manager is one object for the process (aiopyramid changes
         * its class in place), looked up once */
        manager = Py_XNewRef(st->threadlocal_manager);
        if (manager == NULL) {
            PyObject *tl = PyImport_ImportModule("pyramid.threadlocal");
            if (tl == NULL)
                goto done;
            manager = PyObject_GetAttrString(tl, "manager");
            Py_DECREF(tl);
            if (manager == NULL)
                goto done;
            Py_XSETREF(st->threadlocal_manager, Py_NewRef(manager));
        }
        PyObject *registry = PyObject_GetAttr(self->request, st->str_registry);
        if (registry == NULL)
            goto done;
        PyObject *info = Py_BuildValue("{OOOO}", st->str_registry, registry,
                                       st->str_request, self->request);
        Py_DECREF(registry);
        if (info == NULL)
            goto done;
        pushed = PyObject_CallMethodOneArg(manager, st->str_push, info);
        Py_DECREF(info);
        if (pushed == NULL)
            goto done;
    }
    r = PyObject_Call(self->fn, self->args, self->kwargs);
    if (pushed != NULL) {
        PyObject *exc = r == NULL ? exc_take() : NULL;
        PyObject *p = PyObject_CallMethodNoArgs(manager, st->str_pop);
        if (p == NULL)
            Py_CLEAR(r);
        Py_XDECREF(p);
        if (exc != NULL)
            exc_restore(exc);
    }
done:
    Py_XDECREF(pushed);
    Py_XDECREF(manager);
    Py_XDECREF(token);
    if (PyContext_Exit(self->ctx) < 0)
        Py_CLEAR(r);
    return r;
}

/* On the loop (call_soon_threadsafe): the outcome onto the future, unless
 * the request gave up on it (cancelled: the client left). */
static PyObject *
threadcall_complete(PyObject *op, PyObject *unused)
{
    ThreadCall *self = (ThreadCall *)op;
    modstate *st = state_of_type(Py_TYPE(op));
    PyObject *fut = self->future, *r;
    if (fut == NULL)
        Py_RETURN_NONE;
    r = PyObject_CallMethodNoArgs(fut, ESTR(st, DONE));
    if (r == NULL)
        return NULL;
    int done = r == Py_True;
    Py_DECREF(r);
    if (done) {
        Py_CLEAR(self->result);
        Py_CLEAR(self->exc);
        Py_RETURN_NONE;
    }
    if (self->cancel)
        r = PyObject_CallMethodNoArgs(fut, ESTR(st, CANCEL));
    else if (self->exc != NULL)
        r = PyObject_CallMethodOneArg(fut, st->str_set_exception, self->exc);
    else
        r = PyObject_CallMethodOneArg(fut, st->str_set_result,
                                      self->result ? self->result : Py_None);
    Py_CLEAR(self->result);
    Py_CLEAR(self->exc);
    if (r == NULL) {
        /* an exception asyncio refuses to carry (StopIteration): the
         * request still gets an error, never a wait for ever */
        PyObject *err = exc_take();
        PyObject *e = PyObject_CallFunction(PyExc_RuntimeError, "sO",
                                            "the view raised", err);
        Py_XDECREF(err);
        if (e == NULL)
            return NULL;
        r = PyObject_CallMethodOneArg(fut, st->str_set_exception, e);
        Py_DECREF(e);
        if (r == NULL)
            return NULL;
    }
    Py_DECREF(r);
    Py_RETURN_NONE;
}

static PyMethodDef complete_def = {"_complete", threadcall_complete,
                                   METH_NOARGS, NULL};

/* From any thread: threadcall_complete on the loop.  A loop that is gone
 * takes nothing (its requests are gone with it). */
static void
threadcall_hand_back(ThreadCall *self)
{
    modstate *st = state_of_type(Py_TYPE(self));
    PyObject *cb = PyCFunction_New(&complete_def, (PyObject *)self);
    PyObject *r = cb == NULL ? NULL : PyObject_CallMethodOneArg(
        self->loop, ESTR(st, CALL_SOON_THREADSAFE), cb);
    Py_XDECREF(cb);
    if (r == NULL)
        PyErr_Clear(); /* a closed loop */
    Py_XDECREF(r);
}

/* run(): the work item's job, in the pool's thread. */
static PyObject *
threadcall_run(PyObject *op, PyObject *unused)
{
    ThreadCall *self = (ThreadCall *)op;
    modstate *st = state_of_type(Py_TYPE(op));
    if (self->future == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "ThreadCall.run() without a future");
        return NULL;
    }
    /* a request that gave up while this waited in the queue (the client
     * left): its view is not run, as a cancelled concurrent Future's */
    PyObject *c = PyObject_CallMethodNoArgs(self->future, ESTR(st, CANCELLED));
    if (c == NULL)
        PyErr_Clear();
    int skip = c == Py_True;
    Py_XDECREF(c);
    if (!skip) {
        PyObject *r = threadcall_call(op, NULL, NULL);
        if (r == NULL)
            Py_XSETREF(self->exc, exc_take());
        else
            Py_XSETREF(self->result, r);
    }
    threadcall_hand_back(self);
    Py_RETURN_NONE;
}

/* The pool's shutdown(cancel_futures=True) drains its queue and calls
 * item.future.cancel(); a broken pool calls item.future.set_exception(e):
 * the item is its own "future" for those two. */
static PyObject *
threadcall_cancel(PyObject *op, PyObject *unused)
{
    ThreadCall *self = (ThreadCall *)op;
    self->cancel = 1;
    threadcall_hand_back(self);
    Py_RETURN_TRUE;
}

static PyObject *
threadcall_set_exception(PyObject *op, PyObject *exc)
{
    ThreadCall *self = (ThreadCall *)op;
    Py_XSETREF(self->exc, Py_NewRef(exc));
    threadcall_hand_back(self);
    Py_RETURN_NONE;
}

static PyObject *
threadcall_get_future(PyObject *op, void *closure)
{
    return Py_NewRef(op);
}

static PyMethodDef threadcall_methods[] = {
    {"run", threadcall_run, METH_NOARGS, NULL},
    {"cancel", threadcall_cancel, METH_NOARGS, NULL},
    {"set_exception", threadcall_set_exception, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef threadcall_getset[] = {
    {"future", threadcall_get_future, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static int
threadcall_traverse(PyObject *op, visitproc visit, void *arg)
{
    ThreadCall *self = (ThreadCall *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(self->ctx);
    Py_VISIT(self->loop);
    Py_VISIT(self->fn);
    Py_VISIT(self->args);
    Py_VISIT(self->kwargs);
    Py_VISIT(self->request);
    Py_VISIT(self->future);
    Py_VISIT(self->result);
    Py_VISIT(self->exc);
    return 0;
}

static int
threadcall_clear(PyObject *op)
{
    ThreadCall *self = (ThreadCall *)op;
    Py_CLEAR(self->ctx);
    Py_CLEAR(self->loop);
    Py_CLEAR(self->fn);
    Py_CLEAR(self->args);
    Py_CLEAR(self->kwargs);
    Py_CLEAR(self->request);
    Py_CLEAR(self->future);
    Py_CLEAR(self->result);
    Py_CLEAR(self->exc);
    return 0;
}

static PyType_Slot threadcall_slots[] = {
    {Py_tp_call, threadcall_call},
    {Py_tp_methods, threadcall_methods},
    {Py_tp_getset, threadcall_getset},
    {Py_tp_traverse, threadcall_traverse},
    {Py_tp_clear, threadcall_clear},
    {Py_tp_dealloc, gc_dealloc},
    {0, NULL},
};

static PyType_Spec threadcall_spec = {
    .name = "aiopyramid._core.ThreadCall",
    .basicsize = sizeof(ThreadCall),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = threadcall_slots,
};

PyObject *
bridge_run_in_executor(modstate *st, PyObject *loop, PyObject *executor,
                       PyObject *fn, PyObject *args, PyObject *kwargs,
                       PyObject *request)
{
    ThreadCall *call = PyObject_GC_New(ThreadCall, st->ThreadCallType);
    if (call == NULL)
        return NULL;
    call->ctx = PyContext_CopyCurrent();
    call->loop = Py_NewRef(loop);
    call->fn = Py_NewRef(fn);
    call->args = Py_NewRef(args);
    call->kwargs = Py_XNewRef(kwargs);
    call->request = Py_XNewRef(request);
    call->future = call->result = call->exc = NULL;
    call->cancel = 0;
    PyObject_GC_Track(call);
    if (call->ctx == NULL) {
        Py_DECREF(call);
        return NULL;
    }
    /* from a coroutine whose caller's thread waits for it: that thread
     * runs the job (aiopyramid/_executor.py) */
    PyObject *waiter;
    if (PyContextVar_Get(st->waiting_thread, NULL, &waiter) < 0) {
        Py_DECREF(call);
        return NULL;
    }
    if (waiter != NULL) {
        PyObject *fut = PyObject_CallMethod(waiter, "run_in_executor", "OO",
                                            loop, (PyObject *)call);
        Py_DECREF(waiter);
        if (fut != Py_None) {
            Py_DECREF(call);
            return fut;
        }
        Py_DECREF(fut);
    }
#if PY_VERSION_HEX < 0x030E0000
    /* an aiopyramid Executor (the loop's default one: asyncio's loops keep
     * it in _default_executor, and so does the gunicorn worker's uvloop):
     * the call is the pool's work item, its outcome handed back by one
     * call_soon_threadsafe (3.14 changed the pool's work items) */
    PyObject *ex = executor ? Py_NewRef(executor) : NULL;
    if (ex == NULL &&
        PyObject_GetOptionalAttr(loop, ESTR(st, DEFAULT_EXECUTOR), &ex) < 0) {
        Py_DECREF(call);
        return NULL;
    }
    PyObject *submit = NULL;
    if (ex != NULL && ex != Py_None &&
        PyObject_GetOptionalAttr(ex, ESTR(st, SUBMIT_CALL), &submit) < 0) {
        Py_DECREF(ex);
        Py_DECREF(call);
        return NULL;
    }
    Py_XDECREF(ex);
    if (submit != NULL) {
        call->future = PyObject_CallMethodNoArgs(loop, ESTR(st, CREATE_FUTURE));
        PyObject *r = call->future == NULL ? NULL
                                           : PyObject_CallOneArg(submit, (PyObject *)call);
        Py_DECREF(submit);
        PyObject *fut = r == NULL ? NULL : Py_NewRef(call->future);
        Py_XDECREF(r);
        Py_DECREF(call);
        return fut;
    }
#endif
    PyObject *margs[] = {loop, executor ? executor : Py_None, (PyObject *)call};
    PyObject *fut = PyObject_VectorcallMethod(
        st->str_run_in_executor, margs, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET,
        NULL);
    Py_DECREF(call);
    return fut;
}

int
bridge_executor_init(PyObject *module, modstate *st)
{
    st->executor_strs = PyTuple_New(ES_COUNT);
    if (st->executor_strs == NULL)
        return -1;
    static const char *const texts[] = {
#define EX_STR_TEXT(name, text) text,
        EXECUTOR_STRINGS(EX_STR_TEXT)
#undef EX_STR_TEXT
    };
    for (Py_ssize_t i = 0; i < ES_COUNT; i++) {
        PyObject *s = PyUnicode_InternFromString(texts[i]);
        if (s == NULL)
            return -1;
        PyTuple_SET_ITEM(st->executor_strs, i, s);
    }
    return add_type(module, &st->ThreadCallType, &threadcall_spec, NULL);
}
