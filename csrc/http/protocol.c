/* protocol.c: HttpProtocol, one connection: its read buffer and writes, data in
 * (BufferedProtocol and Protocol), feeding the parser, the connection
 * lifecycle, pausing reading and writing. */
#include "http.h"

/* Grows *buf to hold `need` bytes. */
int
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

void
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

/* transport.write(data) now; false once the connection is gone. */
static int
write_now(HttpProtocol *p, PyObject *data)
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

/* Writes are held back until the loop has run every callback of this
 * iteration, then go out together (server_flush_writes, by call_soon).
 * Written one by one as each response is made, every response woke the
 * client on its own, and at load each wake-up costs both sides more than
 * the write; written together, the writes after the first find the client
 * awake (bjoern's go out from write watchers on the next loop iteration,
 * to the same effect).  A connection holds at most HELD_MAX bytes: past
 * that it writes at once, so pause_writing still stops a large response.
 *
 * And the server holds the writes of at most HELD_CONNECTIONS_MAX
 * connections: the next connection's first write sends them first.  A pass
 * of the loop at 1,000 connections serves hundreds of requests (tens of
 * ms); held to its end, the first response served waited for all of them,
 * the client's next request then missed the next poll and waited for a
 * whole pass more: wrk's p99 twice its p50 (bench/tail.py shows the
 * passes).  Sent as they make up a batch, the responses go out through the
 * pass, their clients' next requests arrive before it ends, and every
 * connection is served once a pass.  At 64 and fewer connections nothing
 * changes: a batch still wakes the client once. */
#define HELD_MAX (64 * 1024)
#define HELD_CONNECTIONS_MAX 64

/* Queues server_flush_writes() to the end of this pass of the loop, once:
 * the writes held meanwhile go out then, and the count of the requests
 * the pass started (started_in_pass) ends there. */
int
server_schedule_flush(HttpServer *srv)
{
    if (srv->flush_scheduled)
        return 0;
    PyObject *h = PyObject_CallOneArg(srv->call_soon, srv->flush_cb);
    if (h == NULL)
        return -1;
    Py_DECREF(h);
    srv->flush_scheduled = 1;
    return 0;
}

/* 1 when the server's loop is the running one (this pass is its), else 0.
 * Asked once a pass: on 3.11 asyncio's _get_running_loop() asks the kernel
 * for the pid each time. */
int
server_loop_runs(modstate *st, HttpServer *srv)
{
    if (srv->loop_runs != LOOP_RUNS_UNKNOWN)
        return srv->loop_runs == LOOP_RUNS_YES;
    PyObject *running = PyObject_CallNoArgs(st->get_running_loop);
    if (running == NULL) {
        PyErr_Clear();
        return 0;
    }
    int runs = running == srv->loop;
    Py_DECREF(running);
    /* kept only until a flush_writes queued on the loop forgets it */
    if (srv->flush_scheduled)
        srv->loop_runs = runs ? LOOP_RUNS_YES : LOOP_RUNS_NO;
    return runs;
}

int
proto_write_bytes(HttpProtocol *p, PyObject *data)
{
    if (p->closed || p->write == NULL)
        return 0;
    HttpServer *srv = p->server;
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    if (p->held == NULL) {
        if (n >= HELD_MAX)
            return write_now(p, data);
        if (PyList_GET_SIZE(srv->unflushed) >= HELD_CONNECTIONS_MAX)
            proto_flush_early(srv);
        if (PyList_Append(srv->unflushed, (PyObject *)p) < 0) {
            PyErr_Clear();
            return write_now(p, data);
        }
        if (!srv->reading)
            srv->held_between_reads = 1;
        if (server_schedule_flush(srv) < 0) {
            /* a closed loop: this write goes now, and the list waits
             * for a later one to schedule its flush */
            PyErr_Clear();
            return write_now(p, data);
        }
        p->held = Py_NewRef(data);
        p->held_len = n;
        return 1;
    }
    if (PyBytes_CheckExact(p->held)) {
        PyObject *list = PyList_New(1);
        if (list == NULL) {
            PyErr_Clear();
            proto_flush(p);
            return write_now(p, data);
        }
        PyList_SET_ITEM(list, 0, p->held);
        p->held = list;
    }
    if (PyList_Append(p->held, data) < 0) {
        PyErr_Clear();
        proto_flush(p);
        return write_now(p, data);
    }
    p->held_len += n;
    if (p->held_len >= HELD_MAX)
        return proto_flush(p);
    return 1;
}

