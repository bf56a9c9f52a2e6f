/* protocol.c: _core.WebSocket, one server-side websocket connection as an
 * asyncio protocol (see the interface in the class's doc).  Bytes come in
 * through data_received() and go straight through the frame reader
 * (frame.c): only whole messages become Python objects, queued in C for
 * recv(); pings are answered, closes echoed and protocol errors closed with
 * their code here.  recv()/send() return a finished _WebsocketResult when
 * nothing needs waiting for (the common case: no Future per message), and
 * an asyncio Future of the loop otherwise; both can be awaited and used
 * with `yield from`. */
#include "aiopyramid.h"
#include "websocket.h"

#include <stdlib.h>
#include <string.h>

#define WS_STRINGS(X)                                                        \
    X(SET_PROTOCOL, "set_protocol")                                          \
    X(CREATE_FUTURE, "create_future")                                        \
    X(CALL_LATER, "call_later")                                              \
    X(CANCEL, "cancel")                                                      \
    X(WRITE, "write")                                                        \
    X(WRITE_EOF, "write_eof")                                                \
    X(ABORT, "abort")                                                        \
    X(DONE, "done")                                                          \
    X(PAUSE_READING, "pause_reading")                                        \
    X(RESUME_READING, "resume_reading")                                      \
    X(GET_WRITE_BUFFER_SIZE, "get_write_buffer_size")                        \
    X(GET_WRITE_BUFFER_LIMITS, "get_write_buffer_limits")                    \
    X(KEEPALIVE, "_keepalive")                                               \
    X(PING_TIMEOUT, "_ping_timeout")                                         \
    X(CLOSE_TIMEOUT, "_close_timeout")                                       \
    X(EMPTY, "")

enum {
#define WS_STR_ENUM(name, text) WS_##name,
    WS_STRINGS(WS_STR_ENUM)
#undef WS_STR_ENUM
    WS_COUNT
};

#define WSTR(st, name) PyTuple_GET_ITEM((st)->ws_strs, WS_##name)

/* Messages queued past this (or past max_message_size bytes) pause
 * reading until the view takes some. */
#define QUEUE_MAX 16

typedef struct {
    PyObject *msg;
    size_t size;
} queued;

typedef struct {
    PyObject_HEAD
    PyObject *loop;
    PyObject *create_future;    /* loop.create_future */
    PyObject *transport;
    PyObject *write;            /* transport.write */
    PyObject *on_lost;
    PyObject *pending;          /* list: frames sent before attach() */
    PyObject *recv_waiter;      /* Future of a waiting recv() */
    PyObject *drain_waiters;    /* list of Futures: sends waiting to drain */
    PyObject *lost_waiters;     /* list of Futures: close(), wait_closed() */
    PyObject *pings;            /* list of (payload, Future or None) */
    PyObject *close_reason;     /* str, or NULL */
    PyObject *close_timer;      /* TimerHandle: abort if the close stalls */
    PyObject *ping_timer;       /* TimerHandle: keepalive, or its timeout */
    queued *queue;
    size_t qhead, qlen, qcap, qbytes;
    uint8_t *rbuf;              /* unread bytes while the queue is full */
    size_t rlen, rcap;
    ws_reader reader;
    ws_deflate deflate;
    int has_deflate;
    size_t max_size;
    double ping_interval, ping_timeout, close_timeout;
    int close_code;             /* 0: none yet */
    int use_bytes;
    int attached, lost, close_sent, close_received, failing;
    int write_paused, read_paused, feeding;
    int pong_blocked;           /* a pong went out while writing was paused:
                                   read no more until resume_writing() */
    unsigned ping_counter;
} WebSocket;

typedef struct {
    PyObject_HEAD
    PyObject *value;
} WsResult;

static inline modstate *
ws_state(WebSocket *ws)
{
    return state_of_type(Py_TYPE(ws));
}

/* ------------------------------------------------------------------ */
/* _WebsocketResult: an awaitable that is already done                 */

static PyObject *
result_new(modstate *st, PyObject *value)
{
    if (value == Py_None && st->ws_none_result != NULL)
        return Py_NewRef(st->ws_none_result); /* shared: it holds no state */
    WsResult *r = PyObject_GC_New(WsResult, st->WebsocketResultType);
    if (r == NULL)
        return NULL;
    r->value = Py_NewRef(value);
    PyObject_GC_Track(r);
    return (PyObject *)r;
}

/* A result holding a new reference to value, which it steals. */
static PyObject *
result_steal(modstate *st, PyObject *value)
{
    if (value == NULL)
        return NULL;
    PyObject *r = result_new(st, value);
    Py_DECREF(value);
    return r;
}

static PySendResult
result_am_send(PyObject *op, PyObject *arg, PyObject **out)
{
    *out = Py_NewRef(((WsResult *)op)->value);
    return PYGEN_RETURN;
}

static PyObject *
result_iternext(PyObject *op)
{
    PyObject *v = ((WsResult *)op)->value;
    if (v == Py_None) {
        PyErr_SetNone(PyExc_StopIteration);
        return NULL;
    }
    PyObject *stop = PyObject_CallOneArg(PyExc_StopIteration, v);
    if (stop != NULL) {
        PyErr_SetObject(PyExc_StopIteration, stop);
        Py_DECREF(stop);
    }
    return NULL;
}

static PyObject *
result_send(PyObject *op, PyObject *arg)
{
    return result_iternext(op);
}

static PyObject *
result_throw(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *exc = exception_from_throw_args(args, nargs);
    if (exc != NULL)
        exc_restore(exc);
    return NULL;
}

static PyObject *
result_close(PyObject *op, PyObject *unused)
{
    Py_RETURN_NONE;
}

static PyObject *
result_done(PyObject *op, PyObject *unused)
{
    Py_RETURN_TRUE;
}

static PyObject *
result_result(PyObject *op, PyObject *unused)
{
    return Py_NewRef(((WsResult *)op)->value);
}

static int
result_traverse(PyObject *op, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(((WsResult *)op)->value);
    return 0;
}

static int
result_clear(PyObject *op)
{
    Py_CLEAR(((WsResult *)op)->value);
    return 0;
}

