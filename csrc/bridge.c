/* The greenlet <-> asyncio bridge.
 *
 * spawn_greenlet(func) returns a Spawn: a coroutine whose yields are the raw
 * yields of func's greenlet.  Code in that greenlet drives coroutines itself
 * (bridge_await) and switches up to the Spawn's driver only to suspend, with
 * what the coroutine yielded; the driving Task sends or throws, and the Spawn
 * switches that back down.  A coroutine that never suspends costs no switch.
 *
 * Greenlets come from a per-thread pool: each runs worker(), which takes jobs
 * from the Spawn that switched into it and parks itself between jobs. */
#include "aiopyramid.h"
#include <greenlet/greenlet.h>
#include <alloca.h>
#include <pthread.h>
#include <stdint.h>

/* ------------------------------------------------------------------ */
/* BridgeGreenlet: greenlet with a pointer to its current job          */

typedef struct Spawn Spawn;

typedef struct {
    PyGreenlet base;
    Spawn *job;   /* borrowed: the Spawn outlives its job (see spawn_finalize) */
    int in_view;  /* driving a coroutine view or synchronized coroutine */
    int idle;     /* parked in the pool, or about to be: no job to resume */
} BridgeGreenlet;

static int
bgreenlet_traverse(PyObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    return PyGreenlet_Type.tp_traverse(self, visit, arg);
}

static void
bgreenlet_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyGreenlet_Type.tp_dealloc(self);
    Py_DECREF(tp);
}

/* Only a job's driver (spawn_step) may resume a greenlet that waits for it;
 * defined with Spawn below. */
static int refuse_foreign_resume(BridgeGreenlet *g);

static PyObject *
bgreenlet_switch(PyObject *self, PyObject *args, PyObject *kwargs)
{
    if (refuse_foreign_resume((BridgeGreenlet *)self) < 0)
        return NULL;
    return PyGreenlet_Switch((PyGreenlet *)self, args, kwargs);
}

static PyObject *
bgreenlet_throw(PyObject *self, PyObject *args)
{
    PyObject *typ = PyExc_GreenletExit, *val = NULL, *tb = NULL;
    if (!PyArg_UnpackTuple(args, "throw", 0, 3, &typ, &val, &tb))
        return NULL;
    if (refuse_foreign_resume((BridgeGreenlet *)self) < 0)
        return NULL;
    return PyGreenlet_Throw((PyGreenlet *)self, typ, val, tb);
}

