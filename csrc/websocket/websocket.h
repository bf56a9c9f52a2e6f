/* Websockets (RFC 6455, RFC 7692): the parts in plain C, with no Python in
 * them, so that the fuzz harness (csrc/websocket/fuzz/) links them alone.
 *
 * unmask.c   unmasking a word (8, 16 or 32 bytes) at a time, fused with a copy
 * utf8.c     incremental UTF-8 validation, ASCII fast path, failing fast;
 *            text unmasked and validated in one pass (AVX2)
 * deflate.c  permessage-deflate on zlib: offer parsing and negotiation, the
 *            inflater with a bound on the inflated size, the deflater
 * frame.c    the incremental frame reader (any split of bytes) that turns
 *            frames into whole messages and control frames, and the writer
 *
 * handshake.c and protocol.c (the Python side: websocket_handshake() and
 * the WebSocket object) include this and aiopyramid.h.  This header is
 * internal to csrc/websocket/. */
#ifndef AIOPYRAMID_WEBSOCKET_H
#define AIOPYRAMID_WEBSOCKET_H

#include <stddef.h>
#include <stdint.h>
#include <zlib.h>

#if defined(__GNUC__)
#pragma GCC visibility push(hidden)
#endif

/* opcodes */
enum {
    WS_OP_CONT = 0x0,
    WS_OP_TEXT = 0x1,
    WS_OP_BINARY = 0x2,
    WS_OP_CLOSE = 0x8,
    WS_OP_PING = 0x9,
    WS_OP_PONG = 0xA,
};

/* close codes this code sends */
enum {
    WS_CLOSE_NORMAL = 1000,
    WS_CLOSE_GOING_AWAY = 1001,
    WS_CLOSE_PROTOCOL_ERROR = 1002,
    WS_CLOSE_NO_STATUS = 1005,
    WS_CLOSE_ABNORMAL = 1006,
    WS_CLOSE_INVALID_DATA = 1007,
    WS_CLOSE_TOO_BIG = 1009,
    WS_CLOSE_INTERNAL_ERROR = 1011,
};

/* ------------------------------------------------------------------ */
/* utf8.c: the SIMD paths, chosen once at run time from what the CPU has */

enum {
    WS_SIMD_SCALAR = 0,  /* the state machine, ASCII runs a word a time */
    WS_SIMD_SSSE3 = 1,   /* + validation 16 bytes a step (table lookups) */
    WS_SIMD_AVX2 = 2,    /* + unmasking and validation 32 bytes a step,
                            in one pass for text */
};

/* The level in use: the best the CPU has, or less after ws_simd_limit(). */
int ws_simd_level(void);

/* Tests, the fuzz harness and the bench: use at most `level` (the CPU's
 * best caps it); returns the level now in use. */
int ws_simd_limit(int level);

/* ------------------------------------------------------------------ */
/* unmask.c                                                             */

/* dst[i] = src[i] ^ mask[(offset + i) % 4] for i < n; dst may be src. */
void ws_unmask_copy(uint8_t *dst, const uint8_t *src, size_t n,
                    const uint8_t mask[4], size_t offset);

/* ------------------------------------------------------------------ */
/* utf8.c                                                               */

typedef struct {
    uint8_t need;      /* continuation bytes still expected */
    uint8_t lo, hi;    /* the range of the next continuation byte */
    uint8_t ascii;     /* every byte so far was below 0x80 */
} ws_utf8;

static inline void
ws_utf8_init(ws_utf8 *u)
{
    u->need = 0;
    u->lo = 0x80;
    u->hi = 0xBF;
    u->ascii = 1;
}

/* Validates the next n bytes of a sequence: 0, or -1 at the first byte that
 * no valid UTF-8 can have there (a truncated sequence at the end is not an
 * error yet: more bytes may complete it). */
int ws_utf8_feed(ws_utf8 *u, const uint8_t *p, size_t n);

/* At the end of the sequence: 0 when it is complete, -1 when cut short. */
static inline int
ws_utf8_end(const ws_utf8 *u)
{
    return u->need ? -1 : 0;
}

/* A whole buffer: 0 or -1. */
int ws_utf8_valid(const uint8_t *p, size_t n);

/* The same with the byte-at-a-time state machine alone (no SIMD): the
 * reference the fuzz harness holds the fast paths to. */
int ws_utf8_valid_reference(const uint8_t *p, size_t n);

/* utf8.c: ws_unmask_copy() and ws_utf8_feed() together: with AVX2 in one
 * pass (each 32 bytes unmasked, stored and validated while in registers),
 * else in pieces that stay in the L1 cache; 0, or -1 at invalid UTF-8.
 * dst may be src. */
int ws_unmask_copy_text(uint8_t *dst, const uint8_t *src, size_t n,
                        const uint8_t mask[4], size_t offset, ws_utf8 *u);

