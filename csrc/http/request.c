/* request.c: HttpRequest, one request: its type, start_response and write(), and
 * running the app in its Task and request greenlet. */
#include "http.h"

static PyObject *request_vectorcall(PyObject *self, PyObject *const *args,
                                    size_t nargsf, PyObject *kwnames);

HttpRequest *
request_new(modstate *st, HttpProtocol *p, PyObject *environ)
{
    HttpRequest *r = PyObject_GC_New(HttpRequest, st->HttpRequestType);
    if (r == NULL)
        return NULL;
    r->proto = (HttpProtocol *)Py_NewRef(p);
    r->environ = Py_NewRef(environ);
    r->task = r->status = r->headers = r->body_waiter = r->ws = NULL;
    r->bbuf = NULL;
    r->bpos = r->blen = r->bcap = 0;
    r->resp_length = -1;
    r->resp_written = 0;
    r->sent = 0;
    r->t_start = monotonic();
    r->status_code = 0;
    r->body_done = r->body_error = 0;
    r->head = r->http11 = r->keep_alive = 0;
    r->expect_continue = r->continue_sent = 0;
    r->started = r->headers_sent = r->chunked = 0;
    r->response_done = r->close_after = 0;
    r->vectorcall = request_vectorcall;
    PyObject_GC_Track(r);
    return r;
}

static int
request_traverse(PyObject *op, visitproc visit, void *arg)
{
    HttpRequest *r = (HttpRequest *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT((PyObject *)r->proto);
    Py_VISIT(r->environ);
    Py_VISIT(r->task);
    Py_VISIT(r->status);
    Py_VISIT(r->headers);
    Py_VISIT(r->body_waiter);
    Py_VISIT(r->ws);
    return 0;
}

static int
request_clear(PyObject *op)
{
    HttpRequest *r = (HttpRequest *)op;
    Py_CLEAR(r->proto);
    Py_CLEAR(r->environ);
    Py_CLEAR(r->task);
    Py_CLEAR(r->status);
    Py_CLEAR(r->headers);
    Py_CLEAR(r->body_waiter);
    Py_CLEAR(r->ws);
    return 0;
}

static void
request_dealloc(PyObject *op)
{
    HttpRequest *r = (HttpRequest *)op;
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    request_clear(op);
    PyMem_Free(r->bbuf);
    tp->tp_free(op);
    Py_DECREF(tp);
}

/* start_response(status, headers, exc_info=None) */
static PyObject *request_write_method(PyObject *self, PyObject *data);

static PyMethodDef write_def = {
    "write", request_write_method, METH_O,
    "write(data)\n--\n\nThe legacy WSGI write callable."};

static PyObject *start_response(HttpRequest *r, PyObject *status,
                                PyObject *headers, PyObject *exc_info);

static PyObject *
request_call(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"status", "headers", "exc_info", NULL};
    PyObject *status, *headers, *exc_info = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "UO|O:start_response",
                                     kwlist, &status, &headers, &exc_info))
        return NULL;
    return start_response((HttpRequest *)self, status, headers, exc_info);
}

/* start_response(status, headers[, exc_info]) as apps call it: no argument
 * parsing; keywords and odd shapes take request_call's way. */
static PyObject *
request_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf,
                   PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if ((kwnames == NULL || PyTuple_GET_SIZE(kwnames) == 0) &&
        (nargs == 2 || nargs == 3) && PyUnicode_Check(args[0]))
        return start_response((HttpRequest *)self, args[0], args[1],
                              nargs == 3 ? args[2] : Py_None);
    PyObject *tuple, *dict;
    if (vectorcall_args_to_tuple_dict(args, nargs, kwnames, &tuple, &dict) < 0)
        return NULL;
    PyObject *r = request_call(self, tuple, dict);
    Py_DECREF(tuple);
    Py_XDECREF(dict);
    return r;
}