static PyMethodDef bgreenlet_methods[] = {
    {"switch", (PyCFunction)(void (*)(void))bgreenlet_switch,
     METH_VARARGS | METH_KEYWORDS,
     "switch(*args, **kwargs): greenlet's switch, refused while the "
     "greenlet's job waits for its driver."},
    {"throw", bgreenlet_throw, METH_VARARGS,
     "throw([typ, [val, [tb]]]): greenlet's throw, refused while the "
     "greenlet's job waits for its driver."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot bgreenlet_slots[] = {
    {Py_tp_methods, bgreenlet_methods},
    {Py_tp_traverse, bgreenlet_traverse},
    {Py_tp_dealloc, bgreenlet_dealloc},
    {Py_tp_doc, "A pooled request greenlet of aiopyramid's bridge."},
    {0, NULL},
};

static PyType_Spec bgreenlet_spec = {
    .name = "aiopyramid._core.BridgeGreenlet",
    .basicsize = sizeof(BridgeGreenlet),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = bgreenlet_slots,
};

/* ------------------------------------------------------------------ */
/* Spawn                                                               */

enum { SPAWN_NEW, SPAWN_RUNNING, SPAWN_DONE };
enum { OUT_NONE, OUT_YIELDED, OUT_RETURNED, OUT_RAISED };

struct Spawn {
    PyObject_HEAD
    PyObject *func, *args, *kwargs; /* the job, until it starts */
    PyObject *context;              /* contextvars for the job, or NULL */
    BridgeGreenlet *child;          /* the greenlet running the job */
    PyObject *driver;               /* greenlet that sent last */
    PyObject *value;                /* down: sent value; up: yield or result */
    PyObject *exc;                  /* down: thrown; up: raised */
    PyObject *pending;              /* yielded by bridge_spawn_first, for the
                                       Task's first send(None) */
    int ended_first;                /* the job ended in bridge_spawn_first:
                                       the Task's first send returns None */
    int state, outcome;
    int running;                    /* inside a switch into the child */
    int waiting;                    /* the child waits for this Spawn's
                                       driver: only spawn_step resumes it */
    int raw;                        /* ...in a switch of its own to the
                                       driver with a future (0.4's
                                       run_in_greenlet protocol) */
};

static int
refuse_foreign_resume(BridgeGreenlet *g)
{
    if (g->idle) {
        PyErr_SetString(PyExc_RuntimeError,
                        "this greenlet is idle in aiopyramid's pool of "
                        "request greenlets: its job is over, and switching "
                        "to it or throwing into it is refused");
        return -1;
    }
    if (g->job == NULL || !g->job->waiting)
        return 0;
    PyErr_SetString(PyExc_RuntimeError,
                    "this greenlet runs an aiopyramid job that waits for a "
                    "coroutine: only its driver (the Task awaiting "
                    "spawn_greenlet) may resume it, when what it waits for "
                    "is done; switching to it or throwing into it from "
                    "elsewhere is refused (cancel the Task instead)");
    return -1;
}

/* The job whose greenlet this thread runs now: spawn_step sets it (with a
 * reference) around its switch into the child and restores it when the
 * switch returns, which is where every child switches back to.  A hint, not
 * a truth (user code may switch greenlets by hand), so it is checked
 * against getcurrent() before any suspension; a coroutine that completes
 * without suspending never pays for that check.  Per thread, since
 * greenlets are. */
static _Thread_local Spawn *running_job;

/* pool: a C stack of idle greenlets in a capsule in the thread's dict,
 * found again through a per-thread pointer */
static _Thread_local struct pool *thread_pool;

typedef struct pool {
    Py_ssize_t n, cap;
    PyObject *items[];
} pool_t;

static void
pool_capsule_free(PyObject *capsule)
{
    pool_t *p = PyCapsule_GetPointer(capsule, "aiopyramid.pool");
    if (p == NULL)
        return;
    if (thread_pool == p)
        thread_pool = NULL;
    while (p->n > 0)
        Py_DECREF(p->items[--p->n]);
    PyMem_Free(p);
}

static pool_t *
pool_get(modstate *st)
{
    if (thread_pool != NULL)
        return thread_pool;
    PyObject *d = PyThreadState_GetDict();
    if (d == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "no thread state dictionary");
        return NULL;
    }
    PyObject *cap = PyDict_GetItemWithError(d, st->str_pool_key);
    if (cap != NULL)
        return thread_pool = PyCapsule_GetPointer(cap, "aiopyramid.pool");
    if (PyErr_Occurred())
        return NULL;
    Py_ssize_t cap_n = st->pool_limit > 0 ? st->pool_limit : 1;
    pool_t *p = PyMem_Malloc(sizeof(pool_t) + cap_n * sizeof(PyObject *));
    if (p == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    p->n = 0;
    p->cap = cap_n;
    cap = PyCapsule_New(p, "aiopyramid.pool", pool_capsule_free);
    if (cap == NULL) {
        PyMem_Free(p);
        return NULL;
    }
    int rc = PyDict_SetItem(d, st->str_pool_key, cap);
    Py_DECREF(cap);
    return rc < 0 ? NULL : (thread_pool = p);
}

/* A greenlet's stack begins where it is first switched to.  Drivers (Task
 * steps, protocol callbacks) switch from about the same depth, so a greenlet
 * begun well below that depth never overlaps their frames, and greenlet
 * need not copy the driver's stack away and back on every switch.  So a new
 * greenlet is started, and parks at once, from STACK_HEADROOM below here. */
#define STACK_HEADROOM 16384

static __attribute__((noinline)) int
switch_in_once(PyObject *g)
{
    PyObject *r = PyGreenlet_Switch((PyGreenlet *)g, NULL, NULL);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static int
start_deep(PyObject *g)
{
    volatile char *headroom = alloca(STACK_HEADROOM);
    headroom[0] = 0;
    int rc = switch_in_once(g);
    headroom[STACK_HEADROOM - 1] = 0;
    return rc;
}

/* A fresh greenlet's stack begins STACK_HEADROOM below the caller's, on
 * this thread's one C stack, so nested spawns walk down it (a pooled
 * greenlet, begun higher up, costs none).  Before starting one, check what
 * is left against the thread's bounds, found once per thread, and keep
 * STACK_RESERVE (or an eighth of the stack, at most 1 MiB) for the code the
 * greenlet runs: running out is a RecursionError, never a jump past the
 * guard page. */
#define STACK_RESERVE 65536

static _Thread_local int stack_known;
static _Thread_local uintptr_t stack_low, stack_high;

static void
find_thread_stack(void)
{
    stack_known = 1;
#if defined(__linux__)
    pthread_attr_t attr;
    if (pthread_getattr_np(pthread_self(), &attr) != 0)
        return;
    void *addr;
    size_t size;
    if (pthread_attr_getstack(&attr, &addr, &size) == 0) {
        stack_low = (uintptr_t)addr; /* above the guard page */
        stack_high = stack_low + size;
    }
    pthread_attr_destroy(&attr);
#elif defined(__APPLE__)
    stack_high = (uintptr_t)pthread_get_stackaddr_np(pthread_self());
    stack_low = stack_high - pthread_get_stacksize_np(pthread_self());
#endif
}

static __attribute__((noinline)) int
check_stack_for_new_greenlet(void)
{
    if (!stack_known)
        find_thread_stack();
    uintptr_t sp = (uintptr_t)__builtin_frame_address(0);
    if (stack_low == 0 || sp <= stack_low || sp > stack_high)
        return 0; /* bounds unknown, or not on the thread's stack */
    size_t reserve = (stack_high - stack_low) / 8;
    if (reserve < STACK_RESERVE)
        reserve = STACK_RESERVE;
    if (reserve > 1048576)
        reserve = 1048576;
    if (sp - stack_low >= STACK_HEADROOM + reserve)
        return 0;
    PyErr_Format(PyExc_RecursionError,
                 "no C stack left for another greenlet in this thread (%zu "
                 "bytes left of %zu): spawn_greenlet nested too deep",
                 (size_t)(sp - stack_low), (size_t)(stack_high - stack_low));
    return -1;
}

static BridgeGreenlet *
pool_take(modstate *st)
{
    pool_t *p = pool_get(st);
    if (p == NULL)
        return NULL;
    while (p->n > 0) {
        PyObject *g = p->items[--p->n];
        if (PyGreenlet_ACTIVE((PyGreenlet *)g))
            return (BridgeGreenlet *)g;
        Py_DECREF(g); /* died parked: switched to by hand, say */
    }
    if (check_stack_for_new_greenlet() < 0)
        return NULL;
    PyObject *g = PyObject_CallOneArg((PyObject *)st->BridgeGreenletType,
                                      st->worker);
    if (g == NULL)
        return NULL;
    st->greenlets_created++;
    if (start_deep(g) < 0) {
        Py_DECREF(g);
        return NULL;
    }
    return (BridgeGreenlet *)g;
}

/* Steals g. */
static void
pool_give(modstate *st, BridgeGreenlet *g)
{
    PyObject *exc = PyErr_Occurred() ? exc_take() : NULL;
    pool_t *p = pool_get(st);
    if (p != NULL && p->n < p->cap && p->n < st->pool_limit) {
        p->items[p->n++] = (PyObject *)g;
        g = NULL;
    }
    else if (p == NULL) {
        PyErr_WriteUnraisable(NULL);
    }
    Py_XDECREF(g); /* an idle greenlet dies by GreenletExit at its park */
    if (exc != NULL)
        exc_restore(exc);
}

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

static int
set_greenlet_context(modstate *st, PyObject *g, PyObject *ctx)
{
    PyObject *d = st->gr_context_descr;
    return Py_TYPE(d)->tp_descr_set(d, g, ctx);
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

/* PEP 479: a StopIteration escaping a coroutine's body would read as its
 * return; raise RuntimeError from it instead.  Steals exc, returns the
 * exception to raise. */
static PyObject *
stop_iteration_to_runtime_error(PyObject *exc)
{
    if (!PyErr_GivenExceptionMatches(exc, PyExc_StopIteration) &&
        !PyErr_GivenExceptionMatches(exc, PyExc_StopAsyncIteration))
        return exc;
    PyObject *err = PyObject_CallFunction(
        PyExc_RuntimeError, "s",
        PyErr_GivenExceptionMatches(exc, PyExc_StopIteration)
            ? "coroutine raised StopIteration"
            : "coroutine raised StopAsyncIteration");
    if (err == NULL) {
        Py_DECREF(exc);
        return exc_take();
    }
    PyException_SetCause(err, Py_NewRef(exc));
    PyException_SetContext(err, exc);
    return err;
}

/* asyncio.isfuture(obj): 1, 0, or -1 with an error set */
static int
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
        g->in_view = 0;
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
        return PYGEN_RETURN;
    default:
        self->state = SPAWN_DONE;
        spawn_release_child(st, self);
        Py_CLEAR(self->driver);
        exc = self->exc;
        self->exc = NULL;
        if (exc == NULL)
            PyErr_SetString(PyExc_SystemError, "greenlet job lost its error");
        else
            exc_restore(stop_iteration_to_runtime_error(exc));
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

/* The Python-level protocol on top of a PySendResult. */
static PyObject *
send_result_to_python(PySendResult r, PyObject *result)
{
    if (r == PYGEN_NEXT)
        return result;
    if (r == PYGEN_RETURN) {
        if (result == Py_None) {
            PyErr_SetNone(PyExc_StopIteration);
        }
        else {
            /* an instance: PyErr_SetObject would take a tuple for args */
            PyObject *stop = PyObject_CallOneArg(PyExc_StopIteration, result);
            if (stop != NULL) {
                PyErr_SetObject(PyExc_StopIteration, stop);
                Py_DECREF(stop);
            }
        }
        Py_DECREF(result);
    }
    return NULL;
}

static PyObject *
spawn_send(PyObject *self, PyObject *arg)
{
    PyObject *result;
    PySendResult r = spawn_step((Spawn *)self, arg, NULL, &result);
    return send_result_to_python(r, result);
}

static PyObject *
spawn_iternext(PyObject *self)
{
    PyObject *result;
    PySendResult r = spawn_step((Spawn *)self, Py_None, NULL, &result);
    if (r == PYGEN_RETURN && result == Py_None) {
        Py_DECREF(result);
        return NULL; /* plain exhaustion */
    }
    return send_result_to_python(r, result);
}

/* throw(exc) / throw(type[, value[, tb]]) to an exception instance */
static PyObject *
exception_from_throw_args(PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 3) {
        PyErr_Format(PyExc_TypeError, "throw expected 1 to 3 arguments, got %zd",
                     nargs);
        return NULL;
    }
    PyObject *typ = args[0];
    PyObject *val = nargs > 1 ? args[1] : Py_None;
    PyObject *tb = nargs > 2 ? args[2] : Py_None;
    PyObject *exc;
    if (PyExceptionInstance_Check(typ)) {
        if (val != Py_None) {
            PyErr_SetString(PyExc_TypeError,
                            "instance exception may not have a separate value");
            return NULL;
        }
        exc = Py_NewRef(typ);
    }
    else if (PyExceptionClass_Check(typ)) {
        if (PyExceptionInstance_Check(val) &&
            PyObject_TypeCheck(val, (PyTypeObject *)typ))
            exc = Py_NewRef(val);
        else if (val == Py_None)
            exc = PyObject_CallNoArgs(typ);
        else if (PyTuple_Check(val))
            exc = PyObject_Call(typ, val, NULL);
        else
            exc = PyObject_CallOneArg(typ, val);
        if (exc == NULL)
            return NULL;
        if (!PyExceptionInstance_Check(exc)) {
            PyErr_Format(PyExc_TypeError,
                         "calling %R should have returned an instance of "
                         "BaseException, not %s",
                         typ, Py_TYPE(exc)->tp_name);
            Py_DECREF(exc);
            return NULL;
        }
    }
    else {
        PyErr_Format(PyExc_TypeError,
                     "exceptions must be classes or instances deriving from "
                     "BaseException, not %s", Py_TYPE(typ)->tp_name);
        return NULL;
    }
    if (tb != Py_None) {
        if (!PyTraceBack_Check(tb)) {
            Py_DECREF(exc);
            PyErr_SetString(PyExc_TypeError,
                            "throw() third argument must be a traceback object");
            return NULL;
        }
        PyException_SetTraceback(exc, tb);
    }
    return exc;
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
spawn_await(PyObject *self)
{
    return Py_NewRef(self);
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
    {"send", spawn_send, METH_O, "send(value): resume the greenlet's job."},
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
    {Py_am_await, spawn_await},
    {Py_am_send, spawn_am_send},
    {Py_tp_iter, spawn_await},
    {Py_tp_iternext, spawn_iternext},
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

/* ------------------------------------------------------------------ */
/* The pooled greenlets' run()                                          */

static BridgeGreenlet *
current_bridge(modstate *st)
{
    /* borrowed: a running greenlet stays alive while it runs */
    PyObject *cur = (PyObject *)PyGreenlet_GetCurrent();
    if (cur == NULL)
        return NULL;
    Py_DECREF(cur);
    return Py_TYPE(cur) == st->BridgeGreenletType ? (BridgeGreenlet *)cur
                                                  : NULL;
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
        me->in_view = 0;
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

/* ------------------------------------------------------------------ */
/* Driving a coroutine in the calling greenlet                         */

static PyObject *
running_loop(modstate *st)
{
    return PyObject_CallNoArgs(st->get_running_loop);
}

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

static PyObject *
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
static PySendResult
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
    /* foreign driver: its main greenlet ignores what we switch to it */
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
drive_optimistic(modstate *st, PyObject *it, Spawn *hint, int in_view)
{
    BridgeGreenlet *me = hint->child;
    int prev = me->in_view;
    me->in_view = in_view;
    PyObject *r;
    PySendResult sr = PyIter_Send(it, Py_None, &r);
    if (sr != PYGEN_NEXT) {
        me->in_view = prev;
        return sr == PYGEN_RETURN ? r : NULL;
    }
    PyObject *cur = (PyObject *)PyGreenlet_GetCurrent();
    if (cur == NULL) {
        Py_DECREF(r);
        me->in_view = prev;
        return NULL;
    }
    Py_DECREF(cur); /* borrowed: it is running */
    if (cur != (PyObject *)me || me->job != hint) {
        /* the hint was stale: user code switched greenlets by hand */
        me->in_view = prev;
        if (Py_TYPE(cur) == st->BridgeGreenletType &&
            ((BridgeGreenlet *)cur)->job != NULL) {
            me = (BridgeGreenlet *)cur;
            prev = me->in_view;
            me->in_view = in_view;
        }
        else if (!PyGreenlet_MAIN((PyGreenlet *)cur) && bridge_can_suspend(st)) {
            return drive(st, it, NULL, cur, r);
        }
        else {
            Py_DECREF(r);
            return scope_error(st, it, NULL);
        }
    }
    r = drive(st, it, me, cur, r);
    if (me->job != NULL)
        me->in_view = prev;
    return r;
}

PyObject *
bridge_await(modstate *st, PyObject *awaitable, int in_view)
{
    if (running_job != NULL && running_job->child != NULL) {
        PyObject *it = awaitable_iter(awaitable);
        if (it == NULL)
            return NULL;
        PyObject *r = drive_optimistic(st, it, running_job, in_view);
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
    int prev = 0;
    if (me != NULL) {
        prev = me->in_view;
        me->in_view = in_view;
    }
    PyObject *r = drive(st, it, me, cur, NULL);
    if (me != NULL && me->job != NULL)
        me->in_view = prev;
    Py_DECREF(it);
    return r;
}

/* ------------------------------------------------------------------ */
/* Delegate: a coroutine object around another awaitable               */

enum { DL_NEW, DL_RUNNING, DL_DONE };
enum { DL_ITER, DL_CALL, DL_EXECUTOR };

typedef struct {
    PyObject_HEAD
    int state, kind;
    int running;             /* inside a step: no re-entry */
    PyObject *it;            /* the awaitable's iterator, once running */
    PyObject *func, *args, *kwargs; /* DL_CALL, DL_EXECUTOR: what to start */
    PyObject *executor;      /* DL_EXECUTOR */
    PyObject *future, *back; /* run_in_greenlet: report to future, switch back */
} Delegate;

static Delegate *
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
static PyObject *
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
                                         self->kwargs, NULL);
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
delegate_send(PyObject *self, PyObject *arg)
{
    PyObject *result;
    PySendResult r = delegate_step((Delegate *)self, arg, NULL, &result);
    return send_result_to_python(r, result);
}

static PyObject *
delegate_iternext(PyObject *self)
{
    PyObject *result;
    PySendResult r = delegate_step((Delegate *)self, Py_None, NULL, &result);
    if (r == PYGEN_RETURN && result == Py_None) {
        Py_DECREF(result);
        return NULL;
    }
    return send_result_to_python(r, result);
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
    {"send", delegate_send, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))delegate_throw, METH_FASTCALL, NULL},
    {"close", delegate_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot delegate_slots[] = {
    {Py_am_await, spawn_await},
    {Py_am_send, delegate_am_send},
    {Py_tp_iter, spawn_await},
    {Py_tp_iternext, delegate_iternext},
    {Py_tp_methods, delegate_methods},
    {Py_tp_traverse, delegate_traverse},
    {Py_tp_clear, delegate_clear},
    {Py_tp_dealloc, gc_dealloc},
    {Py_tp_doc, "A coroutine that awaits another awaitable."},
    {0, NULL},
};

static PyType_Spec delegate_spec = {
    .name = "aiopyramid._core.Coroutine",
    .basicsize = sizeof(Delegate),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = delegate_slots,
};

/* ------------------------------------------------------------------ */
/* Running a coroutine from plain code with no greenlet to suspend     */

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
    return bridge_await(state_of_module(module), aw, 1);
}

static PyMethodDef await_in_job_def = {"await_in_job", await_in_job, METH_O,
                                       NULL};

static PyObject *import_attr(const char *module, const char *name,
                             int optional);

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

/* ------------------------------------------------------------------ */
/* Coroutine function detection                                         */

static int
has_marker(modstate *st, PyObject *obj)
{
    static const char *names[] = {"_is_coroutine", "_is_coroutine_marker"};
    PyObject *markers[] = {st->is_coroutine_marker, st->inspect_marker};
    for (int i = 0; i < 2; i++) {
        if (markers[i] == NULL)
            continue;
        PyObject *v;
        if (PyObject_GetOptionalAttrString(obj, names[i], &v) < 0)
            return -1;
        if (v != NULL) {
            int hit = v == markers[i];
            Py_DECREF(v);
            if (hit)
                return 1;
        }
    }
    return 0;
}

int
bridge_is_coroutine_function(modstate *st, PyObject *obj)
{
    if (Py_TYPE(obj) == st->CoroutineFunctionType)
        return 1;
    if (Py_TYPE(obj) == st->SynchronizedType)
        return 0;
    PyObject *f = obj;
    while (PyMethod_Check(f))
        f = PyMethod_GET_FUNCTION(f);
    if (PyFunction_Check(f)) {
        PyCodeObject *code = (PyCodeObject *)PyFunction_GET_CODE(f);
        if (code->co_flags & (CO_COROUTINE | CO_ITERABLE_COROUTINE))
            return 1;
        if (code->co_flags & CO_GENERATOR)
            return 1; /* a seed-style generator coroutine */
    }
    int m = has_marker(st, obj);
    if (m != 0)
        return m;
    if (f != obj && (m = has_marker(st, f)) != 0)
        return m;
    PyObject *r = PyObject_CallOneArg(st->iscoroutinefunction, obj);
    if (r == NULL)
        return -1;
    int truth = PyObject_IsTrue(r);
    Py_DECREF(r);
    return truth;
}

/* ------------------------------------------------------------------ */
/* Synchronized                                                         */

typedef struct {
    PyObject_HEAD
    PyObject *func;
    PyObject *dict;
    PyObject *weakreflist;
    vectorcallfunc vectorcall;
    int strict;
} Synchronized;

static PyObject *
sync_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf,
                PyObject *kwnames)
{
    Synchronized *self = (Synchronized *)op;
    modstate *st = state_of_type(Py_TYPE(op));
    PyObject *aw = PyObject_Vectorcall(self->func, args, nargsf, kwnames);
    if (aw == NULL || !is_awaitable(aw))
        return aw; /* a plain function's result, as is */
    PyObject *r;
    if (running_job != NULL || bridge_can_suspend(st)) {
        r = bridge_await(st, aw, 1);
        Py_DECREF(aw);
        return r;
    }
    if (!self->strict) {
        /* the original's strict=False: on the loop itself, hand the
         * coroutine back to the caller, to await; with no loop (an executor
         * thread, a script, a unit test) it runs to completion below, since
         * nothing there could await it */
        PyObject *loop = running_loop(st);
        if (loop == NULL) {
            Py_DECREF(aw);
            return NULL;
        }
        Py_DECREF(loop);
        if (loop != Py_None)
            return aw;
    }
    r = bridge_run_outside(st, aw, self->func);
    Py_DECREF(aw);
    return r;
}

static PyObject *
sync_descr_get(PyObject *self, PyObject *obj, PyObject *type)
{
    if (obj == NULL || obj == Py_None)
        return Py_NewRef(self);
    return PyMethod_New(self, obj);
}

static PyObject *
sync_repr(PyObject *op)
{
    return PyUnicode_FromFormat("<synchronized %R>", ((Synchronized *)op)->func);
}

static int
sync_traverse(PyObject *op, visitproc visit, void *arg)
{
    Synchronized *self = (Synchronized *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(self->func);
    Py_VISIT(self->dict);
    return 0;
}

static int
sync_clear(PyObject *op)
{
    Synchronized *self = (Synchronized *)op;
    Py_CLEAR(self->func);
    Py_CLEAR(self->dict);
    return 0;
}

static PyGetSetDef sync_dict_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef sync_members[] = {
    {"__dictoffset__", T_PYSSIZET, offsetof(Synchronized, dict), READONLY},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(Synchronized, weakreflist),
     READONLY},
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(Synchronized, vectorcall),
     READONLY},
    {"strict", T_INT, offsetof(Synchronized, strict), READONLY},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot sync_slots[] = {
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_descr_get, sync_descr_get},
    {Py_tp_repr, sync_repr},
    {Py_tp_members, sync_members},
    {Py_tp_getset, sync_dict_getset},
    {Py_tp_traverse, sync_traverse},
    {Py_tp_clear, sync_clear},
    {Py_tp_dealloc, gc_dealloc},
    {Py_tp_doc, "A coroutine function made callable from plain code."},
    {0, NULL},
};

static PyType_Spec sync_spec = {
    .name = "aiopyramid._core.Synchronized",
    .basicsize = sizeof(Synchronized),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_HAVE_VECTORCALL |
             Py_TPFLAGS_METHOD_DESCRIPTOR,
    .slots = sync_slots,
};

static PyObject *import_attr(const char *module, const char *name,
                             int optional);

/* functools.update_wrapper, plus __signature__ so that Pyramid's
 * introspection (inspect.getfullargspec ignores __wrapped__) sees the
 * wrapped function's parameters */
static int
copy_wrapper_attrs(modstate *st, PyObject *wrapper, PyObject *wrapped)
{
    PyObject *r = PyObject_CallFunctionObjArgs(st->update_wrapper, wrapper,
                                               wrapped, NULL);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    PyObject *signature = import_attr("inspect", "signature", 0);
    if (signature == NULL)
        return -1;
    PyObject *sig = PyObject_CallOneArg(signature, wrapped);
    Py_DECREF(signature);
    if (sig == NULL) {
        /* builtins and the like have none: nothing to copy */
        if (!PyErr_ExceptionMatches(PyExc_ValueError) &&
            !PyErr_ExceptionMatches(PyExc_TypeError))
            return -1;
        PyErr_Clear();
        return 0;
    }
    int rc = PyObject_SetAttrString(wrapper, "__signature__", sig);
    Py_DECREF(sig);
    return rc;
}

static PyObject *
make_synchronized(modstate *st, PyObject *func, int strict)
{
    if (!PyCallable_Check(func)) {
        PyErr_Format(PyExc_TypeError,
                     "synchronize() expects a coroutine function, got %R", func);
        return NULL;
    }
    if (Py_TYPE(func) == st->SynchronizedType)
        return Py_NewRef(func); /* already plain-callable */
    if (strict) {
        int is_coro = bridge_is_coroutine_function(st, func);
        if (is_coro < 0)
            return NULL;
        if (!is_coro) {
            PyErr_Format(st->ConfigurationError,
                         "Attempted to synchronize a non-coroutine %R: "
                         "decorate an 'async def' (or generator coroutine) "
                         "function, or pass strict=False",
                         func);
            return NULL;
        }
    }
    Synchronized *self = PyObject_GC_New(Synchronized, st->SynchronizedType);
    if (self == NULL)
        return NULL;
    self->func = Py_NewRef(func);
    self->dict = NULL;
    self->weakreflist = NULL;
    self->vectorcall = sync_vectorcall;
    self->strict = strict;
    PyObject_GC_Track(self);
    if (copy_wrapper_attrs(st, (PyObject *)self, func) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

/* synchronize(func) or synchronize(strict=...)(func) */
static PyObject *
synchronize_partial(PyObject *strict, PyObject *func)
{
    PyObject *mod = PyImport_ImportModule("aiopyramid._core");
    if (mod == NULL)
        return NULL;
    modstate *st = state_of_module(mod);
    int s = PyObject_IsTrue(strict);
    PyObject *r = s < 0 ? NULL : make_synchronized(st, func, s);
    Py_DECREF(mod);
    return r;
}

static PyMethodDef synchronize_partial_def = {
    "synchronize", synchronize_partial, METH_O,
    "Decorator made by synchronize(strict=...)."};

static PyObject *
synchronize(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"func", "strict", NULL};
    PyObject *func = NULL;
    int strict = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O$p:synchronize", kwlist,
                                     &func, &strict))
        return NULL;
    if (func != NULL)
        return make_synchronized(state_of_module(module), func, strict);
    return PyCFunction_New(&synchronize_partial_def,
                           strict ? Py_True : Py_False);
}

/* ------------------------------------------------------------------ */
/* CoroutineFunction: coroutine(plain callable) and use_executor        */

enum { CF_CALL, CF_EXECUTOR };

typedef struct {
    PyObject_HEAD
    PyObject *func;
    PyObject *executor;
    PyObject *dict;
    PyObject *weakreflist;
    vectorcallfunc vectorcall;
    int kind;
} CoroutineFunction;

static PyObject *
cf_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf,
              PyObject *kwnames)
{
    CoroutineFunction *self = (CoroutineFunction *)op;
    modstate *st = state_of_type(Py_TYPE(op));
    Delegate *d = delegate_new(st, self->kind == CF_EXECUTOR ? DL_EXECUTOR
                                                             : DL_CALL);
    if (d == NULL)
        return NULL;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    d->func = Py_NewRef(self->func);
    d->executor = Py_XNewRef(self->executor);
    d->args = PyTuple_New(nargs);
    if (d->args == NULL)
        goto error;
    for (Py_ssize_t i = 0; i < nargs; i++)
        PyTuple_SET_ITEM(d->args, i, Py_NewRef(args[i]));
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames)) {
        d->kwargs = PyDict_New();
        if (d->kwargs == NULL)
            goto error;
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++)
            if (PyDict_SetItem(d->kwargs, PyTuple_GET_ITEM(kwnames, i),
                               args[nargs + i]) < 0)
                goto error;
    }
    return (PyObject *)d;
