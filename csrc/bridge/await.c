/* Awaiting inside a greenlet: drive a coroutine in the calling greenlet,
 * suspending it up to its driver whenever the coroutine yields; and, with
 * no greenlet to suspend, running the coroutine elsewhere. */
#include "bridge/bridge.h"

int
bridge_can_suspend(modstate *st)
{
    PyObject *cur = (PyObject *)PyGreenlet_GetCurrent();
    if (cur == NULL) {
        PyErr_Clear();
        return 0;
    }
    int ok;
    if (Py_TYPE(cur) == st->BridgeGreenletType &&
        ((BridgeGreenlet *)cur)->job != NULL)
        ok = 1;
    else if (PyGreenlet_MAIN((PyGreenlet *)cur))
        ok = 0;
    else {
        PyObject *loop = running_loop(st);
        ok = loop != NULL && loop != Py_None;
        Py_XDECREF(loop);
        PyErr_Clear();
    }
    Py_DECREF(cur);
    return ok;
}

PyObject *
awaitable_iter(PyObject *aw)
{
    if (PyCoro_CheckExact(aw) || PyGen_CheckExact(aw))
        return Py_NewRef(aw);
    PyAsyncMethods *am = Py_TYPE(aw)->tp_as_async;
    if (am != NULL && am->am_await != NULL) {
        PyObject *it = am->am_await(aw);
        if (it != NULL && !PyIter_Check(it)) {
            PyErr_Format(PyExc_TypeError,
                         "__await__() returned non-iterator of type '%.100s'",
                         Py_TYPE(it)->tp_name);
            Py_CLEAR(it);
        }
        return it;
    }
    if (PyGen_Check(aw))
        return Py_NewRef(aw);
    PyErr_Format(PyExc_TypeError,
                 "object %.100s can't be used in 'await' expression",
                 Py_TYPE(aw)->tp_name);
    return NULL;
}

/* Throws exc (stolen) into iterator `it` as yield from does: GeneratorExit
 * closes it instead, and when `it` has no throw() the exception is raised
 * right here. */
PySendResult
iter_throw(modstate *st, PyObject *it, PyObject *exc, PyObject **result)
{
    *result = NULL;
    PyObject *meth;
    if (PyErr_GivenExceptionMatches(exc, PyExc_GeneratorExit)) {
        /* PEP 380: GeneratorExit closes the sub-iterator (an error from its
         * close() wins), then is raised here */
        if (PyObject_GetOptionalAttr(it, st->str_close, &meth) < 0) {
            Py_DECREF(exc);
            return PYGEN_ERROR;
        }
        if (meth != NULL) {
            PyObject *r = PyObject_CallNoArgs(meth);
            Py_DECREF(meth);
            if (r == NULL) {
                Py_DECREF(exc);
                return PYGEN_ERROR;
            }
            Py_DECREF(r);
        }
        exc_restore(exc);
        return PYGEN_ERROR;
    }
    if (PyObject_GetOptionalAttr(it, st->str_throw, &meth) < 0) {
        Py_DECREF(exc);
        return PYGEN_ERROR;
    }
    if (meth == NULL) {
        exc_restore(exc);
        return PYGEN_ERROR;
    }
    PyObject *r = PyObject_CallOneArg(meth, exc);
    Py_DECREF(meth);
    Py_DECREF(exc);
    if (r != NULL) {
        *result = r;
        return PYGEN_NEXT;
    }
    if (PyErr_ExceptionMatches(PyExc_StopIteration)) {
        PyObject *stop = exc_take();
        PyObject *v = PyObject_GetAttrString(stop, "value");
        Py_DECREF(stop);
        if (v == NULL)
            return PYGEN_ERROR;
        *result = v;
        return PYGEN_RETURN;
    }
    return PYGEN_ERROR;
}

/* Foreign driver (uWSGI): resume this greenlet from a loop callback. */
/* called as a done-callback (with the future) or by call_soon (with
 * nothing) */
static PyObject *
resume_greenlet(PyObject *g, PyObject *unused)
{
    /* A greenlet that user code made inside a job, and which the loop
     * drives from now on: it must end into (or suspend up to) the loop's
     * side, never into the greenlet it was made in (the job's, or another
     * plain greenlet in the job), which went on when it first suspended and
     * may itself be waiting, for its driver or for a coroutine. */
    PyGreenlet *cur = PyGreenlet_GetCurrent();
    if (cur == NULL)
        return NULL;
    PyGreenlet *p = PyGreenlet_GetParent((PyGreenlet *)g);
    if (p != cur && PyGreenlet_SetParent((PyGreenlet *)g, cur) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_ValueError)) {
            Py_XDECREF(p);
            Py_DECREF(cur);
            return NULL;
        }
        PyErr_Clear(); /* a cycle (the loop runs below g): leave it be */
    }
    Py_XDECREF(p);
    Py_DECREF(cur);
    PyObject *r = PyGreenlet_Switch((PyGreenlet *)g, NULL, NULL);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_NONE;
}

