/* handshake.c: websocket_handshake(environ, subprotocols=(), compression=True)
 * checks an opening handshake (RFC 6455 4.2.1) from a WSGI environ and
 * returns what the 101 needs: (headers, subprotocol, deflate).  A refusal
 * raises WebsocketHandshakeError (a ValueError) with .status (400, or 426
 * for a version other than 13), .headers and a message saying what was
 * wrong.  Runs once per connection: SHA-1 comes from hashlib. */
#include "aiopyramid.h"
#include "websocket.h"

#include <string.h>

static const char GUID[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
static const char B64[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Raises WebsocketHandshakeError(message) with .status and .headers. */
static PyObject *
refuse(modstate *st, int status, const char *message)
{
    PyObject *exc = NULL, *headers = NULL, *code = NULL;
    exc = PyObject_CallFunction(st->WebsocketHandshakeError, "s", message);
    if (exc == NULL)
        goto error;
    if (status == 426)
        headers = Py_BuildValue("[(ss)]", "Sec-WebSocket-Version", "13");
    else
        headers = PyList_New(0);
    code = PyLong_FromLong(status);
    if (headers == NULL || code == NULL ||
        PyObject_SetAttrString(exc, "status", code) < 0 ||
        PyObject_SetAttrString(exc, "headers", headers) < 0)
        goto error;
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
error:
    Py_XDECREF(exc);
    Py_XDECREF(headers);
    Py_XDECREF(code);
    return NULL;
}

/* environ[key] as UTF-8 (NULL without an exception: absent or not a str). */
static const char *
env_get(PyObject *environ, const char *key, Py_ssize_t *len)
{
    PyObject *v = PyMapping_GetItemString(environ, key);
    if (v == NULL) {
        PyErr_Clear();
        return NULL;
    }
    const char *s = NULL;
    if (PyUnicode_Check(v))
        s = PyUnicode_AsUTF8AndSize(v, len);
    /* the environ keeps the str alive, and its UTF-8 form with it */
    Py_DECREF(v);
    if (s == NULL)
        PyErr_Clear();
    return s;
}

static int
lower_eq(const char *a, size_t n, const char *b)
{
    if (strlen(b) != n)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = a[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (c != b[i])
            return 0;
    }
    return 1;
}

/* Does the comma-separated list s hold `token` (case-insensitive)? */
static int
has_token(const char *s, Py_ssize_t n, const char *token)
{
    Py_ssize_t i = 0;
    while (i < n) {
        while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == ','))
            i++;
        Py_ssize_t start = i;
        while (i < n && s[i] != ',')
            i++;
        Py_ssize_t end = i;
        while (end > start && (s[end - 1] == ' ' || s[end - 1] == '\t'))
            end--;
        if (end > start && lower_eq(s + start, (size_t)(end - start), token))
            return 1;
    }
    return 0;
}

/* Sec-WebSocket-Key: base64 of 16 bytes, 24 characters ending "==". */
static int
key_valid(const char *k, Py_ssize_t n)
{
    if (n != 24 || k[22] != '=' || k[23] != '=')
        return 0;
    for (int i = 0; i < 22; i++)
        if (k[i] == '\0' || strchr(B64, k[i]) == NULL)
            return 0;
    /* the last character carries 2 bits: the other 4 are zero */
    return strchr("AQgw", k[21]) != NULL;
}

static void
base64_encode(const unsigned char *in, size_t n, char *out)
{
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
        out[o++] = B64[v >> 18];
        out[o++] = B64[(v >> 12) & 63];
        out[o++] = B64[(v >> 6) & 63];
        out[o++] = B64[v & 63];
    }
    if (n - i == 1) {
        unsigned v = (unsigned)in[i] << 16;
        out[o++] = B64[v >> 18];
        out[o++] = B64[(v >> 12) & 63];
        out[o++] = '=';
        out[o++] = '=';
    }
    else if (n - i == 2) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8;
        out[o++] = B64[v >> 18];
        out[o++] = B64[(v >> 12) & 63];
        out[o++] = B64[(v >> 6) & 63];
        out[o++] = '=';
    }
    out[o] = '\0';
}