error:
    Py_DECREF(d);
    return NULL;
}

static PyObject *
cf_descr_get(PyObject *self, PyObject *obj, PyObject *type)
{
    if (obj == NULL || obj == Py_None)
        return Py_NewRef(self);
    return PyMethod_New(self, obj);
}

static PyObject *
cf_repr(PyObject *op)
{
    CoroutineFunction *self = (CoroutineFunction *)op;
    return PyUnicode_FromFormat(self->kind == CF_EXECUTOR
                                    ? "<use_executor %R>"
                                    : "<coroutine %R>",
                                self->func);
}

static int
cf_traverse(PyObject *op, visitproc visit, void *arg)
{
    CoroutineFunction *self = (CoroutineFunction *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(self->func);
    Py_VISIT(self->executor);
    Py_VISIT(self->dict);
    return 0;
}

static int
cf_clear(PyObject *op)
{
    CoroutineFunction *self = (CoroutineFunction *)op;
    Py_CLEAR(self->func);
    Py_CLEAR(self->executor);
    Py_CLEAR(self->dict);
    return 0;
}

static PyGetSetDef cf_dict_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef cf_members[] = {
    {"__dictoffset__", T_PYSSIZET, offsetof(CoroutineFunction, dict), READONLY},
    {"__weaklistoffset__", T_PYSSIZET,
     offsetof(CoroutineFunction, weakreflist), READONLY},
    {"__vectorcalloffset__", T_PYSSIZET,
     offsetof(CoroutineFunction, vectorcall), READONLY},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot cf_slots[] = {
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_descr_get, cf_descr_get},
    {Py_tp_repr, cf_repr},
    {Py_tp_members, cf_members},
    {Py_tp_getset, cf_dict_getset},
    {Py_tp_traverse, cf_traverse},
    {Py_tp_clear, cf_clear},
    {Py_tp_dealloc, gc_dealloc},
    {Py_tp_doc, "A coroutine function around a plain callable."},
    {0, NULL},
};

static PyType_Spec cf_spec = {
    .name = "aiopyramid._core.CoroutineFunction",
    .basicsize = sizeof(CoroutineFunction),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_HAVE_VECTORCALL |
             Py_TPFLAGS_METHOD_DESCRIPTOR,
    .slots = cf_slots,
};

static int
mark_coroutine_function(modstate *st, PyObject *obj)
{
    if (st->is_coroutine_marker != NULL &&
        PyObject_SetAttrString(obj, "_is_coroutine", st->is_coroutine_marker) < 0)
        return -1;
    if (st->inspect_marker != NULL &&
        PyObject_SetAttrString(obj, "_is_coroutine_marker",
                               st->inspect_marker) < 0)
        return -1;
    return 0;
}

static PyObject *
make_coroutine_function(modstate *st, PyObject *func, PyObject *executor,
                        int kind)
{
    if (!PyCallable_Check(func)) {
        PyErr_Format(PyExc_TypeError, "expected a callable, got %R", func);
        return NULL;
    }
    CoroutineFunction *self =
        PyObject_GC_New(CoroutineFunction, st->CoroutineFunctionType);
    if (self == NULL)
        return NULL;
    self->func = Py_NewRef(func);
    self->executor = Py_XNewRef(executor == Py_None ? NULL : executor);
    self->dict = NULL;
    self->weakreflist = NULL;
    self->vectorcall = cf_vectorcall;
    self->kind = kind;
    PyObject_GC_Track(self);
    if (copy_wrapper_attrs(st, (PyObject *)self, func) < 0 ||
        mark_coroutine_function(st, (PyObject *)self) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int
is_generator_function(PyObject *obj)
{
    while (PyMethod_Check(obj))
        obj = PyMethod_GET_FUNCTION(obj);
    return PyFunction_Check(obj) &&
           (((PyCodeObject *)PyFunction_GET_CODE(obj))->co_flags & CO_GENERATOR);
}

static int
is_native_coroutine_function(PyObject *obj)
{
    while (PyMethod_Check(obj))
        obj = PyMethod_GET_FUNCTION(obj);
    return PyFunction_Check(obj) &&
           (((PyCodeObject *)PyFunction_GET_CODE(obj))->co_flags & CO_COROUTINE);
}

static PyObject *
coroutine(PyObject *module, PyObject *func)
{
    modstate *st = state_of_module(module);
    if (is_native_coroutine_function(func) ||
        Py_TYPE(func) == st->CoroutineFunctionType)
        return Py_NewRef(func);
    if (is_generator_function(func)) {
        /* lets the generator 'yield from' native coroutines (types.coroutine
         * sets CO_ITERABLE_COROUTINE on its code) */
        PyObject *r = PyObject_CallOneArg(st->types_coroutine, func);
        if (r == NULL)
            return NULL;
        Py_DECREF(r);
    }
    /* calls return a registered Coroutine, which asyncio.run and
     * create_task accept (they refuse generators since 3.12) */
    return make_coroutine_function(st, func, NULL, CF_CALL);
}

static PyObject *
use_executor_partial(PyObject *executor, PyObject *func)
{
    PyObject *mod = PyImport_ImportModule("aiopyramid._core");
    if (mod == NULL)
        return NULL;
    PyObject *r = make_coroutine_function(state_of_module(mod), func,
                                          executor, CF_EXECUTOR);
    Py_DECREF(mod);
    return r;
}

static PyMethodDef use_executor_partial_def = {
    "use_executor", use_executor_partial, METH_O,
    "Decorator made by use_executor(executor=...)."};

static PyObject *
use_executor(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"func", "executor", NULL};
    PyObject *func = NULL, *executor = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O$O:use_executor", kwlist,
                                     &func, &executor))
        return NULL;
    if (func != NULL)
        return make_coroutine_function(state_of_module(module), func, executor,
                                       CF_EXECUTOR);
    return PyCFunction_New(&use_executor_partial_def, executor);
}

