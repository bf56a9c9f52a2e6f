/* ThreadCall, what an executor thread runs: the call in a copy of the
 * caller's contextvars, with Pyramid's threadlocals pushed.
 *
 * Handed to an aiopyramid Executor (aiopyramid/_executor.py: the gunicorn
 * worker's default executor, the aiopyramid.executor_threads pool), a
 * ThreadCall is itself the pool's work item: no concurrent Future, no
 * asyncio.wrap_future chain.  The Executor's queue is a WorkQueue (below),
 * and the hand-off is made to cost little per request where it used to
 * cost a thread wake-up and a loop wake-up each:
 *
 * - a thread is woken only when none is already on its way to the queue
 *   (a thread that finishes a job takes the next one without sleeping;
 *   one that takes a job while more wait wakes one more, so views that
 *   block still spread over the pool), and for the views the loop hands
 *   over, not before the loop has run this iteration's callbacks (woken
 *   at once, the thread would wait for the GIL the loop holds, and take
 *   it at each of the loop's callback boundaries: a thread switch per
 *   request); the pool grows, as ThreadPoolExecutor's, when more is queued
 *   than its threads idle or on their way can take (the queue counts them:
 *   ThreadPoolExecutor's idle semaphore cannot, see _executor._IdleThreads);
 * - a pool thread runs the views it takes in C, inside the queue's get(),
 *   without going back to the pool's Python loop;
 * - a finished call goes onto its loop's Completions list; only the one
 *   that finds the list empty wakes the loop, and the loop sets every
 *   outcome on the list in one callback, so their responses are written
 *   in one loop iteration (and held writes go out together);
 * - the loop lets go of the GIL before it wakes a thread (on its core, the
 *   thread would run at once only to wait for the GIL), and wakes through
 *   an eventfd it reads (Linux; else call_soon_threadsafe), which a thread
 *   that goes idle writes once it has let go of the GIL, and one that
 *   takes another view writes before it starts it.
 *
 * Any other executor gets the call through loop.run_in_executor. */
#include "bridge/bridge.h"

#include <errno.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/eventfd.h>
#endif

/* interned strings of this file, in st->executor_strs */
#define EXECUTOR_STRINGS(X)                                                  \
    X(CALL_SOON_THREADSAFE, "call_soon_threadsafe")                          \
    X(CREATE_FUTURE, "create_future")                                        \
    X(DEFAULT_EXECUTOR, "_default_executor")                                 \
    X(CANCELLED, "cancelled")                                                \
    X(DONE, "done")                                                          \
    X(CANCEL, "cancel")                                                      \
    X(IS_CLOSED, "is_closed")                                                \
    X(CALL_SOON, "call_soon")                                                \
    X(ADD_READER, "add_reader")                                              \
    X(WORK_QUEUE, "_work_queue")                                             \
    X(BROKEN, "_broken")                                                     \
    X(SHUTDOWN, "_shutdown")                                                 \
    X(THREADS, "_threads")                                                   \
    X(MAX_WORKERS, "_max_workers")                                           \
    X(ADJUST_THREAD_COUNT, "_adjust_thread_count")                           \
    X(BROKEN_THREAD_POOL, "BrokenThreadPool")

enum {
#define EX_STR_ENUM(name, text) ES_##name,
    EXECUTOR_STRINGS(EX_STR_ENUM)
#undef EX_STR_ENUM
    ES_COUNT
};

#define ESTR(st, name) PyTuple_GET_ITEM((st)->executor_strs, ES_##name)

typedef struct ThreadCall {
    PyObject_HEAD
    PyObject *ctx, *loop, *fn, *args, *kwargs, *request;
    PyObject *future;          /* the loop's future, as a pool's work item */
    PyObject *completions;     /* its loop's Completions, with future */
    PyObject *result, *exc;    /* the outcome, on its way to the loop */
    PyObject *on_done;         /* a loop future set once the outcome is
                                  back, cancelled or not */
    struct ThreadCall *next;   /* on its Completions' chain: the next one */
    int cancel;                /* the pool cancelled the work item */
    int running;               /* in its thread now */
    int chained;               /* on its Completions' chain, not drained */
} ThreadCall;

/* Pyramid's threadlocals for this thread when the manager is aiopyramid's
 * (its stack in a ContextVar): what ContextLocalManager.push(info) does,
 * in C, in the call's own copy of the context: the stack one entry
 * longer.  Its token (a reference); NULL with an exception, or NULL and *slow set when
 * the Python push must do it (a stack that is not a tuple). */
