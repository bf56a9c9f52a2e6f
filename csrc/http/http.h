/* The HTTP/1.1 server: an asyncio protocol parsing with llhttp, building
 * PEP 3333 environs in C and running the WSGI app of each request in a
 * pooled request greenlet through the bridge.
 *
 * One connection serves one request at a time: the parser pauses at the end
 * of each message and the bytes of pipelined requests wait, unparsed, until
 * the response before them is complete, so responses go out in order.  Each
 * request runs in its own asyncio Task from the app's first line, and the
 * first step runs at once, inline: a request whose app never suspends is
 * answered right there (its response held, with every other response of
 * the loop's iteration, until the iteration's end: proto_write_bytes);
 * one that suspends (a coroutine view waiting,
 * wsgi.input reading ahead of the socket, a paused transport) is driven on
 * by its Task, which the connection cancels when the client is gone: it
 * reset, or a write failed.  A client that half-closes (FIN) is still
 * answered what it sent whole; only a request still waiting for body bytes
 * that can no longer come is cancelled then.
 *
 * HttpServer  the protocol factory: app, limits, counters, its connections
 * HttpProtocol  one connection (BufferedProtocol and Protocol)
 * HttpRequest   one request; it is the start_response callable
 * HttpInput     wsgi.input
 * FileWrapper   wsgi.file_wrapper
 *
 * This header is internal to csrc/http/. */
#ifndef AIOPYRAMID_HTTP_H
#define AIOPYRAMID_HTTP_H

#include "aiopyramid.h"
#include <llhttp.h>
#include <time.h>
#include <string.h>
#ifdef __linux__
#include <sys/ioctl.h>
#include <linux/sockios.h>
#endif

/* Interned strings of the hot path live in one tuple of module state
 * (st->http_strs), indexed by the enum below. */
#define HTTP_STRINGS(X)                                                      \
    X(REQUEST_METHOD, "REQUEST_METHOD")                                      \
    X(SCRIPT_NAME, "SCRIPT_NAME")                                            \
    X(PATH_INFO, "PATH_INFO")                                                \
    X(QUERY_STRING, "QUERY_STRING")                                          \
    X(RAW_URI, "RAW_URI")                                                    \
    X(SERVER_PROTOCOL, "SERVER_PROTOCOL")                                    \
    X(CONTENT_TYPE, "CONTENT_TYPE")                                          \
    X(CONTENT_LENGTH, "CONTENT_LENGTH")                                      \
    X(REMOTE_ADDR, "REMOTE_ADDR")                                            \
    X(REMOTE_PORT, "REMOTE_PORT")                                            \
    X(SERVER_NAME, "SERVER_NAME")                                            \
    X(SERVER_PORT, "SERVER_PORT")                                            \
    X(WSGI_INPUT, "wsgi.input")                                              \
    X(WSGI_URL_SCHEME, "wsgi.url_scheme")                                    \
    X(HTTP11, "HTTP/1.1")                                                    \
    X(HTTP10, "HTTP/1.0")                                                    \
    X(HTTP, "http")                                                          \
    X(HTTPS, "https")                                                        \
    X(EMPTY, "")                                                             \
    X(WRITE, "write")                                                        \
    X(GET_EXTRA_INFO, "get_extra_info")                                      \
    X(PEERNAME, "peername")                                                  \
    X(SOCKNAME, "sockname")                                                  \
    X(SSLCONTEXT, "sslcontext")                                              \
    X(PAUSE_READING, "pause_reading")                                        \
    X(RESUME_READING, "resume_reading")                                      \
    X(CREATE_FUTURE, "create_future")                                        \
    X(CANCEL, "cancel")                                                      \
    X(CANCELLED, "cancelled")                                                \
    X(EXCEPTION, "exception")                                                \
    X(DONE, "done")                                                          \
    X(NAME, "name")                                                          \
    X(ABORT, "abort")                                                        \
    X(IS_CLOSING, "is_closing")                                              \
    X(GET_WRITE_BUFFER_SIZE, "get_write_buffer_size")                        \
    X(READ, "read")                                                          \
    X(HTTP_EXPECT, "HTTP_EXPECT")                                            \
    X(HTTP_HOST, "HTTP_HOST")                                                \
    X(HTTP_USER_AGENT, "HTTP_USER_AGENT")                                    \
    X(HTTP_ACCEPT, "HTTP_ACCEPT")                                            \
    X(HTTP_ACCEPT_ENCODING, "HTTP_ACCEPT_ENCODING")                          \
    X(HTTP_ACCEPT_LANGUAGE, "HTTP_ACCEPT_LANGUAGE")                          \
    X(HTTP_CONNECTION, "HTTP_CONNECTION")                                    \
    X(HTTP_COOKIE, "HTTP_COOKIE")                                            \
    X(HTTP_REFERER, "HTTP_REFERER")                                          \
    X(HTTP_CACHE_CONTROL, "HTTP_CACHE_CONTROL")                              \
    X(HTTP_ORIGIN, "HTTP_ORIGIN")                                            \
    X(SOCKET, "socket")                                                      \
    X(FILENO, "fileno")                                                      \
    X(WS_HANDOFF, "aiopyramid.websocket")                                    \
    X(ATTACH, "attach")                                                      \
    X(CONNECTION_LOST, "connection_lost")                                    \
    X(CONTEXT, "context")