/* ------------------------------------------------------------------ */
/* ThreadCall: what an executor thread runs                             */

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

/* ------------------------------------------------------------------ */
/* Module-level functions                                               */

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
    PyObject *pargs = PyTuple_New(nargs - 1);
    if (pargs == NULL)
        return NULL;
    for (Py_ssize_t i = 1; i < nargs; i++)
        PyTuple_SET_ITEM(pargs, i - 1, Py_NewRef(args[i]));
    PyObject *kwargs = NULL;
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames)) {
        kwargs = PyDict_New();
        if (kwargs == NULL) {
            Py_DECREF(pargs);
            return NULL;
        }
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++)
            if (PyDict_SetItem(kwargs, PyTuple_GET_ITEM(kwnames, i),
                               args[nargs + i]) < 0) {
                Py_DECREF(pargs);
                Py_DECREF(kwargs);
                return NULL;
            }
    }
    PyObject *r = bridge_spawn_new(st, args[0], pargs, kwargs, NULL);
    Py_DECREF(pargs);
    Py_XDECREF(kwargs);
    return r;
}

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
    d->args = PyTuple_New(nargs - 3);
    if (d->args == NULL)
        goto error;
    for (Py_ssize_t i = 3; i < nargs; i++)
        PyTuple_SET_ITEM(d->args, i - 3, Py_NewRef(args[i]));
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames)) {
        d->kwargs = PyDict_New();
        if (d->kwargs == NULL)
            goto error;
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++)
            if (PyDict_SetItem(d->kwargs, PyTuple_GET_ITEM(kwnames, i),
                               args[nargs + i]) < 0)
                goto error;
    }
    return (PyObject *)d;
