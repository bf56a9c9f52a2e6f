/* response.c: The response: the head rendered from start_response, the body framed
 * (Content-Length or chunked), the app's result sent, and the server's own
 * error responses. */
#include "http.h"

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
    case 501: return "Not Implemented";
    default: return "Error";
    }
}

/* Writes the server's own response: the status's reason phrase, and
 * `message` (the reason when NULL) as the body, as gunicorn tells what was
 * wrong; Connection: close.  Returns the length of the response (0 when it
 * could not be formatted); a failed write is cleared, the connection closes
 * anyway. */
static size_t
write_error_response(HttpProtocol *p, int status, const char *message)
{
    char buf[512];
    const char *reason = reason_of(status);
    if (message == NULL || strlen(message) > 200)
        message = reason;
    int n = snprintf(buf, sizeof(buf),
                     "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     status, reason, strlen(message), message);
    if (n <= 0 || (size_t)n >= sizeof(buf))
        return 0;
    if (proto_write(p, buf, (size_t)n) < 0)
        PyErr_Clear();
    return (size_t)n;
}

/* An error found before any request ran (a malformed or too large head, a
 * timeout): the response, then no more parsing and the connection closes. */
void
respond_message_and_close(HttpProtocol *p, int status, const char *message)
{
    write_error_response(p, status, message);
    p->broken = 1;
    proto_close(p);
}

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
    return 0;
}

static int
has_line_break(const char *data, Py_ssize_t len)
{
    return memchr(data, '\r', (size_t)len) || memchr(data, '\n', (size_t)len);
}

static int
line_break_error(PyObject *s, const char *what)
{
    PyErr_Format(PyExc_ValueError, "response %s %R contains a line break",
                 what, s);
    return -1;
}

/* RFC 9110 5.5: a field value (and a reason phrase, RFC 9112 4) is
 * HTAB, SP, VCHAR and obs-text.  The first control byte besides HTAB
 * (CR and LF among them), or NULL: eight bytes at a time, a byte below
 * 0x20 or a DEL in a word sending it to the byte loop (HTAB does too). */
static const char *
find_ctl(const char *data, Py_ssize_t len)
{
    const uint64_t ones = 0x0101010101010101ULL, highs = ones * 0x80;
    Py_ssize_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t x, y;
        memcpy(&x, data + i, 8);
        y = x ^ (ones * 0x7f);
        if (((x - ones * 0x20) & ~x & highs) | ((y - ones) & ~y & highs))
            break;
    }
    for (; i < len; i++) {
        unsigned char c = (unsigned char)data[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return data + i;
    }
    return NULL;
}

/* latin1_view(), and no control byte in it but HTAB: a line break is
 * told apart (a NUL too, in a header value) */
static int
line_view(PyObject *s, const char **data, Py_ssize_t *len, const char *what)
{
    if (latin1_view(s, data, len, what) < 0)
        return -1;
    const char *ctl = find_ctl(*data, *len);
    if (ctl == NULL)
        return 0;
    if (has_line_break(*data, *len))
        return line_break_error(s, what);
    if (*ctl == '\0' && strcmp(what, "header value") == 0)
        PyErr_Format(PyExc_ValueError, "response %s %R contains a NUL",
                     what, s);
    else
        PyErr_Format(PyExc_ValueError,
                     "response %s %R contains a control character", what, s);
    return -1;
}

/* RFC 9110 5.6.2: a field name is a token: tchar[c] is 1 for the bytes
 * of one (digits, letters and !#$%&'*+-.^_`|~), 0 for any other (the
 * upper half, not listed, is 0) */
static const unsigned char tchar[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 1, 0, 1, 1, 1, 1, 1, 0, 0, 1, 1, 0, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0,
    0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 0, 1, 0,
};