/* Writes what this connection holds back, now. */
int
proto_flush(HttpProtocol *p)
{
    PyObject *held = p->held;
    Py_ssize_t len = p->held_len;
    if (held == NULL)
        return !p->closed;
    p->held = NULL;
    p->held_len = 0;
    int rc;
    if (PyList_CheckExact(held)) {
        Py_ssize_t n = PyList_GET_SIZE(held);
        PyObject *joined = PyBytes_FromStringAndSize(NULL, len);
        if (joined == NULL) {
            /* the response cannot go out whole: none of it does */
            PyErr_Clear();
            Py_DECREF(held);
            proto_close(p);
            return 0;
        }
        char *to = PyBytes_AS_STRING(joined);
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *b = PyList_GET_ITEM(held, i);
            memcpy(to, PyBytes_AS_STRING(b), (size_t)PyBytes_GET_SIZE(b));
            to += PyBytes_GET_SIZE(b);
        }
        rc = write_now(p, joined);
        Py_DECREF(joined);
    }
    else {
        rc = write_now(p, held);
    }
    Py_DECREF(held);
    return rc;
}

void
proto_drop_held(HttpProtocol *p)
{
    p->held_len = 0;
    Py_CLEAR(p->held);
}

/* server.flush_writes(): the held writes of every connection, in the
 * order the connections first held one. */
PyObject *
server_flush_writes(PyObject *op, PyObject *unused)
{
    HttpServer *srv = (HttpServer *)op;
    PyObject *list = srv->unflushed;
    srv->flush_scheduled = 0;
    srv->loop_runs = LOOP_RUNS_UNKNOWN;
    srv->held_between_reads = 0;
    srv->started_in_pass = 0;
    Py_ssize_t n = PyList_GET_SIZE(list);
    if (n == 0)
        Py_RETURN_NONE;
    PyObject *fresh = PyList_New(0);
    if (fresh == NULL) {
        /* out of memory: flush them anyway; the list is emptied by a later
         * flush (flushing a connection twice writes nothing twice) */
        PyErr_Clear();
        for (Py_ssize_t i = 0; i < n; i++)
            proto_flush((HttpProtocol *)PyList_GET_ITEM(list, i));
        Py_RETURN_NONE;
    }
    srv->unflushed = fresh;
    for (Py_ssize_t i = 0; i < n; i++)
        proto_flush((HttpProtocol *)PyList_GET_ITEM(list, i));
    Py_DECREF(list);
    Py_RETURN_NONE;
}

/* Writes held outside a data callback (by a request that resumed in a
 * callback of the loop's queue: a timer's, a future's) go out as the next
 * data callback starts, before what it reads is served.  uvloop runs only
 * the callbacks queued before its pass over the queue starts, so the
 * flush_writes those writes queued runs after the next poll for I/O: every
 * request that poll brings would be served first (at 1,000 connections,
 * hundreds), their writes held meanwhile.  The flush_writes already queued
 * stays queued and writes what this poll's callbacks hold. */
void
proto_flush_early(HttpServer *srv)
{
    srv->held_between_reads = 0;
    PyObject *list = srv->unflushed;
    Py_ssize_t n = PyList_GET_SIZE(list);
    if (n == 0)
        return;
    PyObject *fresh = PyList_New(0);
    if (fresh == NULL) {
        PyErr_Clear(); /* the queued flush_writes writes them */
        return;
    }
    srv->unflushed = fresh;
    for (Py_ssize_t i = 0; i < n; i++)
        proto_flush((HttpProtocol *)PyList_GET_ITEM(list, i));
    Py_DECREF(list);
}

/* True once the connection is gone or going: a failed send makes the
 * transport close (and drop later writes silently) before connection_lost
 * runs, so a response iterated inline asks the transport itself. */
int
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

int
proto_write(HttpProtocol *p, const char *data, size_t len)
{
    PyObject *b = PyBytes_FromStringAndSize(data, (Py_ssize_t)len);
    if (b == NULL)
        return -1;
    proto_write_bytes(p, b);
    Py_DECREF(b);
    return 0;
}

