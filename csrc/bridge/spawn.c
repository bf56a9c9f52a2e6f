/* Spawn: what spawn_greenlet() returns, a coroutine whose yields are the
 * raw yields of its job's greenlet; each step switches into the job and
 * back. */
#include "bridge/bridge.h"

/* The job whose greenlet this thread runs now: spawn_step sets it (with a
 * reference) around its switch into the child and restores it when the
 * switch returns, which is where every child switches back to.  A hint, not
 * a truth (user code may switch greenlets by hand), so it is checked
 * against getcurrent() before any suspension; a coroutine that completes
 * without suspending never pays for that check.  Per thread, since
 * greenlets are. */
_Thread_local Spawn *running_job;

static PyObject *
current_context(void)
{
    PyThreadState *ts = PyThreadState_Get();
    if (ts->context == NULL) {
        PyObject *c = PyContext_CopyCurrent(); /* creates the thread's one */
        if (c == NULL)
            return NULL;
        Py_DECREF(c);
    }
    return Py_NewRef(ts->context);
}

PyObject *
bridge_spawn_new(modstate *st, PyObject *func, PyObject *args,
                 PyObject *kwargs, PyObject *context)
{
    Spawn *self = PyObject_GC_New(Spawn, st->SpawnType);
    if (self == NULL)
        return NULL;
    self->func = Py_NewRef(func);
    self->args = args ? Py_NewRef(args) : PyTuple_New(0);
    self->kwargs = Py_XNewRef(kwargs);
    self->context = Py_XNewRef(context);
    self->child = NULL;
    self->driver = NULL;
    self->value = NULL;
    self->exc = NULL;
    self->pending = NULL;
    self->on_end = NULL;
    self->on_end_owner = self->on_end_task = NULL;
    self->loop = NULL;
    self->ended_first = 0;
    self->state = SPAWN_NEW;
    self->outcome = OUT_NONE;
    self->running = 0;
    self->waiting = 0;
    self->raw = 0;
    PyObject_GC_Track(self);
    if (self->args == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void
spawn_release_child(modstate *st, Spawn *self)
{
    BridgeGreenlet *g = self->child;
    if (g == NULL)
        return;
    self->child = NULL;
    g->job = NULL;
    /* a job ended by GreenletExit was a kill: its greenlet is not reused */
    int killed = self->outcome == OUT_RAISED && self->exc != NULL &&
                 PyErr_GivenExceptionMatches(self->exc, st->GreenletExit);
    if (!killed && PyGreenlet_ACTIVE((PyGreenlet *)g))
        pool_give(st, g);
    else
        Py_DECREF(g);
}

/* asyncio.isfuture(obj): 1, 0, or -1 with an error set */
int
is_future(modstate *st, PyObject *obj)
{
    PyObject *blocking;
    if (PyObject_GetOptionalAttr((PyObject *)Py_TYPE(obj), st->str_blocking,
                                 &blocking) < 0)
        return -1;
    if (blocking == NULL)
        return 0;
    Py_DECREF(blocking);
    if (PyObject_GetOptionalAttr(obj, st->str_blocking, &blocking) < 0)
        return -1;
    int fut = blocking != NULL && blocking != Py_None;
    Py_XDECREF(blocking);
    return fut;
}

/* Resumes a job suspended in a switch of its own to the driver: the switch
 * returns `value` (nothing for None), or raises `exc` (stolen). */
static PyObject *
raw_resume(Spawn *self, PyObject *value, PyObject *exc)
{
    PyGreenlet *child = (PyGreenlet *)self->child;
    Py_CLEAR(self->value);
    Py_CLEAR(self->exc);
    if (exc != NULL) {
        PyObject *tb = PyException_GetTraceback(exc);
        PyObject *r = PyGreenlet_Throw(child, (PyObject *)Py_TYPE(exc), exc,
                                       tb);
        Py_XDECREF(tb);
        Py_DECREF(exc);
        return r;
    }
    if (value == Py_None)
        return PyGreenlet_Switch(child, NULL, NULL);
    PyObject *args = PyTuple_Pack(1, value);
    if (args == NULL)
        return NULL;
    PyObject *r = PyGreenlet_Switch(child, args, NULL);
    Py_DECREF(args);
    return r;
}

/* The job ended: its on_end hook, once (exc borrowed, none set). */
static void
spawn_tell_end(Spawn *self, PyObject *exc)
{
    bridge_on_end on_end = self->on_end;
    if (on_end == NULL)
        return;
    PyObject *owner = self->on_end_owner, *task = self->on_end_task;
    self->on_end = NULL;
    self->on_end_owner = self->on_end_task = NULL;
    on_end(owner, task, exc);
    Py_DECREF(owner);
    Py_DECREF(task);
}

int
bridge_spawn_returned(PyObject *spawn)
{
    Spawn *self = (Spawn *)spawn;
    return self->state == SPAWN_DONE && self->outcome == OUT_RETURNED;
}

void
bridge_spawn_on_end(PyObject *spawn, bridge_on_end on_end, PyObject *owner,
                    PyObject *task)
{
    Spawn *self = (Spawn *)spawn;
    self->on_end = on_end;
    Py_XSETREF(self->on_end_owner, Py_NewRef(owner));
    Py_XSETREF(self->on_end_task, Py_NewRef(task));
}

void
bridge_spawn_set_loop(PyObject *spawn, PyObject *loop)
{
    Py_XSETREF(((Spawn *)spawn)->loop, Py_NewRef(loop));
}

PyObject *
bridge_job_loop(modstate *st)
{
    if (running_job != NULL && running_job->loop != NULL)
        return Py_NewRef(running_job->loop);
    return PyObject_CallNoArgs(st->get_running_loop);
}

/* One step of the job: send `value` (borrowed) or throw `exc` (stolen). */
static PySendResult
spawn_step(Spawn *self, PyObject *value, PyObject *exc, PyObject **result)
{
    modstate *st = state_of_type(Py_TYPE(self));
    *result = NULL;
    if (self->running) {
        Py_XDECREF(exc);
        PyErr_SetString(PyExc_ValueError, "coroutine already executing");
        return PYGEN_ERROR;
    }
    if (self->state == SPAWN_DONE) {
        if (self->ended_first) {
            /* its Task, made before bridge_spawn_first, takes over a job
             * that has ended: the Task ends too (thrown into: with that) */
            self->ended_first = 0;
            if (exc != NULL) {
                exc_restore(exc);
                return PYGEN_ERROR;
            }
            *result = Py_NewRef(Py_None);
            return PYGEN_RETURN;
        }
        Py_XDECREF(exc);
        PyErr_SetString(PyExc_RuntimeError,
                        "cannot reuse already awaited coroutine");
        return PYGEN_ERROR;
    }
    if (self->pending != NULL) {
        /* a Task took over after bridge_spawn_first: it sees that yield */
        if (exc == NULL && value == Py_None) {
            *result = self->pending;
            self->pending = NULL;
            return PYGEN_NEXT;
        }
        Py_CLEAR(self->pending);
    }
    if (self->state == SPAWN_NEW) {
        if (exc != NULL) {
            self->state = SPAWN_DONE;
            Py_CLEAR(self->func);
            Py_CLEAR(self->args);
            Py_CLEAR(self->kwargs);
            exc_restore(exc);
            return PYGEN_ERROR;
        }
        if (value != Py_None) {
            PyErr_SetString(PyExc_TypeError,
                            "can't send non-None value to a just-started "
                            "coroutine");
            return PYGEN_ERROR;
        }
        BridgeGreenlet *g = pool_take(st);
        if (g == NULL)
            return PYGEN_ERROR;
        /* the job runs in the driver's context (the Task's): greenlet lets
         * only a running greenlet set its own, so worker() does that */
        if (self->context == NULL &&
            (self->context = current_context()) == NULL) {
            pool_give(st, g);
            return PYGEN_ERROR;
        }
        g->job = self;
        self->child = g;
        self->state = SPAWN_RUNNING;
    }

    if (self->raw && self->outcome != OUT_NONE) {
        /* While it waited in a switch of its own (0.4's protocol), where
         * nothing of ours is on its stack to refuse it, the job was resumed
         * by another greenlet (one that ended into it, or a switch around
         * BridgeGreenlet.switch) and went on: it has reported since.  Take
         * it as it is now; never switch into a greenlet whose job is over. */
        self->raw = 0;
        if (self->outcome != OUT_YIELDED) {
            Py_XDECREF(exc); /* too late: it is over */
            self->waiting = 0;
            goto report;
        }
        if (exc == NULL) {
            /* it waits for a coroutine now: that is what the driver awaits
             * (what it sent was for the switch, which is past) */
            *result = self->value ? self->value : Py_NewRef(Py_None);
            self->value = NULL;
            return PYGEN_NEXT;
        }
        /* else throw exc where it waits now */
    }

    PyObject *cur = (PyObject *)PyGreenlet_GetCurrent();
    if (cur == NULL) {
        Py_XDECREF(exc);
        return PYGEN_ERROR;
    }
    if (cur != self->driver) {
        /* the child returns to its driver when killed, as greenlets do; a
         * pooled child usually has that parent already */
        PyGreenlet *parent = PyGreenlet_GetParent((PyGreenlet *)self->child);
        int rc = 0;
        if (parent != (PyGreenlet *)cur)
            rc = PyGreenlet_SetParent((PyGreenlet *)self->child,
                                      (PyGreenlet *)cur);
        Py_XDECREF(parent);
        if (rc < 0) {
            Py_DECREF(cur);
            Py_XDECREF(exc);
            return PYGEN_ERROR;
        }
        Py_XSETREF(self->driver, cur);
    }
    else {
        Py_DECREF(cur);
    }

    /* the slot owns a reference to what it points to */
    Spawn *outer = running_job;
    running_job = (Spawn *)Py_NewRef(self);
    self->outcome = OUT_NONE;
    self->running = 1;
    self->waiting = 0;
    PyObject *r;
    if (self->raw) {
        /* resume the job's own switch to its driver, as 0.4's
         * run_in_greenlet did with back.switch() */
        self->raw = 0;
        r = raw_resume(self, value, exc);
    }
    else {
        Py_XSETREF(self->value, exc ? NULL : Py_NewRef(value));
        Py_XSETREF(self->exc, exc);
        r = PyGreenlet_Switch((PyGreenlet *)self->child, NULL, NULL);
    }
    self->running = 0;
    Py_XSETREF(running_job, outer);
    if (r != NULL && self->outcome == OUT_NONE && self->child != NULL &&
        PyGreenlet_ACTIVE((PyGreenlet *)self->child)) {
        /* the job switched to its driver by hand: with a future, that is
         * 0.4's protocol (plain code switching a run_in_greenlet task up
         * to the driver, which awaits it); its driver resumes it when the
         * future is done, as for any suspension */
        int fut = is_future(st, r);
        if (fut > 0 &&
            PyObject_SetAttr(r, st->str_blocking, Py_True) == 0) {
            self->raw = 1;
            self->waiting = 1;
            *result = r;
            return PYGEN_NEXT;
        }
        if (fut != 0) {
            Py_SETREF(r, NULL); /* error set: the job cannot go on */
        }
    }
    if (r == NULL && self->outcome == OUT_RAISED &&
        PyErr_ExceptionMatches(st->GreenletExit)) {
        /* a killed job: the child ended, handing GreenletExit to us */
        PyErr_Clear();
    }
    else if (r == NULL || self->outcome == OUT_NONE) {
        /* the child came back without reporting (the switch failed, or
         * user code switched here by hand): it cannot be trusted again */
        BridgeGreenlet *g = self->child;
        self->child = NULL;
        g->job = NULL;
        Py_DECREF(g);
        if (r == NULL) {
            Py_XSETREF(self->exc, exc_take());
        }
        else {
            PyErr_Format(PyExc_RuntimeError,
                         "bridge greenlet switched back without reporting: "
                         "plain code in spawn_greenlet switched to its "
                         "driver with %R, which is not a future (to wait for "
                         "a coroutine there, call it synchronized)", r);
            Py_DECREF(r);
            Py_XSETREF(self->exc, exc_take());
        }
        self->outcome = OUT_RAISED;
    }
    else {
        Py_XDECREF(r);
    }
report:
    switch (self->outcome) {
    case OUT_YIELDED:
        *result = self->value;
        self->value = NULL;
        if (*result == NULL)
            *result = Py_NewRef(Py_None);
        return PYGEN_NEXT;
    case OUT_RETURNED:
        self->state = SPAWN_DONE;
        spawn_release_child(st, self);
        *result = self->value;
        self->value = NULL;
        Py_CLEAR(self->driver);
        spawn_tell_end(self, NULL);
        return PYGEN_RETURN;
    default:
        self->state = SPAWN_DONE;
        spawn_release_child(st, self);
        Py_CLEAR(self->driver);
        exc = self->exc;
        self->exc = NULL;
        if (exc == NULL) {
            PyErr_SetString(PyExc_SystemError, "greenlet job lost its error");
            exc = exc_take();
        }
        else {
            exc = stop_iteration_to_runtime_error(exc);
        }
        spawn_tell_end(self, exc);
        exc_restore(exc);
        return PYGEN_ERROR;
    }
}

PySendResult
bridge_spawn_first(PyObject *spawn, PyObject **result)
{
    Spawn *self = (Spawn *)spawn;
    PySendResult r = spawn_step(self, Py_None, NULL, result);
    if (r == PYGEN_NEXT)
        self->pending = Py_NewRef(*result);
    else
        self->ended_first = 1;
    return r;
}

static PySendResult
spawn_am_send(PyObject *self, PyObject *arg, PyObject **result)
{
    return spawn_step((Spawn *)self, arg, NULL, result);
}

static PyObject *
spawn_throw(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *exc = exception_from_throw_args(args, nargs);
    if (exc == NULL)
        return NULL;
    PyObject *result;
    PySendResult r = spawn_step((Spawn *)self, NULL, exc, &result);
    return send_result_to_python(r, result);
}

/* close(): GeneratorExit into the job, as for a native coroutine. */
static int
spawn_do_close(Spawn *self)
{
    if (self->state != SPAWN_RUNNING) {
        if (self->state == SPAWN_NEW) {
            self->state = SPAWN_DONE;
            Py_CLEAR(self->func);
            Py_CLEAR(self->args);
            Py_CLEAR(self->kwargs);
        }
        return 0;
    }
    PyObject *exc = PyObject_CallNoArgs(PyExc_GeneratorExit);
    if (exc == NULL)
        return -1;
    PyObject *result;
    PySendResult r = spawn_step(self, NULL, exc, &result);
    if (r == PYGEN_NEXT) {
        Py_DECREF(result);
        PyErr_SetString(PyExc_RuntimeError, "coroutine ignored GeneratorExit");
        return -1;
    }
    if (r == PYGEN_RETURN) {
        Py_DECREF(result);
        return 0;
    }
    if (PyErr_ExceptionMatches(PyExc_GeneratorExit) ||
        PyErr_ExceptionMatches(PyExc_StopIteration)) {
        PyErr_Clear();
        return 0;
    }
    return -1;
}

static PyObject *
spawn_close(PyObject *self, PyObject *noargs)
{
    if (spawn_do_close((Spawn *)self) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static void
spawn_finalize(PyObject *self)
{
    Spawn *sp = (Spawn *)self;
    if (sp->state != SPAWN_RUNNING)
        return;
    PyObject *saved = PyErr_Occurred() ? exc_take() : NULL;
    if (spawn_do_close(sp) < 0)
        PyErr_WriteUnraisable(self);
    if (sp->state == SPAWN_RUNNING && sp->child != NULL) {
        /* the job would not end: orphan its greenlet, it can no longer see
         * this Spawn, and let greenlet kill it */
        BridgeGreenlet *g = sp->child;
        sp->child = NULL;
        g->job = NULL;
        sp->state = SPAWN_DONE;
        Py_DECREF(g);
    }
    if (saved != NULL)
        exc_restore(saved);
}

static int
spawn_traverse(PyObject *op, visitproc visit, void *arg)
{
    Spawn *self = (Spawn *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(self->func);
    Py_VISIT(self->args);
    Py_VISIT(self->kwargs);
    Py_VISIT(self->context);
    Py_VISIT((PyObject *)self->child);
    Py_VISIT(self->driver);
    Py_VISIT(self->value);
    Py_VISIT(self->exc);
    Py_VISIT(self->pending);
    Py_VISIT(self->on_end_owner);
    Py_VISIT(self->on_end_task);
    Py_VISIT(self->loop);
    return 0;
}

static int
spawn_clear(PyObject *op)
{
    Spawn *self = (Spawn *)op;
    Py_CLEAR(self->func);
    Py_CLEAR(self->args);
    Py_CLEAR(self->kwargs);
    Py_CLEAR(self->context);
    if (self->child != NULL) {
        self->child->job = NULL;
        Py_CLEAR(self->child);
    }
    Py_CLEAR(self->driver);
    Py_CLEAR(self->value);
    Py_CLEAR(self->exc);
    Py_CLEAR(self->pending);
    self->on_end = NULL;
    Py_CLEAR(self->on_end_owner);
    Py_CLEAR(self->on_end_task);
    Py_CLEAR(self->loop);
    return 0;
}

static void
spawn_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    if (PyObject_CallFinalizerFromDealloc(op) < 0)
        return; /* resurrected */
    PyObject_GC_UnTrack(op);
    spawn_clear(op);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyObject *
spawn_get_name(PyObject *self, void *closure)
{
    Spawn *sp = (Spawn *)self;
    if (sp->func != NULL) {
        PyObject *name = PyObject_GetAttrString(sp->func, "__qualname__");
        if (name != NULL)
            return name;
        PyErr_Clear();
    }
    return PyUnicode_FromString("spawn_greenlet");
}

static PyObject *
spawn_get_running(PyObject *self, void *closure)
{
    return PyBool_FromLong(((Spawn *)self)->running);
}

static PyMethodDef spawn_methods[] = {
    {"send", coro_send, METH_O, "send(value): resume the greenlet's job."},
    {"throw", (PyCFunction)(void (*)(void))spawn_throw, METH_FASTCALL,
     "throw(exc): raise exc where the job is suspended."},
    {"close", spawn_close, METH_NOARGS, "close(): raise GeneratorExit in the job."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef spawn_getset[] = {
    {"__name__", spawn_get_name, NULL, NULL, NULL},
    {"__qualname__", spawn_get_name, NULL, NULL, NULL},
    {"cr_running", spawn_get_running, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot spawn_slots[] = {
    {Py_am_await, coro_return_self},
    {Py_am_send, spawn_am_send},
    {Py_tp_iter, coro_return_self},
    {Py_tp_iternext, coro_iternext},
    {Py_tp_methods, spawn_methods},
    {Py_tp_getset, spawn_getset},
    {Py_tp_traverse, spawn_traverse},
    {Py_tp_clear, spawn_clear},
    {Py_tp_finalize, spawn_finalize},
    {Py_tp_dealloc, spawn_dealloc},
    {Py_tp_doc, "What spawn_greenlet() returns: a coroutine running a plain "
                "function in a pooled greenlet."},
    {0, NULL},
};

static PyType_Spec spawn_spec = {
    .name = "aiopyramid._core.GreenletSpawn",
    .basicsize = sizeof(Spawn),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = spawn_slots,
};

static PyObject *
spawn_greenlet(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
               PyObject *kwnames)
{
    modstate *st = state_of_module(module);
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError,
                        "spawn_greenlet() missing the function to run");
        return NULL;
    }
    PyObject *pargs, *kwargs;
    if (vectorcall_args_to_tuple_dict(args + 1, nargs - 1, kwnames, &pargs,
                                      &kwargs) < 0)
        return NULL;
    PyObject *r = bridge_spawn_new(st, args[0], pargs, kwargs, NULL);
    Py_DECREF(pargs);
    Py_XDECREF(kwargs);
    return r;
}

static PyMethodDef spawn_module_methods[] = {
    {"spawn_greenlet", (PyCFunction)(void (*)(void))spawn_greenlet,
     METH_FASTCALL | METH_KEYWORDS,
     "spawn_greenlet(func, *args, **kwargs)\n--\n\n"
     "Coroutine: run func in a pooled greenlet, where synchronized coroutines "
     "can be called like plain functions; return its result."},
    {NULL, NULL, 0, NULL},
};

int
bridge_spawn_init(PyObject *module, modstate *st)
{
    if (bridge_import_greenlet() < 0)
        return -1;
    if (add_type(module, &st->SpawnType, &spawn_spec, NULL) < 0)
        return -1;
    return PyModule_AddFunctions(module, spawn_module_methods);
}
