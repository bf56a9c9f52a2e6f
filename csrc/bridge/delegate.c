/* Delegate: a coroutine object around another awaitable, or around a call
 * that makes one (coroutine(), use_executor), and run_in_greenlet. */
#include "bridge/bridge.h"

Delegate *
delegate_new(modstate *st, int kind)
{
    Delegate *d = PyObject_GC_New(Delegate, st->DelegateType);
    if (d == NULL)
        return NULL;
    d->state = DL_NEW;
    d->kind = kind;
    d->running = 0;
    d->it = d->func = d->args = d->kwargs = NULL;
    d->executor = d->future = d->back = NULL;
    PyObject_GC_Track(d);
    return d;
}

/* Wraps any awaitable so asyncio.iscoroutine() accepts it. */
PyObject *
as_coroutine(modstate *st, PyObject *aw)
{
    if (PyCoro_CheckExact(aw) || Py_TYPE(aw) == st->SpawnType ||
        Py_TYPE(aw) == st->DelegateType)
        return Py_NewRef(aw);
    PyObject *it = awaitable_iter(aw);
    if (it == NULL)
        return NULL;
    Delegate *d = delegate_new(st, DL_ITER);
    if (d == NULL) {
        Py_DECREF(it);
        return NULL;
    }
    d->it = it;
    return (PyObject *)d;
}

static PyObject *
delegate_start(modstate *st, Delegate *self)
{
    PyObject *started;
    switch (self->kind) {
    case DL_CALL:
        started = PyObject_Call(self->func, self->args, self->kwargs);
        break;
    case DL_EXECUTOR: {
        PyObject *loop = running_loop(st);
        if (loop == NULL)
            return NULL;
        if (loop == Py_None) {
            Py_DECREF(loop);
            PyErr_SetString(PyExc_RuntimeError,
                            "a use_executor coroutine must be awaited on a "
                            "running event loop");
            return NULL;
        }
        started = bridge_run_in_executor(st, loop, self->executor,
                                         self->func, self->args,
                                         self->kwargs, NULL, NULL);
        Py_DECREF(loop);
        break;
    }
    default:
        PyErr_SetString(PyExc_SystemError, "delegate has nothing to start");
        return NULL;
    }
    Py_CLEAR(self->func);
    Py_CLEAR(self->args);
    Py_CLEAR(self->kwargs);
    Py_CLEAR(self->executor);
    return started;
}

/* run_in_greenlet's end: report to the future, then always switch back,
 * as the original's `finally: back.switch()` did. */
static PySendResult
delegate_report(modstate *st, Delegate *self, PySendResult sr,
                PyObject **result)
{
    PyObject *future = self->future, *back = self->back;
    self->future = self->back = NULL;
    PyObject *r;
    if (sr == PYGEN_RETURN) {
        r = PyObject_CallMethodOneArg(future, st->str_set_result, *result);
        Py_CLEAR(*result);
    }
    else {
        PyObject *exc = exc_take();
        if (PyErr_GivenExceptionMatches(exc, st->CancelledError))
            r = PyObject_CallMethod(future, "cancel", NULL);
        else
            r = PyObject_CallMethodOneArg(future, st->str_set_exception, exc);
        Py_DECREF(exc);
    }
    Py_DECREF(future);
    PyObject *report_error = r == NULL ? exc_take() : NULL;
    Py_XDECREF(r);
    if (Py_TYPE(back) == st->BridgeGreenletType &&
        (((BridgeGreenlet *)back)->job == NULL ||
         ((BridgeGreenlet *)back)->job->waiting)) {
        /* a job's greenlet waiting for its driver (0.4's protocol under
         * spawn_greenlet: it switched this task up to the driver): the
         * driver resumes it once this task is done.  With no job, the one
         * that started this task is over (cancelled, say): its greenlet is
         * idle in the pool */
        r = Py_NewRef(Py_None);
    }
    else {
        r = PyGreenlet_Switch((PyGreenlet *)back, NULL, NULL);
    }
    Py_DECREF(back);
    if (report_error != NULL) {
        Py_XDECREF(r);
        exc_restore(report_error);
        return PYGEN_ERROR;
    }
    if (r == NULL)
        return PYGEN_ERROR;
    *result = r;
    return PYGEN_RETURN;
}

