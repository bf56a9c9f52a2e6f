/* ThreadCall, what an executor thread runs: the call in a copy of the
 * caller's contextvars, with Pyramid's threadlocals pushed. */
#include "bridge/bridge.h"

typedef struct {
    PyObject_HEAD
    PyObject *ctx, *loop, *fn, *args, *kwargs, *request;
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
        /* Pyramid's threadlocals for this thread: get_current_request() */
        PyObject *tl = PyImport_ImportModule("pyramid.threadlocal");
        if (tl == NULL)
            goto done;
        manager = PyObject_GetAttrString(tl, "manager");
        Py_DECREF(tl);
        if (manager == NULL)
            goto done;
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
    return 0;
}

static PyType_Slot threadcall_slots[] = {
    {Py_tp_call, threadcall_call},
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
    return add_type(module, &st->ThreadCallType, &threadcall_spec, NULL);
}
