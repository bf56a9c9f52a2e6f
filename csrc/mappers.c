/* Mapped views: what aiopyramid's view mappers give Pyramid.
 *
 * The mapper classes (aiopyramid/config.py) decide once, at configuration
 * time, the view's shape (with Pyramid's own rules) and kind; a MappedView
 * then does the per-request work in C: call the view in the shape Pyramid
 * expects, and for a coroutine view drive what it returns right here in the
 * request greenlet, for a legacy view run it in the loop's executor, for a
 * plain view that does not block (blocking=False) call it right here. */
#include "aiopyramid.h"

enum {
    SHAPE_FUNC,              /* view(context, request) */
    SHAPE_REQUESTONLY,       /* view(request), or view.attr(request) */
    SHAPE_ATTR,              /* view.attr(context, request) */
    SHAPE_CLASS_REQUESTONLY, /* view(request).attr() */
    SHAPE_CLASS_NATIVE,      /* view(context, request).attr() */
    SHAPE_COUNT
};

enum { KIND_COROUTINE, KIND_EXECUTOR, KIND_INLINE, KIND_COUNT };

static const char *const kind_names[] = {"coroutine", "executor", "inline"};

typedef struct {
    PyObject_HEAD
    PyObject *view;
    PyObject *attr;      /* str, or NULL for __call__ */
    PyObject *executor;  /* NULL: the loop's default executor */
    PyObject *dict;
    PyObject *weakreflist;
    vectorcallfunc vectorcall;
    int shape, kind;
    Py_ssize_t body_preread; /* bodies up to this are read before the thread */
    int stream_bodies;       /* larger or chunked: streamed, else spooled */
} MappedView;

static PyObject *
call_attr(PyObject *obj, PyObject *attr, PyObject *const *args, size_t nargs)
{
    if (attr == NULL)
        return PyObject_Vectorcall(obj, args, nargs, NULL);
    PyObject *meth = PyObject_GetAttr(obj, attr);
    if (meth == NULL)
        return NULL;
    PyObject *r = PyObject_Vectorcall(meth, args, nargs, NULL);
    Py_DECREF(meth);
    return r;
}

/* The view called the way its shape says; for a coroutine view this is
 * usually the coroutine, not yet started. */
static PyObject *
invoke(modstate *st, MappedView *self, PyObject *context, PyObject *request)
{
    PyObject *both[] = {context, request};
    PyObject *inst, *r;
    switch (self->shape) {
    case SHAPE_FUNC:
        return PyObject_Vectorcall(self->view, both, 2, NULL);
    case SHAPE_REQUESTONLY:
        return call_attr(self->view, self->attr, &request, 1);
    case SHAPE_ATTR:
        return call_attr(self->view, self->attr, both, 2);
    case SHAPE_CLASS_REQUESTONLY:
        inst = PyObject_Vectorcall(self->view, &request, 1, NULL);
        break;
    default:
        inst = PyObject_Vectorcall(self->view, both, 2, NULL);
        break;
    }
    if (inst == NULL)
        return NULL;
    if (PyObject_SetAttr(request, st->str_view_attr, inst) < 0) {
        Py_DECREF(inst);
        return NULL;
    }
    r = call_attr(inst, self->attr, NULL, 0);
    Py_DECREF(inst);
    return r;
}

static PyObject *
invoke_in_thread(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "expected (context, request)");
        return NULL;
    }
    MappedView *self = (MappedView *)op;
    return invoke(state_of_type(Py_TYPE(op)), self, args[0], args[1]);
}

static PyMethodDef invoke_def = {
    "invoke", (PyCFunction)(void (*)(void))invoke_in_thread, METH_FASTCALL,
    NULL};

/* A body of known length up to `limit` bytes is read here, in the request
 * greenlet (where wsgi.input waits on the socket without a thread), and the
 * thread gets it in memory, seekable.  A larger or chunked one is spooled
 * here too by WebOb's make_body_seekable (past request_body_tempfile_limit
 * to a temporary file), so a slow uploader holds no thread; or, with
 * `stream`, streamed: the view's thread reads wsgi.input as the body comes
 * (a read the buffer cannot answer handed to the loop), so the view starts
 * early but holds its thread while the client sends. */
