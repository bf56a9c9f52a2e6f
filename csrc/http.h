/* http.c: the HTTP/1.1 server protocol on llhttp.  Interned strings of the
 * hot path live in one tuple of module state (st->http_strs), indexed by
 * the enum below. */
#ifndef AIOPYRAMID_HTTP_H
#define AIOPYRAMID_HTTP_H

#include "aiopyramid.h"

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
    X(ABORT, "abort")                                                        \
    X(IS_CLOSING, "is_closing")                                              \
    X(GET_WRITE_BUFFER_SIZE, "get_write_buffer_size")                        \
    X(READ, "read")                                                          \
    X(HTTP_EXPECT, "HTTP_EXPECT")                                            \
    X(HTTP_HOST, "HTTP_HOST")                                                \
    X(SOCKET, "socket")                                                      \
    X(FILENO, "fileno")

enum {
#define HTTP_STR_ENUM(name, text) HS_##name,
    HTTP_STRINGS(HTTP_STR_ENUM)
#undef HTTP_STR_ENUM
    HS_COUNT
};

#define HSTR(st, name) PyTuple_GET_ITEM((st)->http_strs, HS_##name)

#endif
