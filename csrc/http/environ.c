/* environ.c: Building the WSGI environ: the URL (PATH_INFO, QUERY_STRING), header
 * keys and values, the peer and server addresses. */
#include "http.h"

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

/* Room in the server's environ template for what each request adds (the
 * connection's addresses and scheme, its URL, method, protocol, input and
 * a browser's dozen headers) and what the app adds (WebOb's cached
 * attributes): each request's environ is a copy of the template, and a
 * dict copied whole keeps its table's size, so a request that stays within
 * this room never grows its environ. */
#define ENVIRON_ROOM 32

/* The server's base environ in a dict with ENVIRON_ROOM keys to spare
 * (PyDict_Copy would size it to the base alone), then the keys each
 * connection sets (its addresses, and the scheme, http but for TLS), so
 * that setting them in a request's copy replaces a value in place. */
PyObject *
environ_template(modstate *st, PyObject *base)
{
    PyObject *env = _PyDict_NewPresized(PyDict_GET_SIZE(base) + ENVIRON_ROOM);
    if (env == NULL)
        return NULL;
    PyObject *k, *v;
    Py_ssize_t pos = 0;
    while (PyDict_Next(base, &pos, &k, &v)) {
        if (PyDict_SetItem(env, k, v) < 0)
            goto error;
    }
    if (PyDict_SetItem(env, HSTR(st, REMOTE_ADDR), HSTR(st, EMPTY)) < 0 ||
        PyDict_SetItem(env, HSTR(st, REMOTE_PORT), HSTR(st, EMPTY)) < 0 ||
        PyDict_SetItem(env, HSTR(st, SERVER_NAME), HSTR(st, EMPTY)) < 0 ||
        PyDict_SetItem(env, HSTR(st, SERVER_PORT), HSTR(st, EMPTY)) < 0 ||
        PyDict_SetItem(env, HSTR(st, WSGI_URL_SCHEME), HSTR(st, HTTP)) < 0)
        goto error;
    return env;
error:
    Py_DECREF(env);
    return NULL;
}

/* A request's environ: the server's one template copied, and the
 * connection's addresses (and scheme, under TLS) set in it.  One template
 * for every connection stays in the cache however many are open, where a
 * copy per connection (1.5 KB each) missed on every request at 1,000
 * connections. */
int
environ_for_request(HttpProtocol *p)
{
    modstate *st = proto_state(p);
    if (p->peer_host == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "data_received() before connection_made()");
        return -1;
    }
    PyObject *env = PyDict_Copy(p->server->base_environ);
    if (env == NULL)
        return -1;
    if (PyDict_SetItem(env, HSTR(st, REMOTE_ADDR), p->peer_host) < 0 ||
        PyDict_SetItem(env, HSTR(st, REMOTE_PORT), p->peer_port) < 0 ||
        PyDict_SetItem(env, HSTR(st, SERVER_NAME), p->sock_host) < 0 ||
        PyDict_SetItem(env, HSTR(st, SERVER_PORT), p->sock_port) < 0 ||
        (p->tls &&
         PyDict_SetItem(env, HSTR(st, WSGI_URL_SCHEME), HSTR(st, HTTPS)) < 0)) {
        Py_DECREF(env);
        return -1;
    }
    p->environ = env;
    return 0;
}

static int set_url_parts(HttpServer *srv, modstate *st, PyObject *env,
                         const char *url, size_t n, PyObject *raw);

/* RAW_URI, PATH_INFO, QUERY_STRING (and SCRIPT_NAME's prefix removed). */
int
environ_set_url(HttpServer *srv, modstate *st, PyObject *env, const char *url,
                size_t n)
{
    PyObject *raw = PyUnicode_DecodeLatin1(url, (Py_ssize_t)n, NULL);
    if (raw == NULL)
        return -1;
    int rc = PyDict_SetItem(env, HSTR(st, RAW_URI), raw);
    if (rc == 0)
        rc = set_url_parts(srv, st, env, url, n, raw);
    Py_DECREF(raw);
    return rc;
}

/* environ_set_url's PATH_INFO and QUERY_STRING; `raw` is RAW_URI's str */
static int
set_url_parts(HttpServer *srv, modstate *st, PyObject *env, const char *url,
              size_t n, PyObject *raw)
{
    if (n == 1 && url[0] == '*') {
        /* OPTIONS * (RFC 9112 3.2.4): the server itself, no path */
        if (PyDict_SetItem(env, HSTR(st, QUERY_STRING), HSTR(st, EMPTY)) < 0)
            return -1;
        return PyDict_SetItem(env, HSTR(st, PATH_INFO), HSTR(st, EMPTY));
    }
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
    else if (path == url && pend == url + n &&
             memchr(path, '%', (size_t)(pend - path)) == NULL)
        pi = Py_NewRef(raw); /* the whole target is the path, as it came */
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
    /* the headers most requests carry: their keys are made once */
    static const struct {
        const char *name;
        size_t len;
        int key;
    } common[] = {
        {"host", 4, HS_HTTP_HOST},
        {"user-agent", 10, HS_HTTP_USER_AGENT},
        {"accept", 6, HS_HTTP_ACCEPT},
        {"accept-encoding", 15, HS_HTTP_ACCEPT_ENCODING},
        {"accept-language", 15, HS_HTTP_ACCEPT_LANGUAGE},
        {"connection", 10, HS_HTTP_CONNECTION},
        {"cookie", 6, HS_HTTP_COOKIE},
        {"referer", 7, HS_HTTP_REFERER},
        {"cache-control", 13, HS_HTTP_CACHE_CONTROL},
        {"origin", 6, HS_HTTP_ORIGIN},
    };
    for (size_t i = 0; i < sizeof(common) / sizeof(common[0]); i++)
        if (n == common[i].len && strncasecmp(name, common[i].name, n) == 0)
            return Py_NewRef(PyTuple_GET_ITEM(st->http_strs, common[i].key));
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

int
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

/* An address as the environ's host and port strs: a (host, port, ...)
 * tuple's; a unix socket's path and ''; '' and '' for anything else. */
int
addr_strs(modstate *st, PyObject *addr, PyObject **host, PyObject **port)
{
    if (PyTuple_Check(addr) && PyTuple_GET_SIZE(addr) >= 2) {
        *host = PyObject_Str(PyTuple_GET_ITEM(addr, 0));
        *port = *host ? PyObject_Str(PyTuple_GET_ITEM(addr, 1)) : NULL;
        if (*port == NULL) {
            Py_CLEAR(*host);
            return -1;
        }
        return 0;
    }
    *host = PyUnicode_Check(addr) ? Py_NewRef(addr) : Py_NewRef(HSTR(st, EMPTY));
    *port = Py_NewRef(HSTR(st, EMPTY));
    return 0;
}

PyObject *
extra_info(modstate *st, PyObject *transport, PyObject *name)
{
    return PyObject_CallMethodOneArg(transport, HSTR(st, GET_EXTRA_INFO), name);
}