/* Sec-WebSocket-Accept for a key, a new str. */
static PyObject *
accept_value(modstate *st, const char *key, Py_ssize_t n)
{
    char buf[24 + sizeof(GUID)];
    memcpy(buf, key, (size_t)n);
    memcpy(buf + n, GUID, sizeof(GUID) - 1);
    PyObject *h = NULL, *digest = NULL, *res = NULL;
    PyObject *data = PyBytes_FromStringAndSize(buf, n + (Py_ssize_t)sizeof(GUID) - 1);
    if (data == NULL)
        return NULL;
    h = PyObject_CallOneArg(st->ws_sha1, data);
    if (h == NULL)
        goto done;
    digest = PyObject_CallMethod(h, "digest", NULL);
    if (digest == NULL)
        goto done;
    if (!PyBytes_Check(digest) || PyBytes_GET_SIZE(digest) != 20) {
        PyErr_SetString(PyExc_RuntimeError, "hashlib.sha1 gave no 20-byte digest");
        goto done;
    }
    char out[32];
    base64_encode((const unsigned char *)PyBytes_AS_STRING(digest), 20, out);
    res = PyUnicode_FromString(out);
done:
    Py_XDECREF(data);
    Py_XDECREF(h);
    Py_XDECREF(digest);
    return res;
}

/* The first of the server's subprotocols that the client offered, or None. */
static PyObject *
choose_subprotocol(PyObject *environ, PyObject *subprotocols)
{
    Py_ssize_t n;
    const char *offered = env_get(environ, "HTTP_SEC_WEBSOCKET_PROTOCOL", &n);
    PyObject *seq = PySequence_Fast(subprotocols,
                                    "subprotocols must be a sequence of str");
    if (seq == NULL)
        return NULL;
    PyObject *chosen = NULL;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        PyObject *p = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyUnicode_Check(p)) {
            PyErr_Format(PyExc_TypeError,
                         "subprotocols must be a sequence of str, not one "
                         "holding %.100s", Py_TYPE(p)->tp_name);
            Py_DECREF(seq);
            return NULL;
        }
        if (chosen != NULL || offered == NULL)
            continue;
        Py_ssize_t pl;
        const char *ps = PyUnicode_AsUTF8AndSize(p, &pl);
        if (ps == NULL) {
            Py_DECREF(seq);
            return NULL;
        }
        /* tokens compare exactly (RFC 6455 4.1: case-sensitive) */
        Py_ssize_t i2 = 0;
        while (i2 < n && chosen == NULL) {
            while (i2 < n && (offered[i2] == ' ' || offered[i2] == '\t' ||
                              offered[i2] == ','))
                i2++;
            Py_ssize_t start = i2;
            while (i2 < n && offered[i2] != ',')
                i2++;
            Py_ssize_t end = i2;
            while (end > start && (offered[end - 1] == ' ' ||
                                   offered[end - 1] == '\t'))
                end--;
            if (end - start == pl && pl > 0 &&
                memcmp(offered + start, ps, (size_t)pl) == 0)
                chosen = p;
        }
    }
    Py_DECREF(seq);
    return Py_NewRef(chosen != NULL ? chosen : Py_None);
}