static int
is_token(const char *s, Py_ssize_t n)
{
    if (n == 0)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (!tchar[(unsigned char)s[i]])
            return 0;
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

int
bodyless_status(int code)
{
    return code < 200 || code == 204 || code == 304;
}

static inline void
wb_init(wbuf *b)
{
    b->p = b->inl;
    b->len = 0;
    b->cap = sizeof(b->inl);
}

static inline void
wb_free(wbuf *b)
{
    if (b->p != b->inl)
        PyMem_Free(b->p);
}

static int
wb_grow(wbuf *b, size_t need)
{
    size_t n = b->cap;
    while (n < need)
        n *= 2;
    char *p;
    if (b->p == b->inl) {
        p = PyMem_Malloc(n);
        if (p != NULL)
            memcpy(p, b->p, b->len);
    }
    else {
        p = PyMem_Realloc(b->p, n);
    }
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = p;
    b->cap = n;
    return 0;
}

static inline int
wb_put(wbuf *b, const char *s, size_t n)
{
    if (b->len + n > b->cap && wb_grow(b, b->len + n) < 0)
        return -1;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    return 0;
}

/* Appends "name: value\r\n" */
static inline int
wb_header(wbuf *b, const char *name, size_t nl, const char *value, size_t vl)
{
    size_t need = b->len + nl + vl + 4;
    if (need > b->cap && wb_grow(b, need) < 0)
        return -1;
    char *o = b->p + b->len;
    memcpy(o, name, nl);
    o += nl;
    *o++ = ':';
    *o++ = ' ';
    memcpy(o, value, vl);
    o += vl;
    *o++ = '\r';
    *o++ = '\n';
    b->len = need;
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
    if (line_view(r->status, &s, &n, "status") < 0)
        return -1;
    /* a 101 handing the connection to a WebSocket (upgrade.c): its
     * Upgrade and Connection headers go out as given, and no framing */
    PyObject *ws = r->status_code == 101 ? upgrade_target(r) : NULL;
    if (r->status_code < 200 && ws == NULL) {
        /* an interim status is no answer: the client would wait on */
        PyErr_Format(PyExc_ValueError,
                     "the WSGI application's final status must be 200 or "
                     "more; %R is an interim response%s", r->status,
                     r->status_code == 101
                         ? " (a 101 goes out only for a websocket handshake "
                           "answered by WebsocketMapper)" : "");
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
        /* a token has no line break: the name is scanned once */
        if (latin1_view(PyTuple_GET_ITEM(h, 0), &name, &nl, "header name") < 0)
            return -1;
        int token = is_token(name, nl);
        if (!token && has_line_break(name, nl))
            return line_break_error(PyTuple_GET_ITEM(h, 0), "header name");
        if (line_view(PyTuple_GET_ITEM(h, 1), &value, &vl, "header value") < 0)
            return -1;
        if (!token) {
            PyErr_Format(PyExc_ValueError, "invalid response header name %R",
                         PyTuple_GET_ITEM(h, 0));
            return -1;
        }
        if (ws != NULL) {
            /* a 101 has no body: no framing headers */
            if ((nl == 14 && strncasecmp(name, "content-length", 14) == 0) ||
                (nl == 17 && strncasecmp(name, "transfer-encoding", 17) == 0))
                continue;
            if (nl == 4 && strncasecmp(name, "date", 4) == 0)
                has_date = 1;
            if (wb_header(b, name, (size_t)nl, value, (size_t)vl) < 0)
                return -1;
            continue;
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
        if (wb_header(b, name, (size_t)nl, value, (size_t)vl) < 0)
            return -1;
    }
    if (!has_date) {
        server_update_date(srv);
        if (wb_put(b, srv->date, srv->date_len) < 0)
            return -1;
    }
    if (ws != NULL) {
        /* the connection is the WebSocket's once this head is out */
        if (WB_LIT(b, "\r\n") < 0)
            return -1;
        Py_XSETREF(r->ws, Py_NewRef(ws));
        return 0;
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
int
write_chunk(HttpRequest *r, const char *data, size_t n, long long known)
{
    wbuf b;
    wb_init(&b);
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
    wb_free(&b);
    return rc;
}

int
call_close(PyObject *iterable)
{
    PyObject *meth;
    /* a list or tuple (WebOb's Response gives a list) has no close(): no
     * lookup that misses; their subclasses may have one */
    if (PyList_CheckExact(iterable) || PyTuple_CheckExact(iterable))
        return 0;
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
int
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
int
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
            wbuf b;
            wb_init(&b);
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
            wb_free(&b);
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
    wbuf b;
    wb_init(&b);
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
    wb_free(&b);
    return rc;
}

/* The server's own answer when the app failed before its head went out:
 * 500, or 400 when the client's malformed body made it fail. */
void
respond_failure(HttpRequest *r, int status)
{
    if (r->headers_sent) {
        r->close_after = 1; /* the response is cut short */
        return;
    }
    const char *reason = reason_of(status);
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
    r->sent += write_error_response(r->proto, status, NULL);
}