static PyObject *
threadlocal_push_fast(modstate *st, PyObject *info, int *slow)
{
    PyObject *stack, *token = NULL;
    *slow = 0;
    if (PyContextVar_Get(st->tl_stack, NULL, &stack) < 0)
        return NULL;
    if (stack == NULL || !PyTuple_CheckExact(stack)) {
        Py_XDECREF(stack);
        *slow = 1;
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(stack);
    PyObject *grown = PyTuple_New(n + 1);
    if (grown == NULL) {
        Py_DECREF(stack);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        PyTuple_SET_ITEM(grown, i, Py_NewRef(PyTuple_GET_ITEM(stack, i)));
    PyTuple_SET_ITEM(grown, n, Py_NewRef(info));
    Py_DECREF(stack);
    token = PyContextVar_Set(st->tl_stack, grown);
    Py_DECREF(grown);
    return token;
}

/* 1 when the top of the stack in the current context already names this
 * request and its registry: the router's own entry (Pyramid's
 * RequestContext; _transaction.py may have added its key), carried into
 * the thread by the copied context, which a push of the same two would
 * only repeat; 0 when not; -1 with an exception. */
static int
threadlocal_on_top(modstate *st, PyObject *registry, PyObject *request)
{
    PyObject *stack;
    if (PyContextVar_Get(st->tl_stack, NULL, &stack) < 0)
        return -1;
    int on_top = 0;
    if (stack != NULL && PyTuple_CheckExact(stack) && PyTuple_GET_SIZE(stack)) {
        PyObject *top = PyTuple_GET_ITEM(stack, PyTuple_GET_SIZE(stack) - 1);
        if (PyDict_CheckExact(top)) {
            PyObject *r = PyDict_GetItemWithError(top, st->str_request);
            PyObject *g = r == NULL ? NULL :
                PyDict_GetItemWithError(top, st->str_registry);
            on_top = r == request && g == registry;
            if (PyErr_Occurred())
                on_top = -1;
        }
    }
    Py_XDECREF(stack);
    return on_top;
}

static PyObject *
threadcall_call(PyObject *op, PyObject *args, PyObject *kwargs)
{
    ThreadCall *self = (ThreadCall *)op;
    modstate *st = state_of_type(Py_TYPE(op));
    PyObject *manager = NULL, *pushed = NULL, *token = NULL, *r = NULL;
    PyObject *tl_token = NULL;
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
        int fast = st->tl_class != NULL &&
                   (PyObject *)Py_TYPE(manager) == st->tl_class;
        int on_top = fast ? threadlocal_on_top(st, registry, self->request) : 0;
        if (on_top != 0) {
            Py_DECREF(registry);
            if (on_top < 0)
                goto done;
            goto call;
        }
        PyObject *info = PyDict_New();
        if (info == NULL || PyDict_SetItem(info, st->str_registry, registry) < 0 ||
            PyDict_SetItem(info, st->str_request, self->request) < 0) {
            Py_XDECREF(info);
            Py_DECREF(registry);
            goto done;
        }
        Py_DECREF(registry);
        int slow = 1;
        if (fast) {
            tl_token = threadlocal_push_fast(st, info, &slow);
            if (tl_token == NULL && !slow) {
                Py_DECREF(info);
                goto done;
            }
        }
        if (slow)
            pushed = PyObject_CallMethodOneArg(manager, st->str_push, info);
        Py_DECREF(info);
        if (slow && pushed == NULL)
            goto done;
    }
call:
    r = PyObject_Call(self->fn, self->args, self->kwargs);
    /* pushed in C: nothing to take off, the context is this call's own
     * copy, run once and dropped with it */
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
    Py_XDECREF(tl_token);
    Py_XDECREF(pushed);
    Py_XDECREF(manager);
    Py_XDECREF(token);
    if (PyContext_Exit(self->ctx) < 0)
        Py_CLEAR(r);
    return r;
}

/* _threadlocal_vars(cls, stack): aiopyramid._threadlocal names its
 * manager class and its stack's ContextVar, so that an executor thread
 * pushes Pyramid's threadlocals in C when the manager is of that class. */
static PyObject *
threadlocal_vars(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    modstate *st = state_of_module(module);
    if (nargs != 2 || !PyType_Check(args[0]) || !PyContextVar_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError,
                        "_threadlocal_vars(cls, stack): a class and a ContextVar");
        return NULL;
    }
    Py_XSETREF(st->tl_class, Py_NewRef(args[0]));
    Py_XSETREF(st->tl_stack, Py_NewRef(args[1]));
    Py_RETURN_NONE;
}

