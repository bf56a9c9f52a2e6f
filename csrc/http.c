/* The HTTP/1.1 server: an asyncio protocol parsing with llhttp, building
 * PEP 3333 environs in C and running the WSGI app of each request in a
 * pooled request greenlet through the bridge.
 *
 * One connection serves one request at a time: the parser pauses at the end
 * of each message and the bytes of pipelined requests wait, unparsed, until
 * the response before them is complete, so responses go out in order.  Each
 * request runs in its own asyncio Task from the app's first line, and the
 * first step runs at once, inline: a request whose app never suspends is
 * answered right there; one that suspends (a coroutine view waiting,
 * wsgi.input reading ahead of the socket, a paused transport) is driven on
 * by its Task, which the connection cancels when the client goes away.
 *
 * HttpServer  the protocol factory: app, limits, counters, its connections
 * HttpProtocol  one connection (BufferedProtocol and Protocol)
 * HttpRequest   one request; it is the start_response callable
 * HttpInput     wsgi.input
 * FileWrapper   wsgi.file_wrapper */
#include "http.h"
#include <llhttp.h>
#include <time.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* Types                                                                */

typedef struct HttpProtocol HttpProtocol;
typedef struct HttpRequest HttpRequest;

typedef struct {
    PyObject_HEAD
    PyObject *app;
    PyObject *loop;
    PyObject *create_future;    /* loop.create_future */
    PyObject *task_type;        /* asyncio.Task, for each request */
    PyObject *task_kwnames;     /* its keywords: loop, context(, eager_start) */
    PyObject *current_tasks;    /* 3.11: asyncio's {loop: current task} */
    PyObject *base_environ;     /* wsgi.* keys, SCRIPT_NAME, ... */
    PyObject *script_name;      /* str */
    PyObject *access_log;       /* callable or NULL */
    PyObject *error_log;        /* callable or NULL */
    PyObject *secure_headers;   /* tuple of (environ key, expected value) */
    PyObject *forwarded_allow;  /* set of str, NULL: every peer */
    PyObject *trust_check;      /* callable(host) -> bool, or NULL */
    PyObject *connections;      /* set of HttpProtocol */
    Py_ssize_t limit_line, limit_fields, limit_field_size;
    Py_ssize_t body_buffer;     /* pause reading with more body buffered */
    double keepalive;
    int shutting_down;
    unsigned long long requests;
    unsigned long long max_requests; /* 0: none; on_limit called at it */
    PyObject *on_limit;
    Py_ssize_t active;
    time_t date_time;
    char date[64];
    size_t date_len;
} HttpServer;

enum { PAUSE_BODY = 1, PAUSE_PIPELINE = 2 };

/* A response longer than this, iterated without suspending, lets the loop
 * run between its chunks (one response must not starve the others). */
#define INLINE_YIELD_BYTES (1024 * 1024)
#define INLINE_YIELD_CHUNKS 256

struct HttpProtocol {
    PyObject_HEAD
    HttpServer *server;
    PyObject *transport;
    PyObject *write;            /* transport.write */
    PyObject *conn_environ;     /* server's base + REMOTE_*, SERVER_*, scheme */
    PyObject *task_done;        /* bound callback for request Tasks */
    PyObject *drain_waiter;     /* future resolved by resume_writing */
    HttpRequest *req;           /* the request being parsed or served */
    PyObject *cb_exc;           /* an exception raised in a parser callback */
    llhttp_t parser;
    char *rbuf;
    size_t rpos, rlen, rcap;
    char *sbuf;                 /* url, then the header being parsed */
    size_t slen, scap, url_len, field_len;
    Py_ssize_t nfields, line_len;
    int host_fields;      /* Host headers in this request's head */
    double head_started;  /* when this head's first byte came; 0: none */
    PyObject *environ;          /* being built, until headers are complete */
    int err_status;             /* 414/431 from a limit, or 0 */
    const char *err_message;    /* and what it says (a static string) */
    int read_paused;            /* PAUSE_* bits */
    int write_paused;
    int closed;                 /* connection_lost, or closing */
    int waiting;                /* parser paused behind a running request */
    int broken;                 /* no more parsing: close after the response */
    int trusted;                /* peer in forwarded_allow_ips */
    int upgrade;
    int feeding;                /* inside feed(): no re-entry */
    int scheme;                 /* from secure scheme headers: 0, 1 http, 2 https */
    Py_ssize_t wsize_seen;      /* write buffer size when last looked at */
    unsigned long served;       /* responses completed on this connection */
    double last_activity;
};

struct HttpRequest {
    PyObject_HEAD
    HttpProtocol *proto;
    PyObject *environ;
    PyObject *task;
    PyObject *status;           /* str, from start_response */
    PyObject *headers;          /* list, from start_response */
    PyObject *body_waiter;
    char *bbuf;
    size_t bpos, blen, bcap;
    long long resp_length;      /* Content-Length the app gave, or -1 */
    long long resp_written;     /* body bytes written */
    unsigned long long sent;    /* bytes written, head included */
    double t_start;
    int status_code;
    int body_done, body_error;
    int head, http11, keep_alive, expect_continue, continue_sent;
    int started, headers_sent, chunked, response_done;
    int close_after;
};

typedef struct {
    PyObject_HEAD
    HttpRequest *req;
} HttpInput;

typedef struct {
    PyObject_HEAD
    PyObject *filelike;
    Py_ssize_t blksize;
} FileWrapper;

static llhttp_settings_t parser_settings;

/* ------------------------------------------------------------------ */
/* Small helpers                                                        */

static double
monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static modstate *
proto_state(HttpProtocol *p)
{
    return state_of_type(Py_TYPE(p));
}

/* Grows *buf to hold `need` bytes. */
static int
grow(char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : 256;
    while (n < need)
        n *= 2;
    char *p = PyMem_Realloc(*buf, n);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    *buf = p;
    *cap = n;
    return 0;
}

static void
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
static void
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

static void
set_read_paused(HttpProtocol *p, int bit, int on)
{
    if (p->transport == NULL)
        return;
    modstate *st = proto_state(p);
    int before = p->read_paused;
    p->read_paused = on ? (before | bit) : (before & ~bit);
    PyObject *r = NULL;
    if (!before && p->read_paused)
        r = PyObject_CallMethodNoArgs(p->transport, HSTR(st, PAUSE_READING));
    else if (before && !p->read_paused)
        r = PyObject_CallMethodNoArgs(p->transport, HSTR(st, RESUME_READING));
    else
        return;
    if (r == NULL)
        PyErr_Clear(); /* a closing transport */
    Py_XDECREF(r);
}

/* transport.write(data); false once the connection is gone. */
static int
proto_write_bytes(HttpProtocol *p, PyObject *data)
{
    if (p->closed || p->write == NULL)
        return 0;
    PyObject *r = PyObject_CallOneArg(p->write, data);
    if (r == NULL) {
        /* a transport closed under us: the response is lost, not the loop;
         * nothing more is written on it */
        PyErr_Clear();
        p->closed = 1;
        return 0;
    }
    Py_DECREF(r);
    return 1;
}

/* True once the connection is gone or going: a failed send makes the
 * transport close (and drop later writes silently) before connection_lost
 * runs, so a response iterated inline asks the transport itself. */
static int
proto_gone(HttpProtocol *p)
{
    if (p->closed || p->transport == NULL)
        return 1;
    PyObject *r = PyObject_CallMethodNoArgs(p->transport,
                                            HSTR(proto_state(p), IS_CLOSING));
    if (r == NULL) {
        PyErr_Clear(); /* a transport without is_closing(): trust write() */
        return 0;
    }
    int gone = PyObject_IsTrue(r);
    Py_DECREF(r);
    if (gone < 0)
        PyErr_Clear();
    if (gone > 0)
        p->closed = 1;
    return gone > 0;
}

static int
proto_write(HttpProtocol *p, const char *data, size_t len)
{
    PyObject *b = PyBytes_FromStringAndSize(data, (Py_ssize_t)len);
    if (b == NULL)
        return -1;
    proto_write_bytes(p, b);
    Py_DECREF(b);
    return 0;
}

static void
proto_close(HttpProtocol *p)
{
    if (p->transport == NULL || p->closed)
        return;
    p->closed = 1;
    modstate *st = proto_state(p);
    PyObject *r = PyObject_CallMethodNoArgs(p->transport, st->str_close);
    if (r == NULL)
        PyErr_Clear();
    Py_XDECREF(r);
}

/* Resolves `*fut` (if any) with None and clears it. */
static void
wake(modstate *st, PyObject **fut)
{
    PyObject *f = *fut;
    if (f == NULL)
        return;
    *fut = NULL;
    PyObject *done = PyObject_CallMethodNoArgs(f, HSTR(st, DONE));
    if (done == Py_False) {
        PyObject *r = PyObject_CallMethodOneArg(f, st->str_set_result, Py_None);
        Py_XDECREF(r);
    }
    Py_XDECREF(done);
    PyErr_Clear();
    Py_DECREF(f);
}

/* Waits, in the request greenlet, for a future that `*slot` will hold and
 * the protocol will resolve. */