/* ------------------------------------------------------------------ */
/* deflate.c                                                            */

/* What a permessage-deflate negotiation agreed on. */
typedef struct {
    int server_no_context_takeover;
    int client_no_context_takeover;
    int server_max_window_bits;   /* our deflater's window (9..15) */
    int client_max_window_bits;   /* the client's (our inflater's) 8..15 */
} ws_deflate_params;

/* Picks the first acceptable permessage-deflate offer of a
 * Sec-WebSocket-Extensions value (RFC 7692 section 7): 1 with *params and
 * the response's extension value in response (NUL-terminated), 0 when no
 * offer is acceptable (compression is then off), -1 when response is too
 * small (never with WS_EXT_RESPONSE_MAX). */
#define WS_EXT_RESPONSE_MAX 160
int ws_deflate_negotiate(const char *header, size_t n, ws_deflate_params *params,
                         char *response, size_t response_size);

typedef struct {
    ws_deflate_params params;
    z_stream inf, def;
    int inf_ready, def_ready;
} ws_deflate;

void ws_deflate_init(ws_deflate *d, const ws_deflate_params *params);
void ws_deflate_free(ws_deflate *d);

enum {
    WS_Z_OK = 0,
    WS_Z_TOO_BIG = -1,   /* the inflated message passed the bound */
    WS_Z_DATA = -2,      /* not a deflate stream */
    WS_Z_NOMEM = -3,
};

/* Inflates n bytes of a compressed message's payload (final: and the end of
 * the message), appending to *buf (grown with realloc, *len bytes used of
 * *cap) at most `limit` bytes in all: more is WS_Z_TOO_BIG, and the buffer
 * never grows past limit + 1.  WS_Z_* */
int ws_inflate(ws_deflate *d, const uint8_t *in, size_t n, int final,
               uint8_t **buf, size_t *len, size_t *cap, size_t limit);

/* Compresses a whole message: a new malloc'd buffer in *out (*out_len
 * bytes), without the 00 00 ff ff tail (RFC 7692 7.2.1).  WS_Z_* */
int ws_deflate_message(ws_deflate *d, const uint8_t *in, size_t n,
                       uint8_t **out, size_t *out_len);

/* ------------------------------------------------------------------ */
/* frame.c                                                              */

/* What ws_reader_feed() stopped at. */
enum {
    WS_EV_MORE = 0,     /* every byte given was consumed: feed more */
    WS_EV_MESSAGE,      /* a whole text or binary message: msg, msg_len,
                           msg_text, msg_ascii (valid until the next feed) */
    WS_EV_PING,         /* ctl, ctl_len */
    WS_EV_PONG,         /* ctl, ctl_len */
    WS_EV_CLOSE,        /* close_code (1005 for none), ctl + 2 .. the
                           reason (valid UTF-8), close_reason_len */
    WS_EV_ERROR,        /* error_code (1002, 1007, 1009, 1011) and
                           error_reason; the reader takes no more bytes */
};

typedef struct {
    /* settings */
    size_t max_size;          /* of a message, inflated */
    ws_deflate *deflate;      /* NULL: RSV1 is a protocol error */

    /* the frame being read */
    int state;
    uint8_t hdr[14];
    unsigned hlen, hneed;
    int fin, rsv1, opcode;
    uint8_t mask[4];
    uint64_t plen, pdone;

    /* the message being assembled */
    int msg_opcode;           /* 0 (none), WS_OP_TEXT or WS_OP_BINARY */
    int msg_compressed;
    uint64_t msg_wire;        /* compressed bytes of the message so far */
    int msg_done;             /* the last event was a message: reset */
    ws_utf8 utf8;
    size_t utf8_checked;      /* bytes of msg validated */
    uint8_t *msg;
    size_t msg_len, msg_cap;
    int msg_text, msg_ascii;

    /* the control frame being read */
    uint8_t ctl[125];
    size_t ctl_len;

    /* results */
    int close_code;
    size_t close_reason_len;
    int error_code;
    const char *error_reason;
} ws_reader;

void ws_reader_init(ws_reader *r, size_t max_size, ws_deflate *deflate);
void ws_reader_free(ws_reader *r);

/* Reads from data[0..len): stops at the first event, with *used set to the
 * bytes it consumed (all of them for WS_EV_MORE).  Masked client frames
 * are unmasked as they are copied out; data itself is not written. */
int ws_reader_feed(ws_reader *r, const uint8_t *data, size_t len,
                   size_t *used);

/* A close code a peer may send (RFC 6455 7.4.1, and the IANA registry's
 * 1012-1014; 3000-4999). */
int ws_close_code_valid(int code);

/* The header of an unmasked (server) frame into out[0..10): its length. */
size_t ws_frame_header(uint8_t out[10], int fin, int rsv1, int opcode,
                       uint64_t len);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#endif