static PyMethodDef executor_module_methods[] = {
    {"_threadlocal_vars", (PyCFunction)(void (*)(void))threadlocal_vars,
     METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

/* On the loop (call_soon_threadsafe): the outcome onto the future, unless
 * the request gave up on it (cancelled: the client left). */
static PyObject *
threadcall_complete(PyObject *op, PyObject *unused)
{
    ThreadCall *self = (ThreadCall *)op;
    modstate *st = state_of_type(Py_TYPE(op));
    PyObject *fut = self->future, *r;
    if (self->on_done != NULL) {
        /* a request cancelled while this ran waits for its end */
        PyObject *w = self->on_done;
        self->on_done = NULL;
        r = PyObject_CallMethodNoArgs(w, ESTR(st, DONE));
        if (r == Py_False) {
            Py_DECREF(r);
            r = PyObject_CallMethodOneArg(w, st->str_set_result, Py_None);
        }
        Py_DECREF(w);
        if (r == NULL)  /* logged: the outcome below still goes out */
            PyErr_WriteUnraisable(op);
        Py_XDECREF(r);
    }
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
        /* an exception asyncio refuses to carry (StopIteration), or no
         * memory to schedule the future's callbacks: the request still
         * gets an error (a RuntimeError, else this one, else a
         * cancellation), never a wait for ever; the first error is the
         * caller's */
        PyObject *err = exc_take();
        PyObject *e = PyObject_CallFunction(PyExc_RuntimeError, "sO",
                                            "the view raised", err);
        if (e == NULL)
            PyErr_Clear();
        else {
            r = PyObject_CallMethodOneArg(fut, st->str_set_exception, e);
            Py_DECREF(e);
            if (r == NULL)
                PyErr_Clear();
        }
        if (r == NULL) {
            r = PyObject_CallMethodOneArg(fut, st->str_set_exception, err);
            if (r == NULL)
                PyErr_Clear();
        }
        if (r == NULL) {
            r = PyObject_CallMethodNoArgs(fut, ESTR(st, CANCEL));
            if (r == NULL) {
                exc_restore(err);
                return NULL;
            }
        }
        Py_DECREF(err);
    }
    Py_DECREF(r);
    Py_RETURN_NONE;
}

/* A loop's finished ThreadCalls on their way to it: a chain through the
 * calls themselves (each one a reference the chain holds), filled by the
 * pool's threads and emptied by drain() on the loop, both with the GIL
 * held; only the call that finds nothing scheduled calls
 * call_soon_threadsafe (one loop wake-up for every call that finishes
 * before the loop takes the chain).  Neither end allocates, so neither
 * can lose an outcome to a failed allocation (a request waiting for
 * ever). */
typedef struct {
    PyObject_HEAD
    ThreadCall *head, *tail;  /* in the order the calls finished */
    PyObject *drain;          /* bound drain(), made once */
    int scheduled;            /* a drain() is on the loop's way */
    int fd;                   /* an eventfd the loop reads with drain() as
                                 its reader (a pool's thread can write it
                                 without the GIL), or -1: then
                                 call_soon_threadsafe */
} Completions;

/* Wakes the loop for c's drain() through its eventfd: with or without the
 * GIL (the caller holds a reference, so the descriptor stays open). */
static void
completions_signal(Completions *c)
{
    uint64_t one = 1;
    ssize_t n;
    do {
        n = write(c->fd, &one, sizeof(one));
    } while (n < 0 && errno == EINTR);
    /* EAGAIN: the counter is full, so the loop is woken already */
}

/* The chain, off the Completions: the caller owns its references. */
static ThreadCall *
completions_take(Completions *c)
{
    ThreadCall *head = c->head;
    c->head = c->tail = NULL;
    return head;
}

/* Unlinks the next call of a taken chain; the reference is the caller's. */
static ThreadCall *
chain_pop(ThreadCall **chain)
{
    ThreadCall *call = *chain;
    *chain = call->next;
    call->next = NULL;
    call->chained = 0;
    return call;
}

/* Drops what the chain holds (a loop that is gone or closed: nothing will
 * take it). */
static void
completions_drop(Completions *c)
{
    ThreadCall *chain = completions_take(c);
    c->scheduled = 0;
    while (chain != NULL)
        Py_DECREF(chain_pop(&chain));
}

/* On the loop: every pending outcome onto its future, in the order the
 * calls finished.  The chain is taken whole first: calls that finish
 * meanwhile start a new one, and schedule its drain. */
static PyObject *
completions_drain(PyObject *op, PyObject *unused)
{
    Completions *c = (Completions *)op;
    if (c->fd >= 0) {
        /* the wake-up read first: a thread that schedules a drain after
         * this one took the chain writes again */
        uint64_t count;
        ssize_t n;
        do {
            n = read(c->fd, &count, sizeof(count));
        } while (n < 0 && errno == EINTR);
    }
    c->scheduled = 0;
    ThreadCall *chain = completions_take(c);
    PyObject *err = NULL;
    while (chain != NULL) {
        ThreadCall *call = chain_pop(&chain);
        PyObject *r = threadcall_complete((PyObject *)call, NULL);
        if (r == NULL) {
            /* the first error is the callback's; the others are logged,
             * and every outcome is still set */
            if (err == NULL)
                err = exc_take();
            else
                PyErr_WriteUnraisable(op);
        }
        Py_XDECREF(r);
        Py_DECREF(call);
    }
    if (err != NULL) {
        exc_restore(err);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef completions_methods[] = {
    {"drain", completions_drain, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static int
completions_traverse(PyObject *op, visitproc visit, void *arg)
{
    Completions *c = (Completions *)op;
    Py_VISIT(Py_TYPE(op));
    for (ThreadCall *call = c->head; call != NULL; call = call->next)
        Py_VISIT((PyObject *)call);
    Py_VISIT(c->drain);
    return 0;
}

static int
completions_clear(PyObject *op)
{
    Completions *c = (Completions *)op;
    completions_drop(c);
    Py_CLEAR(c->drain);
    return 0;
}

/* the eventfd is closed only here: a thread about to write it holds a
 * reference */
static void
completions_dealloc(PyObject *op)
{
    Completions *c = (Completions *)op;
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    completions_clear(op);
    if (c->fd >= 0)
        close(c->fd);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyType_Slot completions_slots[] = {
    {Py_tp_methods, completions_methods},
    {Py_tp_traverse, completions_traverse},
    {Py_tp_clear, completions_clear},
    {Py_tp_dealloc, completions_dealloc},
    {0, NULL},
};

static PyType_Spec completions_spec = {
    .name = "aiopyramid._core._Completions",
    .basicsize = sizeof(Completions),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = completions_slots,
};

static PyObject *
weakref_target(PyObject *ref)
{
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *obj = NULL;
    if (PyWeakref_GetRef(ref, &obj) < 0)
        PyErr_Clear();
    Py_XDECREF(obj); /* only compared, never used */
    return obj;
#else
    PyObject *obj = PyWeakref_GET_OBJECT(ref);
    return obj == Py_None ? NULL : obj;
#endif
}

/* On the loop's thread, for a new Completions: an eventfd the loop reads
 * with drain() as its reader, so that a pool thread that goes idle wakes
 * the loop after it let go of the GIL (woken before, the loop would only
 * wait for the GIL the thread holds: on one core, four more thread
 * switches per wake-up).  Where that cannot be (no eventfd, a loop
 * without add_reader, not this thread's running loop), fd stays -1 and
 * the threads call call_soon_threadsafe, with the GIL. */
static void
completions_watch(modstate *st, Completions *c, PyObject *loop)
{
#ifdef __linux__
    PyObject *running = PyObject_CallNoArgs(st->get_running_loop);
    if (running == NULL) {
        PyErr_Clear();
        return;
    }
    Py_DECREF(running);
    if (running != loop)
        return;
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd < 0)
        return;
    /* the reader's handle is the loop's for its life: made in a context of
     * its own, it keeps no request's context (the current one) alive */
    PyObject *ctx = PyContext_New();
    if (ctx == NULL || PyContext_Enter(ctx) < 0) {
        Py_XDECREF(ctx);
        PyErr_Clear();
        close(fd);
        return;
    }
    PyObject *pyfd = PyLong_FromLong(fd);
    PyObject *r = pyfd == NULL ? NULL :
        PyObject_CallMethodObjArgs(loop, ESTR(st, ADD_READER), pyfd,
                                   c->drain, NULL);
    Py_XDECREF(pyfd);
    if (PyContext_Exit(ctx) < 0)
        PyErr_WriteUnraisable(loop); /* cannot be: ctx is the current one */
    Py_DECREF(ctx);
    if (r == NULL) {
        PyErr_Clear();
        close(fd);
        return;
    }
    Py_DECREF(r);
    c->fd = fd;
#else
    (void)st;
    (void)c;
    (void)loop;
#endif
}

/* On the loop's thread: the loop's Completions, made at its first
 * ThreadCall (the entries of loops that are gone are dropped then). */
static PyObject *
completions_for(modstate *st, PyObject *loop)
{
    PyObject *ref = PyWeakref_NewRef(loop, NULL);
    if (ref == NULL)
        return NULL;
    PyObject *c = PyDict_GetItemWithError(st->completers, ref);
    if (c != NULL || PyErr_Occurred()) {
        Py_DECREF(ref);
        return Py_XNewRef(c);
    }
    PyObject *dead = PyList_New(0), *key, *value;
    Py_ssize_t pos = 0;
    if (dead == NULL)
        goto error;
    /* a loop that is gone, or closed (a drain it was sent is dropped
     * with its ready queue: what waits for it never goes) */
    while (PyDict_Next(st->completers, &pos, &key, &value)) {
        PyObject *other = weakref_target(key);
        int gone = other == NULL;
        if (!gone) {
            PyObject *r = PyObject_CallMethodNoArgs(other, ESTR(st, IS_CLOSED));
            if (r == NULL)
                PyErr_Clear();
            gone = r == Py_True;
            Py_XDECREF(r);
        }
        if (gone && PyList_Append(dead, key) < 0)
            goto error;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(dead); i++) {
        key = PyList_GET_ITEM(dead, i);
        value = PyDict_GetItemWithError(st->completers, key);
        if (value != NULL) {
            completions_drop((Completions *)value);
            /* its reader gone with the loop, the cycle through drain() is
             * broken so that the Completions (and its eventfd) goes as
             * soon as no thread holds it, not at the next collection */
            Py_CLEAR(((Completions *)value)->drain);
        }
        if (PyDict_DelItem(st->completers, key) < 0)
            goto error;
    }
    Py_CLEAR(dead);
    Completions *made = PyObject_GC_New(Completions, st->CompletionsType);
    if (made == NULL)
        goto error;
    made->head = made->tail = NULL;
    made->drain = NULL;
    made->scheduled = 0;
    made->fd = -1;
    PyObject_GC_Track(made);
    c = (PyObject *)made;
    if ((made->drain = PyObject_GetAttrString(c, "drain")) == NULL ||
        PyDict_SetItem(st->completers, ref, c) < 0) {
        Py_DECREF(c);
        goto error;
    }
    Py_DECREF(ref);
    completions_watch(st, made, loop);
    return c;
error:
    Py_XDECREF(dead);
    Py_DECREF(ref);
    return NULL;
}

/* From any thread, with the GIL: the outcome onto its loop's chain, and
 * the loop woken if nothing is on its way there yet.  A loop that is gone
 * takes nothing (its requests are gone with it).  With `defer` (a pool
 * thread that runs views in get()) and an eventfd, the wake-up is left to
 * the thread: *defer is the Completions to wake (a reference), before the
 * thread starts anything else, or once it has let go of the GIL when it
 * goes idle (wq_get_impl). */
static void
threadcall_hand_back(ThreadCall *self, Completions **defer)
{
    modstate *st = state_of_type(Py_TYPE(self));
    Completions *c = (Completions *)self->completions;
    if (c == NULL || c->drain == NULL) /* its loop is gone or closed */
        return;
    if (!self->chained) {
        /* (handed back twice before a drain, cancel() called twice say:
         * once on the chain, the outcome is read when drained) */
        self->chained = 1;
        self->next = NULL;
        if (c->tail == NULL)
            c->head = self;
        else
            c->tail->next = self;
        c->tail = (ThreadCall *)Py_NewRef(self);
    }
    if (c->scheduled)
        return;
    /* set first: asyncio's call_soon_threadsafe is Python, and the loop
     * may run the drain before it returns here */
    c->scheduled = 1;
    if (c->fd >= 0) {
        if (defer == NULL) {
            completions_signal(c);
        }
        else if (*defer != c) {
            if (*defer != NULL) { /* views of two loops: the first now */
                completions_signal(*defer);
                Py_DECREF(*defer);
            }
            *defer = (Completions *)Py_NewRef(c);
        }
        return;
    }
    PyObject *r = PyObject_CallMethodOneArg(
        self->loop, ESTR(st, CALL_SOON_THREADSAFE), c->drain);
    if (r != NULL) {
        Py_DECREF(r);
        return;
    }
    c->scheduled = 0;
    PyObject *err = exc_take();
    r = PyObject_CallMethodNoArgs(self->loop, ESTR(st, IS_CLOSED));
    int closed = r == Py_True;
    if (r == NULL)
        PyErr_Clear();
    Py_XDECREF(r);
    if (closed) {
        /* a closed loop: nothing will take the chain */
        Py_DECREF(err);
        completions_drop(c);
        return;
    }
    /* an open loop that refused (no memory): the chain stays for the
     * next call that finishes to schedule its drain */
    exc_restore(err);
    PyErr_WriteUnraisable((PyObject *)self);
}

/* The work item's job, in the pool's thread; `defer` as for
 * threadcall_hand_back. */
static PyObject *
threadcall_run_impl(PyObject *op, Completions **defer)
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
        self->running = 1;
        PyObject *r = threadcall_call(op, NULL, NULL);
        self->running = 0;
        if (r == NULL)
            Py_XSETREF(self->exc, exc_take());
        else
            Py_XSETREF(self->result, r);
    }
    threadcall_hand_back(self, defer);
    Py_RETURN_NONE;
}

/* run(): the work item's job, in the pool's thread (ThreadPoolExecutor's
 * worker loop, given it by get_nowait()). */
static PyObject *
threadcall_run(PyObject *op, PyObject *unused)
{
    return threadcall_run_impl(op, NULL);
}

/* The pool's shutdown(cancel_futures=True) drains its queue and calls
 * item.future.cancel(); a broken pool calls item.future.set_exception(e):
 * the item is its own "future" for those two. */
static PyObject *
threadcall_cancel(PyObject *op, PyObject *unused)
{
    ThreadCall *self = (ThreadCall *)op;
    self->cancel = 1;
    threadcall_hand_back(self, NULL);
    Py_RETURN_TRUE;
}

static PyObject *
threadcall_set_exception(PyObject *op, PyObject *exc)
{
    ThreadCall *self = (ThreadCall *)op;
    Py_XSETREF(self->exc, Py_NewRef(exc));
    threadcall_hand_back(self, NULL);
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
    Py_VISIT(self->completions);
    Py_VISIT(self->result);
    Py_VISIT(self->exc);
    Py_VISIT(self->on_done);
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
    Py_CLEAR(self->completions);
    Py_CLEAR(self->result);
    Py_CLEAR(self->exc);
    Py_CLEAR(self->on_done);
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

/* WorkQueue: an aiopyramid Executor's work queue, in place of the
 * ThreadPoolExecutor's SimpleQueue (the same put/get/get_nowait/empty/
 * qsize), with the wake-ups described at the top of this file.  Its state
 * is only touched with the GIL held; a thread that waits blocks on a lock
 * of its own, on the list of idle threads, and is woken by name. */
typedef struct qwaiter {
    PyThread_type_lock lock;
    struct qwaiter *next;
    int woken;
} qwaiter;

typedef struct {
    PyObject_HEAD
    PyObject **items;        /* ring buffer */
    Py_ssize_t head, len, cap;
    qwaiter *idle;           /* threads blocked in get(), last idle first */
    Py_ssize_t n_idle;       /* how many */
    int waking;              /* woken, not yet back from their wait */
    int wake_scheduled;      /* a _wake() is on wake_loop's ready queue */
    PyObject *wake_loop;     /* (a pool can serve several loops, and a loop
                                closed with the _wake unrun drops it) */
    PyObject *wake;          /* bound _wake(), made once */
} WorkQueue;

static int
wq_push(WorkQueue *q, PyObject *item)
{
    if (q->len == q->cap) {
        Py_ssize_t cap = q->cap ? q->cap * 2 : 64;
        PyObject **items = PyMem_New(PyObject *, cap);
        if (items == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t i = 0; i < q->len; i++)
            items[i] = q->items[(q->head + i) % q->cap];
        PyMem_Free(q->items);
        q->items = items;
        q->head = 0;
        q->cap = cap;
    }
    q->items[(q->head + q->len) % q->cap] = Py_NewRef(item);
    q->len++;
    return 0;
}

static PyObject *
wq_pop(WorkQueue *q)
{
    PyObject *item = q->items[q->head];
    q->head = (q->head + 1) % q->cap;
    q->len--;
    return item;
}

static void
wq_wake_one(WorkQueue *q)
{
    qwaiter *w = q->idle;
    q->idle = w->next;
    q->n_idle--;
    w->woken = 1;
    q->waking++;
    PyThread_release_lock(w->lock);
}

/* the threads idle or on their way to the queue are enough for what it
 * holds: no new thread is needed for it */
static inline int
wq_spare(WorkQueue *q)
{
    return q->len <= q->n_idle + q->waking;
}

/* a thread comes for what is queued: one on its way already, or one woken */
static inline void
wq_wake_if_needed(WorkQueue *q)
{
    if (q->len > 0 && q->waking == 0 && q->idle != NULL)
        wq_wake_one(q);
}

static PyObject *
wq_put(PyObject *op, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"item", "block", "timeout", NULL};
    PyObject *item, *block = NULL, *timeout = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|OO:put", kwlist,
                                     &item, &block, &timeout))
        return NULL;
    WorkQueue *q = (WorkQueue *)op;
    if (wq_push(q, item) < 0)
        return NULL;
    wq_wake_if_needed(q);
    Py_RETURN_NONE;
}

static PyObject *
wq_put_nowait(PyObject *op, PyObject *item)
{
    WorkQueue *q = (WorkQueue *)op;
    if (wq_push(q, item) < 0)
        return NULL;
    wq_wake_if_needed(q);
    Py_RETURN_NONE;
}

/* On the loop, once its callbacks have run: a thread for what the loop
 * queued meanwhile. */
static PyObject *
wq_wake_cb(PyObject *op, PyObject *unused)
{
    WorkQueue *q = (WorkQueue *)op;
    q->wake_scheduled = 0;
    Py_CLEAR(q->wake_loop);
    if (q->len > 0 && q->waking == 0 && q->idle != NULL) {
        /* woken while the loop held the GIL, a thread that runs at once
         * (on the loop's core, the kernel lets the one it wakes go first)
         * would only wait for it, and be woken again as the loop lets go
         * of it between two callbacks: four thread switches more.  So the
         * loop lets go of the GIL first, and the thread runs the views it
         * finds right away; or, where it does not run at once, the loop
         * takes the GIL back as before */
        qwaiter *w = q->idle;
        q->idle = w->next;
        q->n_idle--;
        w->woken = 1;
        q->waking++;
        Py_BEGIN_ALLOW_THREADS
        PyThread_release_lock(w->lock);
        Py_END_ALLOW_THREADS
    }
    Py_RETURN_NONE;
}

static double
monotonic_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* The loop wake-up a thread put off (threadcall_hand_back): done, with
 * the GIL held. */
static void
flush_wake(Completions **defer)
{
    if (*defer != NULL) {
        completions_signal(*defer);
        Py_CLEAR(*defer);
    }
}

/* get(): the next item; ThreadCalls (views) are run right here, in the
 * pool's thread, and the next item taken without a sleep.  timeout < 0:
 * none. */
static PyObject *
wq_get_impl(WorkQueue *q, int block, double timeout, int run_calls)
{
    modstate *st = state_of_type(Py_TYPE(q));
    double deadline = timeout >= 0 ? monotonic_now() + timeout : 0;
    /* the loop to wake for the views this thread finished, put off while
     * it goes on holding the GIL: before it starts anything else (which
     * could block: a blocked view never holds others' finished responses)
     * or, when it goes idle, once it has let go of the GIL (woken before,
     * the loop would only wait for the GIL held here) */
    Completions *defer = NULL;
    for (;;) {
        if (q->len > 0) {
            flush_wake(&defer);
            PyObject *item = wq_pop(q);
            /* more waiting: one more thread, in case this job blocks */
            wq_wake_if_needed(q);
            if (run_calls && Py_IS_TYPE(item, st->ThreadCallType)) {
                PyObject *r = threadcall_run_impl(item, &defer);
                if (r == NULL)
                    PyErr_WriteUnraisable(item);
                Py_XDECREF(r);
                Py_DECREF(item);
                continue;
            }
            return item;
        }
        long long wait_us = -1;
        if (timeout >= 0) {
            double left = deadline - monotonic_now();
            wait_us = left > 0 ? (long long)(left * 1e6) : 0;
        }
        if (!block || wait_us == 0) {
            flush_wake(&defer);
            PyErr_SetNone(st->queue_empty);
            return NULL;
        }
        qwaiter w = {PyThread_allocate_lock(), NULL, 0};
        if (w.lock == NULL) {
            flush_wake(&defer);
            PyErr_NoMemory();
            return NULL;
        }
        PyThread_acquire_lock(w.lock, WAIT_LOCK); /* the waker releases it */
        w.next = q->idle;
        q->idle = &w;
        q->n_idle++;
        PyLockStatus got;
        Py_BEGIN_ALLOW_THREADS
        if (defer != NULL)
            completions_signal(defer);
        got = PyThread_acquire_lock_timed(w.lock, wait_us, 0);
        Py_END_ALLOW_THREADS
        Py_CLEAR(defer);
        if (w.woken) {
            if (got != PY_LOCK_ACQUIRED) {
                /* timed out as the loop woke it (wq_wake_cb releases the
                 * lock without the GIL): the lock is freed below only once
                 * that release is done */
                Py_BEGIN_ALLOW_THREADS
                PyThread_acquire_lock(w.lock, WAIT_LOCK);
                Py_END_ALLOW_THREADS
            }
            q->waking--;
        }
        else {
            /* timed out: off the idle list */
            qwaiter **p = &q->idle;
            while (*p != &w)
                p = &(*p)->next;
            *p = w.next;
            q->n_idle--;
        }
        PyThread_free_lock(w.lock);
    }
}

static int
parse_get(PyObject *args, PyObject *kwargs, int *block, double *timeout)
{
    static char *kwlist[] = {"block", "timeout", NULL};
    PyObject *t = Py_None;
    *block = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|pO:get", kwlist, block, &t))
        return -1;
    *timeout = -1;
    if (t != Py_None) {
        *timeout = PyFloat_AsDouble(t);
        if (*timeout == -1 && PyErr_Occurred())
            return -1;
        if (*timeout < 0) {
            PyErr_SetString(PyExc_ValueError, "'timeout' must be a non-negative number");
            return -1;
        }
    }
    return 0;
}

static PyObject *
wq_get(PyObject *op, PyObject *args, PyObject *kwargs)
{
    int block;
    double timeout;
    if (parse_get(args, kwargs, &block, &timeout) < 0)
        return NULL;
    /* only a pool's thread waits (block=True): it runs the views */
    return wq_get_impl((WorkQueue *)op, block, timeout, block);
}

static PyObject *
wq_get_nowait(PyObject *op, PyObject *unused)
{
    return wq_get_impl((WorkQueue *)op, 0, -1, 0);
}

static PyObject *
wq_empty(PyObject *op, PyObject *unused)
{
    return PyBool_FromLong(((WorkQueue *)op)->len == 0);
}

static PyObject *
wq_qsize(PyObject *op, PyObject *unused)
{
    return PyLong_FromSsize_t(((WorkQueue *)op)->len);
}

/* _spare(): True when the threads idle or on their way suffice for what is
 * queued (the Executor's stand-in for ThreadPoolExecutor's idle
 * semaphore: a thread that runs views inside get() never releases it) */
static PyObject *
wq_spare_py(PyObject *op, PyObject *unused)
{
    return PyBool_FromLong(wq_spare((WorkQueue *)op));
}

static PyObject *
wq_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    if (PyTuple_GET_SIZE(args) || (kwargs != NULL && PyDict_GET_SIZE(kwargs))) {
        PyErr_SetString(PyExc_TypeError, "WorkQueue() takes no arguments");
        return NULL;
    }
    WorkQueue *q = (WorkQueue *)type->tp_alloc(type, 0);
    if (q == NULL)
        return NULL;
    q->wake = PyObject_GetAttrString((PyObject *)q, "_wake");
    if (q->wake == NULL) {
        Py_DECREF(q);
        return NULL;
    }
    return (PyObject *)q;
}