static int
wait_on(modstate *st, HttpServer *srv, PyObject **slot)
{
    PyObject *fut = NULL;
    if (*slot != NULL) {
        /* another greenlet waits for the same thing: share its future, so
         * one wake() resolves both (unless that one is done: cancelled) */
        PyObject *done = PyObject_CallMethodNoArgs(*slot, HSTR(st, DONE));
        if (done == NULL)
            return -1;
        if (done == Py_False)
            fut = Py_NewRef(*slot);
        Py_DECREF(done);
    }
    if (fut == NULL) {
        fut = PyObject_CallNoArgs(srv->create_future);
        if (fut == NULL)
            return -1;
        Py_XSETREF(*slot, Py_NewRef(fut));
    }
    PyObject *r = bridge_await(st, fut);
    Py_DECREF(fut);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Error responses from the server itself                               */

static const char *
reason_of(int status)
{
    switch (status) {
    case 400: return "Bad Request";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    default: return "Error";
    }
}

/* The status's reason phrase, and `message` (the reason when NULL) as the
 * body, as gunicorn tells what was wrong. */
static void
respond_message_and_close(HttpProtocol *p, int status, const char *message)
{
    char buf[512];
    const char *reason = reason_of(status);
    if (message == NULL || strlen(message) > 200)
        message = reason;
    int n = snprintf(buf, sizeof(buf),
                     "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     status, reason, strlen(message), message);
    if (n > 0 && (size_t)n < sizeof(buf) && proto_write(p, buf, (size_t)n) < 0)
        PyErr_Clear();
    p->broken = 1;
    proto_close(p);
}

static void
respond_error_and_close(HttpProtocol *p, int status)
{
    respond_message_and_close(p, status, NULL);
}

/* ------------------------------------------------------------------ */
/* Environ                                                              */

static int
hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Percent-decoded `s` as a latin-1 str (PEP 3333's "bytes as latin-1"). */
static PyObject *
unquote_latin1(const char *s, size_t n)
{
    if (memchr(s, '%', n) == NULL)
        return PyUnicode_DecodeLatin1(s, (Py_ssize_t)n, NULL);
    char stackbuf[512];
    char *out = n <= sizeof(stackbuf) ? stackbuf : PyMem_Malloc(n);
    if (out == NULL)
        return PyErr_NoMemory();
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        int hi, lo;
        if (s[i] == '%' && i + 2 < n &&
            (hi = hexval(s[i + 1])) >= 0 && (lo = hexval(s[i + 2])) >= 0) {
            out[j++] = (char)(hi * 16 + lo);
            i += 2;
        }
        else {
            out[j++] = s[i];
        }
    }
    PyObject *r = PyUnicode_DecodeLatin1(out, (Py_ssize_t)j, NULL);
    if (out != stackbuf)
        PyMem_Free(out);
    return r;
}

static int
set_item_str(PyObject *d, PyObject *key, const char *s, size_t n)
{
    PyObject *v = PyUnicode_DecodeLatin1(s, (Py_ssize_t)n, NULL);
    if (v == NULL)
        return -1;
    int rc = PyDict_SetItem(d, key, v);
    Py_DECREF(v);
    return rc;
}

/* RAW_URI, PATH_INFO, QUERY_STRING (and SCRIPT_NAME's prefix removed). */
static int
environ_set_url(HttpServer *srv, modstate *st, PyObject *env, const char *url,
                size_t n)
{
    if (set_item_str(env, HSTR(st, RAW_URI), url, n) < 0)
        return -1;
    const char *path = url, *end = url + n;
    /* absolute-form: http://host[:port]/path */
    if ((n > 7 && strncasecmp(url, "http://", 7) == 0) ||
        (n > 8 && strncasecmp(url, "https://", 8) == 0)) {
        const char *a = memchr(url, ':', n) + 3;
        const char *slash = memchr(a, '/', (size_t)(end - a));
        const char *q = memchr(a, '?', (size_t)(end - a));
        if (slash == NULL || (q != NULL && q < slash))
            path = q ? q : end; /* no path: "/" below */
        else
            path = slash;
        /* RFC 9112 3.2.2: the target's authority replaces Host */
        if (set_item_str(env, HSTR(st, HTTP_HOST), a, (size_t)(path - a)) < 0)
            return -1;
    }
    const char *hash = memchr(path, '#', (size_t)(end - path));
    if (hash != NULL)
        end = hash;
    const char *q = memchr(path, '?', (size_t)(end - path));
    const char *pend = q ? q : end;
    if (q != NULL) {
        if (set_item_str(env, HSTR(st, QUERY_STRING), q + 1,
                         (size_t)(end - q - 1)) < 0)
            return -1;
    }
    else if (PyDict_SetItem(env, HSTR(st, QUERY_STRING), HSTR(st, EMPTY)) < 0) {
        return -1;
    }
    PyObject *pi;
    if (pend == path)
        pi = PyUnicode_FromString(path == url ? "" : "/");
    else
        pi = unquote_latin1(path, (size_t)(pend - path));
    if (pi == NULL)
        return -1;
    Py_ssize_t sn = PyUnicode_GET_LENGTH(srv->script_name);
    if (sn > 0 && PyUnicode_Tailmatch(pi, srv->script_name, 0, sn, -1) == 1 &&
        (PyUnicode_GET_LENGTH(pi) == sn || PyUnicode_READ_CHAR(pi, sn) == '/')) {
        PyObject *rest = PyUnicode_Substring(pi, sn, PyUnicode_GET_LENGTH(pi));
        Py_DECREF(pi);
        if (rest == NULL)
            return -1;
        pi = rest;
    }
    int rc = PyDict_SetItem(env, HSTR(st, PATH_INFO), pi);
    Py_DECREF(pi);
    return rc;
}

/* The environ key of a header name, interned; NULL without an exception
 * for names that are dropped (underscores, as gunicorn's default). */
static PyObject *
header_key(modstate *st, const char *name, size_t n)
{
    if (n == 12 && strncasecmp(name, "content-type", 12) == 0)
        return Py_NewRef(HSTR(st, CONTENT_TYPE));
    if (n == 14 && strncasecmp(name, "content-length", 14) == 0)
        return Py_NewRef(HSTR(st, CONTENT_LENGTH));
    if (memchr(name, '_', n) != NULL)
        return NULL;
    char stackbuf[128];
    char *k = n + 5 <= sizeof(stackbuf) ? stackbuf : PyMem_Malloc(n + 5);
    if (k == NULL)
        return PyErr_NoMemory();
    memcpy(k, "HTTP_", 5);
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (c >= 'a' && c <= 'z')
            c -= 32;
        else if (c == '-')
            c = '_';
        k[5 + i] = c;
    }
    PyObject *key = PyUnicode_DecodeLatin1(k, (Py_ssize_t)(n + 5), NULL);
    if (k != stackbuf)
        PyMem_Free(k);
    if (key != NULL)
        PyUnicode_InternInPlace(&key);
    return key;
}

static int
environ_add_header(modstate *st, PyObject *env, const char *name, size_t nlen,
                   const char *value, size_t vlen)
{
    while (vlen > 0 && (value[vlen - 1] == ' ' || value[vlen - 1] == '\t'))
        vlen--;
    while (vlen > 0 && (value[0] == ' ' || value[0] == '\t')) {
        value++;
        vlen--;
    }
    PyObject *key = header_key(st, name, nlen);
    if (key == NULL)
        return PyErr_Occurred() ? -1 : 0;
    PyObject *v = PyUnicode_DecodeLatin1(value, (Py_ssize_t)vlen, NULL);
    if (v == NULL) {
        Py_DECREF(key);
        return -1;
    }
    PyObject *old = PyDict_GetItemWithError(env, key);
    if (old != NULL) {
        /* repeated header: one value, joined by a comma (RFC 9110 5.3) */
        PyObject *joined = PyUnicode_FromFormat("%U,%U", old, v);
        Py_SETREF(v, joined);
    }
    int rc = v == NULL || PyErr_Occurred() ? -1 : PyDict_SetItem(env, key, v);
    Py_DECREF(key);
    Py_XDECREF(v);
    return rc;
}

/* ------------------------------------------------------------------ */
/* HttpRequest basics                                                   */

static HttpRequest *
request_new(modstate *st, HttpProtocol *p, PyObject *environ)
{
    HttpRequest *r = PyObject_GC_New(HttpRequest, st->HttpRequestType);
    if (r == NULL)
        return NULL;
    r->proto = (HttpProtocol *)Py_NewRef(p);
    r->environ = Py_NewRef(environ);
    r->task = r->status = r->headers = r->body_waiter = NULL;
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
static int yield_to_loop(modstate *st);
static PyMethodDef write_def = {
    "write", request_write_method, METH_O,
    "write(data)\n--\n\nThe legacy WSGI write callable."};

static PyObject *
request_call(PyObject *self, PyObject *args, PyObject *kwargs)
{
    HttpRequest *r = (HttpRequest *)self;
    static char *kwlist[] = {"status", "headers", "exc_info", NULL};
    PyObject *status, *headers, *exc_info = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "UO|O:start_response",
                                     kwlist, &status, &headers, &exc_info))
        return NULL;
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

/* ------------------------------------------------------------------ */
/* The response head                                                    */

static int
latin1_view(PyObject *s, const char **data, Py_ssize_t *len, const char *what)
{
    if (!PyUnicode_Check(s)) {
        PyErr_Format(PyExc_TypeError, "response %s must be str, not %.100s",
                     what, Py_TYPE(s)->tp_name);
        return -1;
    }
    if (PyUnicode_KIND(s) != PyUnicode_1BYTE_KIND) {
        PyErr_Format(PyExc_ValueError,
                     "response %s %R cannot be encoded as latin-1", what, s);
        return -1;
    }
    *data = (const char *)PyUnicode_1BYTE_DATA(s);
    *len = PyUnicode_GET_LENGTH(s);
    if (memchr(*data, '\r', (size_t)*len) || memchr(*data, '\n', (size_t)*len)) {
        PyErr_Format(PyExc_ValueError,
                     "response %s %R contains a line break", what, s);
        return -1;
    }
    return 0;
}

/* RFC 9110 5.6.2: a field name is a token */
static int
is_token(const char *s, Py_ssize_t n)
{
    if (n == 0)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
              (c >= 'A' && c <= 'Z') || strchr("!#$%&'*+-.^_`|~", c) != NULL) ||
            c == 0)
            return 0;
    }
    return 1;
}