static int
prepare_body_for_thread(modstate *st, PyObject *request, Py_ssize_t limit,
                        int stream)
{
    /* no Content-Length and no Transfer-Encoding: a request without a body
     * (RFC 9112, 6.3), nothing to read before the thread starts.  Servers
     * that say wsgi.input_terminated (ours) make WebOb call every such
     * body readable, and spooling its nothing cost more than the rest of
     * the hand-off */
    PyObject *environ = NULL;
    if (PyObject_GetOptionalAttrString(request, "environ", &environ) < 0)
        return -1;
    if (environ != NULL && PyDict_CheckExact(environ)) {
        int has = PyDict_GetItemWithError(environ, st->str_content_length) != NULL;
        if (!has && !PyErr_Occurred())
            has = PyDict_GetItemWithError(environ, st->str_transfer_encoding) != NULL;
        Py_DECREF(environ);
        if (PyErr_Occurred())
            return -1;
        if (!has)
            return 0;
    }
    else {
        Py_XDECREF(environ);
    }
    PyObject *v = PyObject_GetAttrString(request, "is_body_readable");
    if (v == NULL)
        return -1;
    int rd = PyObject_IsTrue(v);
    Py_DECREF(v);
    if (rd <= 0)
        return rd;
    if ((v = PyObject_GetAttrString(request, "is_body_seekable")) == NULL)
        return -1;
    int seekable = PyObject_IsTrue(v);
    Py_DECREF(v);
    if (seekable != 0)
        return seekable < 0 ? -1 : 0; /* already a file the thread reads */
    if ((v = PyObject_GetAttrString(request, "content_length")) == NULL)
        return -1;
    Py_ssize_t n = v == Py_None ? -1 : PyLong_AsSsize_t(v);
    Py_DECREF(v);
    if (n == -1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Clear(); /* a length past ssize_t (llhttp takes 64 bits) */
        n = PY_SSIZE_T_MAX;
    }
    if (n < 0 || n > limit) {
        if (stream)
            return 0;
        PyObject *r = PyObject_CallMethodNoArgs(request,
                                                st->str_make_body_seekable);
        Py_XDECREF(r);
        return r == NULL ? -1 : 0;
    }
    PyObject *raw = PyObject_GetAttrString(request, "body_file_raw");
    if (raw == NULL)
        return -1;
    PyObject *data = PyObject_CallMethod(raw, "read", "n", n);
    Py_DECREF(raw);
    if (data == NULL)
        return -1;
    int rc = PyObject_SetAttrString(request, "body", data);
    Py_DECREF(data);
    return rc;
}

/* A plain view's response whose app_iter is made as it is iterated (a
 * generator, not a list or a tuple: WebOb keeps it in _app_iter): its
 * pieces are made in the view's executor too (_executor.ThreadAppIter),
 * not on the loop.  0, or -1 with an exception. */
static int
stream_in_thread(modstate *st, PyObject **rp, PyObject *loop,
                 PyObject *executor)
{
    PyObject *it = NULL;
    if (PyObject_GetOptionalAttr(*rp, st->str_app_iter, &it) < 0)
        return -1;
    if (it == NULL || PyList_CheckExact(it) || PyTuple_CheckExact(it)) {
        Py_XDECREF(it);
        return 0;
    }
    Py_DECREF(it);
    PyObject *f = import_attr("aiopyramid._executor", "stream_in_thread", 0);
    if (f == NULL)
        return -1;
    PyObject *r = PyObject_CallFunctionObjArgs(
        f, *rp, loop, executor ? executor : Py_None, NULL);
    Py_DECREF(f);
    if (r == NULL)
        return -1;
    Py_SETREF(*rp, r);
    return 0;
}

