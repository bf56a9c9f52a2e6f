/* parser.c: llhttp's callbacks: the request line and headers into the environ,
 * the body into the request's buffer, the limits on the head. */
#include "http.h"

#include <arpa/inet.h>
#include <ctype.h>

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
    if (p->head_started == 0) /* else since its first bytes were held */
        p->head_started = monotonic();
    Py_CLEAR(p->environ);
    return 0;
}

static int
on_method(llhttp_t *parser, const char *at, size_t n)
{
    HttpProtocol *p = PROTO(parser);
    if (p->line_len == 0)
        p->msg_start = at; /* the head begins in this llhttp_execute */
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
    if (p->hline != NULL && p->msg_start != NULL && at >= p->msg_start &&
        (size_t)(at - p->msg_start) + n <= p->hline_len) {
        /* the bytes above 0x7F that llhttp saw replaced, put back */
        memcpy(p->sbuf + p->slen, p->hline + (at - p->msg_start), n);
    }
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
    return p->environ == NULL ? environ_for_request(p) : 0;
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

/* RFC 3986 3.2.2's reg-name characters: unreserved and sub-delims */
static int
reg_name_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') ||
           (c != '\0' && strchr("-._~!$&'()*+,;=", c) != NULL);
}

/* An IP literal's inside: an IPv6 address, or "v" 1*HEXDIG "." and
 * unreserved, sub-delims or ":" (RFC 3986 3.2.2's IPvFuture). */
static int
valid_ip_literal(const char *a, size_t n)
{
    if (n > 0 && (a[0] == 'v' || a[0] == 'V')) {
        size_t i = 1;
        while (i < n && isxdigit((unsigned char)a[i]))
            i++;
        if (i == 1 || i + 1 >= n || a[i] != '.')
            return 0;
        for (i++; i < n; i++)
            if (!reg_name_char((unsigned char)a[i]) && a[i] != ':')
                return 0;
        return 1;
    }
    char buf[INET6_ADDRSTRLEN];
    struct in6_addr addr;
    if (n == 0 || n >= sizeof(buf))
        return 0;
    memcpy(buf, a, n);
    buf[n] = '\0';
    return inet_pton(AF_INET6, buf, &addr) == 1;
}

/* Whether a..a+n is host[:port] (RFC 9110 4.2.1, RFC 3986 3.2.2-3): a
 * host that is not empty (an IP literal, or a reg-name, which takes an
 * IPv4 address in) and a port of 1-65535, which a CONNECT must have and
 * the others may leave empty ("h:", the scheme's default).  What becomes
 * HTTP_HOST passes here, since Pyramid builds every URL from it. */
