/* libFuzzer harness for the websocket frame reader and the inflater
 * (`make fuzz`): links frame.c, unmask.c, utf8.c and deflate.c alone, no
 * Python.  Not part of the extension module (setup.py leaves fuzz/ out).
 *
 * Input: byte 0 picks the settings (deflate on/off and its parameters, a
 * small or large message bound), byte 1 how the rest is split into reads;
 * the rest is what a client sends.  Checked on the way: the reader never
 * takes more than it is given and always makes progress, a message never
 * exceeds the bound, text is valid UTF-8 and close reasons too (the reader
 * at a SIMD level the input picks).  The same bytes also go through the
 * UTF-8 validator at every SIMD level the CPU has (whole, in pieces, fused
 * with the unmasking) against the state machine, the extension-offer
 * parser and a deflate/inflate round trip. */
#include "../websocket.h"

#include <stdlib.h>
#include <string.h>

#define CHECK(cond) do { if (!(cond)) __builtin_trap(); } while (0)

static void
read_frames(const uint8_t *data, size_t size, uint8_t cfg, uint8_t split)
{
    ws_deflate_params p = {
        .server_no_context_takeover = cfg & 1,
        .client_no_context_takeover = (cfg >> 1) & 1,
        .server_max_window_bits = 9 + (cfg >> 2) % 7,
        .client_max_window_bits = 8 + (cfg >> 4) % 8,
    };
    ws_deflate d;
    ws_deflate_init(&d, &p);
    size_t max = (cfg & 0x80) ? 300 : 1 << 20;
    ws_reader r;
    ws_reader_init(&r, max, (cfg & 0x40) ? &d : NULL);
    size_t off = 0;
    unsigned k = 0;
    while (off < size) {
        size_t n = 1 + (split ? (size_t)((split * 31u + k * 17u) % split) : size);
        if (n > size - off)
            n = size - off;
        /* a buffer of its own, exactly n bytes: ASan sees any overread */
        uint8_t *chunk = malloc(n);
        CHECK(chunk != NULL);
        memcpy(chunk, data + off, n);
        size_t pos = 0;
        int end = 0;
        while (pos < n) {
            size_t used = (size_t)-1;
            int ev = ws_reader_feed(&r, chunk + pos, n - pos, &used);
            CHECK(used <= n - pos);
            pos += used;
            if (ev == WS_EV_MORE) {
                CHECK(pos == n);
                break;
            }
            CHECK(used > 0 || ev == WS_EV_ERROR);
            if (ev == WS_EV_MESSAGE) {
                CHECK(r.msg_len <= max);
                if (r.msg_text) {
                    CHECK(ws_utf8_valid(r.msg, r.msg_len) == 0);
                    if (r.msg_ascii)
                        for (size_t i = 0; i < r.msg_len; i++)
                            CHECK(r.msg[i] < 0x80);
                }
            }
            else if (ev == WS_EV_PING || ev == WS_EV_PONG) {
                CHECK(r.ctl_len <= 125);
            }
            else if (ev == WS_EV_CLOSE) {
                CHECK(r.close_code == WS_CLOSE_NO_STATUS ||
                      ws_close_code_valid(r.close_code));
                CHECK(ws_utf8_valid(r.ctl + 2, r.close_reason_len) == 0);
                end = 1;
                break;
            }
            else {
                CHECK(ev == WS_EV_ERROR);
                CHECK(r.error_code == 1002 || r.error_code == 1007 ||
                      r.error_code == 1009 || r.error_code == 1011);
                CHECK(r.error_reason != NULL);
                end = 1;
                break;
            }
        }
        free(chunk);
        if (end)
            break;
        off += n;
        k++;
    }
    ws_reader_free(&r);
    ws_deflate_free(&d);
}

static void
negotiate(const uint8_t *data, size_t size)
{
    ws_deflate_params p;
    char response[WS_EXT_RESPONSE_MAX];
    char *copy = malloc(size ? size : 1);
    CHECK(copy != NULL);
    memcpy(copy, data, size);
    int rc = ws_deflate_negotiate(copy, size, &p, response, sizeof(response));
    CHECK(rc == 0 || rc == 1);
    if (rc == 1) {
        CHECK(strlen(response) < sizeof(response));
        CHECK(strncmp(response, "permessage-deflate", 18) == 0);
        CHECK(p.server_max_window_bits >= 9 && p.server_max_window_bits <= 15);
        CHECK(p.client_max_window_bits >= 8 && p.client_max_window_bits <= 15);
    }
    free(copy);
}

static void
round_trip(const uint8_t *data, size_t size, uint8_t cfg)
{
    /* our deflater feeds our inflater: the same context takeover */
    ws_deflate_params p = {
        .server_no_context_takeover = cfg & 1,
        .client_no_context_takeover = cfg & 1,
        .server_max_window_bits = 9 + (cfg >> 2) % 7,
        .client_max_window_bits = 15,
    };
    ws_deflate d;
    ws_deflate_init(&d, &p);
    /* the message, an empty one, the message again: a context carried
     * over (or not) and the empty block of RFC 7692 7.2.3.6 */
    for (int rep = 0; rep < 3; rep++) {
        size_t n = rep == 1 ? 0 : size;
        uint8_t *z = NULL;
        size_t zn = 0;
        CHECK(ws_deflate_message(&d, data, n, &z, &zn) == WS_Z_OK);
        CHECK(zn > 0);
        /* our own output through our inflater (window 15 takes any) */
        uint8_t *buf = NULL;
        size_t len = 0, cap = 0;
        CHECK(ws_inflate(&d, z, zn, 1, &buf, &len, &cap, n) == WS_Z_OK);
        CHECK(len == n && (n == 0 || memcmp(buf, data, n) == 0));
        free(buf);
        free(z);
    }
    ws_deflate_free(&d);
}

