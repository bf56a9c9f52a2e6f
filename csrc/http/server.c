/* server.c: HttpServer, the protocol factory: options and limits, counters, idle
 * and send timeouts, max_requests, shutdown; and the HTTP part of module
 * init. */
#include "http.h"
#ifdef __linux__
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#endif

void
server_update_date(HttpServer *srv)
{
    static const char *days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri",
                                 "Sat"};
    static const char *months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                   "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    time_t now = time(NULL);
    if (now == srv->date_time && srv->date_len)
        return;
    struct tm tm;
    gmtime_r(&now, &tm);
    int n = snprintf(srv->date, sizeof(srv->date),
                     "Date: %s, %02d %s %04d %02d:%02d:%02d GMT\r\n",
                     days[tm.tm_wday % 7], tm.tm_mday, months[tm.tm_mon % 12],
                     tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
    srv->date_len = n > 0 && (size_t)n < sizeof(srv->date) ? (size_t)n : 0;
    srv->date_time = now;
}

/* Logs through the server's error_log(message, exception), or as
 * unraisable; takes the current exception. */
void
log_error(HttpServer *srv, const char *message)
{
    PyObject *exc = exc_take();
    if (srv != NULL && srv->error_log != NULL) {
        PyObject *r = PyObject_CallFunction(srv->error_log, "sO", message,
                                            exc ? exc : Py_None);
        if (r != NULL) {
            Py_DECREF(r);
            Py_XDECREF(exc);
            return;
        }
        PyErr_WriteUnraisable(srv->error_log);
    }
    if (exc != NULL) {
        exc_restore(exc);
        PyErr_WriteUnraisable(NULL);
    }
}

static int
positive_or_zero(Py_ssize_t v, const char *name)
{
    if (v < 0) {
        PyErr_Format(PyExc_ValueError, "%s must be 0 or more, got %zd", name, v);
        return -1;
    }
    return 0;
}

/* HttpServer(app, loop, base_environ, limit_line, limit_fields,
 * limit_field_size, keepalive, secure_headers, forwarded_allow, trust_check,
 * access_log, error_log, body_buffer): plain values, as
 * aiopyramid.server.HttpServer normalises them from the user's options.
 * base_environ is copied (into the requests' template) and has a str
 * SCRIPT_NAME;
 * secure_headers is a tuple of (environ key, value) pairs; forwarded_allow a
 * frozenset of trusted hosts, trust_check a callable(host), both None: every
 * peer is trusted.  Checked here only as far as the C relies on it. */