static PyMethodDef result_methods[] = {
    {"send", result_send, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))result_throw, METH_FASTCALL, NULL},
    {"close", result_close, METH_NOARGS, NULL},
    {"done", result_done, METH_NOARGS, "True: the result is there."},
    {"result", result_result, METH_NOARGS, "The result."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot result_slots[] = {
    {Py_am_await, coro_return_self},
    {Py_am_send, result_am_send},
    {Py_tp_iter, coro_return_self},
    {Py_tp_iternext, result_iternext},
    {Py_tp_methods, result_methods},
    {Py_tp_traverse, result_traverse},
    {Py_tp_clear, result_clear},
    {Py_tp_dealloc, gc_dealloc},
    {Py_tp_doc, "What a websocket's recv(), send() or close() return when "
                "there is nothing to wait for: awaitable, and iterable with "
                "'yield from', giving its result at once."},
    {0, NULL},
};

static PyType_Spec result_spec = {
    .name = "aiopyramid._core._WebsocketResult",
    .basicsize = sizeof(WsResult),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = result_slots,
};

/* ------------------------------------------------------------------ */
/* Futures                                                              */

static PyObject *
new_future(WebSocket *ws)
{
    return PyObject_CallNoArgs(ws->create_future);
}

/* fut.set_result(value), unless it is done (cancelled by its waiter). */
static void
resolve(modstate *st, PyObject *fut, PyObject *value)
{
    PyObject *r = PyObject_CallMethodOneArg(fut, st->str_set_result, value);
    if (r == NULL)
        PyErr_Clear(); /* InvalidStateError: its waiter went away */
    Py_XDECREF(r);
}

static void
reject(modstate *st, PyObject *fut)
{
    PyObject *done = PyObject_CallMethodNoArgs(fut, WSTR(st, DONE));
    if (done == Py_False) {
        PyObject *exc = PyObject_CallFunction(st->WebsocketClosed, "s",
                                              "the websocket is closed");
        if (exc != NULL) {
            PyObject *r = PyObject_CallMethodOneArg(fut, st->str_set_exception,
                                                    exc);
            Py_XDECREF(r);
            Py_DECREF(exc);
        }
    }
    Py_XDECREF(done);
    PyErr_Clear();
}

/* Resolves (value != NULL) or rejects every Future of the list, emptied. */
static void
settle_all(modstate *st, PyObject **list, PyObject *value)
{
    PyObject *l = *list;
    if (l == NULL)
        return;
    *list = NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(l); i++) {
        if (value != NULL)
            resolve(st, PyList_GET_ITEM(l, i), value);
        else
            reject(st, PyList_GET_ITEM(l, i));
    }
    Py_DECREF(l);
}

/* Appends a new Future to *list (made when NULL): a new reference. */
static PyObject *
wait_in(WebSocket *ws, PyObject **list)
{
    if (*list == NULL && (*list = PyList_New(0)) == NULL)
        return NULL;
    PyObject *fut = new_future(ws);
    if (fut == NULL)
        return NULL;
    if (PyList_Append(*list, fut) < 0) {
        Py_DECREF(fut);
        return NULL;
    }
    return fut;
}

static void
cancel_timer(modstate *st, PyObject **timer)
{
    PyObject *t = *timer;
    if (t == NULL)
        return;
    *timer = NULL;
    PyObject *r = PyObject_CallMethodNoArgs(t, WSTR(st, CANCEL));
    if (r == NULL)
        PyErr_Clear();
    Py_XDECREF(r);
    Py_DECREF(t);
}

/* *timer = loop.call_later(delay, self.<method>) */
static int
start_timer(WebSocket *ws, PyObject **timer, double delay, PyObject *method)
{
    modstate *st = ws_state(ws);
    cancel_timer(st, timer);
    PyObject *cb = PyObject_GetAttr((PyObject *)ws, method);
    if (cb == NULL)
        return -1;
    PyObject *d = PyFloat_FromDouble(delay);
    if (d == NULL) {
        Py_DECREF(cb);
        return -1;
    }
    *timer = PyObject_CallMethodObjArgs(ws->loop, WSTR(st, CALL_LATER), d, cb,
                                        NULL);
    Py_DECREF(d);
    Py_DECREF(cb);
    return *timer == NULL ? -1 : 0;
}

/* ------------------------------------------------------------------ */
/* Writing                                                              */

static void
transport_call(WebSocket *ws, PyObject *name)
{
    if (ws->transport == NULL)
        return;
    PyObject *r = PyObject_CallMethodNoArgs(ws->transport, name);
    if (r == NULL)
        PyErr_Clear(); /* a transport closing under us */
    Py_XDECREF(r);
}

/* Writes a frame (queued until attach()). -1 only for memory errors. */
static int
write_frame(WebSocket *ws, PyObject *frame)
{
    if (!ws->attached) {
        if (ws->pending == NULL && (ws->pending = PyList_New(0)) == NULL)
            return -1;
        return PyList_Append(ws->pending, frame);
    }
    if (ws->write == NULL || ws->lost)
        return 0;
    PyObject *r = PyObject_CallOneArg(ws->write, frame);
    if (r == NULL)
        PyErr_Clear(); /* the connection is going: connection_lost follows */
    Py_XDECREF(r);
    return 0;
}

/* A frame of payload (compressed: RSV1) as one new bytes object. */
static PyObject *
make_frame(int opcode, int rsv1, const uint8_t *payload, size_t n)
{
    uint8_t hdr[10];
    size_t hl = ws_frame_header(hdr, 1, rsv1, opcode, n);
    PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(hl + n));
    if (b == NULL)
        return NULL;
    char *p = PyBytes_AS_STRING(b);
    memcpy(p, hdr, hl);
    if (n)
        memcpy(p + hl, payload, n);
    return b;
}

static int
send_frame(WebSocket *ws, int opcode, const uint8_t *payload, size_t n)
{
    PyObject *f = make_frame(opcode, 0, payload, n);
    if (f == NULL)
        return -1;
    int rc = write_frame(ws, f);
    Py_DECREF(f);
    return rc;
}

/* A close frame with code (0: none) and reason (UTF-8). */
static int
send_close_frame(WebSocket *ws, int code, const char *reason, size_t rlen)
{
    uint8_t p[125];
    size_t n = 0;
    if (code) {
        p[0] = (uint8_t)(code >> 8);
        p[1] = (uint8_t)code;
        if (rlen > 123)
            rlen = 123;
        memcpy(p + 2, reason, rlen);
        n = 2 + rlen;
    }
    ws->close_sent = 1;
    return send_frame(ws, WS_OP_CLOSE, p, n);
}

/* ------------------------------------------------------------------ */
/* The end                                                              */

static void
wake_recv(modstate *st, WebSocket *ws)
{
    PyObject *w = ws->recv_waiter;
    if (w == NULL)
        return;
    ws->recv_waiter = NULL;
    resolve(st, w, Py_None);
    Py_DECREF(w);
}