error:
    Py_DECREF(d);
    return NULL;
}

static PyObject *
is_generator(PyObject *module, PyObject *obj)
{
    modstate *st = state_of_module(module);
    if (is_generator_function(obj) || PyGen_Check(obj))
        Py_RETURN_TRUE;
    /* asyncio.isfuture */
    PyObject *blocking;
    if (PyObject_GetOptionalAttr((PyObject *)Py_TYPE(obj), st->str_blocking,
                                 &blocking) < 0)
        return NULL;
    if (blocking == NULL)
        Py_RETURN_FALSE;
    Py_DECREF(blocking);
    if (PyObject_GetOptionalAttr(obj, st->str_blocking, &blocking) < 0)
        return NULL;
    int fut = blocking != NULL && blocking != Py_None;
    Py_XDECREF(blocking);
    return PyBool_FromLong(fut);
}

static PyObject *
is_coroutine_function(PyObject *module, PyObject *obj)
{
    int r = bridge_is_coroutine_function(state_of_module(module), obj);
    return r < 0 ? NULL : PyBool_FromLong(r);
}

static PyObject *
await_(PyObject *module, PyObject *aw)
{
    return bridge_await(state_of_module(module), aw, 1);
}

static PyObject *
in_coroutine_view(PyObject *module, PyObject *unused)
{
    modstate *st = state_of_module(module);
    BridgeGreenlet *me = current_bridge(st);
    if (me == NULL && PyErr_Occurred())
        return NULL;
    return PyBool_FromLong(me != NULL && me->job != NULL && me->in_view);
}

