/* Internal declarations of the greenlet <-> asyncio bridge (csrc/bridge/).
 *
 * spawn_greenlet(func) returns a Spawn: a coroutine whose yields are the raw
 * yields of func's greenlet.  Code in that greenlet drives coroutines itself
 * (bridge_await) and switches up to the Spawn's driver only to suspend, with
 * what the coroutine yielded; the driving Task sends or throws, and the Spawn
 * switches that back down.  A coroutine that never suspends costs no switch.
 *
 * Greenlets come from a per-thread pool: each runs worker(), which takes jobs
 * from the Spawn that switched into it and parks itself between jobs.
 *
 * greenlet's C API pointer is static per file: every file here that calls
 * PyGreenlet_* imports it in its init (bridge_import_greenlet). */
#ifndef AIOPYRAMID_BRIDGE_H
#define AIOPYRAMID_BRIDGE_H

#include "aiopyramid.h"
#include <greenlet/greenlet.h>

/* internal to the extension: direct calls, no PLT */
#pragma GCC visibility push(hidden)

/* BridgeGreenlet: greenlet with a pointer to its current job */

typedef struct Spawn Spawn;

typedef struct {
    PyGreenlet base;
    Spawn *job;   /* borrowed: the Spawn outlives its job (see spawn_finalize) */
    int idle;     /* parked in the pool, or about to be: no job to resume */
} BridgeGreenlet;

/* Spawn (spawn.c) */

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
    bridge_on_end on_end;           /* told of the job's end, with: */
    PyObject *on_end_owner, *on_end_task;
    PyObject *loop;                 /* the running loop that drives the job,
                                       as its maker knew it, or NULL */
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

/* Delegate: a coroutine object around another awaitable (delegate.c) */

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

/* Imports greenlet's C API into the calling file's static pointer. */
static inline int
bridge_import_greenlet(void)
{
    PyGreenlet_Import();
    return _PyGreenlet_API == NULL ? -1 : 0;
}

static inline PyObject *
running_loop(modstate *st)
{
    return PyObject_CallNoArgs(st->get_running_loop);
}

/* spawn.c: the job whose greenlet this thread runs now (a hint) */
extern _Thread_local Spawn *running_job;
/* spawn.c: asyncio.isfuture(obj): 1, 0, or -1 with an error set */
int is_future(modstate *st, PyObject *obj);

/* greenlet.c */
void bgreenlet_dealloc(PyObject *self);

/* pool.c */
BridgeGreenlet *pool_take(modstate *st);
void pool_give(modstate *st, BridgeGreenlet *g); /* steals g */

/* await.c */
PyObject *awaitable_iter(PyObject *aw);
PySendResult iter_throw(modstate *st, PyObject *it, PyObject *exc,
                        PyObject **result);

/* delegate.c */
Delegate *delegate_new(modstate *st, int kind);
PyObject *as_coroutine(modstate *st, PyObject *aw);

/* init.c */
PyObject *import_attr(const char *module, const char *name, int optional);

/* each file's part of the module's init: its types and functions */
int bridge_greenlet_init(PyObject *module, modstate *st);
int bridge_pool_init(PyObject *module, modstate *st);
int bridge_spawn_init(PyObject *module, modstate *st);
int bridge_worker_init(PyObject *module, modstate *st);
int bridge_await_init(PyObject *module, modstate *st);
int bridge_delegate_init(PyObject *module, modstate *st);
int bridge_decorators_init(PyObject *module, modstate *st);
int bridge_executor_init(PyObject *module, modstate *st);

#pragma GCC visibility pop

#endif