static void
set_close(WebSocket *ws, int code, PyObject *reason)
{
    ws->close_code = code;
    Py_XSETREF(ws->close_reason, Py_NewRef(reason));
}

/* A protocol error: close with its code, read nothing more, and let the
 * peer see the close frame before the connection ends (a half-close, then
 * whatever it still sends is read and dropped until its end or
 * close_timeout). */
static void
fail_connection(WebSocket *ws, int code, const char *reason)
{
    modstate *st = ws_state(ws);
    if (ws->failing)
        return;
    ws->failing = 1;
    if (!ws->close_sent) {
        PyObject *r = PyUnicode_FromString(reason);
        if (r == NULL)
            PyErr_Clear();
        else {
            set_close(ws, code, r);
            Py_DECREF(r);
        }
        if (send_close_frame(ws, code, reason, strlen(reason)) < 0)
            PyErr_Clear();
    }
    wake_recv(st, ws);
    ws->pong_blocked = 0; /* what comes now is read and dropped */
    if (ws->transport != NULL && !ws->lost) {
        PyObject *r = PyObject_CallMethodNoArgs(ws->transport,
                                                WSTR(st, WRITE_EOF));
        if (r == NULL) {
            PyErr_Clear(); /* TLS: no half-close */
            transport_call(ws, st->str_close);
        }
        Py_XDECREF(r);
        if (ws->read_paused) {
            ws->read_paused = 0;
            transport_call(ws, WSTR(st, RESUME_READING));
        }
        if (start_timer(ws, &ws->close_timer, ws->close_timeout,
                        WSTR(st, CLOSE_TIMEOUT)) < 0)
            PyErr_Clear();
    }
}

/* The peer's close frame: echo its code, then end the connection. */
static void
peer_closed(WebSocket *ws)
{
    modstate *st = ws_state(ws);
    ws_reader *rd = &ws->reader;
    ws->close_received = 1;
    PyObject *reason = PyUnicode_DecodeUTF8((const char *)rd->ctl + 2,
                                            (Py_ssize_t)rd->close_reason_len,
                                            "replace");
    if (reason == NULL)
        PyErr_Clear();
    else {
        set_close(ws, rd->close_code, reason);
        Py_DECREF(reason);
    }
    if (!ws->close_sent) {
        int code = rd->close_code == WS_CLOSE_NO_STATUS ? 0 : rd->close_code;
        if (send_close_frame(ws, code, "", 0) < 0)
            PyErr_Clear();
    }
    wake_recv(st, ws);
    cancel_timer(st, &ws->ping_timer);
    /* the server closes the TCP connection first (RFC 6455 7.1.1) */
    transport_call(ws, st->str_close);
    if (ws->transport != NULL &&
        start_timer(ws, &ws->close_timer, ws->close_timeout,
                    WSTR(st, CLOSE_TIMEOUT)) < 0)
        PyErr_Clear();
}

/* ------------------------------------------------------------------ */
/* Reading                                                              */

static int
queue_full(WebSocket *ws)
{
    return ws->qlen >= QUEUE_MAX || ws->qbytes >= ws->max_size;
}

/* Parsing stops (and reading pauses) while the view's queue is full, or
 * while a peer that sends pings does not read their pongs. */
static int
read_blocked(WebSocket *ws)
{
    return queue_full(ws) || ws->pong_blocked;
}

static int
enqueue(WebSocket *ws, PyObject *msg, size_t size)
{
    if (ws->qlen == ws->qcap) {
        size_t cap = ws->qcap ? ws->qcap * 2 : 4;
        queued *q = PyMem_Malloc(cap * sizeof(queued));
        if (q == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        for (size_t i = 0; i < ws->qlen; i++)
            q[i] = ws->queue[(ws->qhead + i) % ws->qcap];
        PyMem_Free(ws->queue);
        ws->queue = q;
        ws->qcap = cap;
        ws->qhead = 0;
    }
    queued *e = &ws->queue[(ws->qhead + ws->qlen) % ws->qcap];
    e->msg = Py_NewRef(msg);
    e->size = size;
    ws->qlen++;
    ws->qbytes += size;
    return 0;
}

static PyObject *
dequeue(WebSocket *ws)
{
    queued *e = &ws->queue[ws->qhead];
    PyObject *msg = e->msg;
    e->msg = NULL;
    ws->qhead = (ws->qhead + 1) % ws->qcap;
    ws->qlen--;
    ws->qbytes -= e->size;
    return msg;
}

/* The message the reader holds, as str or bytes. */
static PyObject *
message_object(WebSocket *ws)
{
    ws_reader *rd = &ws->reader;
    const char *p = (const char *)rd->msg;
    Py_ssize_t n = (Py_ssize_t)rd->msg_len;
    if (!rd->msg_text || ws->use_bytes)
        return PyBytes_FromStringAndSize(n ? p : "", n);
    if (rd->msg_ascii) {
        PyObject *s = PyUnicode_New(n, 127);
        if (s != NULL && n)
            memcpy(PyUnicode_DATA(s), p, (size_t)n);
        return s;
    }
    return PyUnicode_DecodeUTF8(p, n, "strict");
}

static int
deliver(WebSocket *ws)
{
    modstate *st = ws_state(ws);
    if (ws->close_sent)
        return 0; /* after our close frame, messages are dropped */
    PyObject *msg = message_object(ws);
    if (msg == NULL)
        return -1;
    PyObject *w = ws->recv_waiter;
    if (w != NULL) {
        ws->recv_waiter = NULL;
        PyObject *r = PyObject_CallMethodOneArg(w, st->str_set_result, msg);
        Py_DECREF(w);
        if (r != NULL) {
            Py_DECREF(r);
            Py_DECREF(msg);
            return 0;
        }
        PyErr_Clear(); /* that recv() was cancelled: keep the message */
    }
    int rc = enqueue(ws, msg, ws->reader.msg_len);
    Py_DECREF(msg);
    return rc;
}

static void
got_pong(WebSocket *ws)
{
    modstate *st = ws_state(ws);
    ws_reader *rd = &ws->reader;
    PyObject *l = ws->pings;
    if (l == NULL)
        return;
    Py_ssize_t n = PyList_GET_SIZE(l), found = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *payload = PyTuple_GET_ITEM(PyList_GET_ITEM(l, i), 0);
        if ((size_t)PyBytes_GET_SIZE(payload) == rd->ctl_len &&
            memcmp(PyBytes_AS_STRING(payload), rd->ctl, rd->ctl_len) == 0) {
            found = i;
            break;
        }
    }
    if (found < 0)
        return; /* an unsolicited pong: fine (RFC 6455 5.5.3) */
    /* that pong answers every ping sent before it too */
    int keepalive = 0;
    for (Py_ssize_t i = 0; i <= found; i++) {
        PyObject *fut = PyTuple_GET_ITEM(PyList_GET_ITEM(l, i), 1);
        if (fut == Py_None)
            keepalive = 1;
        else
            resolve(st, fut, Py_None);
    }
    if (PyList_SetSlice(l, 0, found + 1, NULL) < 0)
        PyErr_Clear();
    if (keepalive && !ws->close_sent && !ws->lost &&
        start_timer(ws, &ws->ping_timer, ws->ping_interval,
                    WSTR(st, KEEPALIVE)) < 0)
        PyErr_Clear();
}

