/* parser.c: llhttp's callbacks: the request line and headers into the environ,
 * the body into the request's buffer, the limits on the head. */
#include "http.h"

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

/* The head is refused: `status` and `reason` go to the client (a limit
 * exceeded, a missing or repeated Host, contradictory scheme headers). */
static int
reject_head(llhttp_t *parser, int status, const char *reason)
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
        return reject_head(parser, 414, "request line is too large");
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
        return reject_head(parser, 431, "request header field is too large");
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
        return reject_head(parser, 431, "too many request header fields");
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
            return reject_head(&p->parser, 400, "Contradictory scheme headers");
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
        return reject_head(parser, 400, p->host_fields ? "repeated Host header"
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
    if (r->bpos > 0 && r->blen + n > r->bcap) {
        /* what the app has read goes before the buffer grows: a reader a
         * few bytes behind would otherwise keep the whole body */
        memmove(r->bbuf, r->bbuf + r->bpos, r->blen - r->bpos);
        r->blen -= r->bpos;
        r->bpos = 0;
    }
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

/* llhttp's callbacks: set once, never changed */
const llhttp_settings_t parser_settings = {
    .on_message_begin = on_message_begin,
    .on_method = on_method,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_field_complete = on_header_field_complete,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};