static PyObject *
mapped_run(PyObject *op, PyObject *const *args, size_t nargsf,
           PyObject *kwnames)
{
    MappedView *self = (MappedView *)op;
    modstate *st = state_of_type(Py_TYPE(op));
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 2 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames))) {
        PyErr_Format(PyExc_TypeError,
                     "a mapped view takes (context, request), got %zd "
                     "positional arguments", nargs);
        return NULL;
    }
    PyObject *context = args[0], *request = args[1];

    if (self->kind == KIND_COROUTINE) {
        PyObject *aw = invoke(st, self, context, request);
        if (aw == NULL || !is_awaitable(aw))
            return aw;
        PyObject *r = bridge_await(st, aw);
        Py_DECREF(aw);
        return r;
    }
    if (self->kind == KIND_INLINE) {
        /* a plain view that does not block: right here, in the request
         * greenlet, where a synchronized coroutine it calls suspends only
         * this request */
        return invoke(st, self, context, request);
    }

    /* a legacy view: off the loop when there is one to keep free */
    if (!bridge_can_suspend(st))
        return invoke(st, self, context, request);
    PyObject *loop = bridge_job_loop(st);
    if (loop == NULL)
        return NULL;
    if (loop == Py_None) {
        /* a request greenlet driven with no loop running: inline */
        Py_DECREF(loop);
        return invoke(st, self, context, request);
    }
    if (prepare_body_for_thread(st, request, self->body_preread,
                                self->stream_bodies) < 0) {
        Py_DECREF(loop);
        return NULL;
    }
    PyObject *fn = PyCFunction_New(&invoke_def, op);
    PyObject *fargs = fn ? PyTuple_Pack(2, context, request) : NULL;
    PyObject *fut = NULL, *r = NULL, *call = NULL;
    if (fargs != NULL)
        fut = bridge_run_in_executor(st, loop, self->executor, fn, fargs,
                                     NULL, request, &call);
    if (fut != NULL)
        r = bridge_await(st, fut);
    if (r == NULL && call != NULL &&
        PyErr_ExceptionMatches(st->CancelledError)) {
        /* cancelled while the view runs in its thread: its end first */
        PyObject *exc = exc_take();
        if (bridge_wait_running_call(st, call) < 0)
            PyErr_Clear();
        exc_restore(exc);
    }
    Py_XDECREF(call);
    Py_XDECREF(fut);
    Py_XDECREF(fargs);
    Py_XDECREF(fn);
    if (r != NULL && stream_in_thread(st, &r, loop, self->executor) < 0)
        Py_CLEAR(r);
    Py_DECREF(loop);
    return r;
}

static PyObject *
mapped_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf,
                  PyObject *kwnames)
{
    PyObject *r = mapped_run(op, args, nargsf, kwnames);
    if (r == NULL || ((MappedView *)op)->kind == KIND_COROUTINE)
        return r;
    modstate *st = state_of_type(Py_TYPE(op));
    if (!PyCoro_CheckExact(r) && Py_TYPE(r) != st->SpawnType &&
        Py_TYPE(r) != st->DelegateType)
        return r;
    /* a plain def that returned a coroutine (a thin wrapper, a decorator
     * that hid the coroutine function): only the call tells, so await it
     * here, in the request greenlet, as a coroutine view's */
    PyObject *v = bridge_await(st, r);
    Py_DECREF(r);
    return v;
}

static PyObject *
mapped_repr(PyObject *op)
{
    MappedView *self = (MappedView *)op;
    return PyUnicode_FromFormat("<%s view %R>", kind_names[self->kind],
                                self->view);
}

static PyObject *
mapped_descr_get(PyObject *self, PyObject *obj, PyObject *type)
{
    return Py_NewRef(self); /* a view, not a method: never binds */
}

static int
mapped_traverse(PyObject *op, visitproc visit, void *arg)
{
    MappedView *self = (MappedView *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(self->view);
    Py_VISIT(self->attr);
    Py_VISIT(self->executor);
    Py_VISIT(self->dict);
    return 0;
}

static int
mapped_clear(PyObject *op)
{
    MappedView *self = (MappedView *)op;
    Py_CLEAR(self->view);
    Py_CLEAR(self->attr);
    Py_CLEAR(self->executor);
    Py_CLEAR(self->dict);
    return 0;
}

static PyObject *
mapped_get_kind(PyObject *op, void *closure)
{
    return PyUnicode_FromString(kind_names[((MappedView *)op)->kind]);
}

static PyMemberDef mapped_members[] = {
    {"__dictoffset__", T_PYSSIZET, offsetof(MappedView, dict), READONLY},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(MappedView, weakreflist),
     READONLY},
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(MappedView, vectorcall),
     READONLY},
    {"view", T_OBJECT, offsetof(MappedView, view), READONLY},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef mapped_getset[] = {
    {"kind", mapped_get_kind, NULL, "'coroutine', 'executor' or 'inline'", NULL},
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot mapped_slots[] = {
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_descr_get, mapped_descr_get},
    {Py_tp_repr, mapped_repr},
    {Py_tp_members, mapped_members},
    {Py_tp_getset, mapped_getset},
    {Py_tp_traverse, mapped_traverse},
    {Py_tp_clear, mapped_clear},
    {Py_tp_dealloc, gc_dealloc},
    {Py_tp_doc, "A view as mapped by aiopyramid: call with (context, request)."},
    {0, NULL},
};