static PyObject *
server_new(PyTypeObject *tp, PyObject *args, PyObject *kwargs)
{
    PyObject *app, *loop, *base, *secure, *allow, *trust, *access_log,
        *error_log;
    Py_ssize_t limit_line, limit_fields, limit_field_size, body_buffer;
    double keepalive;
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0) {
        PyErr_SetString(PyExc_TypeError,
                        "_core.HttpServer takes plain positional values: "
                        "make one with aiopyramid.server.HttpServer()");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OOO!nnndO!OOOOn:HttpServer", &app, &loop,
                          &PyDict_Type, &base, &limit_line, &limit_fields,
                          &limit_field_size, &keepalive, &PyTuple_Type,
                          &secure, &allow, &trust, &access_log, &error_log,
                          &body_buffer))
        return NULL;
    if (positive_or_zero(limit_line, "limit_request_line") < 0 ||
        positive_or_zero(limit_fields, "limit_request_fields") < 0 ||
        positive_or_zero(limit_field_size, "limit_request_field_size") < 0 ||
        positive_or_zero(body_buffer, "body_buffer") < 0)
        return NULL;
    if (allow != Py_None && !PyFrozenSet_CheckExact(allow)) {
        PyErr_SetString(PyExc_TypeError,
                        "forwarded_allow must be a frozenset or None");
        return NULL;
    }
    if (trust != Py_None && !PyCallable_Check(trust)) {
        PyErr_SetString(PyExc_TypeError,
                        "trust_check must be callable or None");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(secure); i++) {
        PyObject *pair = PyTuple_GET_ITEM(secure, i);
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2 ||
            !PyUnicode_Check(PyTuple_GET_ITEM(pair, 0))) {
            PyErr_SetString(PyExc_TypeError,
                            "secure_headers must hold (environ key, value) "
                            "pairs");
            return NULL;
        }
    }
    modstate *st = state_of_type(tp);
    PyObject *sn = PyDict_GetItemWithError(base, HSTR(st, SCRIPT_NAME));
    if (sn == NULL || !PyUnicode_Check(sn)) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError,
                            "base_environ['SCRIPT_NAME'] must be a str");
        return NULL;
    }
    HttpServer *self = (HttpServer *)tp->tp_alloc(tp, 0);
    if (self == NULL)
        return NULL;
    self->app = Py_NewRef(app);
    self->loop = Py_NewRef(loop);
    self->base_environ = environ_template(st, base);
    if (self->base_environ == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    self->script_name = Py_NewRef(sn);
    self->secure_headers = Py_NewRef(secure);
    self->forwarded_allow = allow == Py_None ? NULL : Py_NewRef(allow);
    self->trust_check = trust == Py_None ? NULL : Py_NewRef(trust);
    self->limit_line = limit_line;
    self->limit_fields = limit_fields;
    self->limit_field_size = limit_field_size;
    self->keepalive = keepalive;
    self->body_buffer = body_buffer;
    self->access_log = access_log == Py_None ? NULL : Py_NewRef(access_log);
    self->error_log = error_log == Py_None ? NULL : Py_NewRef(error_log);
    if ((self->create_future = PyObject_GetAttr(loop, HSTR(st, CREATE_FUTURE))) == NULL ||
        (self->connections = PySet_New(NULL)) == NULL ||
        (self->unflushed = PyList_New(0)) == NULL ||
        (self->call_soon = PyObject_GetAttrString(loop, "call_soon")) == NULL ||
        (self->flush_cb = PyObject_GetAttrString((PyObject *)self,
                                                 "flush_writes")) == NULL ||
        server_task_init(self) < 0)
        goto error;
    return (PyObject *)self;
error:
    Py_DECREF(self);
    return NULL;
}

static PyObject *
server_call(PyObject *self, PyObject *args, PyObject *kwargs)
{
    if (PyTuple_GET_SIZE(args) != 0 || (kwargs && PyDict_GET_SIZE(kwargs))) {
        PyErr_SetString(PyExc_TypeError,
                        "an HttpServer makes protocols with no arguments");
        return NULL;
    }
    modstate *st = state_of_type(Py_TYPE(self));
    return proto_new(st, (HttpServer *)self);
}