static PyObject *
websocket_handshake(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"environ", "subprotocols", "compression", NULL};
    PyObject *environ, *subprotocols = NULL;
    int compression = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|Op:websocket_handshake",
                                     kwlist, &environ, &subprotocols,
                                     &compression))
        return NULL;
    modstate *st = state_of_module(module);
    Py_ssize_t n;
    const char *s;

    s = env_get(environ, "REQUEST_METHOD", &n);
    if (s == NULL || n != 3 || memcmp(s, "GET", 3) != 0)
        return refuse(st, 400, "websocket handshake: the method must be GET");
    s = env_get(environ, "SERVER_PROTOCOL", &n);
    if (s == NULL || n != 8 || memcmp(s, "HTTP/", 5) != 0 || s[6] != '.' ||
        s[5] < '1' || s[5] > '9' || s[7] < '0' || s[7] > '9' ||
        (s[5] == '1' && s[7] == '0'))
        return refuse(st, 400, "websocket handshake: the request must be "
                               "HTTP/1.1 or later");
    s = env_get(environ, "HTTP_UPGRADE", &n);
    if (s == NULL || !has_token(s, n, "websocket"))
        return refuse(st, 400, "websocket handshake: the request needs an "
                               "'Upgrade: websocket' header");
    s = env_get(environ, "HTTP_CONNECTION", &n);
    if (s == NULL || !has_token(s, n, "upgrade"))
        return refuse(st, 400, "websocket handshake: the request needs a "
                               "'Connection: Upgrade' header");
    s = env_get(environ, "HTTP_SEC_WEBSOCKET_VERSION", &n);
    if (s == NULL)
        return refuse(st, 400, "websocket handshake: the request has no "
                               "Sec-WebSocket-Version header (13 is the "
                               "version this server speaks)");
    if (n != 2 || memcmp(s, "13", 2) != 0)
        return refuse(st, 426, "websocket handshake: unsupported "
                               "Sec-WebSocket-Version (this server speaks 13)");
    const char *key = env_get(environ, "HTTP_SEC_WEBSOCKET_KEY", &n);
    if (key == NULL)
        return refuse(st, 400, "websocket handshake: the request has no "
                               "Sec-WebSocket-Key header");
    if (!key_valid(key, n))
        return refuse(st, 400, "websocket handshake: Sec-WebSocket-Key must "
                               "be the base64 of 16 bytes");

    PyObject *headers = NULL, *accept = NULL, *proto = NULL, *deflate = NULL;
    PyObject *result = NULL;
    accept = accept_value(st, key, n);
    if (accept == NULL)
        goto done;
    proto = subprotocols != NULL ? choose_subprotocol(environ, subprotocols)
                                 : Py_NewRef(Py_None);
    if (proto == NULL)
        goto done;
    headers = Py_BuildValue("[(ss)(ss)(sO)]", "Upgrade", "websocket",
                            "Connection", "Upgrade",
                            "Sec-WebSocket-Accept", accept);
    if (headers == NULL)
        goto done;
    if (proto != Py_None) {
        PyObject *h = Py_BuildValue("(sO)", "Sec-WebSocket-Protocol", proto);
        if (h == NULL || PyList_Append(headers, h) < 0) {
            Py_XDECREF(h);
            goto done;
        }
        Py_DECREF(h);
    }
    deflate = Py_NewRef(Py_None);
    s = compression ? env_get(environ, "HTTP_SEC_WEBSOCKET_EXTENSIONS", &n)
                    : NULL;
    if (s != NULL) {
        ws_deflate_params params;
        char response[WS_EXT_RESPONSE_MAX];
        if (ws_deflate_negotiate(s, (size_t)n, &params, response,
                                 sizeof(response)) == 1) {
            PyObject *h = Py_BuildValue("(ss)", "Sec-WebSocket-Extensions",
                                        response);
            if (h == NULL || PyList_Append(headers, h) < 0) {
                Py_XDECREF(h);
                goto done;
            }
            Py_DECREF(h);
            Py_SETREF(deflate, Py_BuildValue(
                "(iiii)", params.server_no_context_takeover,
                params.client_no_context_takeover,
                params.server_max_window_bits, params.client_max_window_bits));
            if (deflate == NULL)
                goto done;
        }
    }
    result = PyTuple_Pack(3, headers, proto, deflate);
done:
    Py_XDECREF(headers);
    Py_XDECREF(accept);
    Py_XDECREF(proto);
    Py_XDECREF(deflate);
    return result;
}

/* _websocket_unmask_validate(buf, mask): the unmasked copy of buf (bytes),
 * checked as UTF-8 on the way (ValueError if it is not): the per-byte work
 * of a received text frame, for bench/websocket_unmask.py. */
static PyObject *
unmask_validate(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError,
                        "_websocket_unmask_validate(buf, mask) takes 2 arguments");
        return NULL;
    }
    Py_buffer buf, mask;
    if (PyObject_GetBuffer(args[0], &buf, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &mask, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&buf);
        return NULL;
    }
    PyObject *out = NULL;
    if (mask.len != 4) {
        PyErr_SetString(PyExc_ValueError, "the mask is 4 bytes");
        goto done;
    }
    out = PyBytes_FromStringAndSize(NULL, buf.len);
    if (out == NULL)
        goto done;
    uint8_t *dst = (uint8_t *)PyBytes_AS_STRING(out);
    ws_utf8 u;
    ws_utf8_init(&u);
    if (ws_unmask_copy_text(dst, buf.buf, (size_t)buf.len, mask.buf, 0, &u) < 0 ||
        ws_utf8_end(&u) < 0) {
        Py_CLEAR(out);
        PyErr_SetString(PyExc_ValueError, "not valid UTF-8 once unmasked");
    }