enum {
#define HTTP_STR_ENUM(name, text) HS_##name,
    HTTP_STRINGS(HTTP_STR_ENUM)
#undef HTTP_STR_ENUM
    HS_COUNT
};

#define HSTR(st, name) PyTuple_GET_ITEM((st)->http_strs, HS_##name)

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
    PyObject *task_kwnames;     /* 3.12+: its keywords: loop, context,
                                   eager_start */
    PyObject *task_kwargs;      /* 3.11: {loop:, context:} for Task() */
    PyObject *current_tasks;    /* 3.11: asyncio's {loop: current task} */
    PyObject *base_environ;     /* wsgi.* keys, SCRIPT_NAME, ...: the
                                   template each request's is copied from */
    PyObject *script_name;      /* str */
    PyObject *access_log;       /* callable or NULL */
    PyObject *error_log;        /* callable or NULL */
    PyObject *secure_headers;   /* tuple of (environ key, expected value) */
    PyObject *forwarded_allow;  /* set of str, NULL: every peer */
    PyObject *trust_check;      /* callable(host) -> bool, or NULL */
    PyObject *connections;      /* set of HttpProtocol */
    Py_ssize_t limit_line, limit_fields, limit_field_size;
    Py_ssize_t body_buffer;     /* pause reading with more body buffered */
    char *shared_rbuf;          /* the read buffer of connections with
                                   nothing unparsed (see get_buffer) */
    PyObject *shared_rview;     /* a memoryview of it, what get_buffer
                                   gives every time ... */
    Py_buffer shared_rpin;      /* ... held exported, so that no reader
                                   can release() it */
    double keepalive;
    int shutting_down;
    unsigned long long requests;
    unsigned long long max_requests; /* 0: none; on_limit called at it */
    PyObject *on_limit;
    PyObject *on_close;         /* called as a connection closes, or NULL */
    PyObject *call_soon;        /* loop.call_soon */
    PyObject *flush_cb;         /* server.flush_writes, bound */
    PyObject *unflushed;        /* list of protocols with writes held back */
    int flush_scheduled;        /* flush_writes is in the loop's queue */
    int loop_runs;              /* LOOP_RUNS_*: is the loop running this
                                   pass (asked once a pass, to flush_writes) */
    int reading;                /* in a connection's data callback */
    int held_between_reads;     /* writes held outside one (see
                                   proto_flush_early) */
    Py_ssize_t active;
    Py_ssize_t started_in_pass; /* requests started in this pass of the
                                   loop (to flush_writes, which the first
                                   queues): on 3.11 each one's Task waits
                                   in the loop's queue until then */
    time_t date_time;
    char date[64];
    size_t date_len;
} HttpServer;

enum { PAUSE_BODY = 1, PAUSE_PIPELINE = 2 };

/* A response longer than this, iterated without suspending, lets the loop
 * run between its chunks (one response must not starve the others). */
#define INLINE_YIELD_BYTES (1024 * 1024)

#define INLINE_YIELD_CHUNKS 256

/* The read buffer: 64 KiB, shared by the connections of a server that
 * have nothing unparsed; one with bytes left over keeps its own. */
#define READ_BUFFER 65536