static PyObject *
set_in_coroutine_view(PyObject *module, PyObject *flag)
{
    modstate *st = state_of_module(module);
    BridgeGreenlet *me = current_bridge(st);
    if (me == NULL || me->job == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError,
                            "not running in a bridge greenlet");
        return NULL;
    }
    int prev = me->in_view;
    int v = PyObject_IsTrue(flag);
    if (v < 0)
        return NULL;
    me->in_view = v;
    return PyBool_FromLong(prev);
}

static PyObject *
set_pool_limit(PyObject *module, PyObject *arg)
{
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (n < 0 || n > 1000000) {
        PyErr_Format(PyExc_ValueError,
                     "pool limit must be between 0 and 1000000, got %zd", n);
        return NULL;
    }
    modstate *st = state_of_module(module);
    Py_ssize_t old = st->pool_limit;
    st->pool_limit = n;
    /* the current thread's pool is remade at the new size */
    PyObject *d = PyThreadState_GetDict();
    if (d != NULL && PyDict_DelItem(d, st->str_pool_key) < 0)
        PyErr_Clear();
    thread_pool = NULL;
    return PyLong_FromSsize_t(old);
}

static PyObject *
pool_stats(PyObject *module, PyObject *unused)
{
    modstate *st = state_of_module(module);
    pool_t *p = pool_get(st);
    if (p == NULL)
        return NULL;
    return Py_BuildValue("{snsnsK}", "idle", p->n, "limit", st->pool_limit,
                         "created", st->greenlets_created);
}