static PyObject *
start_response(HttpRequest *r, PyObject *status, PyObject *headers,
               PyObject *exc_info)
{
    PyObject *self = (PyObject *)r;
    if (exc_info != Py_None) {
        if (r->headers_sent) {
            /* too late to change the response: re-raise, as PEP 3333 says */
            if (!PyTuple_Check(exc_info) || PyTuple_GET_SIZE(exc_info) < 2) {
                PyErr_SetString(PyExc_TypeError,
                                "exc_info must be a (type, value, traceback) "
                                "tuple");
                return NULL;
            }
            PyObject *exc = PyTuple_GET_ITEM(exc_info, 1);
            if (!PyExceptionInstance_Check(exc)) {
                PyErr_SetString(PyExc_TypeError,
                                "exc_info[1] must be an exception");
                return NULL;
            }
            exc_restore(Py_NewRef(exc));
            return NULL;
        }
    }
    else if (r->status != NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "start_response() was already called; pass exc_info "
                        "to replace the response's status and headers");
        return NULL;
    }
    if (!PyList_Check(headers)) {
        PyErr_Format(PyExc_TypeError,
                     "response headers must be a list, not %.100s",
                     Py_TYPE(headers)->tp_name);
        return NULL;
    }
    Py_ssize_t slen = PyUnicode_GET_LENGTH(status);
    int code = 0;
    if (slen >= 3) {
        for (int i = 0; i < 3; i++) {
            Py_UCS4 c = PyUnicode_READ_CHAR(status, i);
            if (c < '0' || c > '9') {
                code = -1;
                break;
            }
            code = code * 10 + (int)(c - '0');
        }
    }
    if (slen < 3 || code < 100 || (slen > 3 &&
                                   PyUnicode_READ_CHAR(status, 3) != ' ')) {
        PyErr_Format(PyExc_ValueError,
                     "status must be a 3-digit code and a reason phrase, "
                     "like '200 OK'; got %R", status);
        return NULL;
    }
    Py_XSETREF(r->status, Py_NewRef(status));
    Py_XSETREF(r->headers, Py_NewRef(headers));
    r->status_code = code;
    return PyCFunction_New(&write_def, self);
}