static int
wq_traverse(PyObject *op, visitproc visit, void *arg)
{
    WorkQueue *q = (WorkQueue *)op;
    Py_VISIT(Py_TYPE(op));
    for (Py_ssize_t i = 0; i < q->len; i++)
        Py_VISIT(q->items[(q->head + i) % q->cap]);
    Py_VISIT(q->wake);
    Py_VISIT(q->wake_loop);
    return 0;
}

static int
wq_clear(PyObject *op)
{
    WorkQueue *q = (WorkQueue *)op;
    while (q->len > 0)
        Py_DECREF(wq_pop(q));
    Py_CLEAR(q->wake);
    Py_CLEAR(q->wake_loop);
    return 0;
}

static void
wq_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    wq_clear(op);
    PyMem_Free(((WorkQueue *)op)->items);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyMethodDef wq_methods[] = {
    {"put", (PyCFunction)(void (*)(void))wq_put, METH_VARARGS | METH_KEYWORDS, NULL},
    {"put_nowait", wq_put_nowait, METH_O, NULL},
    {"get", (PyCFunction)(void (*)(void))wq_get, METH_VARARGS | METH_KEYWORDS, NULL},
    {"get_nowait", wq_get_nowait, METH_NOARGS, NULL},
    {"empty", wq_empty, METH_NOARGS, NULL},
    {"qsize", wq_qsize, METH_NOARGS, NULL},
    {"_spare", wq_spare_py, METH_NOARGS, NULL},
    {"_wake", wq_wake_cb, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot wq_slots[] = {
    {Py_tp_doc, "WorkQueue()\n--\n\nAn aiopyramid Executor's work queue "
                "(SimpleQueue's methods): idle threads are woken one at a "
                "time, and a pool thread runs the views it takes in C."},
    {Py_tp_new, wq_new},
    {Py_tp_methods, wq_methods},
    {Py_tp_traverse, wq_traverse},
    {Py_tp_clear, wq_clear},
    {Py_tp_dealloc, wq_dealloc},
    {0, NULL},
};

static PyType_Spec wq_spec = {
    .name = "aiopyramid._core.WorkQueue",
    .basicsize = sizeof(WorkQueue),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = wq_slots,
};

/* One more thread for the pool ex, unless it has max_workers (its
 * _adjust_thread_count asks the queue's _spare(), not a semaphore). */
static int
pool_grow(modstate *st, PyObject *ex)
{
    PyObject *v = PyObject_GetAttr(ex, ESTR(st, THREADS));
    Py_ssize_t n = v == NULL ? -1 : PyObject_Size(v);
    Py_XDECREF(v);
    if (n < 0)
        return -1;
    v = PyObject_GetAttr(ex, ESTR(st, MAX_WORKERS));
    Py_ssize_t max = v == NULL ? -1 : PyLong_AsSsize_t(v);
    Py_XDECREF(v);
    if (max == -1 && PyErr_Occurred())
        return -1;
    if (n >= max)
        return 0;
    v = PyObject_CallMethodNoArgs(ex, ESTR(st, ADJUST_THREAD_COUNT));
    if (v == NULL)
        return -1;
    Py_DECREF(v);
    return 0;
}

/* On the loop's thread: the view onto an aiopyramid Executor's queue, its
 * thread woken once this loop iteration's callbacks have run; refused as
 * ThreadPoolExecutor.submit refuses.  0, or -1 with an exception. */
static int wake_for_call(modstate *st, PyObject *ex, WorkQueue *q,
                         ThreadCall *call);

static int
submit_call(modstate *st, PyObject *ex, WorkQueue *q, ThreadCall *call)
{
    PyObject *v = NULL;
    if (PyObject_GetOptionalAttr(ex, ESTR(st, BROKEN), &v) < 0)
        return -1;
    int t = v == NULL ? 0 : PyObject_IsTrue(v);
    if (t > 0) {
        PyObject *cls = PyObject_GetAttr(st->cf_thread, ESTR(st, BROKEN_THREAD_POOL));
        if (cls != NULL)
            PyErr_SetObject(cls, v);
        Py_XDECREF(cls);
        t = -1;
    }
    Py_XDECREF(v);
    if (t < 0)
        return -1;
    const char *refused = NULL;
    for (int i = 0; i < 2 && refused == NULL; i++) {
        v = PyObject_GetAttr(i == 0 ? ex : st->cf_thread, ESTR(st, SHUTDOWN));
        t = v == NULL ? -1 : PyObject_IsTrue(v);
        Py_XDECREF(v);
        if (t < 0)
            return -1;
        if (t)
            refused = i == 0 ? "cannot schedule new futures after shutdown"
                             : "cannot schedule new futures after interpreter shutdown";
    }
    if (refused != NULL) {
        PyErr_SetString(PyExc_RuntimeError, refused);
        return -1;
    }
    call->future = PyObject_CallMethodNoArgs(call->loop, ESTR(st, CREATE_FUTURE));
    if (call->future == NULL)
        return -1;
    call->completions = completions_for(st, call->loop);
    if (call->completions == NULL || wq_push(q, (PyObject *)call) < 0)
        return -1;
    if (wake_for_call(st, ex, q, call) == 0)
        return 0;
    /* queued, but no thread could be made to come for it: off the queue
     * again and the request gets the error, unless a thread took it
     * meanwhile (_adjust_thread_count is Python): then its outcome comes */
    if (q->len > 0 && q->items[(q->head + q->len - 1) % q->cap] == (PyObject *)call) {
        q->len--;
        Py_DECREF(call);
        return -1;
    }
    PyErr_WriteUnraisable((PyObject *)call);
    return 0;
}

/* After submit_call queued call: a thread on its way for it.  0, or -1
 * with an exception. */
static int
wake_for_call(modstate *st, PyObject *ex, WorkQueue *q, ThreadCall *call)
{
    /* more queued than threads idle or on their way (every thread busy,
     * or views came faster than the idle ones are woken): one more while
     * the pool may grow, as ThreadPoolExecutor.submit would (a view that
     * blocks must not keep the next one waiting with the pool not full).
     * A pool only grows, so this is done max_workers times at most */
    if (!wq_spare(q) && pool_grow(st, ex) < 0)
        return -1;
    if (q->waking > 0 || (q->wake_scheduled && q->wake_loop == call->loop))
        return 0;
    if (q->idle != NULL) {
        PyObject *h = PyObject_CallMethodOneArg(call->loop, ESTR(st, CALL_SOON),
                                                q->wake);
        if (h == NULL) {
            PyErr_Clear(); /* no loop to wait for: at once */
            wq_wake_if_needed(q);
            return 0;
        }
        Py_DECREF(h);
        q->wake_scheduled = 1;
        Py_XSETREF(q->wake_loop, Py_NewRef(call->loop));
    }
    return 0;
}

PyObject *
bridge_run_in_executor(modstate *st, PyObject *loop, PyObject *executor,
                       PyObject *fn, PyObject *args, PyObject *kwargs,
                       PyObject *request, PyObject **callp)
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
    call->future = call->result = call->exc = call->completions = NULL;
    call->on_done = NULL;
    call->next = NULL;
    call->cancel = call->running = call->chained = 0;
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
     * the call is the pool's work item, on its WorkQueue, its outcome
     * handed back through the loop's Completions (3.14 changed the pool's
     * work items) */
    PyObject *ex = executor ? Py_NewRef(executor) : NULL;
    if (ex == NULL &&
        PyObject_GetOptionalAttr(loop, ESTR(st, DEFAULT_EXECUTOR), &ex) < 0) {
        Py_DECREF(call);
        return NULL;
    }
    PyObject *queue = NULL;
    if (ex != NULL && ex != Py_None &&
        PyObject_GetOptionalAttr(ex, ESTR(st, WORK_QUEUE), &queue) < 0) {
        Py_DECREF(ex);
        Py_DECREF(call);
        return NULL;
    }
    if (queue != NULL && Py_IS_TYPE(queue, st->WorkQueueType)) {
        int rc = submit_call(st, ex, (WorkQueue *)queue, call);
        Py_DECREF(queue);
        Py_DECREF(ex);
        PyObject *fut = rc < 0 ? NULL : Py_NewRef(call->future);
        if (fut != NULL && callp != NULL)
            *callp = Py_NewRef(call);
        Py_DECREF(call);
        return fut;
    }
    Py_XDECREF(queue);
    Py_XDECREF(ex);
#endif
    PyObject *margs[] = {loop, executor ? executor : Py_None, (PyObject *)call};
    PyObject *fut = PyObject_VectorcallMethod(
        st->str_run_in_executor, margs, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET,
        NULL);
    Py_DECREF(call);
    return fut;
}