/* The hop-by-hop headers gunicorn drops from an app's response (its
 * util.hop_headers but Connection, handled apart, and Server and Date). */
static int
is_hop_by_hop(const char *name, Py_ssize_t n)
{
    static const char *const names[] = {
        "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
        "trailers", "transfer-encoding", "upgrade", NULL};
    if (n != 2 && n != 7 && n != 8 && n != 10 && n != 17 && n != 18 &&
        n != 19)
        return 0;
    for (int i = 0; names[i] != NULL; i++)
        if ((size_t)n == strlen(names[i]) && strncasecmp(name, names[i], n) == 0)
            return 1;
    return 0;
}

static int
bodyless_status(int code)
{
    return code < 200 || code == 204 || code == 304;
}

typedef struct {
    char *p;
    size_t len, cap;
} wbuf;

static int
wb_put(wbuf *b, const char *s, size_t n)
{
    if (grow(&b->p, &b->cap, b->len + n) < 0)
        return -1;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    return 0;
}

#define WB_LIT(b, s) wb_put((b), (s), sizeof(s) - 1)

/* Appends the response head to `b`.  `known` is the body's full length when
 * known (-1 otherwise); chooses the framing and the connection's fate. */
static int
render_head(HttpRequest *r, wbuf *b, long long known)
{
    HttpProtocol *p = r->proto;
    HttpServer *srv = p->server;
    if (r->status == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "the WSGI application returned a body without "
                        "calling start_response()");
        return -1;
    }
    const char *s;
    Py_ssize_t n;
    if (latin1_view(r->status, &s, &n, "status") < 0)
        return -1;
    if (r->status_code < 200) {
        /* an interim status is no answer: the client would wait on */
        PyErr_Format(PyExc_ValueError,
                     "the WSGI application's final status must be 200 or "
                     "more; %R is an interim response", r->status);
        return -1;
    }
    if (WB_LIT(b, "HTTP/1.1 ") < 0 || wb_put(b, s, (size_t)n) < 0 ||
        WB_LIT(b, "\r\n") < 0)
        return -1;
    int has_date = 0;
    r->resp_length = -1;
    Py_ssize_t nh = PyList_GET_SIZE(r->headers);
    for (Py_ssize_t i = 0; i < nh; i++) {
        PyObject *h = PyList_GET_ITEM(r->headers, i);
        if (!PyTuple_Check(h) || PyTuple_GET_SIZE(h) != 2) {
            PyErr_Format(PyExc_TypeError,
                         "response header #%zd must be a (name, value) tuple, "
                         "not %R", i, h);
            return -1;
        }
        const char *name, *value;
        Py_ssize_t nl, vl;
        if (latin1_view(PyTuple_GET_ITEM(h, 0), &name, &nl, "header name") < 0 ||
            latin1_view(PyTuple_GET_ITEM(h, 1), &value, &vl, "header value") < 0)
            return -1;
        if (!is_token(name, nl)) {
            PyErr_Format(PyExc_ValueError, "invalid response header name %R",
                         PyTuple_GET_ITEM(h, 0));
            return -1;
        }
        if (memchr(value, '\0', (size_t)vl) != NULL) {
            PyErr_Format(PyExc_ValueError,
                         "response header value %R contains a NUL",
                         PyTuple_GET_ITEM(h, 1));
            return -1;
        }
        if (nl == 10 && strncasecmp(name, "connection", 10) == 0) {
            /* hop-by-hop: the server decides; "close" is honoured */
            if (vl >= 5 && strncasecmp(value, "close", 5) == 0)
                r->close_after = 1;
            continue;
        }
        if (is_hop_by_hop(name, nl))
            continue; /* the server frames the body itself, as gunicorn */
        if (nl == 14 && strncasecmp(name, "content-length", 14) == 0) {
            long long v = 0;
            int ok = vl > 0 && vl <= 18;
            for (Py_ssize_t j = 0; ok && j < vl; j++) {
                if (value[j] < '0' || value[j] > '9')
                    ok = 0;
                else
                    v = v * 10 + (value[j] - '0');
            }
            if (!ok) {
                PyErr_Format(PyExc_ValueError,
                             "invalid Content-Length response header %R",
                             PyTuple_GET_ITEM(h, 1));
                return -1;
            }
            if (r->resp_length >= 0 && r->resp_length != v) {
                PyErr_Format(PyExc_ValueError,
                             "conflicting Content-Length response headers: "
                             "%lld and %lld", r->resp_length, v);
                return -1;
            }
            r->resp_length = v;
            if (r->status_code == 204) {
                /* RFC 9110 8.6: never on a 204 (gunicorn strips it) */
                r->resp_length = -1;
                continue;
            }
        }
        else if (nl == 4 && strncasecmp(name, "date", 4) == 0) {
            has_date = 1;
        }
        if (wb_put(b, name, (size_t)nl) < 0 || WB_LIT(b, ": ") < 0 ||
            wb_put(b, value, (size_t)vl) < 0 || WB_LIT(b, "\r\n") < 0)
            return -1;
    }
    if (!has_date) {
        server_update_date(srv);
        if (wb_put(b, srv->date, srv->date_len) < 0)
            return -1;
    }
    if (r->resp_length < 0 && !bodyless_status(r->status_code)) {
        if (known >= 0) {
            char num[48];
            int k = snprintf(num, sizeof(num), "Content-Length: %lld\r\n",
                             known);
            if (wb_put(b, num, (size_t)k) < 0)
                return -1;
            r->resp_length = known;
        }
        else if (r->head) {
            /* no body follows a HEAD response anyway */
        }
        else if (r->http11) {
            if (WB_LIT(b, "Transfer-Encoding: chunked\r\n") < 0)
                return -1;
            r->chunked = 1;
        }
        else {
            r->close_after = 1; /* HTTP/1.0: the body ends with the connection */
        }
    }
    if (!r->keep_alive || srv->shutting_down || srv->keepalive <= 0 ||
        p->broken || p->upgrade ||
        (srv->max_requests &&
         srv->requests + (unsigned long long)srv->active >= srv->max_requests) ||
        (r->expect_continue && !r->continue_sent && !r->body_done))
        r->close_after = 1;
    if (r->close_after) {
        if (WB_LIT(b, "Connection: close\r\n") < 0)
            return -1;
    }
    else if (!r->http11) {
        if (WB_LIT(b, "Connection: keep-alive\r\n") < 0)
            return -1;
    }
    return WB_LIT(b, "\r\n");
}

/* Appends body bytes, framed as the head decided; returns how many body
 * bytes were taken (a Content-Length caps them). */
static int
frame_body(HttpRequest *r, wbuf *b, const char *data, size_t n)
{
    if (r->head || bodyless_status(r->status_code))
        return 0;
    if (r->resp_length >= 0) {
        long long room = r->resp_length - r->resp_written;
        if ((long long)n > room)
            n = room > 0 ? (size_t)room : 0;
    }
    if (n == 0)
        return 0;
    if (r->chunked) {
        char num[24];
        int k = snprintf(num, sizeof(num), "%zx\r\n", n);
        if (wb_put(b, num, (size_t)k) < 0 || wb_put(b, data, n) < 0 ||
            WB_LIT(b, "\r\n") < 0)
            return -1;
    }
    else if (wb_put(b, data, n) < 0) {
        return -1;
    }
    r->resp_written += (long long)n;
    return 0;
}

/* Sends what `b` holds, first waiting (in the request greenlet) for a
 * paused transport to drain. */
static int
send_wbuf(HttpRequest *r, wbuf *b, int may_wait)
{
    HttpProtocol *p = r->proto;
    modstate *st = proto_state(p);
    if (b->len == 0)
        return 0;
    if (may_wait && p->write_paused && !p->closed) {
        if (wait_on(st, p->server, &p->drain_waiter) < 0)
            return -1;
    }
    PyObject *bytes = PyBytes_FromStringAndSize(b->p, (Py_ssize_t)b->len);
    if (bytes == NULL)
        return -1;
    r->sent += b->len;
    b->len = 0;
    proto_write_bytes(p, bytes);
    Py_DECREF(bytes);
    return 0;
}

