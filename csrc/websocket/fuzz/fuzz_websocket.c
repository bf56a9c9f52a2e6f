/* libFuzzer harness for the websocket frame reader and the inflater
 * (`make fuzz`): links frame.c, unmask.c, utf8.c and deflate.c alone, no
 * Python.  Not part of the extension module (setup.py leaves fuzz/ out).
 *
 * Input: byte 0 picks the settings (deflate on/off and its parameters, a
 * small or large message bound), byte 1 how the rest is split into reads;
 * the rest is what a client sends.  Checked on the way: the reader never
 * takes more than it is given and always makes progress, a message never
 * exceeds the bound, text is valid UTF-8 and close reasons too.  The same
 * bytes also go through the extension-offer parser and a deflate/inflate
 * round trip. */
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

/* The validator (SIMD blocks, ASCII runs, fed in pieces) against the plain
 * state machine. */
static void
utf8(const uint8_t *data, size_t size, uint8_t split)
{
    int expect = ws_utf8_valid_reference(data, size);
    CHECK(ws_utf8_valid(data, size) == expect);
    ws_utf8 u;
    ws_utf8_init(&u);
    size_t off = 0;
    int rc = 0;
    while (off < size && rc == 0) {
        size_t n = 1 + (size_t)split * 3;
        if (n > size - off)
            n = size - off;
        rc = ws_utf8_feed(&u, data + off, n);
        off += n;
    }
    if (rc == 0)
        rc = ws_utf8_end(&u);
    CHECK(rc == expect);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    utf8(data + 2, size - 2, data[1]);
    uint8_t cfg = data[0], split = data[1];
    read_frames(data + 2, size - 2, cfg, split);
    negotiate(data + 2, size - 2);
    if (size < 4096)
        round_trip(data + 2, size - 2, cfg);
    return 0;
}