void
proto_close(HttpProtocol *p)
{
    if (p->transport == NULL || p->closed)
        return;
    proto_flush(p);
    p->closed = 1;
    modstate *st = proto_state(p);
    PyObject *r = PyObject_CallMethodNoArgs(p->transport, st->str_close);
    if (r == NULL)
        PyErr_Clear();
    Py_XDECREF(r);
}

/* Resolves `*fut` (if any) with None and clears it. */
void
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
int
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

void
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

void
body_error(HttpProtocol *p)
{
    HttpRequest *r = p->req;
    r->body_error = 1;
    r->close_after = 1;
    wake(proto_state(p), &r->body_waiter);
}

/* The bytes cannot be parsed (llhttp's error, or one of ours with
 * err_status set): answer or close as the request's stage allows. */
static void
parse_failed(HttpProtocol *p)
{
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
}

/* A request whose head is parsed starts now (its body may come later). */
static void
start_pending(HttpProtocol *p)
{
    HttpRequest *r = p->req;
    if (r != NULL && !r->started)
        start_request(p, r);
}

/* Parses what the buffer holds and starts the requests it completes. */
void
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
        if (p->chunk_line) {
            int c = chunk_line_check(p);
            if (c == 0) {
                start_pending(p); /* the line's end is still to come */
                break;
            }
            if (c < 0) {
                parse_failed(p);
                break;
            }
        }
        if (p->line_wait) {
            /* a request line goes to llhttp whole (past any empty lines
             * before it): one with raw bytes above 0x7F is parsed again
             * from its start (high_bytes_retry), which must still be here */
            const char *b = p->rbuf + p->rpos, *e = p->rbuf + p->rlen;
            size_t n = p->rlen - p->rpos;
            size_t limit = p->server->limit_line > 0
                               ? (size_t)p->server->limit_line + 16 : 65536;
            while (b < e && (*b == '\r' || *b == '\n'))
                b++;
            if (b == e || memchr(b, '\n', (size_t)(e - b)) == NULL) {
                if (p->head_started == 0 && b < e)
                    p->head_started = monotonic(); /* a head trickling in */
                if (n <= limit)
                    break;
                p->err_status = 414;
                p->err_message = "request line is too large";
                parse_failed(p);
                break;
            }
            p->line_wait = 0;
        }
        const char *start = p->rbuf + p->rpos;
        size_t n = p->rlen - p->rpos;
        p->msg_start = NULL;
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
        else if (p->cb_exc == NULL && !p->err_status &&
                 high_bytes_retry(p, err)) {
            p->msg_start = NULL;
            continue; /* the same head again, its raw bytes allowed */
        }
        else {
            p->msg_start = NULL;
            parse_failed(p);
            break;
        }
        p->msg_start = NULL;
        HttpRequest *r = p->req;
        /* a chunked body's first lines are checked before the app starts,
         * so that a malformed one in the same read is a plain 400 */
        if (r != NULL && !r->started && !(p->chunk_line && p->rpos < p->rlen))
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
    eof_check(p);
    Py_DECREF(p);
}

/* After the client's half-close: close once nothing more can be answered
 * (no request in progress and none left whole in the buffer), or at once
 * if the request in progress still waits for body bytes that cannot come. */
void
eof_check(HttpProtocol *p)
{
    if (!p->eof || p->closed || p->feeding)
        return;
    HttpRequest *r = p->req;
    if (r == NULL) {
        if (p->rpos < p->rlen && p->write_paused && !p->broken)
            return; /* pipelined requests wait for the client to read */
        p->broken = 1;
        proto_close(p); /* a partial head is dropped */
    }
    else if (!r->body_done) {
        /* the body will never come whole: the client is gone for this
         * request (connection_lost cancels it, as before) */
        p->broken = 1;
        proto_close(p);
    }
}