/* Writes one body chunk (the head first, when not sent yet). */
static int
write_chunk(HttpRequest *r, const char *data, size_t n, long long known)
{
    wbuf b = {NULL, 0, 0};
    int rc = -1;
    if (!r->headers_sent) {
        if (render_head(r, &b, known) < 0)
            goto done;
        r->headers_sent = 1;
    }
    if (frame_body(r, &b, data, n) < 0)
        goto done;
    rc = send_wbuf(r, &b, 1);
done:
    PyMem_Free(b.p);
    return rc;
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

/* ------------------------------------------------------------------ */
/* Running a request (in its greenlet)                                  */

static void proto_release_request(HttpProtocol *p);

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

static int
call_close(PyObject *iterable)
{
    PyObject *meth;
    PyObject *saved = PyErr_Occurred() ? exc_take() : NULL;
    int rc = 0;
    if (PyObject_GetOptionalAttrString(iterable, "close", &meth) < 0) {
        rc = -1;
    }
    else if (meth != NULL) {
        PyObject *res = PyObject_CallNoArgs(meth);
        Py_DECREF(meth);
        if (res == NULL)
            rc = -1;
        Py_XDECREF(res);
    }
    if (saved != NULL) {
        if (rc < 0)
            PyErr_Clear(); /* the first error wins */
        exc_restore(saved);
    }
    return rc;
}

/* Lets the loop run once (asyncio.sleep(0)), in the request greenlet. */
static int
yield_to_loop(modstate *st)
{
    PyObject *mod = PyImport_ImportModule("asyncio");
    if (mod == NULL)
        return -1;
    PyObject *coro = PyObject_CallMethod(mod, "sleep", "i", 0);
    Py_DECREF(mod);
    if (coro == NULL)
        return -1;
    PyObject *r = bridge_await(st, coro);
    Py_DECREF(coro);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* Writes the app's result.  The common case, a list or tuple, goes out in
 * one write with its Content-Length. */
static int
send_result(HttpRequest *r, PyObject *result)
{
    if (PyList_CheckExact(result) || PyTuple_CheckExact(result)) {
        PyObject *seq = result;
        Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
        PyObject **items = PySequence_Fast_ITEMS(seq);
        long long total = 0;
        for (Py_ssize_t i = 0; i < n; i++) {
            if (!PyBytes_Check(items[i])) {
                PyErr_Format(PyExc_TypeError,
                             "the WSGI application's body must be bytes, "
                             "not %.100s", Py_TYPE(items[i])->tp_name);
                return -1;
            }
            total += PyBytes_GET_SIZE(items[i]);
        }
        if (r->headers_sent) {
            /* write_chunk() may suspend: the list may change meanwhile */
            PyObject *copy = PySequence_Tuple(seq);
            if (copy == NULL)
                return -1;
            for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(copy); i++) {
                PyObject *it = PyTuple_GET_ITEM(copy, i);
                if (write_chunk(r, PyBytes_AS_STRING(it),
                                (size_t)PyBytes_GET_SIZE(it), -1) < 0) {
                    Py_DECREF(copy);
                    return -1;
                }
            }
            Py_DECREF(copy);
        }
        else {
            wbuf b = {NULL, 0, 0};
            int rc = -1;
            if (render_head(r, &b, total) < 0)
                goto fail;
            r->headers_sent = 1;
            for (Py_ssize_t i = 0; i < n; i++)
                if (frame_body(r, &b, PyBytes_AS_STRING(items[i]),
                               (size_t)PyBytes_GET_SIZE(items[i])) < 0)
                    goto fail;
            if (r->chunked && WB_LIT(&b, "0\r\n\r\n") < 0)
                goto fail;
            r->chunked = 0;
            /* b holds copies: the list may change while this waits */
            rc = send_wbuf(r, &b, 1);
        fail:
            PyMem_Free(b.p);
            return rc;
        }
    }
    else {
        /* HEAD too: a generator may call start_response on its first step;
         * frame_body() sends no body bytes for HEAD */
        PyObject *it = PyObject_GetIter(result);
        if (it == NULL)
            return -1;
        PyObject *item;
        size_t since_yield = 0, chunks = 0;
        while ((item = PyIter_Next(it)) != NULL) {
            Py_buffer view;
            if (!PyBytes_Check(item)) {
                PyErr_Format(PyExc_TypeError,
                             "the WSGI application's body must be bytes, "
                             "not %.100s", Py_TYPE(item)->tp_name);
                Py_DECREF(item);
                break;
            }
            if (PyObject_GetBuffer(item, &view, PyBUF_SIMPLE) < 0) {
                Py_DECREF(item);
                break;
            }
            int rc = view.len > 0
                         ? write_chunk(r, view.buf, (size_t)view.len, -1)
                         : 0;
            since_yield += (size_t)view.len;
            PyBuffer_Release(&view);
            Py_DECREF(item);
            if (rc < 0)
                break;
            if (proto_gone(r->proto))
                break; /* nobody is listening any more */
            if (++chunks >= INLINE_YIELD_CHUNKS ||
                since_yield >= INLINE_YIELD_BYTES) {
                chunks = since_yield = 0;
                if (yield_to_loop(proto_state(r->proto)) < 0)
                    break;
            }
        }
        Py_DECREF(it);
        if (PyErr_Occurred())
            return -1;
    }
    /* the end: the head if no chunk carried it, the last chunk */
    wbuf b = {NULL, 0, 0};
    int rc = -1;
    if (!r->headers_sent) {
        if (render_head(r, &b, r->head ? -1 : 0) < 0)
            goto end;
        r->headers_sent = 1;
    }
    if (r->chunked && WB_LIT(&b, "0\r\n\r\n") < 0)
        goto end;
    r->chunked = 0;
    rc = send_wbuf(r, &b, 0);
end:
    PyMem_Free(b.p);
    return rc;
}

/* The server's own answer when the app failed before its head went out:
 * 500, or 400 when the client's malformed body made it fail. */
static void
respond_failure(HttpRequest *r, int status)
{
    HttpProtocol *p = r->proto;
    if (r->headers_sent) {
        r->close_after = 1; /* the response is cut short */
        return;
    }
    char buf[256];
    const char *reason = reason_of(status);
    int n = snprintf(buf, sizeof(buf),
                     "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     status, reason, strlen(reason), reason);
    Py_CLEAR(r->status);
    r->status = PyUnicode_FromFormat("%d %s", status, reason);
    if (r->status == NULL)
        PyErr_Clear();
    Py_CLEAR(r->headers);
    r->headers = PyList_New(0);
    if (r->headers == NULL)
        PyErr_Clear();
    r->headers_sent = 1;
    r->close_after = 1;
    if (n > 0 && (size_t)n < sizeof(buf)) {
        r->sent += (size_t)n;
        if (proto_write(p, buf, (size_t)n) < 0)
            PyErr_Clear();
    }
}

static void
respond_500(HttpRequest *r)
{
    respond_failure(r, 500);
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
    PyObject *result = PyObject_CallFunctionObjArgs(srv->app, r->environ,
                                                    (PyObject *)r, NULL);
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
                respond_500(r);
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
    request_finish(r);
    if (exc != NULL)
        exc_restore(exc);
    Py_DECREF(srv);
    Py_DECREF(p);
    Py_DECREF(r);
    return ret == NULL ? NULL : Py_NewRef(ret);
}

static PyMethodDef run_request_def = {"_run_request", run_request, METH_O,
                                      NULL};

/* ------------------------------------------------------------------ */
/* HttpInput: wsgi.input                                                */

static PyObject *
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
    for (;;) {
        size_t avail = r->blen - r->bpos;
        const char *nl = avail ? memchr(r->bbuf + r->bpos, '\n', avail) : NULL;
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

static PyType_Spec input_spec = {
    .name = "aiopyramid._core.HttpInput",
    .basicsize = sizeof(HttpInput),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = input_slots,
};

/* ------------------------------------------------------------------ */
/* HttpRequest type                                                     */

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

static PyType_Slot request_slots[] = {
    {Py_tp_call, request_call},
    {Py_tp_getset, request_getset},
    {Py_tp_traverse, request_traverse},
    {Py_tp_clear, request_clear},
    {Py_tp_dealloc, request_dealloc},
    {Py_tp_doc, "One HTTP request; calling it is WSGI's start_response."},
    {0, NULL},
};

static PyType_Spec request_spec = {
    .name = "aiopyramid._core.HttpRequest",
    .basicsize = sizeof(HttpRequest),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = request_slots,
};

/* ------------------------------------------------------------------ */
/* FileWrapper                                                          */

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
    if (st == NULL)
        return NULL;
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

static PyType_Spec filewrapper_spec = {
    .name = "aiopyramid._core.FileWrapper",
    .basicsize = sizeof(FileWrapper),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = filewrapper_slots,
};

/* ------------------------------------------------------------------ */
/* Parser callbacks                                                     */

#define PROTO(parser) ((HttpProtocol *)(parser)->data)

static int
cb_error(HttpProtocol *p)
{
    /* a Python error in a callback: kept, and mapped to a 500 by feed() */
    if (p->cb_exc == NULL)
        p->cb_exc = exc_take();
    else
        PyErr_Clear();
    return HPE_USER;
}

static int
limit_error(llhttp_t *parser, int status, const char *reason)
{
    PROTO(parser)->err_status = status;
    PROTO(parser)->err_message = reason;
    llhttp_set_error_reason(parser, reason);
    return HPE_USER;
}

static int
on_message_begin(llhttp_t *parser)
{
    HttpProtocol *p = PROTO(parser);
    p->slen = p->url_len = p->field_len = 0;
    p->nfields = 0;
    p->line_len = 0;
    p->host_fields = 0;
    p->scheme = 0;
    p->head_started = monotonic();
    Py_CLEAR(p->environ);
    return 0;
}

static int
on_method(llhttp_t *parser, const char *at, size_t n)
{
    HttpProtocol *p = PROTO(parser);
    p->line_len += (Py_ssize_t)n;
    return 0;
}

static int
on_url(llhttp_t *parser, const char *at, size_t n)
{
    HttpProtocol *p = PROTO(parser);
    if (p->slen == 0) /* the whole line counts, as gunicorn counts it */
        p->line_len += (Py_ssize_t)(sizeof("  HTTP/1.1") - 1);
    p->line_len += (Py_ssize_t)n;
    if (p->server->limit_line > 0 && p->line_len > p->server->limit_line)
        return limit_error(parser, 414, "request line is too large");
    if (grow(&p->sbuf, &p->scap, p->slen + n) < 0)
        return cb_error(p);
    memcpy(p->sbuf + p->slen, at, n);
    p->slen += n;
    p->url_len = p->slen;
    return 0;
}

static int
add_to_field(llhttp_t *parser, const char *at, size_t n)
{
    HttpProtocol *p = PROTO(parser);
    Py_ssize_t size = (Py_ssize_t)(p->slen - p->url_len + n);
    if (p->server->limit_field_size > 0 && size > p->server->limit_field_size)
        return limit_error(parser, 431, "request header field is too large");
    if (grow(&p->sbuf, &p->scap, p->slen + n) < 0)
        return cb_error(p);
    memcpy(p->sbuf + p->slen, at, n);
    p->slen += n;
    return 0;
}

static int
on_header_field(llhttp_t *parser, const char *at, size_t n)
{
    return add_to_field(parser, at, n);
}

static int
on_header_field_complete(llhttp_t *parser)
{
    HttpProtocol *p = PROTO(parser);
    p->field_len = p->slen - p->url_len;
    p->nfields++;
    if (p->server->limit_fields > 0 && p->nfields > p->server->limit_fields)
        return limit_error(parser, 431, "too many request header fields");
    return 0;
}

static int
on_header_value(llhttp_t *parser, const char *at, size_t n)
{
    return add_to_field(parser, at, n);
}

static int
ensure_environ(HttpProtocol *p)
{
    if (p->environ == NULL) {
        p->environ = PyDict_Copy(p->conn_environ);
        if (p->environ == NULL)
            return -1;
    }
    return 0;
}

/* A secure scheme header from a trusted proxy, judged occurrence by
 * occurrence as gunicorn does (Message._apply_header_policy): each says
 * https when its value is the expected one, http otherwise, and two that
 * disagree are refused. */
static int
scheme_header(HttpProtocol *p, const char *name, size_t nlen,
              const char *value, size_t vlen)
{
    PyObject *pairs = p->server->secure_headers;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(pairs); i++) {
        PyObject *key = PyTuple_GET_ITEM(PyTuple_GET_ITEM(pairs, i), 0);
        if (PyUnicode_GET_LENGTH(key) != (Py_ssize_t)nlen + 5 ||
            PyUnicode_KIND(key) != PyUnicode_1BYTE_KIND)
            continue;
        const char *k = (const char *)PyUnicode_1BYTE_DATA(key) + 5;
        size_t j = 0;
        for (; j < nlen; j++) {
            char c = name[j];
            if (c == '_')
                break; /* such headers are dropped */
            if (c >= 'a' && c <= 'z')
                c -= 32;
            else if (c == '-')
                c = '_';
            if (c != k[j])
                break;
        }
        if (j < nlen)
            continue;
        while (vlen > 0 && (value[vlen - 1] == ' ' || value[vlen - 1] == '\t'))
            vlen--;
        while (vlen > 0 && (value[0] == ' ' || value[0] == '\t')) {
            value++;
            vlen--;
        }
        PyObject *v = PyUnicode_DecodeLatin1(value, (Py_ssize_t)vlen, NULL);
        if (v == NULL)
            return cb_error(p);
        int eq = PyObject_RichCompareBool(
            v, PyTuple_GET_ITEM(PyTuple_GET_ITEM(pairs, i), 1), Py_EQ);
        Py_DECREF(v);
        if (eq < 0)
            return cb_error(p);
        int scheme = eq ? 2 : 1;
        if (p->scheme != 0 && p->scheme != scheme)
            return limit_error(&p->parser, 400, "Contradictory scheme headers");
        p->scheme = scheme;
        return 0;
    }
    return 0;
}

static int
on_header_value_complete(llhttp_t *parser)
{
    HttpProtocol *p = PROTO(parser);
    modstate *st = proto_state(p);
    const char *name = p->sbuf + p->url_len;
    size_t vlen = p->slen - p->url_len - p->field_len;
    if (p->req != NULL) {
        /* a chunked body's trailer: the environ is already the app's */
        p->slen = p->url_len;
        p->field_len = 0;
        return 0;
    }
    if (p->field_len == 4 && strncasecmp(name, "host", 4) == 0)
        p->host_fields++;
    if (p->trusted && PyTuple_GET_SIZE(p->server->secure_headers) > 0) {
        int rc = scheme_header(p, name, p->field_len, name + p->field_len,
                               vlen);
        if (rc != 0)
            return rc;
    }
    if (ensure_environ(p) < 0 ||
        environ_add_header(st, p->environ, name, p->field_len,
                           name + p->field_len, vlen) < 0)
        return cb_error(p);
    p->slen = p->url_len;
    p->field_len = 0;
    return 0;
}

static int
on_headers_complete(llhttp_t *parser)
{
    HttpProtocol *p = PROTO(parser);
    p->head_started = 0;
    HttpServer *srv = p->server;
    modstate *st = proto_state(p);
    if (ensure_environ(p) < 0)
        return cb_error(p);
    PyObject *env = p->environ;
    PyObject *method = PyTuple_GET_ITEM(st->http_methods, parser->method & 63);
    int http11 = parser->http_major == 1 && parser->http_minor >= 1;
    if (parser->http_major > 1)
        http11 = 1;
    /* RFC 9112 3.2: an HTTP/1.1 request has exactly one Host; none has
     * two (they would be joined into one value the app cannot trust) */
    if ((http11 && p->host_fields != 1) || p->host_fields > 1)
        return limit_error(parser, 400, p->host_fields ? "repeated Host header"
                                                       : "missing Host header");
    if (PyDict_SetItem(env, HSTR(st, REQUEST_METHOD), method) < 0 ||
        PyDict_SetItem(env, HSTR(st, SERVER_PROTOCOL),
                       http11 ? HSTR(st, HTTP11) : HSTR(st, HTTP10)) < 0 ||
        environ_set_url(srv, st, env, p->sbuf, p->url_len) < 0)
        return cb_error(p);
    if (p->scheme != 0 &&
        PyDict_SetItem(env, HSTR(st, WSGI_URL_SCHEME),
                       p->scheme == 2 ? HSTR(st, HTTPS) : HSTR(st, HTTP)) < 0)
        return cb_error(p); /* a trusted proxy told the scheme */
    HttpRequest *r = request_new(st, p, env);
    if (r == NULL)
        return cb_error(p);
    PyObject *input = input_new(st, r);
    if (input == NULL || PyDict_SetItem(env, HSTR(st, WSGI_INPUT), input) < 0) {
        Py_XDECREF(input);
        Py_DECREF(r);
        return cb_error(p);
    }
    Py_DECREF(input);
    Py_CLEAR(p->environ);
    r->http11 = http11;
    r->head = parser->method == HTTP_HEAD;
    r->keep_alive = llhttp_should_keep_alive(parser);
    if (!http11 && (parser->flags & F_TRANSFER_ENCODING))
        r->keep_alive = 0; /* RFC 9112 6.1: faulty framing, close after */
    if (http11) {
        PyObject *expect = PyDict_GetItemWithError(env, HSTR(st, HTTP_EXPECT));
        if (expect == NULL && PyErr_Occurred()) {
            Py_DECREF(r);
            return cb_error(p);
        }
        if (expect != NULL && PyUnicode_GET_LENGTH(expect) == 12 &&
            PyUnicode_KIND(expect) == PyUnicode_1BYTE_KIND &&
            strncasecmp((const char *)PyUnicode_1BYTE_DATA(expect),
                        "100-continue", 12) == 0)
            r->expect_continue = 1;
    }
    if (parser->upgrade)
        p->upgrade = 1;
    Py_XSETREF(p->req, r);
    return 0;
}

static int
on_body(llhttp_t *parser, const char *at, size_t n)
{
    HttpProtocol *p = PROTO(parser);
    HttpRequest *r = p->req;
    if (r == NULL || r->response_done)
        return 0; /* a body nobody reads any more */
    if (grow(&r->bbuf, &r->bcap, r->blen + n) < 0)
        return cb_error(p);
    memcpy(r->bbuf + r->blen, at, n);
    r->blen += n;
    if ((Py_ssize_t)(r->blen - r->bpos) > p->server->body_buffer)
        set_read_paused(p, PAUSE_BODY, 1);
    wake(proto_state(p), &r->body_waiter);
    return 0;
}

static int
on_message_complete(llhttp_t *parser)
{
    HttpProtocol *p = PROTO(parser);
    HttpRequest *r = p->req;
    if (r != NULL) {
        r->body_done = 1;
        wake(proto_state(p), &r->body_waiter);
    }
    /* stop here: what follows waits for this request's response */
    return HPE_PAUSED;
}

/* ------------------------------------------------------------------ */
/* HttpProtocol                                                         */

static void
proto_release_request(HttpProtocol *p)
{
    HttpRequest *r = p->req;
    if (r == NULL)
        return;
    p->req = NULL;
    if (r->task != NULL)
        Py_CLEAR(r->task);
    /* environ -> wsgi.input -> request is a cycle: break it here, so the
     * request and its body buffer go now rather than at the next GC */
    Py_CLEAR(r->environ);
    Py_DECREF(r);
}

/* What the server needs to make each request's Task. */
static int
server_task_init(HttpServer *self)
{
    PyObject *tasks = PyImport_ImportModule("asyncio.tasks");
    if (tasks == NULL)
        return -1;
    self->task_type = PyObject_GetAttrString(tasks, "Task");
#if PY_VERSION_HEX >= 0x030C0000
    self->task_kwnames = Py_BuildValue("(sss)", "loop", "context",
                                       "eager_start");
#else
    self->task_kwnames = Py_BuildValue("(ss)", "loop", "context");
    self->current_tasks = PyObject_GetAttrString(tasks, "_current_tasks");
    if (self->current_tasks != NULL && !PyDict_Check(self->current_tasks)) {
        PyErr_SetString(PyExc_TypeError,
                        "asyncio.tasks._current_tasks is not a dict");
        Py_CLEAR(self->current_tasks);
    }
    if (self->current_tasks == NULL)
        Py_CLEAR(self->task_kwnames);
#endif
    Py_DECREF(tasks);
    return self->task_type != NULL && self->task_kwnames != NULL ? 0 : -1;
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
    PyObject *args[4] = {spawn, srv->loop, ctx, eager ? Py_True : Py_False};
#else
    PyObject *args[3] = {spawn, srv->loop, ctx};
#endif
    PyObject *task = PyObject_Vectorcall(srv->task_type, args, 1,
                                         srv->task_kwnames);
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

static void
start_request(HttpProtocol *p, HttpRequest *r)
{
    modstate *st = proto_state(p);
    HttpServer *srv = p->server;
    PyObject *ctx = NULL, *args = NULL, *spawn = NULL, *task = NULL;
    r->started = 1;
    srv->active++;
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
    PySendResult sr;
    task = start_task(st, srv, spawn, ctx, &sr);
    if (task == NULL)
        goto error;
    if (sr == PYGEN_NEXT) {
        /* the request suspended: its Task drives the rest */
        r->task = Py_NewRef(task);
        if (p->task_done == NULL)
            p->task_done = PyObject_GetAttrString((PyObject *)p, "_task_done");
        PyObject *res = p->task_done == NULL ? NULL :
            PyObject_CallMethodOneArg(task, st->str_add_done_callback,
                                      p->task_done);
        if (res == NULL)
            goto error;
        Py_DECREF(res);
    }
    else if (sr == PYGEN_ERROR) {
        /* run_request answers app errors itself: this was the server's */
        if (!r->response_done) {
            log_error(srv, "Error handling request");
            respond_500(r);
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
        respond_500(r);
        request_finish(r);
    }
done:
    Py_XDECREF(task);
    Py_XDECREF(spawn);
    Py_XDECREF(args);
    Py_XDECREF(ctx);
    Py_DECREF(r);
}

static void
body_error(HttpProtocol *p)
{
    HttpRequest *r = p->req;
    r->body_error = 1;
    r->close_after = 1;
    wake(proto_state(p), &r->body_waiter);
}

/* Parses what the buffer holds and starts the requests it completes. */
static void
feed(HttpProtocol *p)
{
    if (p->feeding)
        return; /* the outer call goes on where this one would */
    Py_INCREF(p);
    p->feeding = 1;
    /* no new request while the client does not read the responses (the
     * body of the one in progress still comes): memory per connection
     * stays bounded by the transport's buffer */
    while (!p->closed && !p->broken && !p->waiting && p->rpos < p->rlen &&
           !(p->write_paused && (p->req == NULL || p->req->body_done))) {
        const char *start = p->rbuf + p->rpos;
        size_t n = p->rlen - p->rpos;
        llhttp_errno_t err = llhttp_execute(&p->parser, start, n);
        if (err == HPE_OK) {
            p->rpos = p->rlen;
        }
        else if (err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE) {
            const char *pos = llhttp_get_error_pos(&p->parser);
            p->rpos += (size_t)(pos - start);
            if (err == HPE_PAUSED)
                llhttp_resume(&p->parser);
            else
                p->broken = 1; /* upgrades are not served: close after */
        }
        else {
            HttpRequest *r = p->req;
            int status = p->err_status ? p->err_status : 400;
            if (p->cb_exc != NULL) {
                exc_restore(p->cb_exc);
                p->cb_exc = NULL;
                log_error(p->server, "Error parsing request");
                status = 500;
            }
            if (r != NULL && r->started && !r->response_done) {
                /* the app is reading the body: it sees an error, and the
                 * connection closes after its response */
                p->broken = 1;
                body_error(p);
                p->rpos = p->rlen; /* nothing more is parsed: drop it */
                set_read_paused(p, PAUSE_PIPELINE, 1);
            }
            else if (r != NULL && r->response_done) {
                /* its response is complete: just close */
                proto_release_request(p);
                p->broken = 1;
                proto_close(p);
            }
            else {
                proto_release_request(p);
                /* a limit or rule of ours says which (a Host, the scheme
                 * headers, a size); llhttp's own errors get the reason */
                respond_message_and_close(
                    p, status, p->err_status && status == p->err_status
                                   ? p->err_message : NULL);
            }
            break;
        }
        HttpRequest *r = p->req;
        if (r != NULL && !r->started)
            start_request(p, r);
        r = p->req;
        if (r != NULL && r->body_done) {
            if (r->response_done)
                proto_release_request(p);
            else
                p->waiting = 1; /* pipelined bytes wait for this response */
        }
    }
    /* keep the unparsed rest at the start of the buffer */
    if (p->rpos == p->rlen) {
        p->rpos = p->rlen = 0;
    }
    else if (p->rpos > 0 && p->rbuf != NULL) {
        memmove(p->rbuf, p->rbuf + p->rpos, p->rlen - p->rpos);
        p->rlen -= p->rpos;
        p->rpos = 0;
    }
    if ((p->waiting || p->write_paused) && p->rlen > 65536)
        set_read_paused(p, PAUSE_PIPELINE, 1);
    p->feeding = 0;
    Py_DECREF(p);
}

static PyObject *
proto_new(modstate *st, HttpServer *srv)
{
    HttpProtocol *p = PyObject_GC_New(HttpProtocol, st->HttpProtocolType);
    if (p == NULL)
        return NULL;
    p->server = (HttpServer *)Py_NewRef(srv);
    p->transport = p->write = p->conn_environ = NULL;
    p->task_done = p->drain_waiter = NULL;
    p->req = NULL;
    p->cb_exc = NULL;
    p->environ = NULL;
    p->rbuf = p->sbuf = NULL;
    p->rpos = p->rlen = p->rcap = 0;
    p->slen = p->scap = p->url_len = p->field_len = 0;
    p->nfields = p->line_len = 0;
    p->host_fields = 0;
    p->head_started = 0;
    p->err_status = 0;
    p->err_message = NULL;
    p->read_paused = p->write_paused = 0;
    p->closed = p->waiting = p->broken = p->trusted = p->upgrade = 0;
    p->feeding = p->scheme = 0;
    p->wsize_seen = 0;
    p->served = 0;
    p->last_activity = monotonic();
    llhttp_init(&p->parser, HTTP_REQUEST, &parser_settings);
    p->parser.data = p;
    PyObject_GC_Track(p);
    return (PyObject *)p;
}

static int
proto_traverse(PyObject *op, visitproc visit, void *arg)
{
    HttpProtocol *p = (HttpProtocol *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT((PyObject *)p->server);
    Py_VISIT(p->transport);
    Py_VISIT(p->write);
    Py_VISIT(p->conn_environ);
    Py_VISIT(p->task_done);
    Py_VISIT(p->drain_waiter);
    Py_VISIT((PyObject *)p->req);
    Py_VISIT(p->cb_exc);
    Py_VISIT(p->environ);
    return 0;
}

static int
proto_clear(PyObject *op)
{
    HttpProtocol *p = (HttpProtocol *)op;
    Py_CLEAR(p->server);
    Py_CLEAR(p->transport);
    Py_CLEAR(p->write);
    Py_CLEAR(p->conn_environ);
    Py_CLEAR(p->task_done);
    Py_CLEAR(p->drain_waiter);
    Py_CLEAR(p->req);
    Py_CLEAR(p->cb_exc);
    Py_CLEAR(p->environ);
    return 0;
}

static void
proto_dealloc(PyObject *op)
{
    HttpProtocol *p = (HttpProtocol *)op;
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    proto_clear(op);
    PyMem_Free(p->rbuf);
    PyMem_Free(p->sbuf);
    tp->tp_free(op);
    Py_DECREF(tp);
}

/* host and port of a socket address as environ strings */
static int
set_addr(modstate *st, PyObject *env, PyObject *addr, PyObject *khost,
         PyObject *kport)
{
    PyObject *host = NULL, *port = NULL;
    int rc = -1;
    if (PyTuple_Check(addr) && PyTuple_GET_SIZE(addr) >= 2) {
        host = PyObject_Str(PyTuple_GET_ITEM(addr, 0));
        port = PyObject_Str(PyTuple_GET_ITEM(addr, 1));
    }
    else {
        host = PyUnicode_Check(addr) ? Py_NewRef(addr)
                                     : Py_NewRef(HSTR(st, EMPTY));
        port = Py_NewRef(HSTR(st, EMPTY));
    }
    if (host != NULL && port != NULL && PyDict_SetItem(env, khost, host) == 0 &&
        PyDict_SetItem(env, kport, port) == 0)
        rc = 0;
    Py_XDECREF(host);
    Py_XDECREF(port);
    return rc;
}

static PyObject *
extra_info(modstate *st, PyObject *transport, PyObject *name)
{
    return PyObject_CallMethodOneArg(transport, HSTR(st, GET_EXTRA_INFO), name);
}

static PyObject *
proto_connection_made(PyObject *op, PyObject *transport)
{
    HttpProtocol *p = (HttpProtocol *)op;
    HttpServer *srv = p->server;
    modstate *st = proto_state(p);
    PyObject *peer = NULL, *sock = NULL, *ssl = NULL, *env = NULL;
    Py_XSETREF(p->transport, Py_NewRef(transport));
    Py_XSETREF(p->write, PyObject_GetAttr(transport, HSTR(st, WRITE)));
    if (p->write == NULL)
        goto error;
    env = PyDict_Copy(srv->base_environ);
    if (env == NULL ||
        (peer = extra_info(st, transport, HSTR(st, PEERNAME))) == NULL ||
        (sock = extra_info(st, transport, HSTR(st, SOCKNAME))) == NULL ||
        (ssl = extra_info(st, transport, HSTR(st, SSLCONTEXT))) == NULL)
        goto error;
    if (set_addr(st, env, peer, HSTR(st, REMOTE_ADDR), HSTR(st, REMOTE_PORT)) < 0 ||
        set_addr(st, env, sock, HSTR(st, SERVER_NAME), HSTR(st, SERVER_PORT)) < 0 ||
        PyDict_SetItem(env, HSTR(st, WSGI_URL_SCHEME),
                       ssl != Py_None ? HSTR(st, HTTPS) : HSTR(st, HTTP)) < 0)
        goto error;
    if (!PyTuple_Check(peer) ||
        (srv->forwarded_allow == NULL && srv->trust_check == NULL)) {
        p->trusted = 1; /* a unix socket's peer, or '*' */
    }
    else {
        PyObject *host = PyDict_GetItemWithError(env, HSTR(st, REMOTE_ADDR));
        int c = -1;
        if (host != NULL && srv->trust_check != NULL) {
            PyObject *v = PyObject_CallOneArg(srv->trust_check, host);
            c = v ? PyObject_IsTrue(v) : -1;
            Py_XDECREF(v);
        }
        else if (host != NULL) {
            c = PySet_Contains(srv->forwarded_allow, host);
        }
        if (c < 0)
            goto error;
        p->trusted = c;
    }
    Py_XSETREF(p->conn_environ, env);
    env = NULL;
    if (PySet_Add(srv->connections, op) < 0)
        goto error;
    p->last_activity = monotonic();
    Py_DECREF(peer);
    Py_DECREF(sock);
    Py_DECREF(ssl);
    Py_RETURN_NONE;
error:
    Py_XDECREF(env);
    Py_XDECREF(peer);
    Py_XDECREF(sock);
    Py_XDECREF(ssl);
    log_error(srv, "Error setting up a connection");
    PyObject *r = PyObject_CallMethodNoArgs(transport, HSTR(st, ABORT));
    if (r == NULL)
        PyErr_Clear();
    Py_XDECREF(r);
    Py_RETURN_NONE;
}

static PyObject *
proto_connection_lost(PyObject *op, PyObject *exc)
{
    HttpProtocol *p = (HttpProtocol *)op;
    modstate *st = proto_state(p);
    p->closed = 1;
    if (p->server != NULL && PySet_Discard(p->server->connections, op) < 0)
        PyErr_Clear();
    HttpRequest *r = p->req;
    if (r != NULL && r->started && !r->response_done) {
        /* the client left: cancel the view where it waits */
        if (r->task != NULL) {
            PyObject *res = PyObject_CallMethodNoArgs(r->task, HSTR(st, CANCEL));
            if (res == NULL)
                log_error(p->server, "Error cancelling a request");
            Py_XDECREF(res);
        }
        wake(st, &r->body_waiter);
    }
    wake(st, &p->drain_waiter);
    if (r == NULL || !r->started || r->response_done)
        proto_release_request(p);
    Py_CLEAR(p->write);
    Py_CLEAR(p->transport);
    Py_CLEAR(p->environ);
    /* a bound method of this protocol: a cycle the GC alone would break
     * (a Task still running holds its own reference) */
    Py_CLEAR(p->task_done);
    Py_RETURN_NONE;
}

static PyObject *
proto_task_done(PyObject *op, PyObject *task)
{
    HttpProtocol *p = (HttpProtocol *)op;
    modstate *st = proto_state(p);
    PyObject *c = PyObject_CallMethodNoArgs(task, HSTR(st, CANCELLED));
    if (c == NULL)
        return NULL;
    if (c == Py_False) {
        PyObject *exc = PyObject_CallMethodNoArgs(task, HSTR(st, EXCEPTION));
        if (exc == NULL) {
            Py_DECREF(c);
            return NULL;
        }
        if (exc != Py_None && !p->closed) {
            exc_restore(Py_NewRef(exc));
            log_error(p->server, "Error handling request");
        }
        Py_DECREF(exc);
    }
    Py_DECREF(c);
    HttpRequest *r = p->req;
    if (r != NULL && r->task == task && r->response_done) {
        if (r->body_done || p->closed) {
            proto_release_request(p);
            p->waiting = 0;
        }
    }
    if (p->closed) {
        proto_release_request(p);
        Py_RETURN_NONE;
    }
    if (p->req == NULL) {
        p->waiting = 0;
        feed(p);
        if (!p->waiting)
            set_read_paused(p, PAUSE_PIPELINE, 0);
    }
    Py_RETURN_NONE;
}

static int
ensure_space(HttpProtocol *p, size_t want)
{
    if (p->rpos > 0 && p->rpos == p->rlen)
        p->rpos = p->rlen = 0;
    return grow(&p->rbuf, &p->rcap, p->rlen + want);
}

static PyObject *
proto_get_buffer(PyObject *op, PyObject *sizehint)
{
    HttpProtocol *p = (HttpProtocol *)op;
    if (ensure_space(p, 16384) < 0)
        return NULL;
    if (p->rcap < 65536 && grow(&p->rbuf, &p->rcap, 65536) < 0)
        return NULL;
    return PyMemoryView_FromMemory(p->rbuf + p->rlen,
                                   (Py_ssize_t)(p->rcap - p->rlen), PyBUF_WRITE);
}

static PyObject *
proto_buffer_updated(PyObject *op, PyObject *arg)
{
    HttpProtocol *p = (HttpProtocol *)op;
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (n < 0 || (size_t)n > p->rcap - p->rlen) {
        PyErr_Format(PyExc_ValueError,
                     "buffer_updated() got %zd bytes, more than the buffer "
                     "had room for", n);
        return NULL;
    }
    p->rlen += (size_t)n;
    p->last_activity = monotonic();
    feed(p);
    Py_RETURN_NONE;
}

static PyObject *
proto_data_received(PyObject *op, PyObject *data)
{
    HttpProtocol *p = (HttpProtocol *)op;
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int rc = ensure_space(p, (size_t)view.len);
    if (rc == 0 && view.len > 0) {
        memcpy(p->rbuf + p->rlen, view.buf, (size_t)view.len);
        p->rlen += (size_t)view.len;
    }
    PyBuffer_Release(&view);
    if (rc < 0)
        return NULL;
    p->last_activity = monotonic();
    feed(p);
    Py_RETURN_NONE;
}

static PyObject *
proto_eof_received(PyObject *op, PyObject *unused)
{
    /* The peer closed its side.  A client that goes away mid-request looks
     * just like this, so the transport closes (False) and connection_lost
     * cancels a request in progress, as uvicorn and aiohttp do. */
    Py_RETURN_FALSE;
}

static PyObject *
proto_pause_writing(PyObject *op, PyObject *unused)
{
    ((HttpProtocol *)op)->write_paused = 1;
    Py_RETURN_NONE;
}

static PyObject *
proto_resume_writing(PyObject *op, PyObject *unused)
{
    HttpProtocol *p = (HttpProtocol *)op;
    p->write_paused = 0;
    p->last_activity = monotonic(); /* the client reads: progress */
    wake(proto_state(p), &p->drain_waiter);
    if (!p->closed && !p->waiting && p->rpos < p->rlen) {
        /* pipelined requests waited for the client to read */
        feed(p);
        if (!p->waiting && !p->write_paused)
            set_read_paused(p, PAUSE_PIPELINE, 0);
    }
    Py_RETURN_NONE;
}

static PyObject *
proto_get_idle(PyObject *op, void *closure)
{
    HttpProtocol *p = (HttpProtocol *)op;
    return PyBool_FromLong(p->req == NULL && p->rlen == p->rpos);
}

static PyMethodDef proto_methods[] = {
    {"connection_made", proto_connection_made, METH_O, NULL},
    {"connection_lost", proto_connection_lost, METH_O, NULL},
    {"get_buffer", proto_get_buffer, METH_O, NULL},
    {"buffer_updated", proto_buffer_updated, METH_O, NULL},
    {"data_received", proto_data_received, METH_O, NULL},
    {"eof_received", proto_eof_received, METH_NOARGS, NULL},
    {"pause_writing", proto_pause_writing, METH_NOARGS, NULL},
    {"resume_writing", proto_resume_writing, METH_NOARGS, NULL},
    {"_task_done", proto_task_done, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef proto_getset[] = {
    {"idle", proto_get_idle, NULL, "No request in progress.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot proto_slots[] = {
    {Py_tp_methods, proto_methods},
    {Py_tp_getset, proto_getset},
    {Py_tp_traverse, proto_traverse},
    {Py_tp_clear, proto_clear},
    {Py_tp_dealloc, proto_dealloc},
    {Py_tp_doc, "One HTTP/1.1 connection (an asyncio BufferedProtocol); made "
                "by calling an HttpServer."},
    {0, NULL},
};

static PyType_Spec proto_spec = {
    .name = "aiopyramid._core.HttpProtocol",
    .basicsize = sizeof(HttpProtocol),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = proto_slots,
};

/* ------------------------------------------------------------------ */
/* HttpServer                                                           */

static int
positive_or_zero(Py_ssize_t v, const char *name)
{
    if (v < 0) {
        PyErr_Format(PyExc_ValueError, "%s must be 0 or more, got %zd", name, v);
        return -1;
    }
    return 0;
}

static PyObject *
server_new(PyTypeObject *tp, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {
        "app", "loop", "base_environ", "limit_request_line",
        "limit_request_fields", "limit_request_field_size", "keepalive",
        "secure_scheme_headers", "forwarded_allow_ips", "access_log",
        "error_log", "body_buffer", NULL};
    PyObject *app, *loop, *base = NULL, *secure = NULL, *allow = NULL;
    PyObject *access_log = Py_None, *error_log = Py_None;
    Py_ssize_t limit_line = 4094, limit_fields = 100, limit_field_size = 8190;
    Py_ssize_t body_buffer = 262144;
    double keepalive = 2.0;
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "OO|$O!nnndOOOOn:HttpServer", kwlist, &app, &loop,
            &PyDict_Type, &base, &limit_line, &limit_fields,
            &limit_field_size, &keepalive, &secure, &allow, &access_log,
            &error_log, &body_buffer))
        return NULL;
    if (positive_or_zero(limit_line, "limit_request_line") < 0 ||
        positive_or_zero(limit_fields, "limit_request_fields") < 0 ||
        positive_or_zero(limit_field_size, "limit_request_field_size") < 0)
        return NULL;
    if (body_buffer < 1024) {
        PyErr_Format(PyExc_ValueError,
                     "body_buffer must be 1024 or more, got %zd", body_buffer);
        return NULL;
    }
    modstate *st = state_of_type(tp);
    if (st == NULL)
        return NULL;
    HttpServer *self = (HttpServer *)tp->tp_alloc(tp, 0);
    if (self == NULL)
        return NULL;
    self->app = Py_NewRef(app);
    self->loop = Py_NewRef(loop);
    self->limit_line = limit_line;
    self->limit_fields = limit_fields;
    self->limit_field_size = limit_field_size;
    self->keepalive = keepalive;
    self->body_buffer = body_buffer;
    self->access_log = access_log == Py_None ? NULL : Py_NewRef(access_log);
    self->error_log = error_log == Py_None ? NULL : Py_NewRef(error_log);
    if ((self->create_future = PyObject_GetAttr(loop, HSTR(st, CREATE_FUTURE))) == NULL ||
        (self->connections = PySet_New(NULL)) == NULL ||
        server_task_init(self) < 0)
        goto error;
    self->base_environ = base ? PyDict_Copy(base) : PyDict_New();
    if (self->base_environ == NULL)
        goto error;
    PyObject *sn = PyDict_GetItemWithError(self->base_environ,
                                           HSTR(st, SCRIPT_NAME));
    if (sn == NULL && PyErr_Occurred())
        goto error;
    if (sn == NULL) {
        sn = HSTR(st, EMPTY);
        if (PyDict_SetItem(self->base_environ, HSTR(st, SCRIPT_NAME), sn) < 0)
            goto error;
    }
    if (!PyUnicode_Check(sn)) {
        PyErr_Format(PyExc_TypeError, "SCRIPT_NAME must be str, not %.100s",
                     Py_TYPE(sn)->tp_name);
        goto error;
    }
    self->script_name = Py_NewRef(sn);
    if (PyDict_SetDefault(self->base_environ, HSTR(st, WSGI_INPUT), Py_None) == NULL)
        goto error;
    if (PyDict_SetItemString(self->base_environ, "wsgi.file_wrapper",
                             (PyObject *)st->FileWrapperType) < 0)
        goto error;
    /* wsgi.input ends at the body's end, whatever its framing: WebOb reads
     * a chunked body only when told so */
    if (PyDict_SetItemString(self->base_environ, "wsgi.input_terminated",
                             Py_True) < 0)
        goto error;
    /* secure_scheme_headers: {"X-FORWARDED-PROTO": "https"} as pairs of
     * environ key and expected value */
    if (secure == NULL || secure == Py_None) {
        self->secure_headers = PyTuple_New(0);
    }
    else {
        PyObject *items = PyMapping_Items(secure);
        if (items == NULL)
            goto error;
        Py_ssize_t n = PyList_GET_SIZE(items);
        self->secure_headers = PyTuple_New(n);
        for (Py_ssize_t i = 0; self->secure_headers && i < n; i++) {
            /* a custom mapping's items() may give anything: pairs only */
            PyObject *item = PyList_GET_ITEM(items, i);
            PyObject *kv = PySequence_Check(item) && !PyUnicode_Check(item)
                               ? PySequence_Tuple(item) : NULL;
            if (kv == NULL || PyTuple_GET_SIZE(kv) != 2) {
                PyErr_Clear();
                if (kv == NULL)
                    PyErr_Format(PyExc_TypeError,
                                 "secure_scheme_headers: items() element #%zd "
                                 "is a %.100s, not a (header, value) pair", i,
                                 Py_TYPE(item)->tp_name);
                else
                    PyErr_Format(PyExc_TypeError,
                                 "secure_scheme_headers: items() element #%zd "
                                 "has length %zd; 2 is required", i,
                                 PyTuple_GET_SIZE(kv));
                Py_XDECREF(kv);
                Py_CLEAR(self->secure_headers);
                break;
            }
            PyObject *name = PyTuple_GET_ITEM(kv, 0);
            const char *s = NULL;
            if (PyUnicode_Check(name))
                s = PyUnicode_AsUTF8(name);
            else
                PyErr_Format(PyExc_TypeError,
                             "secure scheme header names must be str, not "
                             "%.100s", Py_TYPE(name)->tp_name);
            PyObject *key = s ? header_key(st, s, strlen(s)) : NULL;
            if (key == NULL) {
                if (!PyErr_Occurred())
                    PyErr_Format(PyExc_ValueError,
                                 "secure scheme header %R has an underscore, "
                                 "such headers are dropped", name);
                Py_DECREF(kv);
                Py_CLEAR(self->secure_headers);
                break;
            }
            PyObject *pair = PyTuple_Pack(2, key, PyTuple_GET_ITEM(kv, 1));
            Py_DECREF(key);
            Py_DECREF(kv);
            if (pair == NULL) {
                Py_CLEAR(self->secure_headers);
                break;
            }
            PyTuple_SET_ITEM(self->secure_headers, i, pair);
        }
        Py_DECREF(items);
    }
    if (self->secure_headers == NULL)
        goto error;
    /* forwarded_allow_ips: '*' or an iterable of addresses */
    if (allow == NULL || allow == Py_None) {
        self->forwarded_allow = PySet_New(NULL);
        if (self->forwarded_allow == NULL)
            goto error;
        PyObject *lo = PyUnicode_FromString("127.0.0.1");
        if (lo == NULL || PySet_Add(self->forwarded_allow, lo) < 0) {
            Py_XDECREF(lo);
            goto error;
        }
        Py_DECREF(lo);
    }
    else if (PyUnicode_Check(allow) &&
             PyUnicode_CompareWithASCIIString(allow, "*") == 0) {
        self->forwarded_allow = NULL;
    }
    else if (PyCallable_Check(allow)) {
        self->trust_check = Py_NewRef(allow);
    }
    else {
        self->forwarded_allow = PySet_New(allow);
        if (self->forwarded_allow == NULL)
            goto error;
        PyObject *star = PyUnicode_FromString("*");
        int c = star ? PySet_Contains(self->forwarded_allow, star) : -1;
        Py_XDECREF(star);
        if (c < 0)
            goto error;
        if (c)
            Py_CLEAR(self->forwarded_allow);
    }
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
    if (st == NULL)
        return NULL;
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
    Py_VISIT(s->current_tasks);
    Py_VISIT(s->base_environ);
    Py_VISIT(s->script_name);
    Py_VISIT(s->access_log);
    Py_VISIT(s->error_log);
    Py_VISIT(s->secure_headers);
    Py_VISIT(s->forwarded_allow);
    Py_VISIT(s->trust_check);
    Py_VISIT(s->connections);
    Py_VISIT(s->on_limit);
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
        if (!busy && now - p->last_activity >= limit) {
            proto_close(p);
            closed++;
        }
        else if (client_wait >= 0 && !busy && p->head_started > 0 &&
                 now - p->head_started >= client_wait) {
            /* a head sent a byte at a time never completes */
            respond_error_and_close(p, 408);
            closed++;
        }
        else if (client_wait >= 0 && waits_on_client(p) &&
                 now - p->last_activity >= client_wait) {
            /* connection_lost then cancels the request */
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
    modstate *st = state_of_type(Py_TYPE(op));
    if (st == NULL)
        return NULL;
    s->shutting_down = 1;
    PyObject *conns = server_connection_list(s);
    if (conns == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(conns); i++) {
        HttpProtocol *p = (HttpProtocol *)PyList_GET_ITEM(conns, i);
        if (p->transport != NULL) {
            PyObject *r = PyObject_CallMethodNoArgs(p->transport, HSTR(st, ABORT));
            if (r == NULL)
                PyErr_Clear();
            Py_XDECREF(r);
        }
    }
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
    {"abort", server_abort, METH_NOARGS,
     "abort()\n--\n\nAbort every connection (their requests are cancelled)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef server_getset[] = {
    {"requests", server_get_requests, NULL, "Requests answered.", NULL},
    {"active", server_get_active, NULL, "Requests in progress.", NULL},
    {"connections", server_get_connections, NULL, "Open connections.", NULL},
    {"app", server_get_app, NULL, "The WSGI application.", NULL},
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

PyMethodDef http_module_methods[] = {
    {NULL, NULL, 0, NULL},
};

static int
http_add_type(PyObject *module, PyTypeObject **slot, PyType_Spec *spec)
{
    *slot = (PyTypeObject *)PyType_FromModuleAndSpec(module, spec, NULL);
    if (*slot == NULL)
        return -1;
    return PyModule_AddType(module, *slot);
}

int
http_init(PyObject *module, modstate *st)
{
    llhttp_settings_init(&parser_settings);
    parser_settings.on_message_begin = on_message_begin;
    parser_settings.on_method = on_method;
    parser_settings.on_url = on_url;
    parser_settings.on_header_field = on_header_field;
    parser_settings.on_header_field_complete = on_header_field_complete;
    parser_settings.on_header_value = on_header_value;
    parser_settings.on_header_value_complete = on_header_value_complete;
    parser_settings.on_headers_complete = on_headers_complete;
    parser_settings.on_body = on_body;
    parser_settings.on_message_complete = on_message_complete;

    if (http_add_type(module, &st->HttpServerType, &server_spec) < 0 ||
        http_add_type(module, &st->HttpProtocolType, &proto_spec) < 0 ||
        http_add_type(module, &st->HttpRequestType, &request_spec) < 0 ||
        http_add_type(module, &st->HttpInputType, &input_spec) < 0 ||
        http_add_type(module, &st->FileWrapperType, &filewrapper_spec) < 0)
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
    return 0;
}