/* Runs data through the reader: the bytes it took (fewer than len only
 * when the queue filled up); -1 on a Python error. */
static Py_ssize_t
process(WebSocket *ws, const uint8_t *data, size_t len)
{
    size_t off = 0;
    while (off < len) {
        if (ws->failing || ws->close_received)
            return (Py_ssize_t)len; /* read and dropped */
        if (read_blocked(ws))
            break;
        size_t used;
        int ev = ws_reader_feed(&ws->reader, data + off, len - off, &used);
        off += used;
        switch (ev) {
        case WS_EV_MORE:
            break;
        case WS_EV_MESSAGE:
            if (deliver(ws) < 0)
                return -1;
            break;
        case WS_EV_PING:
            if (!ws->close_sent &&
                send_frame(ws, WS_OP_PONG, ws->reader.ctl,
                           ws->reader.ctl_len) < 0)
                return -1;
            if (ws->write_paused && ws->attached)
                ws->pong_blocked = 1;
            break;
        case WS_EV_PONG:
            got_pong(ws);
            break;
        case WS_EV_CLOSE:
            peer_closed(ws);
            return (Py_ssize_t)len;
        default: /* WS_EV_ERROR */
            fail_connection(ws, ws->reader.error_code,
                            ws->reader.error_reason);
            return (Py_ssize_t)len;
        }
    }
    return (Py_ssize_t)off;
}

static void
set_read_paused(WebSocket *ws, int on)
{
    if (ws->read_paused == on || ws->transport == NULL || ws->lost)
        return;
    ws->read_paused = on;
    transport_call(ws, on ? WSTR(ws_state(ws), PAUSE_READING)
                          : WSTR(ws_state(ws), RESUME_READING));
}

static void free_buffers(WebSocket *ws);

/* Keeps data[0..len) to be parsed once the queue has room. */
static int
stash(WebSocket *ws, const uint8_t *data, size_t len)
{
    if (ws->rlen + len > ws->rcap) {
        size_t cap = ws->rcap ? ws->rcap : 4096;
        while (cap < ws->rlen + len)
            cap *= 2;
        uint8_t *p = PyMem_Realloc(ws->rbuf, cap);
        if (p == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        ws->rbuf = p;
        ws->rcap = cap;
    }
    memcpy(ws->rbuf + ws->rlen, data, len);
    ws->rlen += len;
    return 0;
}

/* New bytes from the peer. */
static int
receive(WebSocket *ws, const uint8_t *data, size_t len)
{
    if (ws->rlen > 0 || ws->feeding)
        return stash(ws, data, len); /* behind what waits already */
    ws->feeding = 1;
    Py_ssize_t used = process(ws, data, len);
    ws->feeding = 0;
    if (used < 0)
        return -1;
    if ((size_t)used < len) {
        if (stash(ws, data + used, len - (size_t)used) < 0)
            return -1;
        set_read_paused(ws, 1);
    }
    else if (ws->pong_blocked) {
        set_read_paused(ws, 1);
    }
    return 0;
}

/* The queue has room again: parse what waited, then read on. */
static int
drain_stash(WebSocket *ws)
{
    if (ws->feeding)
        return 0;
    if (ws->rlen > 0) {
        ws->feeding = 1;
        Py_ssize_t used = process(ws, ws->rbuf, ws->rlen);
        ws->feeding = 0;
        if (used < 0)
            return -1;
        memmove(ws->rbuf, ws->rbuf + used, ws->rlen - (size_t)used);
        ws->rlen -= (size_t)used;
    }
    if (ws->rlen == 0) {
        PyMem_Free(ws->rbuf);
        ws->rbuf = NULL;
        ws->rcap = 0;
        if (ws->lost)
            free_buffers(ws); /* the last of what came before the end */
    }
    if (ws->rlen == 0 && !read_blocked(ws))
        set_read_paused(ws, 0);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Construction and GC                                                  */

static int
parse_deflate(WebSocket *ws, PyObject *deflate)
{
    ws_deflate_params p;
    if (!PyTuple_Check(deflate) || PyTuple_GET_SIZE(deflate) != 4 ||
        !PyArg_ParseTuple(deflate, "iiii", &p.server_no_context_takeover,
                          &p.client_no_context_takeover,
                          &p.server_max_window_bits,
                          &p.client_max_window_bits) ||
        p.server_max_window_bits < 9 || p.server_max_window_bits > 15 ||
        p.client_max_window_bits < 8 || p.client_max_window_bits > 15) {
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError,
                        "deflate must be None or what websocket_handshake() "
                        "returned for it");
        return -1;
    }
    ws_deflate_init(&ws->deflate, &p);
    ws->has_deflate = 1;
    return 0;
}

static PyObject *
ws_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"loop", "max_message_size", "deflate",
                             "use_bytes", "ping_interval", "ping_timeout",
                             "close_timeout", "on_lost", NULL};
    PyObject *loop, *deflate = Py_None, *on_lost = Py_None;
    Py_ssize_t max_size = 1048576;
    int use_bytes = 0;
    double ping_interval = 0.0, ping_timeout = 20.0, close_timeout = 10.0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|$nOpdddO:WebSocket",
                                     kwlist, &loop, &max_size, &deflate,
                                     &use_bytes, &ping_interval, &ping_timeout,
                                     &close_timeout, &on_lost))
        return NULL;
    if (max_size <= 0) {
        PyErr_SetString(PyExc_ValueError, "max_message_size must be positive");
        return NULL;
    }
    if (!(ping_interval >= 0) || !(ping_timeout >= 0) || !(close_timeout >= 0)) {
        PyErr_SetString(PyExc_ValueError,
                        "ping_interval, ping_timeout and close_timeout must "
                        "be numbers of seconds, 0 or more");
        return NULL;
    }
    if (on_lost != Py_None && !PyCallable_Check(on_lost)) {
        PyErr_SetString(PyExc_TypeError, "on_lost must be callable or None");
        return NULL;
    }
    modstate *st = state_of_type(type);
    if (st->WebsocketClosed == NULL) {
        PyObject *m = PyImport_ImportModule("aiopyramid.websocket.exceptions");
        if (m == NULL)
            return NULL;
        st->WebsocketClosed = PyObject_GetAttrString(m, "WebsocketClosed");
        Py_DECREF(m);
        if (st->WebsocketClosed == NULL)
            return NULL;
    }
    WebSocket *ws = PyObject_GC_New(WebSocket, type);
    if (ws == NULL)
        return NULL;
    memset((char *)ws + sizeof(PyObject), 0, sizeof(WebSocket) - sizeof(PyObject));
    ws->max_size = (size_t)max_size;
    ws->use_bytes = use_bytes;
    ws->ping_interval = ping_interval;
    ws->ping_timeout = ping_timeout;
    ws->close_timeout = close_timeout;
    ws->loop = Py_NewRef(loop);
    ws->on_lost = on_lost != Py_None ? Py_NewRef(on_lost) : NULL;
    PyObject_GC_Track(ws);
    if (deflate != Py_None && parse_deflate(ws, deflate) < 0)
        goto error;
    ws_reader_init(&ws->reader, ws->max_size,
                   ws->has_deflate ? &ws->deflate : NULL);
    ws->create_future = PyObject_GetAttr(loop, WSTR(st, CREATE_FUTURE));
    if (ws->create_future == NULL)
        goto error;
    return (PyObject *)ws;
