/* input.c: wsgi.input (HttpInput: reading the request body, waiting on the
 * socket) and wsgi.file_wrapper (FileWrapper). */
#include "http.h"

PyObject *
input_new(modstate *st, HttpRequest *r)
{
    HttpInput *in = PyObject_GC_New(HttpInput, st->HttpInputType);
    if (in == NULL)
        return NULL;
    in->req = (HttpRequest *)Py_NewRef(r);
    PyObject_GC_Track(in);
    return (PyObject *)in;
}

static int
input_traverse(PyObject *op, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(op));
    Py_VISIT((PyObject *)((HttpInput *)op)->req);
    return 0;
}

static int
input_clear(PyObject *op)
{
    Py_CLEAR(((HttpInput *)op)->req);
    return 0;
}

/* Waits for more of the body; 0 when some came (or the body ended). */
static int
input_wait(HttpRequest *r)
{
    HttpProtocol *p = r->proto;
    if (p == NULL || r->body_done)
        return 0;
    modstate *st = proto_state(p);
    if (r->body_error) {
        PyErr_SetString(PyExc_OSError, "the client sent a malformed body");
        return -1;
    }
    if (p->closed) {
        PyErr_SetString(PyExc_OSError,
                        "the client disconnected before sending the whole "
                        "body");
        return -1;
    }
    if (r->expect_continue && !r->continue_sent && !r->headers_sent) {
        static const char msg[] = "HTTP/1.1 100 Continue\r\n\r\n";
        r->continue_sent = 1;
        if (proto_write(p, msg, sizeof(msg) - 1) < 0)
            return -1;
    }
    /* a paused read for a full body buffer can go on now */
    set_read_paused(p, PAUSE_BODY, 0);
    if (wait_on(st, p->server, &r->body_waiter) < 0)
        return -1;
    if (r->body_error) {
        PyErr_SetString(PyExc_OSError, "the client sent a malformed body");
        return -1;
    }
    if (p->closed && !r->body_done && r->blen == r->bpos) {
        PyErr_SetString(PyExc_OSError,
                        "the client disconnected before sending the whole "
                        "body");
        return -1;
    }
    return 0;
}

static PyObject *
input_take(HttpRequest *r, size_t n)
{
    size_t avail = r->blen - r->bpos;
    if (n > avail)
        n = avail;
    PyObject *b = PyBytes_FromStringAndSize(r->bbuf + r->bpos, (Py_ssize_t)n);
    if (b == NULL)
        return NULL;
    r->bpos += n;
    if (r->bpos == r->blen)
        r->bpos = r->blen = 0;
    if (r->proto && (r->proto->read_paused & PAUSE_BODY) &&
        (Py_ssize_t)(r->blen - r->bpos) < r->proto->server->body_buffer / 2)
        set_read_paused(r->proto, PAUSE_BODY, 0);
    return b;
}

static int
size_arg(PyObject *const *args, Py_ssize_t nargs, const char *fname,
         Py_ssize_t *size)
{
    *size = -1;
    if (nargs > 1) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most 1 argument (%zd "
                     "given)", fname, nargs);
        return -1;
    }
    if (nargs == 1 && args[0] != Py_None) {
        *size = PyLong_AsSsize_t(args[0]);
        if (*size == -1 && PyErr_Occurred())
            return -1;
    }
    return 0;
}

/* read() or readline() from a thread other than the loop's, when the
 * buffer already holds the answer (no wait) and taking it does not resume
 * the transport (input_take's rule; only the loop's thread may): taken here,
 * under the GIL, as on the loop, without a hand-off to it.  NULL with no
 * exception: hand off. */
static PyObject *
input_take_ready(HttpRequest *r, const char *name, PyObject *const *args,
                 Py_ssize_t nargs)
{
    int line = strcmp(name, "readline") == 0;
    Py_ssize_t size;
    if ((!line && strcmp(name, "read") != 0) || r->body_error)
        return NULL;
    if (size_arg(args, nargs, name, &size) < 0)
        return NULL;
    size_t avail = r->blen - r->bpos, want;
    if (line) {
        const char *nl = avail ? memchr(r->bbuf + r->bpos, '\n', avail) : NULL;
        want = nl ? (size_t)(nl - (r->bbuf + r->bpos)) + 1 : avail;
        if (size >= 0 && want > (size_t)size)
            want = (size_t)size;
        else if (nl == NULL && !r->body_done)
            return NULL;
    }
    else if (size >= 0 && (size_t)size <= avail)
        want = (size_t)size;
    else if (r->body_done)
        want = avail;
    else
        return NULL;
    if ((r->proto->read_paused & PAUSE_BODY) &&
        (Py_ssize_t)(avail - want) < r->proto->server->body_buffer / 2)
        return NULL;
    return input_take(r, want);
}

/* wsgi.input read from a thread other than the loop's (an executor
 * thread): waiting for the body, and pausing or resuming the transport, must
 * happen on the loop, so the whole call runs there, in a greenlet, while this
 * thread waits.  NULL with no exception: on the loop's thread, read here. */