/* The state machine alone on p[0..n), not at an end: 0 or -1. */
static int
reference_feed(const uint8_t *p, size_t n)
{
    int level = ws_simd_level();
    ws_simd_limit(WS_SIMD_SCALAR);
    ws_utf8 u;
    ws_utf8_init(&u);
    int rc = ws_utf8_feed(&u, p, n);
    ws_simd_limit(level);
    return rc;
}

/* Feeds data in pieces (sizes from split), unmasking each with mask as a
 * frame reader does when fused: the index of the piece that failed, or
 * -1 when none did; *complete: the end check's verdict. */
static long
feed_pieces(const uint8_t *data, size_t size, uint8_t split, int fused,
            const uint8_t mask[4], int *complete)
{
    ws_utf8 u;
    ws_utf8_init(&u);
    uint8_t *masked = NULL, *out = NULL;
    if (fused) {
        masked = malloc(size ? size : 1);
        out = malloc(size ? size : 1);
        CHECK(masked != NULL && out != NULL);
        for (size_t i = 0; i < size; i++)
            masked[i] = data[i] ^ mask[i & 3];
    }
    size_t off = 0;
    long piece = 0, failed = -1;
    while (off < size) {
        /* pieces of 1 .. 766 bytes, the sizes changing as they go */
        size_t n = 1 + ((size_t)split * 3 + (size_t)piece * 61) % 766;
        if (n > size - off)
            n = size - off;
        int rc;
        if (fused) {
            /* a buffer of its own, exactly n bytes: ASan sees an overread */
            uint8_t *src = malloc(n);
            CHECK(src != NULL);
            memcpy(src, masked + off, n);
            rc = ws_unmask_copy_text(out + off, src, n, mask, off, &u);
            free(src);
            if (rc == 0)
                CHECK(memcmp(out + off, data + off, n) == 0);
        }
        else {
            uint8_t *p = malloc(n);
            CHECK(p != NULL);
            memcpy(p, data + off, n);
            rc = ws_utf8_feed(&u, p, n);
            free(p);
        }
        if (rc < 0) {
            failed = piece;
            break;
        }
        off += n;
        piece++;
    }
    *complete = failed < 0 && ws_utf8_end(&u) == 0;
    if (failed < 0 && *complete && size > 0) {
        /* the ascii flag says whether every byte was below 0x80 */
        int ascii = 1;
        for (size_t i = 0; i < size; i++)
            ascii &= data[i] < 0x80;
        CHECK(u.ascii == ascii);
    }
    free(masked);
    free(out);
    return failed;
}

/* The validator at every SIMD level this CPU has (the blocks, the ASCII
 * runs, the unmasking fused with them), fed whole and in pieces, against
 * the plain state machine: the same verdict, and a failure in the piece
 * that holds the first byte the state machine rejects (fail fast, never
 * early). */
static void
utf8(const uint8_t *data, size_t size, uint8_t split)
{
    int expect = ws_utf8_valid_reference(data, size);
    /* the first bad byte: the shortest prefix the state machine rejects
     * (a rejected prefix stays rejected: a binary search) */
    size_t bad = size;
    if (reference_feed(data, size) < 0) {
        size_t lo = 0, hi = size; /* data[0..lo) passes, data[0..hi) fails */
        while (hi - lo > 1) {
            size_t mid = lo + (hi - lo) / 2;
            if (reference_feed(data, mid) < 0)
                hi = mid;
            else
                lo = mid;
        }
        bad = hi - 1;
    }
    /* which piece holds it */
    long bad_piece = -1;
    if (bad < size) {
        size_t off = 0;
        for (long piece = 0;; piece++) {
            size_t n = 1 + ((size_t)split * 3 + (size_t)piece * 61) % 766;
            if (bad < off + n) {
                bad_piece = piece;
                break;
            }
            off += n;
        }
    }
    const uint8_t mask[4] = {split, (uint8_t)(split * 7 + 1), 0x5a, 0xa5};
    int level = ws_simd_level();
    for (int l = WS_SIMD_AVX2; l >= WS_SIMD_SCALAR; l--) {
        if (ws_simd_limit(l) != l)
            continue;
        CHECK(ws_utf8_valid(data, size) == expect);
        for (int fused = 0; fused <= 1; fused++) {
            int complete;
            long failed = feed_pieces(data, size, split, fused, mask, &complete);
            CHECK(failed == bad_piece);
            CHECK((failed < 0 && complete ? 0 : -1) == expect);
        }
    }
    ws_simd_limit(level);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    utf8(data + 2, size - 2, data[1]);
    uint8_t cfg = data[0], split = data[1];
    /* the frame reader at a SIMD level the input picks */
    int level = ws_simd_level();
    ws_simd_limit((cfg ^ split) % 3);
    read_frames(data + 2, size - 2, cfg, split);
    ws_simd_limit(level);
    negotiate(data + 2, size - 2);
    if (size < 4096)
        round_trip(data + 2, size - 2, cfg);
    return 0;
}