static PyObject *
request_write_method(PyObject *self, PyObject *data)
{
    HttpRequest *r = (HttpRequest *)self;
    if (r->proto == NULL || r->response_done) {
        PyErr_SetString(PyExc_RuntimeError,
                        "write() called after the response was complete");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int rc = 0;
    long long before = r->resp_written;
    if (view.len > 0)
        rc = write_chunk(r, view.buf, (size_t)view.len, -1);
    PyBuffer_Release(&view);
    if (rc < 0)
        return NULL;
    if (view.len > 0 && (r->proto == NULL || proto_gone(r->proto))) {
        /* as a failed send raises in gunicorn's workers: a writer in a
         * loop stops here */
        PyErr_SetString(PyExc_ConnectionResetError,
                        "the client disconnected");
        return NULL;
    }
    if (before / INLINE_YIELD_BYTES != r->resp_written / INLINE_YIELD_BYTES &&
        yield_to_loop(proto_state(r->proto)) < 0)
        return NULL; /* a long response lets the others run */
    Py_RETURN_NONE;
}

static void
request_access_log(HttpRequest *r)
{
    HttpServer *srv = r->proto->server;
    if (srv->access_log == NULL || r->environ == NULL)
        return;
    PyObject *res = PyObject_CallFunction(
        srv->access_log, "OOOKd", r->environ,
        r->status ? r->status : Py_None, r->headers ? r->headers : Py_None,
        (unsigned long long)r->resp_written, monotonic() - r->t_start);
    if (res == NULL)
        log_error(srv, "access log failed");
    Py_XDECREF(res);
}

/* The response is over: log it, count it, settle the connection. */
static void
request_finish(HttpRequest *r)
{
    HttpProtocol *p = r->proto;
    HttpServer *srv = p->server;
    if (r->response_done)
        return;
    r->response_done = 1;
    srv->requests++;
    srv->active--;
    if (srv->max_requests && srv->requests == srv->max_requests) {
        /* exactly max_requests: from now on every response closes its
         * connection, and the owner stops accepting */
        srv->shutting_down = 1;
        if (srv->on_limit != NULL) {
            PyObject *res = PyObject_CallNoArgs(srv->on_limit);
            if (res == NULL)
                log_error(srv, "Error in the max_requests callback");
            Py_XDECREF(res);
        }
    }
    request_access_log(r);
    wake(proto_state(p), &r->body_waiter);
    /* a websocket handshake: the connection goes to the WebSocket if the
     * 101 went out, and the WebSocket is told otherwise */
    if (r->ws != NULL || p->upgrade)
        upgrade_settle(r);
    if (r->resp_length >= 0 && r->resp_written < r->resp_length &&
        !r->head && !bodyless_status(r->status_code))
        r->close_after = 1; /* shorter than its Content-Length */
    if (!r->body_done && r->expect_continue && !r->continue_sent)
        r->close_after = 1; /* the client may never send that body */
    /* a body nobody reads any more: drop it, and read (to discard the
     * rest of it) if a full buffer had paused reading */
    r->bpos = r->blen = 0;
    PyMem_Free(r->bbuf);
    r->bbuf = NULL;
    r->bcap = 0;
    set_read_paused(p, PAUSE_BODY, 0);
    if (r->close_after || srv->shutting_down) {
        p->broken = 1;
        proto_close(p);
    }
    p->last_activity = monotonic();
    p->served++;
    /* the next request may start once this one's body is parsed */
    if (r->body_done)
        proto_release_request(p);
}

/* The current exception is the request's cancellation: a killed greenlet,
 * a closed coroutine, or a CancelledError once the client is gone (only
 * then does the connection cancel the request's Task). */
static int
request_cancelled(modstate *st, HttpProtocol *p)
{
    if (PyErr_ExceptionMatches(PyExc_Exception))
        return 0;
    if (PyErr_ExceptionMatches(st->GreenletExit) ||
        PyErr_ExceptionMatches(PyExc_GeneratorExit))
        return 1;
    if (PyErr_ExceptionMatches(st->CancelledError))
        return p->closed;
    return 0;
}

/* WebOb spools a body it must seek in (request.body past 10 KiB, a plain
 * view's upload past the preread) to a temporary file that replaces
 * wsgi.input.  Once the request's run is over nothing reads it, and a
 * reference cycle through the request (Pyramid's exception view leaves
 * one per error) would keep its descriptor and disk space until the
 * cyclic collector runs: it is closed now.  Only a file (io.IOBase): an
 * object of the app's own is left alone, and so is an io.BytesIO (WebOb's
 * copy of a small body), which holds neither: a task the view started may
 * still read it once the response is gone, as under gunicorn's workers. */
static void
close_spooled_input(modstate *st, HttpRequest *r)
{
    if (r->environ == NULL)
        return; /* released with its connection */
    PyObject *input = PyDict_GetItemWithError(r->environ, HSTR(st, WSGI_INPUT));
    if (input == NULL || Py_TYPE(input) == st->HttpInputType) {
        PyErr_Clear(); /* a failed lookup: nothing of ours to close */
        return;
    }
    Py_INCREF(input);
    int is_file = PyObject_IsInstance(input, st->io_base);
    if (is_file > 0) {
        int in_memory = PyObject_IsInstance(input, st->io_bytesio);
        is_file = in_memory < 0 ? -1 : !in_memory;
    }
    if (is_file > 0) {
        PyObject *res = PyObject_CallMethodNoArgs(input, st->str_close);
        if (res == NULL)
            is_file = -1;
        Py_XDECREF(res);
    }
    if (is_file < 0)
        log_error(r->proto->server, "Error closing the request's spooled body");
    Py_DECREF(input);
}

/* run_request(req): the job of a request greenlet. */
static PyObject *
run_request(PyObject *module, PyObject *arg)
{
    modstate *st = state_of_module(module);
    if (Py_TYPE(arg) != st->HttpRequestType) {
        PyErr_SetString(PyExc_TypeError, "run_request() takes a request");
        return NULL;
    }
    HttpRequest *r = (HttpRequest *)Py_NewRef(arg);
    HttpProtocol *p = (HttpProtocol *)Py_NewRef(r->proto);
    HttpServer *srv = (HttpServer *)Py_NewRef(p->server);
    PyObject *app_args[2] = {r->environ, (PyObject *)r};
    PyObject *result = PyObject_Vectorcall(srv->app, app_args, 2, NULL);
    int ok = result != NULL && send_result(r, result) == 0;
    if (result != NULL && call_close(result) < 0)
        ok = 0;
    Py_XDECREF(result);
    PyObject *ret = Py_None;
    if (!ok) {
        /* SystemExit, KeyboardInterrupt and the like raised by the app are
         * its errors too (gunicorn's workers answer them 500): only our
         * own cancellation ends the greenlet's job by an exception */
        if (!request_cancelled(st, p)) {
            if (r->body_error) {
                /* the client's malformed body made the app fail */
                PyErr_Clear();
                respond_failure(r, 400);
            }
            else {
                if (!p->closed)
                    log_error(srv, "Error handling request");
                else
                    PyErr_Clear();
                respond_failure(r, 500);
            }
        }
        else {
            /* cancelled (the client left), or killed: end the greenlet's
             * job the same way, after closing the connection */
            r->close_after = 1;
            ret = NULL;
        }
    }
    PyObject *exc = ret == NULL ? exc_take() : NULL;
    close_spooled_input(st, r);
    request_finish(r);
    if (exc != NULL)
        exc_restore(exc);
    Py_DECREF(srv);
    Py_DECREF(p);
    Py_DECREF(r);
    return ret == NULL ? NULL : Py_NewRef(ret);
}

PyMethodDef run_request_def = {"_run_request", run_request, METH_O,
                                      NULL};

static PyObject *
request_get_environ(PyObject *self, void *closure)
{
    PyObject *e = ((HttpRequest *)self)->environ;
    return Py_NewRef(e ? e : Py_None);
}

static PyGetSetDef request_getset[] = {
    {"environ", request_get_environ, NULL, "The request's WSGI environ.",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef request_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(HttpRequest, vectorcall),
     READONLY},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot request_slots[] = {
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_members, request_members},
    {Py_tp_getset, request_getset},
    {Py_tp_traverse, request_traverse},
    {Py_tp_clear, request_clear},
    {Py_tp_dealloc, request_dealloc},
    {Py_tp_doc, "One HTTP request; calling it is WSGI's start_response."},
    {0, NULL},
};

PyType_Spec request_spec = {
    .name = "aiopyramid._core.HttpRequest",
    .basicsize = sizeof(HttpRequest),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION |
             Py_TPFLAGS_HAVE_VECTORCALL,
    .slots = request_slots,
};

/* What the server needs to make each request's Task. */
int
server_task_init(HttpServer *self)
{
    PyObject *tasks = PyImport_ImportModule("asyncio.tasks");
    if (tasks == NULL)
        return -1;
    self->task_type = PyObject_GetAttrString(tasks, "Task");
    if (self->task_type == NULL) {
        Py_DECREF(tasks);
        return -1;
    }
#if PY_VERSION_HEX >= 0x030C0000
    self->task_kwnames = Py_BuildValue("(ssss)", "loop", "context",
                                       "eager_start", "name");
    int ready = self->task_kwnames != NULL;
#else
    /* Task() has no vectorcall on 3.11: keywords passed by name would be
     * made into a new dict at each call; start_task gives this one */
    self->task_kwargs = Py_BuildValue("{sOsOsO}", "loop", self->loop,
                                      "context", Py_None, "name", Py_None);
    if (self->task_kwargs != NULL) {
        self->current_tasks = PyObject_GetAttrString(tasks, "_current_tasks");
        if (self->current_tasks != NULL &&
            !PyDict_Check(self->current_tasks)) {
            PyErr_SetString(PyExc_TypeError,
                            "asyncio.tasks._current_tasks is not a dict");
            Py_CLEAR(self->current_tasks);
        }
        if (self->current_tasks == NULL)
            Py_CLEAR(self->task_kwargs);
    }
    int ready = self->task_kwargs != NULL;
#endif
    Py_DECREF(tasks);
    return ready ? 0 : -1;
}

/* A request Task's name: "aiopyramid-request-N", N counting the requests
 * of the process from 1, unique as asyncio's own "Task-N" (which a name of
 * ours must not imitate: asyncio's counter is not ours to take).  Made
 * here because 3.11's Task formats its default name with
 * PyUnicode_FromFormat at each Task(), ten times what this costs; 3.12
 * names lazily, but gets the same names, so that they do not depend on
 * the Python version. */
static unsigned long long request_tasks;

static PyObject *
request_task_name(void)
{
    static const char prefix[] = "aiopyramid-request-";
    char digits[24];
    int nd = 0;
    unsigned long long n = ++request_tasks;
    do {
        digits[nd++] = (char)('0' + n % 10);
        n /= 10;
    } while (n > 0);
    Py_ssize_t plen = (Py_ssize_t)sizeof(prefix) - 1;
    PyObject *name = PyUnicode_New(plen + nd, 127);
    if (name == NULL)
        return NULL;
    Py_UCS1 *out = PyUnicode_1BYTE_DATA(name);
    memcpy(out, prefix, (size_t)plen);
    for (int i = 0; i < nd; i++)
        out[plen + i] = (Py_UCS1)digits[nd - 1 - i];
    return name;
}

/* The request's Task, with its first step run at once (until the app first
 * suspends, or to its end) inside it, so that asyncio.current_task() is
 * that Task from the app's first line (asyncio.timeout(), TaskGroup and
 * wait_for need it) and stays the same Task after it suspends.  *sr says
 * how the first step ended: PYGEN_NEXT, the Task drives the rest;
 * PYGEN_RETURN; PYGEN_ERROR, with the exception set.  NULL (and an
 * exception) when no Task was made.
 *
 * An asyncio.Task made directly, like the loops' create_task without a task
 * factory: a factory could not promise that first step at once. */
static PyObject *
start_task(modstate *st, HttpServer *srv, PyObject *spawn, PyObject *ctx,
           PySendResult *sr)
{
    int eager = 0;
#if PY_VERSION_HEX >= 0x030C0000
    /* an eager Task when the loop runs (always, in a server): Task() runs
     * the first step, as the loop's current task, and a Task that ends
     * there is never scheduled */
    PyObject *running = PyObject_CallNoArgs(st->get_running_loop);
    if (running == NULL)
        return NULL;
    eager = running == srv->loop;
    Py_DECREF(running);
    PyObject *name = request_task_name();
    if (name == NULL)
        return NULL;
    PyObject *args[5] = {spawn, srv->loop, ctx, eager ? Py_True : Py_False,
                         name};
    PyObject *task = PyObject_Vectorcall(srv->task_type, args, 1,
                                         srv->task_kwnames);
    Py_DECREF(name);
#else
    /* the server's keywords dict, its context this request's for the call
     * only (Task's __init__ has parsed its keywords before it runs any
     * other code, so a call made meanwhile cannot see this one's) */
    PyObject *task = NULL;
    PyObject *pos = PyTuple_Pack(1, spawn);
    PyObject *name = pos != NULL ? request_task_name() : NULL;
    /* the name stays in the dict until the next request's replaces it: a
     * str, which keeps nothing of the request alive */
    if (name != NULL &&
        PyDict_SetItem(srv->task_kwargs, HSTR(st, NAME), name) == 0 &&
        PyDict_SetItem(srv->task_kwargs, HSTR(st, CONTEXT), ctx) == 0) {
        task = PyObject_Call(srv->task_type, pos, srv->task_kwargs);
        /* the dict keeps no request's context alive */
        PyObject *exc = task == NULL ? exc_take() : NULL;
        if (PyDict_SetItem(srv->task_kwargs, HSTR(st, CONTEXT), Py_None) < 0)
            PyErr_WriteUnraisable(srv->task_kwargs); /* a value replaced */
        if (exc != NULL)
            exc_restore(exc);
    }
    Py_XDECREF(name);
    Py_XDECREF(pos);
#endif
    if (task == NULL)
        return NULL;
    if (eager) {
        PyObject *done = PyObject_CallMethodNoArgs(task, HSTR(st, DONE));
        if (done == NULL) {
            *sr = PYGEN_ERROR;
            return task;
        }
        int is_done = done == Py_True;
        Py_DECREF(done);
        if (!is_done) {
            *sr = PYGEN_NEXT;
            return task;
        }
        /* result() also marks an exception as retrieved */
        PyObject *res = PyObject_CallMethodNoArgs(task, st->str_result);
        *sr = res != NULL ? PYGEN_RETURN : PYGEN_ERROR;
        if (res == NULL && bridge_spawn_returned(spawn) &&
            PyErr_ExceptionMatches(st->CancelledError)) {
            /* the app cancelled its own Task, and its job returned: the
             * Task ends cancelled, as on 3.11, where the Task's own first
             * step ends it so after the job; not an error of the server */
            PyErr_Clear();
            *sr = PYGEN_RETURN;
        }
        Py_XDECREF(res);
        return task;
    }
    /* no eager tasks (3.11), or no running loop (a protocol driven by
     * hand): the Task is made, its first step scheduled, and the first step
     * runs here, with the Task as the loop's current task on 3.11 (3.12+
     * only gets here with no running loop, where no code can ask for the
     * current task); the Task's own first step then takes over where the
     * app suspended (the spawn keeps what it yielded), or just ends */
    PyObject *prev = NULL;
    if (srv->current_tasks != NULL) {
        prev = PyDict_GetItemWithError(srv->current_tasks, srv->loop);
        if (prev == NULL && PyErr_Occurred())
            goto error;
        Py_XINCREF(prev);
        if (PyDict_SetItem(srv->current_tasks, srv->loop, task) < 0) {
            Py_XDECREF(prev);
            goto error;
        }
    }
    PyObject *yielded = NULL;
    *sr = bridge_spawn_first(spawn, &yielded);
    Py_XDECREF(yielded);
    if (srv->current_tasks != NULL) {
        PyObject *exc = *sr == PYGEN_ERROR ? exc_take() : NULL;
        int rc = prev != NULL
            ? PyDict_SetItem(srv->current_tasks, srv->loop, prev)
            : PyDict_DelItem(srv->current_tasks, srv->loop);
        Py_XDECREF(prev);
        if (rc < 0)
            PyErr_WriteUnraisable(srv->loop); /* a key there cannot fail */
        if (exc != NULL)
            exc_restore(exc);
    }
    return task;
error:
    Py_DECREF(task);
    return NULL;
}

void
start_request(HttpProtocol *p, HttpRequest *r)
{
    modstate *st = proto_state(p);
    HttpServer *srv = p->server;
    PyObject *ctx = NULL, *args = NULL, *spawn = NULL, *task = NULL;
    r->started = 1;
    srv->active++;
    /* counted until the pass ends, whether or not the pass holds a write
     * (a response past HELD_MAX, a long poll, a client gone hold none) */
    srv->started_in_pass++;
    if (server_schedule_flush(srv) < 0)
        PyErr_Clear(); /* a closed loop: a later pass's flush resets it */
    Py_INCREF(r);
    ctx = PyContext_New();
    if (ctx == NULL)
        goto error;
    args = PyTuple_Pack(1, (PyObject *)r);
    if (args == NULL)
        goto error;
    spawn = bridge_spawn_new(st, st->http_run, args, NULL, ctx);
    if (spawn == NULL)
        goto error;
    /* the executor's views then need not ask asyncio for the loop */
    if (server_loop_runs(st, srv))
        bridge_spawn_set_loop(spawn, srv->loop);
    PySendResult sr;
    task = start_task(st, srv, spawn, ctx, &sr);
    if (task == NULL)
        goto error;
    if (sr == PYGEN_NEXT) {
        /* the request suspended: its Task drives the rest, and the
         * request ends where its job does */
        r->task = Py_NewRef(task);
        bridge_spawn_on_end(spawn, proto_request_ended, (PyObject *)r, task);
    }
    else if (sr == PYGEN_ERROR) {
        /* run_request answers app errors itself: this was the server's */
        if (!r->response_done) {
            log_error(srv, "Error handling request");
            respond_failure(r, 500);
            request_finish(r);
        }
        else {
            log_error(srv, "Error finishing request");
        }
    }
    goto done;
error:
    log_error(srv, "Error starting request");
    if (!r->response_done) {
        respond_failure(r, 500);
        request_finish(r);
    }
done:
    Py_XDECREF(task);
    Py_XDECREF(spawn);
    Py_XDECREF(args);
    Py_XDECREF(ctx);
    Py_DECREF(r);
}