static int
server_traverse(PyObject *op, visitproc visit, void *arg)
{
    HttpServer *s = (HttpServer *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(s->app);
    Py_VISIT(s->loop);
    Py_VISIT(s->create_future);
    Py_VISIT(s->task_type);
    Py_VISIT(s->task_kwnames);
    Py_VISIT(s->task_kwargs);
    Py_VISIT(s->current_tasks);
    Py_VISIT(s->base_environ);
    Py_VISIT(s->shared_rview);
    Py_VISIT(s->script_name);
    Py_VISIT(s->access_log);
    Py_VISIT(s->error_log);
    Py_VISIT(s->secure_headers);
    Py_VISIT(s->forwarded_allow);
    Py_VISIT(s->trust_check);
    Py_VISIT(s->connections);
    Py_VISIT(s->on_limit);
    Py_VISIT(s->on_close);
    Py_VISIT(s->call_soon);
    Py_VISIT(s->flush_cb);
    Py_VISIT(s->unflushed);
    return 0;
}

static int
server_clear(PyObject *op)
{
    HttpServer *s = (HttpServer *)op;
    Py_CLEAR(s->app);
    Py_CLEAR(s->loop);
    Py_CLEAR(s->create_future);
    Py_CLEAR(s->task_type);
    Py_CLEAR(s->task_kwnames);
    Py_CLEAR(s->task_kwargs);
    Py_CLEAR(s->current_tasks);
    Py_CLEAR(s->base_environ);
    Py_CLEAR(s->script_name);
    Py_CLEAR(s->access_log);
    Py_CLEAR(s->error_log);
    Py_CLEAR(s->secure_headers);
    Py_CLEAR(s->forwarded_allow);
    Py_CLEAR(s->trust_check);
    Py_CLEAR(s->connections);
    Py_CLEAR(s->on_limit);
    Py_CLEAR(s->on_close);
    Py_CLEAR(s->call_soon);
    Py_CLEAR(s->flush_cb);
    Py_CLEAR(s->unflushed);
    if (s->shared_rview != NULL) {
        PyBuffer_Release(&s->shared_rpin);
        Py_CLEAR(s->shared_rview);
    }
    PyMem_Free(s->shared_rbuf);
    s->shared_rbuf = NULL;
    return 0;
}

/* A list of the connections, so closing them may change the set. */
static PyObject *
server_connection_list(HttpServer *s)
{
    return PySequence_List(s->connections);
}

static void
proto_abort(HttpProtocol *p)
{
    proto_drop_held(p);
    if (p->transport == NULL)
        return;
    PyObject *r = PyObject_CallMethodNoArgs(p->transport,
                                            HSTR(proto_state(p), ABORT));
    if (r == NULL)
        PyErr_Clear();
    Py_XDECREF(r);
}

/* A request kept waiting on its client: for the rest of its body, or for
 * the client to read what the app wrote. */
static int
waits_on_client(HttpProtocol *p)
{
    HttpRequest *r = p->req;
    return r != NULL && r->started && !r->response_done &&
           (r->body_waiter != NULL || p->write_paused);
}

/* Bytes the kernel holds in the connection's send queue, not yet taken
 * by the client (0 where that cannot be known).  The transport hands the
 * kernel more only once a large part of that queue has gone (megabytes on
 * a fast link), so a client reading slowly but steadily makes progress
 * there long before the transport's own buffer moves. */
static Py_ssize_t
kernel_unsent(HttpProtocol *p)
{
#ifdef SIOCOUTQ
    modstate *st = proto_state(p);
    PyObject *sock = extra_info(st, p->transport, HSTR(st, SOCKET));
    PyObject *fdo = sock == NULL || sock == Py_None ? NULL :
        PyObject_CallMethodNoArgs(sock, HSTR(st, FILENO));
    long fd = fdo == NULL ? -1 : PyLong_AsLong(fdo);
    Py_XDECREF(fdo);
    Py_XDECREF(sock);
    PyErr_Clear();
    int n = 0;
    if (fd >= 0 && fd <= INT_MAX && ioctl((int)fd, SIOCOUTQ, &n) == 0 && n > 0)
        return n;
#else
    (void)p;
#endif
    return 0;
}

/* A half-closed client (eof_received) is read no more, so its reset
 * comes to nobody: the kernel knows (the socket is closed, or has an
 * error pending). */
static int
peer_reset(HttpProtocol *p)
{
#if defined(__linux__) && defined(TCP_INFO)
    modstate *st = proto_state(p);
    PyObject *sock = p->transport == NULL ? NULL :
        extra_info(st, p->transport, HSTR(st, SOCKET));
    PyObject *fdo = sock == NULL || sock == Py_None ? NULL :
        PyObject_CallMethodNoArgs(sock, HSTR(st, FILENO));
    long fd = fdo == NULL ? -1 : PyLong_AsLong(fdo);
    Py_XDECREF(fdo);
    Py_XDECREF(sock);
    PyErr_Clear();
    struct tcp_info info;
    socklen_t len = sizeof(info);
    if (fd >= 0 && fd <= INT_MAX &&
        getsockopt((int)fd, IPPROTO_TCP, TCP_INFO, &info, &len) == 0)
        return info.tcpi_state == TCP_CLOSE;
#else
    (void)p;
#endif
    return 0;
}

/* The transport has held unsent bytes for `wait` seconds without the
 * client taking any. */
static int
send_stalled(HttpProtocol *p, double now, double wait)
{
    if (p->transport == NULL)
        return 0;
    PyObject *r = PyObject_CallMethodNoArgs(
        p->transport, HSTR(proto_state(p), GET_WRITE_BUFFER_SIZE));
    Py_ssize_t size = r == NULL ? -1 : PyLong_AsSsize_t(r);
    Py_XDECREF(r);
    if (size < 0) {
        PyErr_Clear();
        return 0;
    }
    if (size == 0)
        return 0;
    size += kernel_unsent(p);
    if (size != p->wsize_seen) {
        /* the client took some (or more was written): progress */
        p->wsize_seen = size;
        p->last_activity = now;
        return 0;
    }
    return now - p->last_activity >= wait;
}

static PyObject *
server_close_idle(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    HttpServer *s = (HttpServer *)op;
    double max_idle = s->keepalive, first_wait = -1.0, client_wait = -1.0;
    if (nargs > 3) {
        PyErr_Format(PyExc_TypeError,
                     "close_idle() takes at most 3 arguments (%zd given)", nargs);
        return NULL;
    }
    double *slots[] = {&max_idle, &first_wait, &client_wait};
    for (Py_ssize_t i = 0; i < nargs; i++) {
        *slots[i] = PyFloat_AsDouble(args[i]);
        if (*slots[i] == -1.0 && PyErr_Occurred())
            return NULL;
    }
    if (first_wait < 0)
        first_wait = max_idle;
    PyObject *conns = server_connection_list(s);
    if (conns == NULL)
        return NULL;
    double now = monotonic();
    Py_ssize_t closed = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(conns); i++) {
        HttpProtocol *p = (HttpProtocol *)PyList_GET_ITEM(conns, i);
        if (p->closed || p->write_paused) {
            /* closed with a response still buffered (the transport waits to
             * flush it), or a finished response the client does not read:
             * a send timeout, as nginx's send_timeout */
            if (client_wait >= 0 && send_stalled(p, now, client_wait)) {
                proto_abort(p);
                closed++;
                continue;
            }
            if (p->closed)
                continue;
        }
        int busy = p->req != NULL && p->req->started && !p->req->response_done;
        /* keep-alive between requests; a new connection may take longer
         * to send its first one */
        double limit = p->served ? max_idle : first_wait;
        /* (a client yet to read what was sent is not idle: the send
         * timeout above is its bound; closing would cut it short) */
        if (!busy && !p->write_paused && now - p->last_activity >= limit) {
            proto_close(p);
            closed++;
        }
        else if (client_wait >= 0 && !busy && p->head_started > 0 &&
                 now - p->head_started >= client_wait) {
            /* a head sent a byte at a time never completes */
            respond_message_and_close(p, 408, NULL);
            closed++;
        }
        else if (client_wait >= 0 && waits_on_client(p) &&
                 now - p->last_activity >= client_wait) {
            /* connection_lost then cancels the request */
            proto_abort(p);
            closed++;
        }
        else if (busy && p->eof && peer_reset(p)) {
            /* half-closed, then reset: gone; connection_lost cancels */
            proto_abort(p);
            closed++;
        }
    }
    Py_DECREF(conns);
    return PyLong_FromSsize_t(closed);
}