PyObject *
proto_new(modstate *st, HttpServer *srv)
{
    HttpProtocol *p = PyObject_GC_New(HttpProtocol, st->HttpProtocolType);
    if (p == NULL)
        return NULL;
    p->server = (HttpServer *)Py_NewRef(srv);
    p->transport = p->write = NULL;
    p->peer_host = p->peer_port = p->sock_host = p->sock_port = NULL;
    p->drain_waiter = p->held = NULL;
    p->held_len = 0;
    p->req = NULL;
    p->cb_exc = NULL;
    p->environ = NULL;
    p->rbuf = p->sbuf = NULL;
    p->rpos = p->rlen = p->rcap = 0;
    p->rshared = 0;
    p->slen = p->scap = p->url_len = p->field_len = 0;
    p->nfields = p->line_len = 0;
    p->host_fields = 0;
    p->head_started = 0;
    p->err_status = 0;
    p->err_message = NULL;
    p->read_paused = p->write_paused = 0;
    p->closed = p->waiting = p->broken = p->trusted = p->upgrade = 0;
    p->handed_off = 0;
    p->feeding = p->scheme = 0;
    p->eof = p->tls = p->chunk_line = p->last_chunk = 0;
    p->line_wait = 1; /* the first request line is parsed once it is whole */
    p->msg_start = NULL;
    p->hline = NULL;
    p->hline_len = 0;
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
    Py_VISIT(p->drain_waiter);
    Py_VISIT(p->held);
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
    Py_CLEAR(p->peer_host);
    Py_CLEAR(p->peer_port);
    Py_CLEAR(p->sock_host);
    Py_CLEAR(p->sock_port);
    Py_CLEAR(p->drain_waiter);
    Py_CLEAR(p->held);
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
    PyMem_Free(p->hline);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyObject *
proto_connection_made(PyObject *op, PyObject *transport)
{
    HttpProtocol *p = (HttpProtocol *)op;
    HttpServer *srv = p->server;
    modstate *st = proto_state(p);
    PyObject *peer = NULL, *sock = NULL, *ssl = NULL;
    /* the server's Tasks and its held writes' flush go to its own loop:
     * served by another, they would never run */
    PyObject *running = PyObject_CallNoArgs(st->get_running_loop);
    if (running == NULL)
        goto error;
    int elsewhere = running != Py_None && running != srv->loop;
    Py_DECREF(running);
    if (elsewhere) {
        PyErr_SetString(PyExc_RuntimeError,
                        "this HttpServer was made for another loop than the "
                        "one serving it: make it with the loop that runs it "
                        "(asyncio.get_running_loop())");
        log_error(srv, "HttpServer served by another loop than its own: "
                       "connection closed");
        PyObject *r = PyObject_CallMethodNoArgs(transport, HSTR(st, ABORT));
        if (r == NULL)
            PyErr_Clear();
        Py_XDECREF(r);
        Py_RETURN_NONE;
    }
    Py_XSETREF(p->transport, Py_NewRef(transport));
    Py_XSETREF(p->write, PyObject_GetAttr(transport, HSTR(st, WRITE)));
    if (p->write == NULL)
        goto error;
    if ((peer = extra_info(st, transport, HSTR(st, PEERNAME))) == NULL ||
        (sock = extra_info(st, transport, HSTR(st, SOCKNAME))) == NULL ||
        (ssl = extra_info(st, transport, HSTR(st, SSLCONTEXT))) == NULL)
        goto error;
    /* strs, which the protocol's traverse need not visit */
    Py_CLEAR(p->peer_host);
    Py_CLEAR(p->peer_port);
    Py_CLEAR(p->sock_host);
    Py_CLEAR(p->sock_port);
    if (addr_strs(st, peer, &p->peer_host, &p->peer_port) < 0 ||
        addr_strs(st, sock, &p->sock_host, &p->sock_port) < 0)
        goto error;
    p->tls = ssl != Py_None;
    if (!PyTuple_Check(sock)) {
        /* a unix socket: PEP 3333's SERVER_PORT is never empty, so the
         * scheme's default port, as gunicorn says */
        Py_SETREF(p->sock_port, PyUnicode_FromString(p->tls ? "443" : "80"));
        if (p->sock_port == NULL)
            goto error;
    }
    if (!PyTuple_Check(peer) ||
        (srv->forwarded_allow == NULL && srv->trust_check == NULL)) {
        p->trusted = 1; /* a unix socket's peer, or '*' */
    }
    else {
        PyObject *host = p->peer_host;
        int c = -1;
        if (srv->trust_check != NULL) {
            PyObject *v = PyObject_CallOneArg(srv->trust_check, host);
            c = v ? PyObject_IsTrue(v) : -1;
            Py_XDECREF(v);
        }
        else {
            c = PySet_Contains(srv->forwarded_allow, host);
        }
        if (c < 0)
            goto error;
        p->trusted = c;
    }
    if (PySet_Add(srv->connections, op) < 0)
        goto error;
    p->last_activity = monotonic();
    Py_DECREF(peer);
    Py_DECREF(sock);
    Py_DECREF(ssl);
    Py_RETURN_NONE;
error:
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
    proto_drop_held(p);
    if (p->server != NULL && PySet_Discard(p->server->connections, op) < 0)
        PyErr_Clear();
    if (p->server != NULL && p->server->on_close != NULL) {
        /* there is room for another connection (the worker's accept loop
         * waits for it at worker_connections) */
        PyObject *res = PyObject_CallNoArgs(p->server->on_close);
        if (res == NULL)
            log_error(p->server, "Error in HttpServer.on_close");
        Py_XDECREF(res);
    }
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
    Py_RETURN_NONE;
}

/* A request's Task ended, or is about to end in this step with what its
 * job returned: the request goes, and the requests pipelined behind it
 * come. */
static void
task_ended(HttpProtocol *p, PyObject *task)
{
    HttpRequest *r = p->req;
    if (r != NULL && r->task == task && r->response_done) {
        if (r->body_done || p->closed) {
            proto_release_request(p);
            p->waiting = 0;
        }
    }
    if (p->closed) {
        proto_release_request(p);
        return;
    }
    if (p->req == NULL) {
        p->waiting = 0;
        feed(p);
        if (!p->waiting)
            set_read_paused(p, PAUSE_PIPELINE, 0);
    }
    eof_check(p);
}

/* The done callback of a request's Task that ended with an error or a
 * cancellation (see proto_request_ended). */
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
    task_ended(p, task);
    Py_RETURN_NONE;
}

