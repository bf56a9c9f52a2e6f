/* The decorators: synchronize (a coroutine function callable from plain
 * code), coroutine and use_executor (coroutine functions around plain
 * callables), and how a coroutine function is recognised. */
#include "bridge/bridge.h"

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
        if (!st->mark_synchronized) {
            r = bridge_await(st, aw);
            Py_DECREF(aw);
            return r;
        }
        /* driven in this greenlet's context, marked meanwhile: a Task the
         * coroutine makes inherits the mark, one made before (a coroutine
         * view's own, asking while the view waits here) does not
         * (aiopyramid/auth.py tells them apart by it).  A set and a reset
         * of a ContextVar cost about as much as the rest of a synchronized
         * call that does not suspend: only apps with a coroutine policy
         * proxy, the mark's only reader, pay for them */
        PyObject *token = PyContextVar_Set(st->in_synchronized, Py_True);
        if (token == NULL) {
            Py_DECREF(aw);
            return NULL;
        }
        r = bridge_await(st, aw);
        Py_DECREF(aw);
        PyObject *err = r == NULL ? exc_take() : NULL;
        if (PyContextVar_Reset(st->in_synchronized, token) < 0) {
            Py_CLEAR(r);
            Py_CLEAR(err);
        }
        Py_DECREF(token);
        if (err != NULL)
            exc_restore(err);
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

/* __get__ of Synchronized and CoroutineFunction: bind like a function */
static PyObject *
bind_as_method(PyObject *self, PyObject *obj, PyObject *type)
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
    {Py_tp_descr_get, bind_as_method},
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

/* synchronize(func, strict=...); the decorator with arguments,
 * synchronize(strict=...)(func), is built in aiopyramid/helpers.py */
static PyObject *
synchronize(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"func", "strict", NULL};
    PyObject *func;
    int strict = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|$p:synchronize", kwlist,
                                     &func, &strict))
        return NULL;
    return make_synchronized(state_of_module(module), func, strict);
}

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
    if (vectorcall_args_to_tuple_dict(args, nargs, kwnames, &d->args,
                                      &d->kwargs) < 0)
        goto error;
    return (PyObject *)d;
error:
    Py_DECREF(d);
    return NULL;
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
    {Py_tp_descr_get, bind_as_method},
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
    /* calls return a Delegate (registered as a Coroutine), which asyncio.run and
     * create_task accept (they refuse generators since 3.12) */
    return make_coroutine_function(st, func, NULL, CF_CALL);
}

/* use_executor(func, executor=...); use_executor(executor=...)(func) is
 * built in aiopyramid/helpers.py */
static PyObject *
use_executor(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"func", "executor", NULL};
    PyObject *func, *executor = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|$O:use_executor", kwlist,
                                     &func, &executor))
        return NULL;
    return make_coroutine_function(state_of_module(module), func, executor,
                                   CF_EXECUTOR);
}

static PyObject *
is_generator(PyObject *module, PyObject *obj)
{
    modstate *st = state_of_module(module);
    if (is_generator_function(obj) || PyGen_Check(obj))
        Py_RETURN_TRUE;
    int fut = is_future(st, obj);
    return fut < 0 ? NULL : PyBool_FromLong(fut);
}

static PyObject *
is_coroutine_function(PyObject *module, PyObject *obj)
{
    int r = bridge_is_coroutine_function(state_of_module(module), obj);
    return r < 0 ? NULL : PyBool_FromLong(r);
}

static PyObject *
mark_synchronized(PyObject *module, PyObject *unused)
{
    state_of_module(module)->mark_synchronized = 1;
    Py_RETURN_NONE;
}

static PyMethodDef decorator_methods[] = {
    {"_mark_synchronized", mark_synchronized, METH_NOARGS,
     "_mark_synchronized()\n--\n\n"
     "From now on synchronized calls set _in_synchronized while they run "
     "(aiopyramid.auth's policy proxies ask for it)."},
    {"synchronize", (PyCFunction)(void (*)(void))synchronize,
     METH_VARARGS | METH_KEYWORDS,
     "synchronize(func, *, strict=True)\n--\n\n"
     "Make a coroutine function callable from plain code running in a "
     "request greenlet."},
    {"use_executor", (PyCFunction)(void (*)(void))use_executor,
     METH_VARARGS | METH_KEYWORDS,
     "use_executor(func, *, executor=None)\n--\n\n"
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
    {NULL, NULL, 0, NULL},
};

int
bridge_decorators_init(PyObject *module, modstate *st)
{
    if (bridge_import_greenlet() < 0)
        return -1;
    if (add_type(module, &st->SynchronizedType, &sync_spec, NULL) < 0 ||
        add_type(module, &st->CoroutineFunctionType, &cf_spec, NULL) < 0)
        return -1;
    return PyModule_AddFunctions(module, decorator_methods);
}