static PyObject *
server_limit_requests(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    HttpServer *s = (HttpServer *)op;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError,
                     "limit_requests() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    unsigned long long n = PyLong_AsUnsignedLongLong(args[0]);
    if (n == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    if (args[1] != Py_None && !PyCallable_Check(args[1])) {
        PyErr_Format(PyExc_TypeError,
                     "limit_requests() takes a callable or None, not %.100s",
                     Py_TYPE(args[1])->tp_name);
        return NULL;
    }
    s->max_requests = n;
    Py_XSETREF(s->on_limit, args[1] == Py_None ? NULL : Py_NewRef(args[1]));
    Py_RETURN_NONE;
}

static PyObject *
server_shutdown(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    HttpServer *s = (HttpServer *)op;
    double linger = 0.0;
    if (nargs > 1) {
        PyErr_Format(PyExc_TypeError,
                     "shutdown() takes at most 1 argument (%zd given)", nargs);
        return NULL;
    }
    if (nargs == 1) {
        linger = PyFloat_AsDouble(args[0]);
        if (linger == -1.0 && PyErr_Occurred())
            return NULL;
    }
    s->shutting_down = 1;
    PyObject *r = server_close_idle(op, NULL, 0);
    Py_XDECREF(r);
    if (r == NULL)
        return NULL;
    /* idle ones now (or once quiet for `linger`: a request may be on its
     * way), busy ones after their response */
    PyObject *conns = server_connection_list(s);
    if (conns == NULL)
        return NULL;
    double now = monotonic();
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(conns); i++) {
        HttpProtocol *p = (HttpProtocol *)PyList_GET_ITEM(conns, i);
        int busy = p->req != NULL && p->req->started && !p->req->response_done;
        if (!busy && p->rpos == p->rlen && now - p->last_activity >= linger)
            proto_close(p);
    }
    Py_DECREF(conns);
    Py_RETURN_NONE;
}