/* A request that suspended ends in its Task's step.  Its job returned:
 * the request is done with here and now, not in a done callback the loop
 * would call at its next pass (add_done_callback, a Handle scheduled and
 * run: about 3,000 instructions a request).  It raised (the client left
 * and the request was cancelled, or an error of the server's): the Task's
 * end tells, in its done callback as before, which takes the Task's
 * exception (asyncio would log one nobody took) and lets KeyboardInterrupt
 * and SystemExit go on through the loop as Tasks do. */
void
proto_request_ended(PyObject *request, PyObject *task, PyObject *exc)
{
    HttpProtocol *p = ((HttpRequest *)request)->proto;
    if (p == NULL)
        return;
    if (exc == NULL) {
        task_ended(p, task);
        return;
    }
    modstate *st = proto_state(p);
    /* a bound method for this Task only (the protocol's own one is gone
     * with its connection, and would keep a cycle alive) */
    PyObject *done = PyObject_GetAttrString((PyObject *)p, "_task_done");
    PyObject *r = done == NULL ? NULL :
        PyObject_CallMethodOneArg(task, st->str_add_done_callback, done);
    if (r == NULL)
        log_error(p->server, "Error finishing request");
    Py_XDECREF(r);
    Py_XDECREF(done);
}

static int
ensure_space(HttpProtocol *p, size_t want)
{
    if (p->rpos > 0 && p->rpos == p->rlen)
        p->rpos = p->rlen = 0;
    return grow(&p->rbuf, &p->rcap, p->rlen + want);
}

/* The loops call get_buffer, read into it, then call buffer_updated, with
 * nothing in between (no other connection's read): so a connection with
 * nothing unparsed reads into its server's one buffer, and keeps only
 * what is left unparsed (a request cut short, pipelined requests behind a
 * response) in a buffer of its own.  A connection waiting on its request
 * holds no read buffer at all. */
/* The server's shared read buffer and its one memoryview, made once: a
 * view per read was two objects made and freed per read.  The server
 * holds an export of the view, so a reader's release() of it fails
 * (BufferError) instead of leaving the next reads a released view. */