error:
    Py_DECREF(ws);
    return NULL;
}

static int
ws_traverse(PyObject *op, visitproc visit, void *arg)
{
    WebSocket *ws = (WebSocket *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(ws->loop);
    Py_VISIT(ws->create_future);
    Py_VISIT(ws->transport);
    Py_VISIT(ws->write);
    Py_VISIT(ws->on_lost);
    Py_VISIT(ws->pending);
    Py_VISIT(ws->recv_waiter);
    Py_VISIT(ws->drain_waiters);
    Py_VISIT(ws->lost_waiters);
    Py_VISIT(ws->pings);
    Py_VISIT(ws->close_reason);
    Py_VISIT(ws->close_timer);
    Py_VISIT(ws->ping_timer);
    for (size_t i = 0; i < ws->qlen; i++)
        Py_VISIT(ws->queue[(ws->qhead + i) % ws->qcap].msg);
    return 0;
}

static void
clear_queue(WebSocket *ws)
{
    while (ws->qlen > 0) {
        PyObject *m = dequeue(ws);
        Py_DECREF(m);
    }
}

static int
ws_clear(PyObject *op)
{
    WebSocket *ws = (WebSocket *)op;
    Py_CLEAR(ws->loop);
    Py_CLEAR(ws->create_future);
    Py_CLEAR(ws->transport);
    Py_CLEAR(ws->write);
    Py_CLEAR(ws->on_lost);
    Py_CLEAR(ws->pending);
    Py_CLEAR(ws->recv_waiter);
    Py_CLEAR(ws->drain_waiters);
    Py_CLEAR(ws->lost_waiters);
    Py_CLEAR(ws->pings);
    Py_CLEAR(ws->close_reason);
    Py_CLEAR(ws->close_timer);
    Py_CLEAR(ws->ping_timer);
    clear_queue(ws);
    return 0;
}

static void
free_buffers(WebSocket *ws)
{
    ws_reader_free(&ws->reader);
    if (ws->has_deflate)
        ws_deflate_free(&ws->deflate);
    PyMem_Free(ws->rbuf);
    ws->rbuf = NULL;
    ws->rlen = ws->rcap = 0;
}

static void
ws_dealloc(PyObject *op)
{
    WebSocket *ws = (WebSocket *)op;
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    ws_clear(op);
    free_buffers(ws);
    PyMem_Free(ws->queue);
    tp->tp_free(op);
    Py_DECREF(tp);
}

/* ------------------------------------------------------------------ */
/* asyncio protocol                                                     */

static int
start_keepalive(WebSocket *ws)
{
    if (ws->ping_interval > 0 && !ws->close_sent && !ws->lost)
        return start_timer(ws, &ws->ping_timer, ws->ping_interval,
                           WSTR(ws_state(ws), KEEPALIVE));
    return 0;
}

/* The transport is ours: write what waited, start the keepalive. */
static int
take_transport(WebSocket *ws, PyObject *transport)
{
    modstate *st = ws_state(ws);
    Py_XSETREF(ws->transport, Py_NewRef(transport));
    Py_XSETREF(ws->write, PyObject_GetAttr(transport, WSTR(st, WRITE)));
    if (ws->write == NULL)
        return -1;
    ws->attached = 1;
    /* a transport already over its high-water mark will not say so again */
    PyObject *size = PyObject_CallMethodNoArgs(transport,
                                               WSTR(st, GET_WRITE_BUFFER_SIZE));
    PyObject *limits = size ? PyObject_CallMethodNoArgs(
                                  transport, WSTR(st, GET_WRITE_BUFFER_LIMITS))
                            : NULL;
    if (limits != NULL && PyTuple_Check(limits) &&
        PyTuple_GET_SIZE(limits) == 2) {
        int over = PyObject_RichCompareBool(size, PyTuple_GET_ITEM(limits, 1),
                                            Py_GT);
        if (over > 0)
            ws->write_paused = 1;
    }
    Py_XDECREF(size);
    Py_XDECREF(limits);
    PyErr_Clear();
    PyObject *pending = ws->pending;
    ws->pending = NULL;
    if (pending != NULL) {
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(pending); i++)
            write_frame(ws, PyList_GET_ITEM(pending, i));
        Py_DECREF(pending);
    }
    if (ws->close_sent && !ws->close_received && !ws->failing &&
        start_timer(ws, &ws->close_timer, ws->close_timeout,
                    WSTR(st, CLOSE_TIMEOUT)) < 0)
        return -1;
    return start_keepalive(ws);
}