static PyMethodDef resume_def = {"resume_greenlet", resume_greenlet,
                                 METH_VARARGS, NULL};

static int
arrange_foreign_resume(modstate *st, PyObject *yielded, PyObject *cur)
{
    PyObject *cb = PyCFunction_New(&resume_def, cur);
    if (cb == NULL)
        return -1;
    PyObject *r = NULL;
    if (yielded == Py_None) {
        PyObject *loop = running_loop(st);
        if (loop != NULL)
            r = PyObject_CallMethodOneArg(loop, st->str_call_soon, cb);
        Py_XDECREF(loop);
    }
    else {
        PyObject *blocking;
        if (PyObject_GetOptionalAttr(yielded, st->str_blocking, &blocking) < 0)
            goto done;
        if (blocking == NULL || blocking != Py_True) {
            Py_XDECREF(blocking);
            PyErr_Format(PyExc_RuntimeError,
                         "coroutine yielded %R, which is not a future: use "
                         "'await' or 'yield from', not a bare 'yield'",
                         yielded);
            goto done;
        }
        Py_DECREF(blocking);
        if (PyObject_SetAttr(yielded, st->str_blocking, Py_False) < 0)
            goto done;
        r = PyObject_CallMethodOneArg(yielded, st->str_add_done_callback, cb);
    }
done:
    Py_DECREF(cb);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* Reports (as unraisable) a resume that refuse_foreign_resume() could not
 * stop; `r` (stolen) is what it brought, NULL for an exception. */
static void
refused_resume(BridgeGreenlet *me, PyObject *r)
{
    PyObject *arrived = r == NULL ? exc_take() : NULL;
    Py_XDECREF(r);
    PyErr_SetString(PyExc_RuntimeError,
                    "a request greenlet waiting for its driver was resumed "
                    "by another greenlet (one that ended into it, or a "
                    "switch around BridgeGreenlet.switch): ignored, the job "
                    "goes on waiting");
    if (arrived != NULL) {
        PyObject *err = exc_take();
        PyException_SetContext(err, arrived);
        exc_restore(err);
    }
    PyErr_WriteUnraisable((PyObject *)me);
}

/* Suspends the calling greenlet with `yielded` (stolen) until resumed.
 * Returns the value sent (new ref), or NULL with *thrown set to what is to
 * be thrown into the coroutine. */
static PyObject *
suspend(modstate *st, BridgeGreenlet *me, PyObject *cur, PyObject *yielded,
        PyObject **thrown)
{
    *thrown = NULL;
    if (me != NULL) {
        Spawn *job = me->job;
        if (job == NULL) {
            /* orphaned: the Spawn is gone, GreenletExit is on its way out
             * and the coroutine tried to wait again while cleaning up */
            Py_DECREF(yielded);
            PyErr_SetString(PyExc_RuntimeError,
                            "coroutine ignored GreenletExit");
            return NULL;
        }
        job->outcome = OUT_YIELDED;
        Py_XSETREF(job->value, yielded);
        job->waiting = 1;
        PyObject *r = PyGreenlet_Switch((PyGreenlet *)job->driver, NULL, NULL);
        job = me->job;
        while (job != NULL && job->waiting) {
            /* resumed, but not by spawn_step: a child greenlet ending into
             * its parent, or a switch that went around our switch(); the
             * job keeps waiting, and control goes back to the driver's
             * side, where it came from */
            refused_resume(me, r);
            r = PyGreenlet_Switch((PyGreenlet *)job->driver, NULL, NULL);
            job = me->job;
        }
        if (r == NULL) {
            *thrown = exc_take();
            return NULL;
        }
        Py_DECREF(r);
        if (job == NULL) {
            PyErr_SetNone(st->GreenletExit);
            *thrown = exc_take();
            return NULL;
        }
        if (job->exc != NULL) {
            *thrown = job->exc;
            job->exc = NULL;
            return NULL;
        }
        PyObject *v = job->value;
        job->value = NULL;
        return v ? v : Py_NewRef(Py_None);
    }
    /* foreign driver: its main greenlet ignores what we switch to it.  A
     * greenlet we marked (aiopyramid/uwsgi: uWSGI's request greenlet) waits
     * through the wait(yielded) we gave it, which returns what to send; any
     * other (one user code made in a job) through a loop callback. */
    PyObject *wait;
    if (PyObject_GetOptionalAttr(cur, st->str_foreign_wait, &wait) < 0) {
        Py_DECREF(yielded);
        *thrown = exc_take();
        return NULL;
    }
    if (wait != NULL) {
        PyObject *sent = PyObject_CallOneArg(wait, yielded);
        Py_DECREF(wait);
        Py_DECREF(yielded);
        if (sent == NULL)
            *thrown = exc_take();
        return sent;
    }
    int rc = arrange_foreign_resume(st, yielded, cur);
    Py_DECREF(yielded);
    if (rc < 0) {
        *thrown = exc_take();
        return NULL;
    }
    PyGreenlet *parent = PyGreenlet_GetParent((PyGreenlet *)cur);
    if (parent == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError, "greenlet has no parent");
        *thrown = exc_take();
        return NULL;
    }
    PyObject *r = PyGreenlet_Switch(parent, NULL, NULL);
    Py_DECREF(parent);
    if (r == NULL) {
        *thrown = exc_take();
        return NULL;
    }
    Py_DECREF(r);
    return Py_NewRef(Py_None);
}