static int
shared_view_new(HttpServer *srv)
{
    if (srv->shared_rbuf == NULL &&
        (srv->shared_rbuf = PyMem_Malloc(READ_BUFFER)) == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    PyObject *view = PyMemoryView_FromMemory(srv->shared_rbuf, READ_BUFFER,
                                             PyBUF_WRITE);
    if (view == NULL)
        return -1;
    if (PyObject_GetBuffer(view, &srv->shared_rpin, PyBUF_SIMPLE) < 0) {
        Py_DECREF(view);
        return -1;
    }
    srv->shared_rview = view;
    return 0;
}

static PyObject *
proto_get_buffer(PyObject *op, PyObject *sizehint)
{
    HttpProtocol *p = (HttpProtocol *)op;
    HttpServer *srv = p->server;
    p->rshared = 0;
    if (p->rpos == p->rlen && srv != NULL) {
        if (srv->shared_rview == NULL && shared_view_new(srv) < 0)
            return NULL;
        p->rpos = p->rlen = 0;
        p->rshared = 1;
        return Py_NewRef(srv->shared_rview); /* one view for every read */
    }
    if (ensure_space(p, 16384) < 0)
        return NULL;
    if (p->rcap < READ_BUFFER && grow(&p->rbuf, &p->rcap, READ_BUFFER) < 0)
        return NULL;
    return PyMemoryView_FromMemory(p->rbuf + p->rlen,
                                   (Py_ssize_t)(p->rcap - p->rlen), PyBUF_WRITE);
}

/* feed() for what a data callback brought: writes held before it go out
 * first (proto_flush_early); those its requests make wait for the
 * iteration's flush_writes. */
static void
feed_read(HttpProtocol *p)
{
    HttpServer *srv = p->server;
    if (srv == NULL) {
        feed(p);
        return;
    }
    Py_INCREF(srv);
    if (srv->held_between_reads && !srv->reading)
        proto_flush_early(srv);
    int was = srv->reading;
    srv->reading = 1;
    feed(p);
    srv->reading = was;
    Py_DECREF(srv);
}

static PyObject *
proto_buffer_updated(PyObject *op, PyObject *arg)
{
    HttpProtocol *p = (HttpProtocol *)op;
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    int shared = p->rshared && p->server != NULL &&
                 p->server->shared_rbuf != NULL;
    p->rshared = 0;
    size_t room = shared ? READ_BUFFER : p->rcap - p->rlen;
    if (n < 0 || (size_t)n > room) {
        PyErr_Format(PyExc_ValueError,
                     "buffer_updated() got %zd bytes, more than the buffer "
                     "had room for", n);
        return NULL;
    }
    p->last_activity = monotonic();
    if (!shared) {
        p->rlen += (size_t)n;
        feed_read(p);
        Py_RETURN_NONE;
    }
    /* parse right in the shared buffer; what is left over moves to the
     * connection's own */
    HttpServer *srv = (HttpServer *)Py_NewRef(p->server);
    char *own = p->rbuf;
    size_t own_cap = p->rcap;
    p->rbuf = srv->shared_rbuf;
    p->rcap = READ_BUFFER;
    p->rpos = 0;
    p->rlen = (size_t)n;
    feed_read(p); /* keeps the unparsed rest at the start of the buffer */
    size_t left = p->rlen - p->rpos;
    const char *rest = p->rbuf + p->rpos;
    p->rbuf = own;
    p->rcap = own_cap;
    p->rpos = p->rlen = 0;
    if (left > 0) {
        if (grow(&p->rbuf, &p->rcap, left) < 0) {
            Py_DECREF(srv);
            return NULL;
        }
        memcpy(p->rbuf, rest, left);
        p->rlen = left;
    }
    Py_DECREF(srv);
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
    feed_read(p);
    Py_RETURN_NONE;
}

static PyObject *
proto_eof_received(PyObject *op, PyObject *unused)
{
    /* The peer shut down its sending side: no more requests, not "gone"
     * (`nc -N`, health checkers and proxies send a request, then FIN).
     * What was received whole is answered, then the connection closes, as
     * nginx and gunicorn's sync worker do.  A client that is really gone
     * shows it when a write fails or it resets: connection_lost cancels
     * the request then.  TLS cannot half-close: the transport closes. */
    HttpProtocol *p = (HttpProtocol *)op;
    if (p->tls) {
        /* the transport closes as this returns, and drops what is
         * written after: what the requests in this read made goes now */
        proto_flush(p);
        Py_RETURN_FALSE;
    }
    if (p->closed)
        Py_RETURN_FALSE;
    p->eof = 1;
    eof_check(p);
    if (p->closed)
        Py_RETURN_FALSE;
    Py_RETURN_TRUE;
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

PyType_Spec proto_spec = {
    .name = "aiopyramid._core.HttpProtocol",
    .basicsize = sizeof(HttpProtocol),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = proto_slots,
};