static PyObject *
input_off_loop(PyObject *self, const char *name, PyObject *const *args,
               Py_ssize_t nargs)
{
    HttpRequest *r = ((HttpInput *)self)->req;
    if (r == NULL || r->proto == NULL || r->proto->server == NULL)
        return NULL;
    modstate *st = proto_state(r->proto);
    if (bridge_can_suspend(st))
        return NULL; /* a request greenlet */
    PyObject *loop = PyObject_CallNoArgs(st->get_running_loop);
    if (loop == NULL)
        return NULL;
    Py_DECREF(loop);
    PyObject *server_loop = r->proto->server->loop;
    if (loop == server_loop)
        return NULL;
    if (loop != Py_None) {
        PyErr_SetString(PyExc_RuntimeError,
                        "wsgi.input was read on another event loop than its "
                        "server's");
        return NULL;
    }
    /* no loop runs here: read here too unless the server's runs elsewhere */
    PyObject *running = PyObject_CallMethod(server_loop, "is_running", NULL);
    if (running == NULL)
        return NULL;
    Py_DECREF(running);
    if (running != Py_True)
        return NULL;
    PyObject *ready = input_take_ready(r, name, args, nargs);
    if (ready != NULL || PyErr_Occurred())
        return ready;
    PyObject *func, *fargs = NULL, *coro = NULL, *wait = NULL, *res = NULL;
    func = PyObject_GetAttrString(self, name);
    if (func == NULL || (fargs = PyTuple_New(nargs)) == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < nargs; i++)
        PyTuple_SET_ITEM(fargs, i, Py_NewRef(args[i]));
    coro = bridge_spawn_new(st, func, fargs, NULL, NULL);
    if (coro == NULL)
        goto done;
    PyObject *mod = PyImport_ImportModule("aiopyramid._executor");
    if (mod != NULL) {
        wait = PyObject_GetAttrString(mod, "wait_in_thread");
        Py_DECREF(mod);
    }
    if (wait != NULL)
        res = PyObject_CallFunctionObjArgs(wait, coro, server_loop, NULL);
done:
    Py_XDECREF(wait);
    Py_XDECREF(coro);
    Py_XDECREF(fargs);
    Py_XDECREF(func);
    if (res == NULL && !PyErr_Occurred())
        PyErr_SetString(PyExc_SystemError, "wsgi.input: no result");
    return res;
}

#define INPUT_ON_LOOP(name)                                             \
    do {                                                                \
        PyObject *off_ = input_off_loop(self, (name), args, nargs);     \
        if (off_ != NULL || PyErr_Occurred())                           \
            return off_;                                                \
    } while (0)

static PyObject *
input_read(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    INPUT_ON_LOOP("read");
    HttpRequest *r = ((HttpInput *)self)->req;
    Py_ssize_t size;
    if (size_arg(args, nargs, "read", &size) < 0)
        return NULL;
    while (!r->body_done &&
           (size < 0 || (Py_ssize_t)(r->blen - r->bpos) < size)) {
        size_t before = r->blen - r->bpos;
        if (input_wait(r) < 0)
            return NULL;
        if (r->proto == NULL || (r->blen - r->bpos == before && r->proto->closed))
            break;
    }
    return input_take(r, size < 0 ? (size_t)-1 : (size_t)size);
}

static PyObject *
input_readline(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    INPUT_ON_LOOP("readline");
    HttpRequest *r = ((HttpInput *)self)->req;
    Py_ssize_t size;
    if (size_arg(args, nargs, "readline", &size) < 0)
        return NULL;
    /* what is already searched (from bpos, which stays the line's start
     * while we wait) is not searched again: a long line costs linear time */
    size_t searched = 0;
    for (;;) {
        size_t avail = r->blen - r->bpos;
        if (searched > avail)
            searched = 0; /* another reader took some meanwhile */
        const char *nl = avail > searched
            ? memchr(r->bbuf + r->bpos + searched, '\n', avail - searched)
            : NULL;
        searched = avail;
        size_t want = nl ? (size_t)(nl - (r->bbuf + r->bpos)) + 1 : avail;
        if (size >= 0 && want > (size_t)size)
            return input_take(r, (size_t)size);
        if (nl != NULL || r->body_done)
            return input_take(r, want);
        if (input_wait(r) < 0)
            return NULL;
        if (r->proto == NULL ||
            (r->blen - r->bpos == avail && r->proto->closed))
            return input_take(r, avail);
    }
}

static PyObject *
input_readlines(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    INPUT_ON_LOOP("readlines");
    Py_ssize_t hint;
    if (size_arg(args, nargs, "readlines", &hint) < 0)
        return NULL;
    PyObject *lines = PyList_New(0);
    if (lines == NULL)
        return NULL;
    Py_ssize_t total = 0;
    for (;;) {
        PyObject *line = input_readline(self, NULL, 0);
        if (line == NULL) {
            Py_DECREF(lines);
            return NULL;
        }
        Py_ssize_t n = PyBytes_GET_SIZE(line);
        if (n == 0) {
            Py_DECREF(line);
            break;
        }
        int rc = PyList_Append(lines, line);
        Py_DECREF(line);
        if (rc < 0) {
            Py_DECREF(lines);
            return NULL;
        }
        total += n;
        if (hint > 0 && total >= hint)
            break;
    }
    return lines;
}