static PyObject *
ws_attach(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    WebSocket *ws = (WebSocket *)op;
    modstate *st = ws_state(ws);
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError,
                        "attach(transport, buffered) takes 2 arguments");
        return NULL;
    }
    if (ws->attached) {
        PyErr_SetString(PyExc_RuntimeError,
                        "this WebSocket is already attached to a transport");
        return NULL;
    }
    if (ws->lost)
        Py_RETURN_NONE; /* the connection went before the 101 did */
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *r = PyObject_CallMethodOneArg(args[0], WSTR(st, SET_PROTOCOL), op);
    if (r == NULL)
        goto error;
    Py_DECREF(r);
    if (take_transport(ws, args[0]) < 0)
        goto error;
    /* the HTTP protocol may have paused reading (bytes piling up behind
     * the handshake): from here the queue decides */
    transport_call(ws, WSTR(st, RESUME_READING));
    if (view.len > 0 && receive(ws, view.buf, (size_t)view.len) < 0)
        goto error;
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
error:
    PyBuffer_Release(&view);
    return NULL;
}

static PyObject *
ws_connection_made(PyObject *op, PyObject *transport)
{
    WebSocket *ws = (WebSocket *)op;
    if (ws->attached || ws->lost)
        Py_RETURN_NONE;
    if (take_transport(ws, transport) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
ws_data_received(PyObject *op, PyObject *data)
{
    WebSocket *ws = (WebSocket *)op;
    if (ws->lost)
        Py_RETURN_NONE;
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int rc = receive(ws, view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
ws_eof_received(PyObject *op, PyObject *unused)
{
    /* the transport closes itself: connection_lost follows */
    Py_RETURN_FALSE;
}

static PyObject *
ws_connection_lost(PyObject *op, PyObject *exc)
{
    WebSocket *ws = (WebSocket *)op;
    modstate *st = ws_state(ws);
    if (ws->lost)
        Py_RETURN_NONE;
    ws->lost = 1;
    Py_INCREF(op);
    if (ws->close_code == 0) {
        ws->close_code = WS_CLOSE_ABNORMAL;
        Py_XSETREF(ws->close_reason, Py_NewRef(WSTR(st, EMPTY)));
    }
    cancel_timer(st, &ws->close_timer);
    cancel_timer(st, &ws->ping_timer);
    wake_recv(st, ws);
    settle_all(st, &ws->drain_waiters, NULL);
    if (ws->pings != NULL) {
        PyObject *l = ws->pings;
        ws->pings = NULL;
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(l); i++) {
            PyObject *fut = PyTuple_GET_ITEM(PyList_GET_ITEM(l, i), 1);
            if (fut != Py_None)
                reject(st, fut);
        }
        Py_DECREF(l);
    }
    settle_all(st, &ws->lost_waiters, Py_None);
    Py_CLEAR(ws->write);
    Py_CLEAR(ws->transport);
    Py_CLEAR(ws->pending);
    /* what the peer sent before it went, still unparsed behind a full
     * queue, is read on as the view takes messages */
    if (ws->rlen == 0)
        free_buffers(ws);
    PyObject *cb = ws->on_lost;
    ws->on_lost = NULL;
    if (cb != NULL) {
        PyObject *r = PyObject_CallNoArgs(cb);
        if (r == NULL)
            PyErr_WriteUnraisable(cb);
        Py_XDECREF(r);
        Py_DECREF(cb);
    }
    Py_DECREF(op);
    Py_RETURN_NONE;
}

static PyObject *
ws_pause_writing(PyObject *op, PyObject *unused)
{
    ((WebSocket *)op)->write_paused = 1;
    Py_RETURN_NONE;
}

static PyObject *
ws_resume_writing(PyObject *op, PyObject *unused)
{
    WebSocket *ws = (WebSocket *)op;
    ws->write_paused = 0;
    settle_all(ws_state(ws), &ws->drain_waiters, Py_None);
    if (ws->pong_blocked) {
        ws->pong_blocked = 0;
        if (!queue_full(ws) && drain_stash(ws) < 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ */
/* The view's side                                                      */

static PyObject *
raise_closed(modstate *st)
{
    PyErr_SetString(st->WebsocketClosed, "the websocket is closed");
    return NULL;
}

static PyObject *
ws_recv(PyObject *op, PyObject *unused)
{
    WebSocket *ws = (WebSocket *)op;
    modstate *st = ws_state(ws);
    if (ws->qlen > 0) {
        PyObject *msg = dequeue(ws);
        if (!read_blocked(ws) && drain_stash(ws) < 0) {
            Py_DECREF(msg);
            return NULL;
        }
        return result_steal(st, msg);
    }
    if (ws->lost || ws->close_received || ws->failing)
        return result_new(st, Py_None);
    if (ws->recv_waiter != NULL) {
        PyObject *done = PyObject_CallMethodNoArgs(ws->recv_waiter,
                                                   WSTR(st, DONE));
        if (done == NULL)
            return NULL;
        int pending = done == Py_False;
        Py_DECREF(done);
        if (pending) {
            PyErr_SetString(PyExc_RuntimeError,
                            "recv() is already being awaited: a websocket "
                            "takes one recv() at a time");
            return NULL;
        }
        Py_CLEAR(ws->recv_waiter);
    }
    ws->recv_waiter = new_future(ws);
    return Py_XNewRef(ws->recv_waiter);
}

/* send()'s awaitable once its frame is written. */
static PyObject *
after_write(WebSocket *ws)
{
    modstate *st = ws_state(ws);
    if (ws->write_paused && ws->attached && !ws->lost)
        return wait_in(ws, &ws->drain_waiters);
    return result_new(st, Py_None);
}

static PyObject *
ws_send(PyObject *op, PyObject *message)
{
    WebSocket *ws = (WebSocket *)op;
    modstate *st = ws_state(ws);
    const uint8_t *data;
    Py_ssize_t n;
    int opcode;
    Py_buffer view;
    view.obj = NULL;
    if (PyUnicode_Check(message)) {
        data = (const uint8_t *)PyUnicode_AsUTF8AndSize(message, &n);
        if (data == NULL)
            return NULL;
        opcode = WS_OP_TEXT;
    }
    else if (PyObject_CheckBuffer(message)) {
        if (PyObject_GetBuffer(message, &view, PyBUF_SIMPLE) < 0)
            return NULL;
        data = view.buf;
        n = view.len;
        opcode = WS_OP_BINARY;
    }
    else {
        PyErr_Format(PyExc_TypeError,
                     "send() takes str (a text message) or bytes (binary), "
                     "not %.100s", Py_TYPE(message)->tp_name);
        return NULL;
    }
    if (ws->lost || ws->close_sent || ws->failing) {
        if (view.obj != NULL)
            PyBuffer_Release(&view);
        return raise_closed(st);
    }
    PyObject *frame;
    if (ws->has_deflate) {
        uint8_t *z;
        size_t zn;
        int rc = ws_deflate_message(&ws->deflate, data, (size_t)n, &z, &zn);
        if (rc != WS_Z_OK) {
            if (view.obj != NULL)
                PyBuffer_Release(&view);
            return rc == WS_Z_NOMEM ? PyErr_NoMemory()
                                    : PyErr_Format(PyExc_RuntimeError,
                                                   "zlib failed to compress");
        }
        frame = make_frame(opcode, 1, z, zn);
        free(z);
    }
    else {
        frame = make_frame(opcode, 0, data, (size_t)n);
    }
    if (view.obj != NULL)
        PyBuffer_Release(&view);
    if (frame == NULL)
        return NULL;
    int rc = write_frame(ws, frame);
    Py_DECREF(frame);
    if (rc < 0)
        return NULL;
    return after_write(ws);
}

static PyObject *
ws_close(PyObject *op, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"code", "reason", NULL};
    WebSocket *ws = (WebSocket *)op;
    modstate *st = ws_state(ws);
    int code = 1000;
    PyObject *reason = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|iU:close", kwlist, &code,
                                     &reason))
        return NULL;
    if (!ws_close_code_valid(code)) {
        PyErr_Format(PyExc_ValueError,
                     "close code %d cannot be sent (RFC 6455 7.4): use 1000-"
                     "1003, 1007-1014 or 3000-4999", code);
        return NULL;
    }
    Py_ssize_t rlen = 0;
    const char *r = "";
    if (reason != NULL && (r = PyUnicode_AsUTF8AndSize(reason, &rlen)) == NULL)
        return NULL;
    if (rlen > 123) {
        PyErr_Format(PyExc_ValueError,
                     "a close reason is at most 123 bytes in UTF-8, not %zd",
                     rlen);
        return NULL;
    }
    if (ws->lost)
        return result_new(st, Py_None);
    if (!ws->close_sent) {
        PyObject *rs = reason != NULL ? Py_NewRef(reason)
                                      : Py_NewRef(WSTR(st, EMPTY));
        set_close(ws, code, rs);
        Py_DECREF(rs);
        if (send_close_frame(ws, code, r, (size_t)rlen) < 0)
            return NULL;
        cancel_timer(st, &ws->ping_timer);
        if (ws->attached &&
            start_timer(ws, &ws->close_timer, ws->close_timeout,
                        WSTR(st, CLOSE_TIMEOUT)) < 0)
            return NULL;
    }
    return wait_in(ws, &ws->lost_waiters);
}

static PyObject *
ws_ping(PyObject *op, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"data", NULL};
    WebSocket *ws = (WebSocket *)op;
    modstate *st = ws_state(ws);
    Py_buffer view;
    view.obj = NULL;
    view.len = 0; /* no data given: an empty ping */
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|y*:ping", kwlist, &view))
        return NULL;
    PyObject *payload = NULL, *fut = NULL, *entry = NULL;
    if (view.len > 125) {
        PyErr_SetString(PyExc_ValueError, "a ping's data is at most 125 bytes");
        goto error;
    }
    if (ws->lost || ws->close_sent || ws->failing) {
        raise_closed(st);
        goto error;
    }
    payload = PyBytes_FromStringAndSize(view.obj ? view.buf : "",
                                        view.obj ? view.len : 0);
    if (payload == NULL || (fut = new_future(ws)) == NULL)
        goto error;
    if (ws->pings == NULL && (ws->pings = PyList_New(0)) == NULL)
        goto error;
    entry = PyTuple_Pack(2, payload, fut);
    if (entry == NULL || PyList_Append(ws->pings, entry) < 0)
        goto error;
    if (send_frame(ws, WS_OP_PING, (const uint8_t *)PyBytes_AS_STRING(payload),
                   (size_t)PyBytes_GET_SIZE(payload)) < 0)
        goto error;
    Py_DECREF(payload);
    Py_DECREF(entry);
    if (view.obj != NULL)
        PyBuffer_Release(&view);
    return fut;
error:
    Py_XDECREF(payload);
    Py_XDECREF(fut);
    Py_XDECREF(entry);
    if (view.obj != NULL)
        PyBuffer_Release(&view);
    return NULL;
}

static PyObject *
ws_wait_closed(PyObject *op, PyObject *unused)
{
    WebSocket *ws = (WebSocket *)op;
    if (ws->lost)
        return result_new(ws_state(ws), Py_None);
    return wait_in(ws, &ws->lost_waiters);
}

/* loop.call_later callbacks */

static PyObject *
ws_keepalive(PyObject *op, PyObject *unused)
{
    WebSocket *ws = (WebSocket *)op;
    modstate *st = ws_state(ws);
    Py_CLEAR(ws->ping_timer);
    if (ws->lost || ws->close_sent || ws->failing || !ws->attached)
        Py_RETURN_NONE;
    uint8_t p[4];
    unsigned c = ++ws->ping_counter;
    p[0] = (uint8_t)(c >> 24);
    p[1] = (uint8_t)(c >> 16);
    p[2] = (uint8_t)(c >> 8);
    p[3] = (uint8_t)c;
    PyObject *payload = PyBytes_FromStringAndSize((const char *)p, 4);
    if (payload == NULL)
        return NULL;
    PyObject *entry = PyTuple_Pack(2, payload, Py_None);
    Py_DECREF(payload);
    if (entry == NULL)
        return NULL;
    if ((ws->pings == NULL && (ws->pings = PyList_New(0)) == NULL) ||
        PyList_Append(ws->pings, entry) < 0) {
        Py_DECREF(entry);
        return NULL;
    }
    Py_DECREF(entry);
    if (send_frame(ws, WS_OP_PING, p, 4) < 0)
        return NULL;
    /* no timeout: the next ping comes after the interval, answered or not */
    if (start_timer(ws, &ws->ping_timer,
                    ws->ping_timeout > 0 ? ws->ping_timeout : ws->ping_interval,
                    ws->ping_timeout > 0 ? WSTR(st, PING_TIMEOUT)
                                         : WSTR(st, KEEPALIVE)) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
ws_ping_timeout(PyObject *op, PyObject *unused)
{
    WebSocket *ws = (WebSocket *)op;
    modstate *st = ws_state(ws);
    Py_CLEAR(ws->ping_timer);
    if (ws->lost || ws->close_sent)
        Py_RETURN_NONE;
    /* as the `websockets` library does: 1011, and the connection ends */
    PyObject *reason = PyUnicode_FromString("keepalive ping timeout");
    if (reason == NULL)
        return NULL;
    set_close(ws, WS_CLOSE_INTERNAL_ERROR, reason);
    Py_DECREF(reason);
    if (send_close_frame(ws, WS_CLOSE_INTERNAL_ERROR, "keepalive ping timeout",
                         22) < 0)
        return NULL;
    ws->failing = 1;
    wake_recv(st, ws);
    transport_call(ws, st->str_close);
    if (start_timer(ws, &ws->close_timer, ws->close_timeout,
                    WSTR(st, CLOSE_TIMEOUT)) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
ws_close_timeout(PyObject *op, PyObject *unused)
{
    WebSocket *ws = (WebSocket *)op;
    Py_CLEAR(ws->close_timer);
    if (!ws->lost)
        transport_call(ws, WSTR(ws_state(ws), ABORT));
    Py_RETURN_NONE;
}

static PyObject *
ws_get_closed(PyObject *op, void *closure)
{
    WebSocket *ws = (WebSocket *)op;
    return PyBool_FromLong(ws->close_sent || ws->close_received || ws->lost ||
                           ws->failing);
}

static PyObject *
ws_get_close_code(PyObject *op, void *closure)
{
    WebSocket *ws = (WebSocket *)op;
    if (ws->close_code == 0)
        Py_RETURN_NONE;
    return PyLong_FromLong(ws->close_code);
}

static PyObject *
ws_get_close_reason(PyObject *op, void *closure)
{
    WebSocket *ws = (WebSocket *)op;
    if (ws->close_reason == NULL)
        Py_RETURN_NONE;
    return Py_NewRef(ws->close_reason);
}

static PyObject *
ws_get_compressed(PyObject *op, void *closure)
{
    return PyBool_FromLong(((WebSocket *)op)->has_deflate);
}

static PyMethodDef ws_methods[] = {
    {"attach", (PyCFunction)(void (*)(void))ws_attach, METH_FASTCALL,
     "attach(transport, buffered)\n--\n\n"
     "Takes the connection over once the 101 is written: "
     "transport.set_protocol(self), then `buffered` (bytes read past the "
     "handshake) as if just received."},
    {"recv", ws_recv, METH_NOARGS,
     "recv()\n--\n\n"
     "Awaitable: the next message (str for text, bytes for binary), or None "
     "once the websocket is closed."},
    {"send", ws_send, METH_O,
     "send(message)\n--\n\n"
     "Awaitable: sends str as a text message, bytes as binary; waits while "
     "the transport is paused.  Raises WebsocketClosed once closing."},
    {"close", (PyCFunction)(void (*)(void))ws_close,
     METH_VARARGS | METH_KEYWORDS,
     "close(code=1000, reason='')\n--\n\n"
     "Awaitable: sends a close frame (once) and waits for the connection to "
     "end (the peer's close, or close_timeout)."},
    {"ping", (PyCFunction)(void (*)(void))ws_ping, METH_VARARGS | METH_KEYWORDS,
     "ping(data=b'')\n--\n\n"
     "Awaitable: sends a ping, resolved when its pong comes."},
    {"wait_closed", ws_wait_closed, METH_NOARGS,
     "wait_closed()\n--\n\nAwaitable: resolved once the connection is gone."},
    {"connection_made", ws_connection_made, METH_O, NULL},
    {"connection_lost", ws_connection_lost, METH_O, NULL},
    {"data_received", ws_data_received, METH_O, NULL},
    {"eof_received", ws_eof_received, METH_NOARGS, NULL},
    {"pause_writing", ws_pause_writing, METH_NOARGS, NULL},
    {"resume_writing", ws_resume_writing, METH_NOARGS, NULL},
    {"_keepalive", ws_keepalive, METH_NOARGS, NULL},
    {"_ping_timeout", ws_ping_timeout, METH_NOARGS, NULL},
    {"_close_timeout", ws_close_timeout, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef ws_getset[] = {
    {"closed", ws_get_closed, NULL,
     "True once a close frame was sent or received, or the connection is "
     "gone.", NULL},
    {"close_code", ws_get_close_code, NULL,
     "The peer's close code, else ours, else 1006 once the connection "
     "dropped; None while open.", NULL},
    {"close_reason", ws_get_close_reason, NULL,
     "The reason that goes with close_code.", NULL},
    {"compressed", ws_get_compressed, NULL,
     "permessage-deflate is on.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot ws_slots[] = {
    {Py_tp_new, ws_new},
    {Py_tp_methods, ws_methods},
    {Py_tp_getset, ws_getset},
    {Py_tp_traverse, ws_traverse},
    {Py_tp_clear, ws_clear},
    {Py_tp_dealloc, ws_dealloc},
    {Py_tp_doc,
     "WebSocket(loop, *, max_message_size=1048576, deflate=None, "
     "use_bytes=False, ping_interval=0.0, ping_timeout=20.0, "
     "close_timeout=10.0, on_lost=None)\n--\n\n"
     "One server-side websocket connection (RFC 6455): an asyncio protocol "
     "once attach()ed to the transport of its handshake."},
    {0, NULL},
};

static PyType_Spec ws_spec = {
    .name = "aiopyramid._core.WebSocket",
    .basicsize = sizeof(WebSocket),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE,
    .slots = ws_slots,
};

int websocket_handshake_init(PyObject *module, modstate *st);

int
websocket_init(PyObject *module, modstate *st)
{
    if (add_type(module, &st->WebSocketType, &ws_spec, NULL) < 0 ||
        add_type(module, &st->WebsocketResultType, &result_spec, NULL) < 0)
        return -1;
    static const char *strings[] = {
#define WS_STR_TEXT(name, text) text,
        WS_STRINGS(WS_STR_TEXT)
#undef WS_STR_TEXT
    };
    st->ws_strs = PyTuple_New(WS_COUNT);
    if (st->ws_strs == NULL)
        return -1;
    for (int i = 0; i < WS_COUNT; i++) {
        PyObject *s = PyUnicode_InternFromString(strings[i]);
        if (s == NULL)
            return -1;
        PyTuple_SET_ITEM(st->ws_strs, i, s);
    }
    st->ws_none_result = result_new(st, Py_None);
    if (st->ws_none_result == NULL)
        return -1;
    return websocket_handshake_init(module, st);
}