PyMethodDef bridge_methods[] = {
    {"spawn_greenlet", (PyCFunction)(void (*)(void))spawn_greenlet,
     METH_FASTCALL | METH_KEYWORDS,
     "spawn_greenlet(func, *args, **kwargs)\n--\n\n"
     "Coroutine: run func in a pooled greenlet, where synchronized coroutines "
     "can be called like plain functions; return its result."},
    {"run_in_greenlet", (PyCFunction)(void (*)(void))run_in_greenlet,
     METH_FASTCALL | METH_KEYWORDS,
     "run_in_greenlet(back, future, func, *args, **kwargs)\n--\n\n"
     "Coroutine: await func(*args, **kwargs), set its result or exception on "
     "future, then switch back to greenlet back."},
    {"synchronize", (PyCFunction)(void (*)(void))synchronize,
     METH_VARARGS | METH_KEYWORDS,
     "synchronize(func=None, *, strict=True)\n--\n\n"
     "Make a coroutine function callable from plain code running in a "
     "request greenlet."},
    {"use_executor", (PyCFunction)(void (*)(void))use_executor,
     METH_VARARGS | METH_KEYWORDS,
     "use_executor(func=None, *, executor=None)\n--\n\n"
     "Make a blocking function a coroutine function run in a thread."},
    {"coroutine", coroutine, METH_O,
     "coroutine(func)\n--\n\n"
     "Drop-in for the removed asyncio.coroutine."},
    {"is_generator", is_generator, METH_O,
     "is_generator(obj)\n--\n\n"
     "True for generator functions, generators and futures."},
    {"is_coroutine_function", is_coroutine_function, METH_O,
     "is_coroutine_function(obj)\n--\n\n"
     "True for what the coroutine mapper awaits."},
    {"await_", await_, METH_O,
     "await_(awaitable)\n--\n\n"
     "Await from plain code in a request greenlet (what synchronize does)."},
    {"in_coroutine_view", in_coroutine_view, METH_NOARGS,
     "in_coroutine_view()\n--\n\n"
     "True while the calling greenlet runs a coroutine view or a "
     "synchronized coroutine."},
    {"set_in_coroutine_view", set_in_coroutine_view, METH_O,
     "set_in_coroutine_view(flag)\n--\n\n"
     "Set the marker in_coroutine_view() reads; returns the previous one."},
    {"set_pool_limit", set_pool_limit, METH_O,
     "set_pool_limit(n)\n--\n\n"
     "Keep at most n idle greenlets per thread; returns the old limit."},
    {"pool_stats", pool_stats, METH_NOARGS,
     "pool_stats()\n--\n\n"
     "Idle greenlets in this thread's pool, the limit, greenlets created."},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef worker_def = {"_bridge_worker", worker, METH_NOARGS, NULL};

static PyObject *
import_attr(const char *module, const char *name, int optional)
{
    PyObject *m = PyImport_ImportModule(module);
    if (m == NULL)
        return NULL;
    PyObject *r;
    if (optional) {
        if (PyObject_GetOptionalAttrString(m, name, &r) < 0)
            r = NULL;
    }
    else {
        r = PyObject_GetAttrString(m, name);
    }
    Py_DECREF(m);
    return r;
}

static int
add_type(PyObject *module, PyTypeObject **slot, PyType_Spec *spec,
         PyObject *base)
{
    *slot = (PyTypeObject *)PyType_FromModuleAndSpec(module, spec, base);
    if (*slot == NULL)
        return -1;
    return PyModule_AddType(module, *slot);
}

int
bridge_init(PyObject *module, modstate *st)
{
    PyGreenlet_Import();
    if (_PyGreenlet_API == NULL)
        return -1;
    st->pool_limit = 256;
    if (add_type(module, &st->BridgeGreenletType, &bgreenlet_spec,
                 (PyObject *)&PyGreenlet_Type) < 0 ||
        add_type(module, &st->SpawnType, &spawn_spec, NULL) < 0 ||
        add_type(module, &st->DelegateType, &delegate_spec, NULL) < 0 ||
        add_type(module, &st->SynchronizedType, &sync_spec, NULL) < 0 ||
        add_type(module, &st->CoroutineFunctionType, &cf_spec, NULL) < 0 ||
        add_type(module, &st->ThreadCallType, &threadcall_spec, NULL) < 0)
        return -1;

    st->GreenletExit = Py_NewRef(PyExc_GreenletExit);
    st->gr_context_descr = PyObject_GetAttrString((PyObject *)&PyGreenlet_Type,
                                                  "gr_context");
    if (st->gr_context_descr == NULL)
        return -1;
    if (Py_TYPE(st->gr_context_descr)->tp_descr_set == NULL) {
        PyErr_SetString(PyExc_ImportError,
                        "greenlet.gr_context is not settable: greenlet >= 3 "
                        "is required");
        return -1;
    }
    st->worker = PyCFunction_NewEx(&worker_def, module, NULL);
    if (st->worker == NULL)
        return -1;
    if ((st->ScopeError = import_attr("aiopyramid.exceptions", "ScopeError",
                                      0)) == NULL ||
        (st->ConfigurationError = import_attr("pyramid.exceptions",
                                              "ConfigurationError", 0)) == NULL ||
        (st->get_running_loop = import_attr("asyncio", "_get_running_loop",
                                            0)) == NULL ||
        (st->run_coroutine_threadsafe = import_attr(
             "asyncio", "run_coroutine_threadsafe", 0)) == NULL ||
        (st->asyncio_run = import_attr("asyncio", "run", 0)) == NULL ||
        (st->CancelledError = import_attr("asyncio", "CancelledError",
                                          0)) == NULL ||
        (st->types_coroutine = import_attr("types", "coroutine", 0)) == NULL ||
        (st->update_wrapper = import_attr("functools", "update_wrapper",
                                          0)) == NULL ||
        (st->iscoroutinefunction = import_attr("inspect", "iscoroutinefunction",
                                               0)) == NULL)
        return -1;
    st->is_coroutine_marker = import_attr("asyncio.coroutines", "_is_coroutine", 1);
    if (st->is_coroutine_marker == NULL && PyErr_Occurred())
        return -1;
    st->inspect_marker = import_attr("inspect", "_is_coroutine_mark", 1);
    if (st->inspect_marker == NULL && PyErr_Occurred())
        return -1;
    st->request_loop = PyContextVar_New("aiopyramid_request_loop", NULL);
    if (st->request_loop == NULL)
        return -1;
    st->waiting_thread = PyContextVar_New("aiopyramid_waiting_thread", NULL);
    if (st->waiting_thread == NULL ||
        PyModule_AddObjectRef(module, "_waiting_thread",
                              st->waiting_thread) < 0)
        return -1;

    /* asyncio.iscoroutine() and create_task() accept what spawn_greenlet
     * and use_executor return */
    PyObject *abc = import_attr("collections.abc", "Coroutine", 0);
    if (abc == NULL)
        return -1;
    PyObject *r = PyObject_CallMethod(abc, "register", "O", st->SpawnType);
    Py_XDECREF(r);
    if (r != NULL) {
        r = PyObject_CallMethod(abc, "register", "O", st->DelegateType);
        Py_XDECREF(r);
    }
    Py_DECREF(abc);
    return r == NULL ? -1 : 0;
}
