/* The run() of every pooled greenlet: takes jobs from the Spawn that
 * switched into it, runs them, parks between jobs. */
#include "bridge/bridge.h"

static int
set_greenlet_context(modstate *st, PyObject *g, PyObject *ctx)
{
    PyObject *d = st->gr_context_descr;
    return Py_TYPE(d)->tp_descr_set(d, g, ctx);
}

static PyObject *
worker(PyObject *module, PyObject *unused)
{
    modstate *st = state_of_module(module);
    PyObject *cur = (PyObject *)PyGreenlet_GetCurrent();
    if (cur == NULL)
        return NULL;
    Py_DECREF(cur);
    BridgeGreenlet *me = (BridgeGreenlet *)cur;
    if (me->job == NULL) {
        /* started by start_deep(): park until the first job */
        PyGreenlet *parent = PyGreenlet_GetParent((PyGreenlet *)me);
        if (parent == NULL)
            return NULL;
        PyObject *r = PyGreenlet_Switch(parent, NULL, NULL);
        Py_DECREF(parent);
        if (r == NULL)
            return NULL; /* killed before any job */
        Py_DECREF(r);
    }
    for (;;) {
        Spawn *job = me->job;
        if (job == NULL) {
            PyErr_SetString(PyExc_RuntimeError,
                            "bridge greenlet switched to without a job");
            return NULL;
        }
        PyObject *func = job->func, *args = job->args, *kwargs = job->kwargs;
        job->func = job->args = job->kwargs = NULL;
        PyObject *result = NULL, *error = NULL;
        if (set_greenlet_context(st, cur, job->context) == 0)
            result = PyObject_Call(func, args, kwargs);
        if (result == NULL)
            error = exc_take();
        Py_DECREF(func);
        Py_DECREF(args);
        Py_XDECREF(kwargs);
        /* clean greenlet-local state for the next job; a parked greenlet
         * keeps no request's contextvars alive */
        Py_CLEAR(((PyGreenlet *)me)->dict);
        if (set_greenlet_context(st, cur, Py_None) < 0)
            PyErr_WriteUnraisable(cur);
        job = me->job; /* NULL when the Spawn gave up on this job */
        if (job == NULL) {
            Py_XDECREF(result);
            if (error != NULL)
                exc_restore(error);
            else
                PyErr_SetString(PyExc_RuntimeError, "orphaned bridge job");
            return NULL;
        }
        int killed = 0;
        if (result != NULL) {
            job->outcome = OUT_RETURNED;
            Py_XSETREF(job->value, result);
        }
        else {
            killed = PyErr_GivenExceptionMatches(error, st->GreenletExit);
            job->outcome = OUT_RAISED;
            Py_XSETREF(job->exc, error);
        }
        if (killed) {
            /* greenlet returns it to the parent, which is the driver */
            PyObject *exc = Py_NewRef(job->exc);
            exc_restore(exc);
            return NULL;
        }
        PyObject *r = PyGreenlet_Switch((PyGreenlet *)job->driver, NULL, NULL);
        if (r == NULL)
            return NULL; /* killed while idle: end this greenlet */
        Py_DECREF(r);
    }
}

static PyMethodDef worker_def = {"_bridge_worker", worker, METH_NOARGS, NULL};

int
bridge_worker_init(PyObject *module, modstate *st)
{
    if (bridge_import_greenlet() < 0)
        return -1;
    st->worker = PyCFunction_NewEx(&worker_def, module, NULL);
    return st->worker == NULL ? -1 : 0;
}