static int
valid_authority(const char *a, size_t n, int port_needed)
{
    const char *c = a, *end = a + n;
    if (c < end && *c == '[') {
        const char *close = memchr(c, ']', n);
        if (close == NULL || !valid_ip_literal(c + 1, (size_t)(close - c - 1)))
            return 0;
        c = close + 1;
    }
    else {
        for (; c < end && *c != ':'; c++) {
            if (*c == '%') { /* pct-encoded */
                if (end - c < 3 || !isxdigit((unsigned char)c[1]) ||
                    !isxdigit((unsigned char)c[2]))
                    return 0;
                c += 2;
            }
            else if (!reg_name_char((unsigned char)*c))
                return 0;
        }
        if (c == a)
            return 0;
    }
    if (c == end || c + 1 == end)
        return !port_needed && (c == end || *c == ':');
    if (*c++ != ':')
        return 0;
    unsigned port = 0;
    for (; c < end; c++) {
        if (*c < '0' || *c > '9')
            return 0;
        port = port * 10 + (unsigned)(*c - '0');
        if (port > 65535)
            return 0;
    }
    return port != 0;
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
    if (p->field_len == 4 && strncasecmp(name, "host", 4) == 0) {
        /* RFC 9112 3.2: a Host that is no host[:port] is a 400; an empty
         * one is what a client sends for a target without authority */
        const char *v = name + p->field_len;
        size_t k = vlen;
        while (k > 0 && (*v == ' ' || *v == '\t'))
            v++, k--;
        while (k > 0 && (v[k - 1] == ' ' || v[k - 1] == '\t'))
            k--;
        if (k > 0 && !valid_authority(v, k, 0))
            return reject_head(parser, 400, "the Host header is not "
                                            "host[:port]");
        p->host_fields++;
    }
    else if (p->field_len == 17 &&
             strncasecmp(name, "transfer-encoding", 17) == 0) {
        /* an empty coding: llhttp frames the body by a Content-Length
         * that follows it, or gives it none; gunicorn and nginx answer
         * 501, as on_headers_complete does to "gzip, chunked" */
        const char *v = name + p->field_len;
        size_t k = 0;
        while (k < vlen && (v[k] == ' ' || v[k] == '\t'))
            k++;
        if (k == vlen)
            return reject_head(parser, 501,
                               "only the chunked transfer coding is "
                               "implemented");
    }
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

/* An absolute-form target (http://host[:port]/path) whose authority, which
 * replaces Host, is no host[:port]: RFC 9110 4.2.1 and 4.2.4 call an empty
 * host and userinfo invalid (userinfo in a request target is a phishing
 * shape).  And a target of another scheme (llhttp lets through any
 * scheme's URL: ftp://h/p, ws://u@h/), which would be the app's PATH_INFO
 * whole. */
static int
bad_absolute_authority(const char *url, size_t n)
{
    size_t skip;
    if (n == 0 || url[0] == '/' || url[0] == '*')
        return 0;
    if (n >= 7 && strncasecmp(url, "http://", 7) == 0)
        skip = 7;
    else if (n >= 8 && strncasecmp(url, "https://", 8) == 0)
        skip = 8;
    else
        return 1;
    const char *a = url + skip, *end = url + n, *e = a;
    while (e < end && *e != '/' && *e != '?' && *e != '#')
        e++;
    return !valid_authority(a, (size_t)(e - a), 0);
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
    /* RFC 9112 3.2.4: the asterisk form is only for OPTIONS, and is a
     * lone "*" (no other target but the absolute form lacks the "/") */
    if (p->url_len > 1 && p->sbuf[0] == '*')
        return reject_head(parser, 400,
                           "the asterisk form is a lone *");
    if (p->url_len == 1 && p->sbuf[0] == '*' && parser->method != HTTP_OPTIONS)
        return reject_head(parser, 400,
                           "the asterisk form is only for OPTIONS");
    /* RFC 9112 3.2.3: a CONNECT's target is the authority form, host:port,
     * and nothing else (llhttp lets any target through) */
    if (parser->method == HTTP_CONNECT
            ? !valid_authority(p->sbuf, p->url_len, 1)
            : bad_absolute_authority(p->sbuf, p->url_len))
        return reject_head(parser, 400,
                           parser->method == HTTP_CONNECT
                               ? "a CONNECT's target is host:port"
                               : "the target is not an http(s) URL with a "
                                 "host[:port]");
    /* RFC 9112 3.2: an HTTP/1.1 request has exactly one Host; none has
     * two (they would be joined into one value the app cannot trust) */
    if ((http11 && p->host_fields != 1) || p->host_fields > 1)
        return reject_head(parser, 400, p->host_fields ? "repeated Host header"
                                                       : "missing Host header");
    /* RFC 9112 6.1: a transfer coding besides chunked (gzip, chunked) is
     * not applied here, and the app would read a body still coded with
     * nothing in the environ saying so: a 501, as nginx answers */
    if (parser->flags & F_CHUNKED) {
        PyObject *te = PyDict_GetItemWithError(env, st->str_transfer_encoding);
        if (te == NULL && PyErr_Occurred())
            return cb_error(p);
        if (te != NULL && !(PyUnicode_GET_LENGTH(te) == 7 &&
                            PyUnicode_KIND(te) == PyUnicode_1BYTE_KIND &&
                            strncasecmp((const char *)PyUnicode_1BYTE_DATA(te),
                                        "chunked", 7) == 0))
            return reject_head(parser, 501,
                               "only the chunked transfer coding is "
                               "implemented");
    }
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
    if (p->hline != NULL) {
        PyMem_Free(p->hline);
        p->hline = NULL;
        p->hline_len = 0;
    }
    if (parser->flags & F_CHUNKED) {
        /* the first chunk-size line is checked before llhttp reads it */
        p->chunk_line = 1;
        p->last_chunk = 0;
        return HPE_PAUSED;
    }
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
on_chunk_header(llhttp_t *parser)
{
    PROTO(parser)->last_chunk = parser->content_length == 0;
    return 0;
}

static int
on_chunk_complete(llhttp_t *parser)
{
    HttpProtocol *p = PROTO(parser);
    if (p->last_chunk)
        return 0; /* the trailers and the end follow */
    p->chunk_line = 1; /* the next chunk-size line is checked first */
    return HPE_PAUSED;
}

static int
on_message_complete(llhttp_t *parser)
{
    HttpProtocol *p = PROTO(parser);
    HttpRequest *r = p->req;
    p->chunk_line = 0;
    p->line_wait = 1; /* the next request line is parsed once it is whole */
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
    .on_chunk_header = on_chunk_header,
    .on_chunk_complete = on_chunk_complete,
};

/* ------------------------------------------------------------------ */
/* What llhttp does not do alone                                        */

/* A chunk-size line and its extensions are at most this long. */
#define CHUNK_LINE_MAX 4096

static inline int
is_tchar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || (c != 0 && strchr("!#$%&'*+-.^_`|~", c));
}

static inline int
is_hex(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
           (c >= 'A' && c <= 'F');
}

static inline size_t
skip_ws(const char *s, size_t i, size_t n)
{
    while (i < n && (s[i] == ' ' || s[i] == '\t'))
        i++;
    return i;
}

static int
chunk_line_bad(HttpProtocol *p, const char *reason)
{
    p->err_status = 400;
    p->err_message = reason;
    return -1;
}

/* The chunk-size line at the head of the unparsed bytes, checked against
 * RFC 9112 7.1.1 before llhttp reads it:
 *
 *     chunk-size *( BWS ";" BWS token [ BWS "=" BWS ( token / quoted-string ) ] ) CRLF
 *
 * llhttp refuses the optional whitespace (BWS) and lets an empty name or
 * value through; here the whitespace is removed (the line rewritten in
 * place, shorter) and a malformed extension refused.  1: llhttp may go
 * on; 0: the line is not all here yet; -1: malformed (err_status set). */
int
chunk_line_check(HttpProtocol *p)
{
    char *s = p->rbuf + p->rpos;
    size_t n = p->rlen - p->rpos;
    char *lf = memchr(s, '\n', n < CHUNK_LINE_MAX ? n : CHUNK_LINE_MAX);
    if (lf == NULL) {
        if (n >= CHUNK_LINE_MAX)
            return chunk_line_bad(p, "chunk-size line is too long");
        return 0;
    }
    p->chunk_line = 0;
    size_t len = (size_t)(lf - s);
    if (len == 0 || s[len - 1] != '\r')
        return 1; /* llhttp judges a bare LF */
    len--;
    if (memchr(s, ';', len) == NULL && memchr(s, ' ', len) == NULL &&
        memchr(s, '\t', len) == NULL)
        return 1; /* a bare size: llhttp's alone */
    size_t i = 0, o;
    while (i < len && is_hex((unsigned char)s[i]))
        i++;
    if (i == 0)
        return 1; /* no size: llhttp says so */
    o = i;
    for (;;) {
        size_t j = skip_ws(s, i, len);
        if (j == len) {
            if (j != i)
                return chunk_line_bad(p, "whitespace at the end of a chunk-size line");
            break;
        }
        if (s[j] != ';')
            return chunk_line_bad(p, "malformed chunk extension");
        s[o++] = ';';
        i = skip_ws(s, j + 1, len);
        if (i == len || !is_tchar((unsigned char)s[i]))
            return chunk_line_bad(p, "chunk extension without a name");
        while (i < len && is_tchar((unsigned char)s[i]))
            s[o++] = s[i++];
        j = skip_ws(s, i, len);
        if (j == len || s[j] != '=')
            continue; /* no value: the next ';' or the end */
        s[o++] = '=';
        i = skip_ws(s, j + 1, len);
        if (i < len && s[i] == '"') {
            s[o++] = s[i++];
            for (;;) {
                if (i == len)
                    return chunk_line_bad(p, "unterminated quoted chunk "
                                             "extension value");
                unsigned char c = (unsigned char)s[i];
                if (c == '"') {
                    s[o++] = s[i++];
                    break;
                }
                if (c == '\\') {
                    if (i + 1 == len ||
                        ((unsigned char)s[i + 1] < 0x20 && s[i + 1] != '\t') ||
                        s[i + 1] == 0x7f)
                        return chunk_line_bad(p, "malformed quoted chunk "
                                                 "extension value");
                    s[o++] = s[i++];
                    s[o++] = s[i++];
                    continue;
                }
                if ((c < 0x20 && c != '\t') || c == 0x7f)
                    return chunk_line_bad(p, "malformed quoted chunk "
                                             "extension value");
                s[o++] = s[i++];
            }
        }
        else {
            if (i == len || !is_tchar((unsigned char)s[i]))
                return chunk_line_bad(p, "chunk extension without a value "
                                         "after '='");
            while (i < len && is_tchar((unsigned char)s[i]))
                s[o++] = s[i++];
        }
    }
    if (o < len) {
        /* the rewritten line ends where the original did, before CRLF */
        memmove(s + (len - o), s, o);
        p->rpos += len - o;
    }
    return 1;
}

/* llhttp refused a byte above 0x7F in a request target.  RFC 9112 3.2
 * lets a server answer such a line 400 or serve it; nginx and gunicorn
 * serve it, and so do we: PEP 3333 makes PATH_INFO the latin-1 reading of
 * the raw bytes.  llhttp has no lenient flag for it, so the head is parsed
 * again from its first byte with each such byte of the target replaced by
 * 'a' and a copy of the line kept, from which on_url puts them back.  1:
 * parse again from p->rpos (once the line's end is here: line_wait); 0:
 * not that case (the error stands). */
int
high_bytes_retry(HttpProtocol *p, llhttp_errno_t err)
{
    const char *pos = llhttp_get_error_pos(&p->parser);
    if (err != HPE_INVALID_URL || p->msg_start == NULL || pos == NULL ||
        (unsigned char)*pos < 0x80 || p->hline != NULL)
        return 0;
    const char *s = p->msg_start, *end = p->rbuf + p->rlen;
    if (s < p->rbuf || s >= end)
        return 0;
    size_t n = (size_t)(end - s);
    const char *lf = memchr(s, '\n', n);
    if (lf == NULL) {
        /* the rest of the line is still to come: parse it again once it
         * is all here */
        llhttp_reset(&p->parser);
        p->rpos = (size_t)(s - p->rbuf);
        p->line_wait = 1;
        return 1;
    }
    size_t len = (size_t)(lf - s);
    const char *sp1 = memchr(s, ' ', len);
    const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', len - (size_t)(sp1 + 1 - s))
                          : NULL;
    if (sp1 == NULL || sp2 == NULL || pos <= sp1 || pos >= sp2)
        return 0; /* a method or version has no such bytes */
    p->hline = PyMem_Malloc(len);
    if (p->hline == NULL)
        return 0;
    memcpy(p->hline, s, len);
    p->hline_len = len;
    for (char *c = (char *)sp1 + 1; c < sp2; c++) {
        if ((unsigned char)*c >= 0x80)
            *c = 'a';
    }
    llhttp_reset(&p->parser);
    p->rpos = (size_t)(s - p->rbuf);
    return 1;
}
