/* upgrade.c: the hand-off of a connection to the websocket layer.
 *
 * A websocket handshake is an ordinary request through the app (tweens,
 * security, predicates); aiopyramid.websocket.config.WebsocketMapper
 * answers it with a 101 and puts the _core.WebSocket that is to own the
 * connection in the environ (under "aiopyramid.websocket").  Once that 101
 * head is written, the request's end hands the transport over:
 * ws.attach(transport, buffered), where `buffered` is what this protocol
 * had read past the handshake (frames sent in the same packet), and the
 * HTTP protocol is out of the path for good: it leaves the server's
 * connections (the websocket layer counts it from now on) and parses
 * nothing more.  A request that ends without its 101 going out (a tween
 * replaced the response, the app failed, the client left) tells the
 * WebSocket with connection_lost(None), so its view sees recv() -> None. */
#include "http.h"

/* The WebSocket the app put in the request's environ (borrowed), or NULL
 * (and no exception) when there is none. */
PyObject *
upgrade_target(HttpRequest *r)
{
    if (r->environ == NULL)
        return NULL;
    PyObject *ws = PyDict_GetItemWithError(
        r->environ, HSTR(proto_state(r->proto), WS_HANDOFF));
    if (ws == NULL || ws == Py_None) {
        PyErr_Clear();
        return NULL;
    }
    return ws;
}

/* ws.connection_lost(None): the connection will never be the WebSocket's. */
static void
never_attached(HttpServer *srv, PyObject *ws)
{
    modstate *st = state_of_type(Py_TYPE(srv));
    PyObject *res = PyObject_CallMethodOneArg(ws, HSTR(st, CONNECTION_LOST),
                                              Py_None);
    if (res == NULL)
        log_error(srv, "Error telling a websocket its handshake failed");
    Py_XDECREF(res);
}

/* The response of a request that may have upgraded is over.  Returns 1
 * when the connection now belongs to a WebSocket, 0 otherwise. */
int
upgrade_settle(HttpRequest *r)
{
    HttpProtocol *p = r->proto;
    HttpServer *srv = p->server;
    modstate *st = proto_state(p);
    PyObject *ws = r->ws; /* set by render_head() as it rendered the 101 */
    r->ws = NULL;
    if (ws == NULL) {
        PyObject *target = upgrade_target(r);
        if (target != NULL)
            never_attached(srv, target);
        return 0;
    }
    /* the 101 goes out before any frame of the websocket's */
    proto_flush(p);
    if (!r->headers_sent || proto_gone(p) || p->transport == NULL) {
        never_attached(srv, ws);
        Py_DECREF(ws);
        return 0;
    }
    /* from here on this protocol neither reads, writes nor closes */
    PyObject *transport = Py_NewRef(p->transport);
    PyObject *buffered = PyBytes_FromStringAndSize(
        p->rlen > p->rpos ? p->rbuf + p->rpos : "",
        (Py_ssize_t)(p->rlen - p->rpos));
    p->rpos = p->rlen = 0;
    p->handed_off = 1;
    p->closed = 1;
    p->broken = 1;
    p->waiting = 0;
    if (p->read_paused) {
        /* the websocket layer pauses reading itself when it must */
        p->read_paused = 0;
        PyObject *res = PyObject_CallMethodNoArgs(transport,
                                                  HSTR(st, RESUME_READING));
        if (res == NULL)
            PyErr_Clear();
        Py_XDECREF(res);
    }
    PyObject *res = buffered == NULL ? NULL :
        PyObject_CallMethodObjArgs(ws, HSTR(st, ATTACH), transport, buffered,
                                   NULL);
    if (res == NULL) {
        log_error(srv, "Error handing a connection to its websocket");
        PyObject *a = PyObject_CallMethodNoArgs(transport, HSTR(st, ABORT));
        if (a == NULL)
            PyErr_Clear();
        Py_XDECREF(a);
        never_attached(srv, ws);
    }
    Py_XDECREF(res);
    Py_XDECREF(buffered);
    Py_DECREF(transport);
    Py_DECREF(ws);
    /* the transport's protocol is the WebSocket now: this one gets no
     * connection_lost, so it leaves the server's connections here (the
     * worker counts websockets apart, until their on_lost) */
    Py_CLEAR(p->write);
    Py_CLEAR(p->transport);
    Py_CLEAR(p->environ);
    /* the head may have been parsed right in the server's shared read
     * buffer (protocol.c): that one stays the server's */
    if (p->rbuf != srv->shared_rbuf)
        PyMem_Free(p->rbuf);
    p->rbuf = NULL;
    p->rcap = 0;
    if (PySet_Discard(srv->connections, (PyObject *)p) < 0)
        PyErr_Clear();
    if (srv->on_close != NULL) {
        PyObject *c = PyObject_CallNoArgs(srv->on_close);
        if (c == NULL)
            log_error(srv, "Error in HttpServer.on_close");
        Py_XDECREF(c);
    }
    return 1;
}