/* A request cancelled while its view runs in a pool's thread (the client
 * left, a timeout): the request's greenlet waits here for the view's end
 * before its cancellation goes on, so its tweens and finished callbacks do
 * not unwind (close its session, give its connection back to a pool) under
 * the view still using them, as anyio's to_thread.run_sync waits.  A
 * second cancellation while it waits goes on at once.  0, or -1 with an
 * exception (the caller keeps its own). */
int
bridge_wait_running_call(modstate *st, PyObject *op)
{
    if (op == NULL || !Py_IS_TYPE(op, st->ThreadCallType))
        return 0;
    ThreadCall *self = (ThreadCall *)op;
    if (!self->running || self->on_done != NULL)
        return 0;
    PyObject *w = PyObject_CallMethodNoArgs(self->loop, ESTR(st, CREATE_FUTURE));
    if (w == NULL)
        return -1;
    self->on_done = Py_NewRef(w);
    PyObject *r = bridge_await(st, w);
    Py_DECREF(w);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
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
    st->completers = PyDict_New();
    if (st->completers == NULL)
        return -1;
    st->cf_thread = PyImport_ImportModule("concurrent.futures.thread");
    if (st->cf_thread == NULL)
        return -1;
    PyObject *queue = PyImport_ImportModule("queue");
    if (queue == NULL)
        return -1;
    st->queue_empty = PyObject_GetAttrString(queue, "Empty");
    Py_DECREF(queue);
    if (st->queue_empty == NULL)
        return -1;
    if (bridge_import_greenlet() < 0 ||
        PyModule_AddFunctions(module, executor_module_methods) < 0)
        return -1;
    if (add_type(module, &st->CompletionsType, &completions_spec, NULL) < 0 ||
        add_type(module, &st->WorkQueueType, &wq_spec, NULL) < 0)
        return -1;
    return add_type(module, &st->ThreadCallType, &threadcall_spec, NULL);
}
