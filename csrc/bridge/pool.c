/* The per-thread pool of idle request greenlets; new ones start deep on
 * the C stack, after a check that the stack has room for them. */
#include "bridge/bridge.h"

/* pool: a C stack of idle greenlets in a capsule in the thread's dict,
 * found again through a per-thread pointer */
static _Thread_local struct pool *thread_pool;

/* the idle greenlets a new pool has room for; it grows up to the limit */
#define POOL_FIRST_CAP 256

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
    /* grown as greenlets are given back (pool_give): a thread that never
     * holds many idle ones never allocates for a high limit */
    Py_ssize_t cap_n = st->pool_limit < POOL_FIRST_CAP ? st->pool_limit
                                                       : POOL_FIRST_CAP;
    if (cap_n < 1)
        cap_n = 1;
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

/* Room for more idle greenlets (the limit was raised): twice as much, up
 * to the limit.  The pool as it is now (the old one when there is no memory
 * for a larger one: the greenlet given back is then dropped, as when the
 * pool is full); never an error. */
static pool_t *
pool_grow(modstate *st, pool_t *p)
{
    Py_ssize_t cap = p->cap <= st->pool_limit / 2 ? p->cap * 2
                                                  : st->pool_limit;
    PyObject *d = PyThreadState_GetDict();
    PyObject *capsule = d == NULL ? NULL
        : PyDict_GetItemWithError(d, st->str_pool_key);
    if (capsule == NULL) {
        PyErr_Clear();
        return p;
    }
    pool_t *q = PyMem_Malloc(sizeof(pool_t) + cap * sizeof(PyObject *));
    if (q == NULL)
        return p;
    q->n = p->n;
    q->cap = cap;
    memcpy(q->items, p->items, p->n * sizeof(PyObject *));
    if (PyCapsule_SetPointer(capsule, q) < 0) {
        PyErr_Clear();
        PyMem_Free(q);
        return p;
    }
    PyMem_Free(p);
    return thread_pool = q;
}

BridgeGreenlet *
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
void
pool_give(modstate *st, BridgeGreenlet *g)
{
    PyObject *exc = PyErr_Occurred() ? exc_take() : NULL;
    pool_t *p = pool_get(st);
    if (p != NULL && p->n == p->cap && p->n < st->pool_limit)
        p = pool_grow(st, p);
    if (p != NULL && p->n < p->cap && p->n < st->pool_limit) {
        p->items[p->n++] = (PyObject *)g;
        g = NULL;
    }
    else if (p == NULL && PyErr_Occurred()) {
        PyErr_WriteUnraisable(NULL);
    }
    Py_XDECREF(g); /* an idle greenlet dies by GreenletExit at its park */
    if (exc != NULL)
        exc_restore(exc);
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
    /* the current thread's pool keeps its idle greenlets up to the new
     * limit (it grows to a raised one as greenlets come back); the others
     * end here, each killed by GreenletExit where it is parked */
    pool_t *p = pool_get(st);
    if (p == NULL)
        return NULL;
    while (p != NULL && p->n > n) {
        PyObject *g = p->items[--p->n];
        Py_DECREF(g);
        p = thread_pool; /* what the kill ran may have moved it */
    }
    if (PyErr_Occurred())
        return NULL;
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

static PyMethodDef pool_methods[] = {
    {"set_pool_limit", set_pool_limit, METH_O,
     "set_pool_limit(n)\n--\n\n"
     "Keep at most n idle greenlets per thread (this thread's pool keeps the "
     "ones it holds, up to n); returns the old limit."},
    {"pool_stats", pool_stats, METH_NOARGS,
     "pool_stats()\n--\n\n"
     "Idle greenlets in this thread's pool, the limit, greenlets created."},
    {NULL, NULL, 0, NULL},
};

int
bridge_pool_init(PyObject *module, modstate *st)
{
    if (bridge_import_greenlet() < 0)
        return -1;
    st->pool_limit = 256;
    return PyModule_AddFunctions(module, pool_methods);
}