done:
    PyBuffer_Release(&buf);
    PyBuffer_Release(&mask);
    return out;
}

/* _websocket_simd([level]): the SIMD level unmasking and UTF-8 validation
 * use ("avx2", "ssse3" or "scalar"); with a level, use at most that one
 * (what the CPU has caps it), process-wide: for tests and the bench. */
static const char *const simd_names[] = {"scalar", "ssse3", "avx2"};

static PyObject *
websocket_simd(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError,
                        "_websocket_simd([level]) takes at most 1 argument");
        return NULL;
    }
    int level;
    if (nargs == 1) {
        if (!PyUnicode_Check(args[0])) {
            PyErr_SetString(PyExc_TypeError,
                            "_websocket_simd(): the level is a str");
            return NULL;
        }
        for (level = 0; level <= WS_SIMD_AVX2; level++)
            if (PyUnicode_CompareWithASCIIString(args[0], simd_names[level]) == 0)
                break;
        if (level > WS_SIMD_AVX2) {
            PyErr_Format(PyExc_ValueError,
                         "_websocket_simd(): the level is 'avx2', 'ssse3' "
                         "or 'scalar', not %R", args[0]);
            return NULL;
        }
        level = ws_simd_limit(level);
    }
    else {
        level = ws_simd_level();
    }
    return PyUnicode_FromString(simd_names[level]);
}

static PyMethodDef handshake_methods[] = {
    {"websocket_handshake", (PyCFunction)(void (*)(void))websocket_handshake,
     METH_VARARGS | METH_KEYWORDS,
     "websocket_handshake(environ, subprotocols=(), compression=True)\n--\n\n"
     "Checks a websocket opening handshake from a WSGI environ: "
     "(headers, subprotocol, deflate) for the 101, or "
     "WebsocketHandshakeError (.status 400 or 426, .headers)."},
    {"_websocket_unmask_validate", (PyCFunction)(void (*)(void))unmask_validate,
     METH_FASTCALL,
     "_websocket_unmask_validate(buf, mask)\n--\n\n"
     "Unmasks a copy of buf and validates it as UTF-8 (a benchmark hook)."},
    {"_websocket_simd", (PyCFunction)(void (*)(void))websocket_simd,
     METH_FASTCALL,
     "_websocket_simd([level])\n--\n\n"
     "The SIMD level of unmasking and UTF-8 validation ('avx2', 'ssse3', "
     "'scalar'); with a level, use at most that one, process-wide (what "
     "the CPU has caps it): a hook for tests and the bench."},
    {NULL, NULL, 0, NULL},
};

int
websocket_handshake_init(PyObject *module, modstate *st)
{
    PyObject *hashlib = NULL, *dict = NULL;
    int rc = -1;
    dict = Py_BuildValue("{s:i,s:O}", "status", 400, "headers", Py_None);
    if (dict == NULL)
        goto done;
    st->WebsocketHandshakeError = PyErr_NewExceptionWithDoc(
        "aiopyramid._core.WebsocketHandshakeError",
        "A websocket opening handshake refused: .status is the HTTP status "
        "to answer with (400, or 426 for an unsupported version), .headers "
        "the headers to add to it.", PyExc_ValueError, dict);
    if (st->WebsocketHandshakeError == NULL ||
        PyModule_AddObjectRef(module, "WebsocketHandshakeError",
                              st->WebsocketHandshakeError) < 0)
        goto done;
    hashlib = PyImport_ImportModule("hashlib");
    if (hashlib == NULL)
        goto done;
    st->ws_sha1 = PyObject_GetAttrString(hashlib, "sha1");
    if (st->ws_sha1 == NULL)
        goto done;
    rc = PyModule_AddFunctions(module, handshake_methods);
done:
    Py_XDECREF(hashlib);
    Py_XDECREF(dict);
    return rc;
}