/* Drives iterator `it` to its end, suspending `me` (or, with me NULL, the
 * foreign greenlet `cur`) whenever it yields; `pending` (stolen) is a yield
 * already made, to suspend with first. */
static PyObject *
drive(modstate *st, PyObject *it, BridgeGreenlet *me, PyObject *cur,
      PyObject *pending)
{
    PyObject *value, *thrown = NULL, *r;
    if (pending != NULL)
        value = suspend(st, me, cur, pending, &thrown);
    else
        value = Py_NewRef(Py_None);
    for (;;) {
        if (value == NULL && thrown == NULL)
            return NULL; /* nowhere to wait: error set */
        PySendResult sr;
        if (thrown != NULL) {
            sr = iter_throw(st, it, thrown, &r);
            thrown = NULL;
        }
        else {
            sr = PyIter_Send(it, value, &r);
            Py_DECREF(value);
        }
        if (sr == PYGEN_RETURN)
            return r;
        if (sr == PYGEN_ERROR)
            return NULL;
        value = suspend(st, me, cur, r, &thrown);
    }
}

static PyObject *scope_error(modstate *st, PyObject *aw, PyObject *name);

/* The common case: this thread runs a bridge job (`hint`), presumably in
 * the calling greenlet.  Start the coroutine at once; only if it suspends,
 * check where we are. */
static PyObject *
drive_optimistic(modstate *st, PyObject *it, Spawn *hint)
{
    BridgeGreenlet *me = hint->child;
    PyObject *r;
    PySendResult sr = PyIter_Send(it, Py_None, &r);
    if (sr != PYGEN_NEXT)
        return sr == PYGEN_RETURN ? r : NULL;
    PyObject *cur = (PyObject *)PyGreenlet_GetCurrent();
    if (cur == NULL) {
        Py_DECREF(r);
        return NULL;
    }
    Py_DECREF(cur); /* borrowed: it is running */
    if (cur != (PyObject *)me || me->job != hint) {
        /* the hint was stale: user code switched greenlets by hand */
        if (Py_TYPE(cur) == st->BridgeGreenletType &&
            ((BridgeGreenlet *)cur)->job != NULL) {
            me = (BridgeGreenlet *)cur;
        }
        else if (!PyGreenlet_MAIN((PyGreenlet *)cur) && bridge_can_suspend(st)) {
            return drive(st, it, NULL, cur, r);
        }
        else {
            Py_DECREF(r);
            return scope_error(st, it, NULL);
        }
    }
    return drive(st, it, me, cur, r);
}

