/* The run() of every pooled greenlet: takes jobs from the Spawn that
 * switched into it, runs them, parks between jobs. */
#include "bridge/bridge.h"

/* The contextvars context of the running greenlet (this one), or none
 * (NULL): what greenlet's gr_context setter does for a greenlet that runs,
 * whose context lives in the thread state until a switch saves it into
 * the greenlet; done here without the descriptor call and its type checks
 * (twice per job).  context_ver tells ContextVar caches it changed. */
static void
set_running_context(PyObject *ctx)
{
    PyThreadState *ts = PyThreadState_Get();
    PyObject *old = ts->context;
    ts->context = Py_XNewRef(ctx);
    ts->context_ver++;
    Py_XDECREF(old);
}

/* Switches to `to` (borrowed) and waits, idle, until pool_take gives this
 * greenlet a job.  Resumed with none, or with the one it ran (a switch around
 * BridgeGreenlet.switch, or a dead greenlet whose parent this is being
 * switched to), it passes the switch on to its parent and waits again, as a
 * dead greenlet would: it never runs anything without a job.  0, or -1 with
 * an exception when killed (or thrown into). */
static int
park_idle(BridgeGreenlet *me, PyGreenlet *to)
{
    me->idle = 1;
    PyObject *r = PyGreenlet_Switch(to, NULL, NULL);
    while (r != NULL && (me->job == NULL || me->job->func == NULL)) {
        PyObject *args = PyTuple_Check(r) ? Py_NewRef(r) : PyTuple_Pack(1, r);
        Py_DECREF(r);
        PyGreenlet *parent = args ? PyGreenlet_GetParent((PyGreenlet *)me)
                                  : NULL;
        r = parent ? PyGreenlet_Switch(parent, args, NULL) : NULL;
        if (args != NULL && parent == NULL && !PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError, "idle greenlet has no parent");
        Py_XDECREF(parent);
        Py_XDECREF(args);
    }
    me->idle = 0;
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
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
        int rc = park_idle(me, parent);
        Py_DECREF(parent);
        if (rc < 0)
            return NULL; /* killed before any job */
    }
    for (;;) {
        Spawn *job = me->job;
        if (job == NULL || job->func == NULL) { /* none, or one that ran */
            PyErr_SetString(PyExc_RuntimeError,
                            "bridge greenlet switched to without a job");
            return NULL;
        }
        PyObject *func = job->func, *args = job->args, *kwargs = job->kwargs;
        job->func = job->args = job->kwargs = NULL;
        PyObject *result = NULL, *error = NULL;
        set_running_context(job->context);
        result = PyObject_Call(func, args, kwargs);
        if (result == NULL)
            error = exc_take();
        Py_DECREF(func);
        Py_DECREF(args);
        Py_XDECREF(kwargs);
        /* clean greenlet-local state for the next job; a parked greenlet
         * keeps no request's contextvars alive */
        Py_CLEAR(((PyGreenlet *)me)->dict);
        set_running_context(NULL);
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
        if (park_idle(me, (PyGreenlet *)job->driver) < 0)
            return NULL; /* killed while idle: end this greenlet */
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