static PyType_Spec mapped_spec = {
    .name = "aiopyramid._core.MappedView",
    .basicsize = sizeof(MappedView),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_HAVE_VECTORCALL,
    .slots = mapped_slots,
};

static PyObject *
map_view(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"view", "shape", "kind", "attr", "executor",
                             "body_preread", "stream_bodies", NULL};
    modstate *st = state_of_module(module);
    PyObject *view, *attr = Py_None, *executor = Py_None;
    int shape, kind;
    Py_ssize_t body_preread = 65536;
    int stream_bodies = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "Oii|OOni:map_view", kwlist,
                                     &view, &shape, &kind, &attr, &executor,
                                     &body_preread, &stream_bodies))
        return NULL;
    if (body_preread < 0) {
        PyErr_Format(PyExc_ValueError, "body_preread must be 0 or more bytes, "
                     "got %zd", body_preread);
        return NULL;
    }
    if (shape < 0 || shape >= SHAPE_COUNT || kind < 0 || kind >= KIND_COUNT) {
        PyErr_Format(PyExc_ValueError, "unknown view shape %d or kind %d",
                     shape, kind);
        return NULL;
    }
    if (attr != Py_None && !PyUnicode_Check(attr)) {
        PyErr_Format(PyExc_TypeError, "attr must be a str or None, not %R",
                     attr);
        return NULL;
    }
    MappedView *self = PyObject_GC_New(MappedView, st->MappedViewType);
    if (self == NULL)
        return NULL;
    self->view = Py_NewRef(view);
    self->attr = attr == Py_None ? NULL : Py_NewRef(attr);
    self->executor = executor == Py_None ? NULL : Py_NewRef(executor);
    self->dict = NULL;
    self->weakreflist = NULL;
    self->vectorcall = mapped_vectorcall;
    self->shape = shape;
    self->kind = kind;
    self->body_preread = body_preread;
    self->stream_bodies = stream_bodies != 0;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static PyMethodDef mappers_methods[] = {
    {"map_view", (PyCFunction)(void (*)(void))map_view,
     METH_VARARGS | METH_KEYWORDS,
     "map_view(view, shape, kind, attr=None, executor=None, "
     "body_preread=65536, stream_bodies=0)\n--\n\n"
     "The mapped view for Pyramid: shape is one of the SHAPE_* constants, "
     "kind KIND_COROUTINE, KIND_EXECUTOR or KIND_INLINE; an executor "
     "view's request body up to body_preread bytes is read before its "
     "thread starts, a larger or chunked one spooled (to a temporary file "
     "past WebOb's limit) before it starts, or streamed to it if "
     "stream_bodies."},
    {NULL, NULL, 0, NULL},
};

int
mappers_init(PyObject *module, modstate *st)
{
    if (add_type(module, &st->MappedViewType, &mapped_spec, NULL) < 0 ||
        PyModule_AddFunctions(module, mappers_methods) < 0)
        return -1;
    if (PyModule_AddIntConstant(module, "SHAPE_FUNC", SHAPE_FUNC) < 0 ||
        PyModule_AddIntConstant(module, "SHAPE_REQUESTONLY", SHAPE_REQUESTONLY) < 0 ||
        PyModule_AddIntConstant(module, "SHAPE_ATTR", SHAPE_ATTR) < 0 ||
        PyModule_AddIntConstant(module, "SHAPE_CLASS_REQUESTONLY",
                                SHAPE_CLASS_REQUESTONLY) < 0 ||
        PyModule_AddIntConstant(module, "SHAPE_CLASS_NATIVE",
                                SHAPE_CLASS_NATIVE) < 0 ||
        PyModule_AddIntConstant(module, "KIND_COROUTINE", KIND_COROUTINE) < 0 ||
        PyModule_AddIntConstant(module, "KIND_EXECUTOR", KIND_EXECUTOR) < 0 ||
        PyModule_AddIntConstant(module, "KIND_INLINE", KIND_INLINE) < 0)
        return -1;
    return 0;
}