PyObject *
bridge_await(modstate *st, PyObject *awaitable)
{
    if (running_job != NULL && running_job->child != NULL) {
        PyObject *it = awaitable_iter(awaitable);
        if (it == NULL)
            return NULL;
        PyObject *r = drive_optimistic(st, it, running_job);
        Py_DECREF(it);
        return r;
    }
    /* borrowed, as everywhere a greenlet suspends: a strong reference on
     * its own stack would keep an abandoned greenlet alive for ever */
    PyObject *cur = (PyObject *)PyGreenlet_GetCurrent();
    if (cur == NULL)
        return NULL;
    Py_DECREF(cur);
    BridgeGreenlet *me = NULL;
    if (Py_TYPE(cur) == st->BridgeGreenletType &&
        ((BridgeGreenlet *)cur)->job != NULL) {
        me = (BridgeGreenlet *)cur;
    }
    else if (PyGreenlet_MAIN((PyGreenlet *)cur) || !bridge_can_suspend(st)) {
        return bridge_run_outside(st, awaitable, NULL);
    }
    PyObject *it = awaitable_iter(awaitable);
    if (it == NULL)
        return NULL;
    PyObject *r = drive(st, it, me, cur, NULL);
    Py_DECREF(it);
    return r;
}

static void
close_quietly(modstate *st, PyObject *aw)
{
    PyObject *meth;
    PyObject *saved = PyErr_Occurred() ? exc_take() : NULL;
    if (PyObject_GetOptionalAttr(aw, st->str_close, &meth) > 0) {
        PyObject *r = PyObject_CallNoArgs(meth);
        Py_XDECREF(r);
        Py_DECREF(meth);
    }
    PyErr_Clear();
    if (saved != NULL)
        exc_restore(saved);
}

static PyObject *
scope_error(modstate *st, PyObject *aw, PyObject *name)
{
    close_quietly(st, aw);
    PyErr_Format(st->ScopeError,
                 "%R was called on the event loop itself, where no greenlet "
                 "can be suspended: await the coroutine directly instead of "
                 "calling it synchronized, or run the plain code that calls "
                 "it with 'await aiopyramid.helpers.spawn_greenlet(func, "
                 "*args)'",
                 name ? name : aw);
    return NULL;
}

/* The job of the request greenlet that a fresh loop drives, when plain
 * code with no loop calls a coroutine: the coroutine runs in the greenlet,
 * so plain code it calls in turn can suspend it, as under a server. */
static PyObject *
await_in_job(PyObject *module, PyObject *aw)
{
    return bridge_await(state_of_module(module), aw);
}

static PyMethodDef await_in_job_def = {"await_in_job", await_in_job, METH_O,
                                       NULL};

PyObject *
bridge_run_outside(modstate *st, PyObject *aw, PyObject *name)
{
    PyObject *loop = running_loop(st);
    if (loop == NULL)
        return NULL;
    if (loop != Py_None) {
        Py_DECREF(loop);
        return scope_error(st, aw, name);
    }
    Py_DECREF(loop);
    PyObject *coro = as_coroutine(st, aw);
    if (coro == NULL)
        return NULL;
    PyObject *request_loop = NULL, *r = NULL;
    if (PyContextVar_Get(st->request_loop, NULL, &request_loop) < 0)
        goto done;
    if (request_loop != NULL) {
        /* an executor thread of a request: block only this thread, which
         * meanwhile runs the executor jobs the coroutine submits (else they
         * could queue behind the threads that wait for them) */
        PyObject *wait = import_attr("aiopyramid._executor", "wait_in_thread",
                                     0);
        if (wait != NULL) {
            r = PyObject_CallFunctionObjArgs(wait, coro, request_loop, NULL);
            Py_DECREF(wait);
        }
    }
    else {
        /* no loop at all (a unit test, a script): run it on a fresh one,
         * in a request greenlet driven by a Task, as a server would */
        PyObject *job = PyCFunction_NewEx(
            &await_in_job_def, PyType_GetModule(st->SpawnType), NULL);
        PyObject *args = job ? PyTuple_Pack(1, coro) : NULL;
        PyObject *spawn = args ? bridge_spawn_new(st, job, args, NULL, NULL)
                               : NULL;
        if (spawn != NULL)
            r = PyObject_CallOneArg(st->asyncio_run, spawn);
        Py_XDECREF(spawn);
        Py_XDECREF(args);
        Py_XDECREF(job);
    }
done:
    Py_XDECREF(request_loop);
    Py_DECREF(coro);
    return r;
}


static PyObject *
await_(PyObject *module, PyObject *aw)
{
    return bridge_await(state_of_module(module), aw);
}

static PyMethodDef await_methods[] = {
    {"await_", await_, METH_O,
     "await_(awaitable)\n--\n\n"
     "Await from plain code in a request greenlet (what synchronize does)."},
    {NULL, NULL, 0, NULL},
};

int
bridge_await_init(PyObject *module, modstate *st)
{
    if (bridge_import_greenlet() < 0)
        return -1;
    return PyModule_AddFunctions(module, await_methods);
}