static PySendResult delegate_step_body(Delegate *self, PyObject *value,
                                       PyObject *exc, PyObject **result);

/* No re-entry (a send from inside the coroutine it drives, or from inside
 * the function it starts), and the Delegate lives through its step. */
static PySendResult
delegate_step(Delegate *self, PyObject *value, PyObject *exc, PyObject **result)
{
    if (self->running) {
        Py_XDECREF(exc);
        *result = NULL;
        PyErr_SetString(PyExc_ValueError, "coroutine already executing");
        return PYGEN_ERROR;
    }
    self->running = 1;
    Py_INCREF(self);
    PySendResult sr = delegate_step_body(self, value, exc, result);
    self->running = 0;
    Py_DECREF(self);
    return sr;
}

static PySendResult
delegate_step_body(Delegate *self, PyObject *value, PyObject *exc,
                   PyObject **result)
{
    modstate *st = state_of_type(Py_TYPE(self));
    PySendResult sr;
    *result = NULL;
    if (self->state == DL_DONE) {
        Py_XDECREF(exc);
        PyErr_SetString(PyExc_RuntimeError,
                        "cannot reuse already awaited coroutine");
        return PYGEN_ERROR;
    }
    if (self->state == DL_NEW) {
        if (exc == NULL && value != Py_None) {
            PyErr_SetString(PyExc_TypeError,
                            "can't send non-None value to a just-started "
                            "coroutine");
            return PYGEN_ERROR;
        }
        self->state = DL_RUNNING;
        if (exc != NULL) {
            exc_restore(exc);
            sr = PYGEN_ERROR;
            goto finished;
        }
        if (self->it == NULL) {
            PyObject *started = delegate_start(st, self);
            if (started == NULL) {
                exc_restore(stop_iteration_to_runtime_error(exc_take()));
                sr = PYGEN_ERROR;
                goto finished;
            }
            if (!is_awaitable(started)) {
                *result = started;
                sr = PYGEN_RETURN;
                goto finished;
            }
            self->it = awaitable_iter(started);
            Py_DECREF(started);
            if (self->it == NULL) {
                sr = PYGEN_ERROR;
                goto finished;
            }
        }
    }
    PyObject *it = Py_NewRef(self->it);
    if (exc != NULL)
        sr = iter_throw(st, it, exc, result);
    else
        sr = PyIter_Send(it, value, result);
    Py_DECREF(it);
    if (sr == PYGEN_NEXT)
        return sr;
finished:
    self->state = DL_DONE;
    Py_CLEAR(self->it);
    if (self->future != NULL)
        sr = delegate_report(st, self, sr, result);
    return sr;
}

static PySendResult
delegate_am_send(PyObject *self, PyObject *arg, PyObject **result)
{
    return delegate_step((Delegate *)self, arg, NULL, result);
}

static PyObject *
delegate_throw(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *exc = exception_from_throw_args(args, nargs);
    if (exc == NULL)
        return NULL;
    PyObject *result;
    PySendResult r = delegate_step((Delegate *)self, NULL, exc, &result);
    return send_result_to_python(r, result);
}