static PyObject *
input_iternext(PyObject *self)
{
    PyObject *line = input_off_loop(self, "readline", NULL, 0);
    if (line == NULL && !PyErr_Occurred())
        line = input_readline(self, NULL, 0);
    if (line != NULL && PyBytes_GET_SIZE(line) == 0) {
        Py_DECREF(line);
        return NULL;
    }
    return line;
}

static PyObject *
input_iter(PyObject *self)
{
    return Py_NewRef(self);
}

static PyMethodDef input_methods[] = {
    {"read", (PyCFunction)(void (*)(void))input_read, METH_FASTCALL,
     "read(size=-1)\n--\n\nUp to size bytes of the body; all of it by "
     "default.  Waits for the client when it must."},
    {"readline", (PyCFunction)(void (*)(void))input_readline, METH_FASTCALL,
     "readline(size=-1)\n--\n\nOne line of the body."},
    {"readlines", (PyCFunction)(void (*)(void))input_readlines, METH_FASTCALL,
     "readlines(hint=-1)\n--\n\nThe body's lines."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot input_slots[] = {
    {Py_tp_methods, input_methods},
    {Py_tp_iter, input_iter},
    {Py_tp_iternext, input_iternext},
    {Py_tp_traverse, input_traverse},
    {Py_tp_clear, input_clear},
    {Py_tp_dealloc, gc_dealloc},
    {Py_tp_doc, "wsgi.input: the request body, streamed from the socket."},
    {0, NULL},
};

PyType_Spec input_spec = {
    .name = "aiopyramid._core.HttpInput",
    .basicsize = sizeof(HttpInput),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = input_slots,
};

static PyObject *
filewrapper_new(PyTypeObject *tp, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"filelike", "blksize", NULL};
    PyObject *filelike;
    Py_ssize_t blksize = 8192;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|n:FileWrapper", kwlist,
                                     &filelike, &blksize))
        return NULL;
    if (blksize <= 0) {
        PyErr_Format(PyExc_ValueError, "blksize must be positive, got %zd",
                     blksize);
        return NULL;
    }
    FileWrapper *self = (FileWrapper *)tp->tp_alloc(tp, 0);
    if (self == NULL)
        return NULL;
    self->filelike = Py_NewRef(filelike);
    self->blksize = blksize;
    return (PyObject *)self;
}

static PyObject *
filewrapper_iternext(PyObject *op)
{
    FileWrapper *self = (FileWrapper *)op;
    modstate *st = state_of_type(Py_TYPE(op));
    PyObject *n = PyLong_FromSsize_t(self->blksize);
    if (n == NULL)
        return NULL;
    PyObject *data = PyObject_CallMethodOneArg(self->filelike, HSTR(st, READ),
                                               n);
    Py_DECREF(n);
    if (data == NULL)
        return NULL;
    if (PyBytes_Check(data) && PyBytes_GET_SIZE(data) == 0) {
        Py_DECREF(data);
        return NULL;
    }
    return data;
}

static PyObject *
filewrapper_close(PyObject *op, PyObject *unused)
{
    FileWrapper *self = (FileWrapper *)op;
    PyObject *meth;
    if (PyObject_GetOptionalAttrString(self->filelike, "close", &meth) < 0)
        return NULL;
    if (meth == NULL)
        Py_RETURN_NONE;
    PyObject *r = PyObject_CallNoArgs(meth);
    Py_DECREF(meth);
    return r;
}

static int
filewrapper_traverse(PyObject *op, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(((FileWrapper *)op)->filelike);
    return 0;
}

static int
filewrapper_clear(PyObject *op)
{
    Py_CLEAR(((FileWrapper *)op)->filelike);
    return 0;
}

static PyMethodDef filewrapper_methods[] = {
    {"close", filewrapper_close, METH_NOARGS,
     "close()\n--\n\nClose the wrapped file."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot filewrapper_slots[] = {
    {Py_tp_new, filewrapper_new},
    {Py_tp_iter, input_iter},
    {Py_tp_iternext, filewrapper_iternext},
    {Py_tp_methods, filewrapper_methods},
    {Py_tp_traverse, filewrapper_traverse},
    {Py_tp_clear, filewrapper_clear},
    {Py_tp_dealloc, gc_dealloc},
    {Py_tp_doc, "FileWrapper(filelike, blksize=8192)\n--\n\n"
                "wsgi.file_wrapper: iterates a file in blocks."},
    {0, NULL},
};

PyType_Spec filewrapper_spec = {
    .name = "aiopyramid._core.FileWrapper",
    .basicsize = sizeof(FileWrapper),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = filewrapper_slots,
};