struct HttpProtocol {
    PyObject_HEAD
    HttpServer *server;
    PyObject *transport;
    PyObject *write;            /* transport.write */
    PyObject *peer_host;        /* REMOTE_ADDR, REMOTE_PORT, SERVER_NAME */
    PyObject *peer_port;
    PyObject *sock_host;
    PyObject *sock_port;        /* and SERVER_PORT of every request's
                                   environ (wsgi.url_scheme from tls) */
    PyObject *drain_waiter;     /* future resolved by resume_writing */
    PyObject *held;             /* bytes, or a list of them, not yet written
                                   (see proto_write_bytes) */
    Py_ssize_t held_len;
    HttpRequest *req;           /* the request being parsed or served */
    PyObject *cb_exc;           /* an exception raised in a parser callback */
    llhttp_t parser;
    char *rbuf;
    size_t rpos, rlen, rcap;
    int rshared;                /* the last get_buffer gave the shared one */
    char *sbuf;                 /* url, then the header being parsed */
    size_t slen, scap, url_len, field_len;
    Py_ssize_t nfields, line_len;
    int host_fields;      /* Host headers in this request's head */
    double head_started;  /* when this head's first byte came; 0: none */
    PyObject *environ;          /* being built, until headers are complete */
    int err_status;             /* a rejected head's status, or 0 */
    const char *err_message;    /* and what it says (a static string) */
    int read_paused;            /* PAUSE_* bits */
    int write_paused;
    int closed;                 /* connection_lost, or closing */
    int waiting;                /* parser paused behind a running request */
    int broken;                 /* no more parsing: close after the response */
    int trusted;                /* peer in forwarded_allow_ips */
    int upgrade;
    int handed_off;             /* a websocket owns the transport now */
    int feeding;                /* inside feed(): no re-entry */
    int scheme;                 /* from secure scheme headers: 0, 1 http, 2 https */
    int eof;                    /* the client half-closed: no more requests */
    int tls;                    /* over TLS (no half-close there) */
    int chunk_line;             /* a chunk-size line is next: check it first */
    int last_chunk;             /* the chunk being parsed has size 0 */
    int line_wait;              /* parse no more until a request line's LF */
    const char *msg_start;      /* this head's first byte, in this llhttp_execute */
    char *hline;                /* a request line as it came, with its bytes */
    size_t hline_len;           /* above 0x7F that llhttp saw replaced */
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
    PyObject *ws;               /* the WebSocket a 101 hands the connection to */
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
    vectorcallfunc vectorcall;  /* start_response, called by every app */
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

/* A response being rendered: on the stack while it fits `inl` (a head and
 * a small body: no allocation per response), on the heap beyond. */
typedef struct {
    char *p;
    size_t len, cap;
    char inl[1024];
} wbuf;

/* ------------------------------------------------------------------ */
/* Small helpers used everywhere                                        */

static inline double
monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static inline modstate *
proto_state(HttpProtocol *p)
{
    return state_of_type(Py_TYPE(p));
}

/* ------------------------------------------------------------------ */
/* Across files                                                         */

/* protocol.c */
int grow(char **buf, size_t *cap, size_t need);
void set_read_paused(HttpProtocol *p, int bit, int on);
int proto_write_bytes(HttpProtocol *p, PyObject *data);
int server_schedule_flush(HttpServer *srv);
enum { LOOP_RUNS_UNKNOWN, LOOP_RUNS_YES, LOOP_RUNS_NO };
int server_loop_runs(modstate *st, HttpServer *srv);
int proto_gone(HttpProtocol *p);
int proto_write(HttpProtocol *p, const char *data, size_t len);
void proto_close(HttpProtocol *p);
int proto_flush(HttpProtocol *p);
void proto_drop_held(HttpProtocol *p);
PyObject *server_flush_writes(PyObject *op, PyObject *unused);
void proto_flush_early(HttpServer *srv);
void wake(modstate *st, PyObject **fut);
int wait_on(modstate *st, HttpServer *srv, PyObject **slot);
void proto_release_request(HttpProtocol *p);
/* A suspended request's job ended (its spawn's on_end hook). */
void proto_request_ended(PyObject *request, PyObject *task, PyObject *exc);
void body_error(HttpProtocol *p);
void feed(HttpProtocol *p);
void eof_check(HttpProtocol *p);
PyObject *proto_new(modstate *st, HttpServer *srv);
extern PyType_Spec proto_spec;

/* parser.c */
extern const llhttp_settings_t parser_settings;
int chunk_line_check(HttpProtocol *p);
int high_bytes_retry(HttpProtocol *p, llhttp_errno_t err);

/* environ.c */
PyObject *environ_template(modstate *st, PyObject *base);
int environ_for_request(HttpProtocol *p);
int environ_set_url(HttpServer *srv, modstate *st, PyObject *env, const char *url, size_t n);
int environ_add_header(modstate *st, PyObject *env, const char *name, size_t nlen, const char *value, size_t vlen);
int addr_strs(modstate *st, PyObject *addr, PyObject **host, PyObject **port);
PyObject *extra_info(modstate *st, PyObject *transport, PyObject *name);

/* request.c */
HttpRequest *request_new(modstate *st, HttpProtocol *p, PyObject *environ);
extern PyMethodDef run_request_def;
extern PyType_Spec request_spec;
int server_task_init(HttpServer *self);
void start_request(HttpProtocol *p, HttpRequest *r);

/* response.c */
void respond_message_and_close(HttpProtocol *p, int status, const char *message);
int bodyless_status(int code);
int write_chunk(HttpRequest *r, const char *data, size_t n, long long known);
int call_close(PyObject *iterable);
int yield_to_loop(modstate *st);
int send_result(HttpRequest *r, PyObject *result);
void respond_failure(HttpRequest *r, int status);

/* input.c */
PyObject *input_new(modstate *st, HttpRequest *r);
extern PyType_Spec input_spec;
extern PyType_Spec filewrapper_spec;

/* upgrade.c */
PyObject *upgrade_target(HttpRequest *r);
int upgrade_settle(HttpRequest *r);

/* server.c */
void server_update_date(HttpServer *srv);
void log_error(HttpServer *srv, const char *message);

#endif