static PyObject *
delegate_close(PyObject *op, PyObject *noargs)
{
    Delegate *self = (Delegate *)op;
    modstate *st = state_of_type(Py_TYPE(op));
    if (self->running) {
        PyErr_SetString(PyExc_ValueError, "coroutine already executing");
        return NULL;
    }
    if (self->state == DL_RUNNING && self->it != NULL) {
        PyObject *meth;
        if (PyObject_GetOptionalAttr(self->it, st->str_close, &meth) < 0)
            return NULL;
        if (meth != NULL) {
            PyObject *r = PyObject_CallNoArgs(meth);
            Py_DECREF(meth);
            if (r == NULL)
                return NULL;
            Py_DECREF(r);
        }
    }
    self->state = DL_DONE;
    Py_CLEAR(self->it);
    Py_RETURN_NONE;
}

static int
delegate_traverse(PyObject *op, visitproc visit, void *arg)
{
    Delegate *self = (Delegate *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(self->it);
    Py_VISIT(self->func);
    Py_VISIT(self->args);
    Py_VISIT(self->kwargs);
    Py_VISIT(self->executor);
    Py_VISIT(self->future);
    Py_VISIT(self->back);
    return 0;
}

static int
delegate_clear(PyObject *op)
{
    Delegate *self = (Delegate *)op;
    Py_CLEAR(self->it);
    Py_CLEAR(self->func);
    Py_CLEAR(self->args);
    Py_CLEAR(self->kwargs);
    Py_CLEAR(self->executor);
    Py_CLEAR(self->future);
    Py_CLEAR(self->back);
    return 0;
}

static PyMethodDef delegate_methods[] = {
    {"send", coro_send, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))delegate_throw, METH_FASTCALL, NULL},
    {"close", delegate_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot delegate_slots[] = {
    {Py_am_await, coro_return_self},
    {Py_am_send, delegate_am_send},
    {Py_tp_iter, coro_return_self},
    {Py_tp_iternext, coro_iternext},
    {Py_tp_methods, delegate_methods},
    {Py_tp_traverse, delegate_traverse},
    {Py_tp_clear, delegate_clear},
    {Py_tp_dealloc, gc_dealloc},
    {Py_tp_doc, "A coroutine that awaits another awaitable."},
    {0, NULL},
};

static PyType_Spec delegate_spec = {
    .name = "aiopyramid._core.Delegate",
    .basicsize = sizeof(Delegate),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = delegate_slots,
};

static PyObject *
run_in_greenlet(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                PyObject *kwnames)
{
    modstate *st = state_of_module(module);
    if (nargs < 3) {
        PyErr_SetString(PyExc_TypeError,
                        "run_in_greenlet(back, future, func, *args, **kwargs) "
                        "needs back, future and func");
        return NULL;
    }
    if (!PyGreenlet_Check(args[0])) {
        PyErr_Format(PyExc_TypeError,
                     "run_in_greenlet() expects a greenlet to switch back to, "
                     "got %R", args[0]);
        return NULL;
    }
    Delegate *d = delegate_new(st, DL_CALL);
    if (d == NULL)
        return NULL;
    d->back = Py_NewRef(args[0]);
    d->future = Py_NewRef(args[1]);
    d->func = Py_NewRef(args[2]);
    if (vectorcall_args_to_tuple_dict(args + 3, nargs - 3, kwnames, &d->args,
                                      &d->kwargs) < 0)
        goto error;
    return (PyObject *)d;
error:
    Py_DECREF(d);
    return NULL;
}

static PyMethodDef delegate_module_methods[] = {
    {"run_in_greenlet", (PyCFunction)(void (*)(void))run_in_greenlet,
     METH_FASTCALL | METH_KEYWORDS,
     "run_in_greenlet(back, future, func, *args, **kwargs)\n--\n\n"
     "Coroutine: await func(*args, **kwargs), set its result or exception on "
     "future, then switch back to greenlet back."},
    {NULL, NULL, 0, NULL},
};

int
bridge_delegate_init(PyObject *module, modstate *st)
{
    if (bridge_import_greenlet() < 0)
        return -1;
    if (add_type(module, &st->DelegateType, &delegate_spec, NULL) < 0)
        return -1;
    return PyModule_AddFunctions(module, delegate_module_methods);
}