static PyObject *
server_abort(PyObject *op, PyObject *unused)
{
    HttpServer *s = (HttpServer *)op;
    s->shutting_down = 1;
    PyObject *conns = server_connection_list(s);
    if (conns == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(conns); i++)
        proto_abort((HttpProtocol *)PyList_GET_ITEM(conns, i));
    Py_DECREF(conns);
    Py_RETURN_NONE;
}

static PyObject *
server_get_requests(PyObject *op, void *closure)
{
    return PyLong_FromUnsignedLongLong(((HttpServer *)op)->requests);
}

static PyObject *
server_get_active(PyObject *op, void *closure)
{
    return PyLong_FromSsize_t(((HttpServer *)op)->active);
}

static PyObject *
server_get_started_in_pass(PyObject *op, void *closure)
{
    return PyLong_FromSsize_t(((HttpServer *)op)->started_in_pass);
}

static PyObject *
server_get_connections(PyObject *op, void *closure)
{
    return PyLong_FromSsize_t(PySet_GET_SIZE(((HttpServer *)op)->connections));
}

static PyObject *
server_get_app(PyObject *op, void *closure)
{
    return Py_NewRef(((HttpServer *)op)->app);
}

static PyMethodDef server_methods[] = {
    {"close_idle", (PyCFunction)(void (*)(void))server_close_idle,
     METH_FASTCALL,
     "close_idle(max_idle=keepalive, first_request=max_idle, client_wait=-1)\n--\n\n"
     "Close connections with no request in progress that have been quiet "
     "for max_idle seconds (first_request seconds for a connection yet to "
     "send its first request).  With client_wait >= 0, also answer 408 to a "
     "request head still incomplete after client_wait seconds, and drop a "
     "connection whose request has waited that long on its client (for body "
     "bytes, or to read the response), or whose transport has held unsent "
     "bytes that long, the response over or not (a send timeout); returns "
     "how many."},
    {"shutdown", (PyCFunction)(void (*)(void))server_shutdown, METH_FASTCALL,
     "shutdown(linger=0)\n--\n\nClose connections idle for linger seconds "
     "now and the others after their response; no keep-alive from now on "
     "(a request that comes meanwhile is answered with Connection: close)."},
    {"limit_requests", (PyCFunction)(void (*)(void))server_limit_requests,
     METH_FASTCALL,
     "limit_requests(n, callback)\n--\n\nOnce n responses are complete "
     "(0: no limit), stop keep-alive as shutdown() does and call callback()."},
    {"flush_writes", server_flush_writes, METH_NOARGS,
     "flush_writes()\n--\n\nWrite what connections hold back now (the "
     "loop calls it once per iteration that wrote)."},
    {"abort", server_abort, METH_NOARGS,
     "abort()\n--\n\nAbort every connection (their requests are cancelled)."},
    {NULL, NULL, 0, NULL},
};

static PyObject *
server_get_on_close(PyObject *op, void *closure)
{
    HttpServer *s = (HttpServer *)op;
    return Py_NewRef(s->on_close != NULL ? s->on_close : Py_None);
}

static int
server_set_on_close(PyObject *op, PyObject *value, void *closure)
{
    HttpServer *s = (HttpServer *)op;
    if (value != NULL && value != Py_None && !PyCallable_Check(value)) {
        PyErr_Format(PyExc_TypeError,
                     "on_close must be callable or None, not %.100s",
                     Py_TYPE(value)->tp_name);
        return -1;
    }
    Py_XSETREF(s->on_close,
               value == NULL || value == Py_None ? NULL : Py_NewRef(value));
    return 0;
}

static PyGetSetDef server_getset[] = {
    {"requests", server_get_requests, NULL, "Requests answered.", NULL},
    {"active", server_get_active, NULL, "Requests in progress.", NULL},
    {"started_in_pass", server_get_started_in_pass, NULL,
     "Requests started since the held writes were last flushed (this pass "
     "of the loop's).", NULL},
    {"connections", server_get_connections, NULL, "Open connections.", NULL},
    {"app", server_get_app, NULL, "The WSGI application.", NULL},
    {"on_close", server_get_on_close, server_set_on_close,
     "Called with no arguments as each connection closes (None: nothing).",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot server_slots[] = {
    {Py_tp_new, server_new},
    {Py_tp_call, server_call},
    {Py_tp_methods, server_methods},
    {Py_tp_getset, server_getset},
    {Py_tp_traverse, server_traverse},
    {Py_tp_clear, server_clear},
    {Py_tp_dealloc, gc_dealloc},
    {Py_tp_doc,
     "HttpServer(app, loop, *, base_environ=None, limit_request_line=4094, "
     "limit_request_fields=100, limit_request_field_size=8190, keepalive=2.0, "
     "secure_scheme_headers=None, forwarded_allow_ips=None, access_log=None, "
     "error_log=None, body_buffer=262144)\n--\n\n"
     "Serves a WSGI app over HTTP/1.1; call it to make a protocol for "
     "loop.create_server() or loop.connect_accepted_socket()."},
    {0, NULL},
};

static PyType_Spec server_spec = {
    .name = "aiopyramid._core.HttpServer",
    .basicsize = sizeof(HttpServer),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = server_slots,
};

/* ------------------------------------------------------------------ */
/* Init                                                                 */

int
http_init(PyObject *module, modstate *st)
{
    if (add_type(module, &st->HttpServerType, &server_spec, NULL) < 0 ||
        add_type(module, &st->HttpProtocolType, &proto_spec, NULL) < 0 ||
        add_type(module, &st->HttpRequestType, &request_spec, NULL) < 0 ||
        add_type(module, &st->HttpInputType, &input_spec, NULL) < 0 ||
        add_type(module, &st->FileWrapperType, &filewrapper_spec, NULL) < 0)
        return -1;

    static const char *strings[] = {
#define HTTP_STR_TEXT(name, text) text,
        HTTP_STRINGS(HTTP_STR_TEXT)
#undef HTTP_STR_TEXT
    };
    st->http_strs = PyTuple_New(HS_COUNT);
    if (st->http_strs == NULL)
        return -1;
    for (int i = 0; i < HS_COUNT; i++) {
        PyObject *s = PyUnicode_InternFromString(strings[i]);
        if (s == NULL)
            return -1;
        PyTuple_SET_ITEM(st->http_strs, i, s);
    }

    st->http_methods = PyTuple_New(64);
    if (st->http_methods == NULL)
        return -1;
    for (int i = 0; i < 64; i++)
        PyTuple_SET_ITEM(st->http_methods, i, Py_NewRef(HSTR(st, EMPTY)));
#define HTTP_METHOD_NAME(num, name, string)                                 \
    if ((num) < 64) {                                                        \
        PyObject *s = PyUnicode_InternFromString(#string);                    \
        if (s == NULL)                                                       \
            return -1;                                                       \
        PyObject *old = PyTuple_GET_ITEM(st->http_methods, (num));            \
        PyTuple_SET_ITEM(st->http_methods, (num), s);                        \
        Py_DECREF(old);                                                      \
    }
    HTTP_ALL_METHOD_MAP(HTTP_METHOD_NAME)
#undef HTTP_METHOD_NAME

    st->http_run = PyCFunction_NewEx(&run_request_def, module, NULL);
    if (st->http_run == NULL)
        return -1;
    PyObject *io = PyImport_ImportModule("io");
    if (io == NULL)
        return -1;
    st->io_base = PyObject_GetAttrString(io, "IOBase");
    if (st->io_base != NULL)
        st->io_bytesio = PyObject_GetAttrString(io, "BytesIO");
    Py_DECREF(io);
    return st->io_bytesio == NULL ? -1 : 0;
}
