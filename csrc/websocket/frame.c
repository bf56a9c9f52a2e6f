/* frame.c: the frame reader and writer (RFC 6455 5).
 *
 * The reader takes bytes in any split (one at a time, or many frames at
 * once), keeps a partial header in itself, and copies payload out of the
 * caller's buffer as it comes, unmasking in the same pass: into the
 * message buffer (data frames), the control buffer (control frames, 125
 * bytes at most), or through the inflater (compressed messages).  Text is
 * validated as it is appended, so invalid UTF-8 ends the connection at its
 * first bad byte, wherever the frame boundaries fall.  Only whole messages
 * and control frames come out; every protocol error the RFC names comes out
 * as WS_EV_ERROR with its close code, after which the reader is dead. */
#include "websocket.h"

#include <stdlib.h>
#include <string.h>

enum { S_HEADER, S_PAYLOAD, S_FAILED, S_CLOSED };

void
ws_reader_init(ws_reader *r, size_t max_size, ws_deflate *deflate)
{
    memset(r, 0, sizeof(*r));
    r->state = S_HEADER;
    r->hneed = 2;
    r->max_size = max_size;
    r->deflate = deflate;
    ws_utf8_init(&r->utf8);
}

void
ws_reader_free(ws_reader *r)
{
    free(r->msg);
    r->msg = NULL;
    r->msg_len = r->msg_cap = 0;
}

int
ws_close_code_valid(int code)
{
    if (code >= 3000 && code <= 4999)
        return 1;
    switch (code) {
    case 1000: case 1001: case 1002: case 1003:
    case 1007: case 1008: case 1009: case 1010: case 1011:
    case 1012: case 1013: case 1014:
        return 1;
    default:
        return 0;
    }
}

size_t
ws_frame_header(uint8_t out[10], int fin, int rsv1, int opcode, uint64_t len)
{
    out[0] = (uint8_t)((fin ? 0x80 : 0) | (rsv1 ? 0x40 : 0) | (opcode & 0x0F));
    if (len < 126) {
        out[1] = (uint8_t)len;
        return 2;
    }
    if (len <= 0xFFFF) {
        out[1] = 126;
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        return 4;
    }
    out[1] = 127;
    for (int k = 0; k < 8; k++)
        out[2 + k] = (uint8_t)(len >> (56 - 8 * k));
    return 10;
}

static int
fail(ws_reader *r, int code, const char *reason)
{
    r->state = S_FAILED;
    r->error_code = code;
    r->error_reason = reason;
    return WS_EV_ERROR;
}

/* The first two bytes, checked before the rest of the header comes. */
static int
check_start(ws_reader *r)
{
    uint8_t b0 = r->hdr[0], b1 = r->hdr[1];
    int opcode = b0 & 0x0F;
    int rsv1 = (b0 & 0x40) != 0;
    if (b0 & 0x30)
        return fail(r, WS_CLOSE_PROTOCOL_ERROR, "reserved bits RSV2/RSV3 set");
    if (!(b1 & 0x80))
        return fail(r, WS_CLOSE_PROTOCOL_ERROR, "a client frame must be masked");
    if (opcode >= 0x8) {
        if (opcode > WS_OP_PONG)
            return fail(r, WS_CLOSE_PROTOCOL_ERROR, "reserved control opcode");
        if (!(b0 & 0x80))
            return fail(r, WS_CLOSE_PROTOCOL_ERROR, "fragmented control frame");
        if ((b1 & 0x7F) > 125)
            return fail(r, WS_CLOSE_PROTOCOL_ERROR,
                        "control frame payload over 125 bytes");
        if (rsv1)
            return fail(r, WS_CLOSE_PROTOCOL_ERROR, "RSV1 set on a control frame");
    }
    else {
        if (opcode > WS_OP_BINARY)
            return fail(r, WS_CLOSE_PROTOCOL_ERROR, "reserved data opcode");
        if (opcode == WS_OP_CONT) {
            if (r->msg_opcode == 0)
                return fail(r, WS_CLOSE_PROTOCOL_ERROR,
                            "continuation frame with no message to continue");
            if (rsv1)
                return fail(r, WS_CLOSE_PROTOCOL_ERROR,
                            "RSV1 set on a continuation frame");
        }
        else if (r->msg_opcode != 0) {
            return fail(r, WS_CLOSE_PROTOCOL_ERROR,
                        "a new message before the fragmented one ended");
        }
        if (rsv1 && r->deflate == NULL)
            return fail(r, WS_CLOSE_PROTOCOL_ERROR,
                        "RSV1 set without a negotiated extension");
    }
    unsigned len7 = b1 & 0x7F;
    r->hneed = 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + 4;
    return WS_EV_MORE;
}

/* The whole header is in: the frame's fields, and the message it starts. */
static int
start_frame(ws_reader *r)
{
    uint8_t *h = r->hdr;
    r->fin = (h[0] & 0x80) != 0;
    r->rsv1 = (h[0] & 0x40) != 0;
    r->opcode = h[0] & 0x0F;
    unsigned len7 = h[1] & 0x7F;
    unsigned at = 2;
    uint64_t len = len7;
    if (len7 == 126) {
        len = ((uint64_t)h[2] << 8) | h[3];
        at = 4;
    }
    else if (len7 == 127) {
        len = 0;
        for (int k = 0; k < 8; k++)
            len = (len << 8) | h[2 + k];
        at = 10;
        if (len >> 63)
            return fail(r, WS_CLOSE_PROTOCOL_ERROR,
                        "payload length with the high bit set");
    }
    memcpy(r->mask, h + at, 4);
    r->plen = len;
    r->pdone = 0;
    if (r->opcode >= 0x8) {
        r->ctl_len = 0;
        return WS_EV_MORE;
    }
    if (r->opcode != WS_OP_CONT) {
        r->msg_opcode = r->opcode;
        r->msg_compressed = r->rsv1;
        r->msg_len = 0;
        r->msg_wire = 0;
        r->utf8_checked = 0;
        ws_utf8_init(&r->utf8);
    }
    if (!r->msg_compressed && len > r->max_size - r->msg_len)
        return fail(r, WS_CLOSE_TOO_BIG, "message too big");
    if (r->msg_compressed) {
        /* deflate makes no message of max_size much bigger than that (5
         * bytes per stored block): a longer compressed payload is no
         * message we would take, only endless input (empty blocks) */
        uint64_t bound = (uint64_t)r->max_size + r->max_size / 8 + 1024;
        if (len > bound - r->msg_wire)
            return fail(r, WS_CLOSE_TOO_BIG, "message too big (compressed)");
        r->msg_wire += len;
    }
    return WS_EV_MORE;
}

static int
reserve(ws_reader *r, size_t need)
{
    if (need <= r->msg_cap)
        return 0;
    size_t cap = r->msg_cap < 256 ? 256 : r->msg_cap;
    while (cap < need)
        cap *= 2;
    uint8_t *p = realloc(r->msg, cap);
    if (p == NULL)
        return -1;
    r->msg = p;
    r->msg_cap = cap;
    return 0;
}

static int
inflate_error(ws_reader *r, int rc)
{
    if (rc == WS_Z_TOO_BIG)
        return fail(r, WS_CLOSE_TOO_BIG, "message too big (inflated)");
    if (rc == WS_Z_NOMEM)
        return fail(r, WS_CLOSE_INTERNAL_ERROR, "out of memory");
    return fail(r, WS_CLOSE_PROTOCOL_ERROR, "invalid compressed data");
}

/* Validates the text appended since the last check. */
static int
check_text(ws_reader *r)
{
    if (r->msg_opcode != WS_OP_TEXT || r->utf8_checked == r->msg_len)
        return 0;
    int rc = ws_utf8_feed(&r->utf8, r->msg + r->utf8_checked,
                          r->msg_len - r->utf8_checked);
    r->utf8_checked = r->msg_len;
    return rc;
}

static int
end_control(ws_reader *r)
{
    switch (r->opcode) {
    case WS_OP_PING:
        return WS_EV_PING;
    case WS_OP_PONG:
        return WS_EV_PONG;
    default: /* close */
        if (r->ctl_len == 0) {
            r->close_code = WS_CLOSE_NO_STATUS;
            r->close_reason_len = 0;
        }
        else if (r->ctl_len == 1) {
            return fail(r, WS_CLOSE_PROTOCOL_ERROR,
                        "close frame with a 1-byte payload");
        }
        else {
            r->close_code = (r->ctl[0] << 8) | r->ctl[1];
            if (!ws_close_code_valid(r->close_code))
                return fail(r, WS_CLOSE_PROTOCOL_ERROR, "invalid close code");
            if (ws_utf8_valid(r->ctl + 2, r->ctl_len - 2) < 0)
                return fail(r, WS_CLOSE_INVALID_DATA,
                            "close reason is not valid UTF-8");
            r->close_reason_len = r->ctl_len - 2;
        }
        r->state = S_CLOSED;
        return WS_EV_CLOSE;
    }
}

int
ws_reader_feed(ws_reader *r, const uint8_t *data, size_t len, size_t *used)
{
    size_t i = 0;
    if (r->msg_done) {
        r->msg_done = 0;
        r->msg_opcode = 0;
        r->msg_len = 0;
        if (r->msg_cap > 65536) {
            /* a big message's buffer goes with it: idle connections stay
             * small */
            ws_reader_free(r);
        }
    }
    if (r->state == S_FAILED) {
        *used = 0;
        return WS_EV_ERROR;
    }
    if (r->state == S_CLOSED) {
        *used = len; /* nothing after a close frame counts */
        return WS_EV_MORE;
    }
    for (;;) {
        if (r->state == S_HEADER) {
            while (r->hlen < r->hneed) {
                if (i == len) {
                    *used = i;
                    return WS_EV_MORE;
                }
                r->hdr[r->hlen++] = data[i++];
                if (r->hlen == 2 && check_start(r) == WS_EV_ERROR) {
                    *used = i;
                    return WS_EV_ERROR;
                }
            }
            if (start_frame(r) == WS_EV_ERROR) {
                *used = i;
                return WS_EV_ERROR;
            }
            r->state = S_PAYLOAD;
        }
        /* S_PAYLOAD */
        uint64_t left = r->plen - r->pdone;
        size_t take = (size_t)(len - i < left ? len - i : left);
        const uint8_t *src = data + i;
        if (r->opcode >= 0x8) {
            ws_unmask_copy(r->ctl + r->pdone, src, take, r->mask,
                           (size_t)r->pdone);
        }
        else if (r->msg_compressed) {
            uint8_t tmp[4096];
            size_t off = 0;
            while (off < take) {
                size_t n = take - off < sizeof(tmp) ? take - off : sizeof(tmp);
                ws_unmask_copy(tmp, src + off, n, r->mask,
                               (size_t)r->pdone + off);
                int rc = ws_inflate(r->deflate, tmp, n, 0, &r->msg,
                                    &r->msg_len, &r->msg_cap, r->max_size);
                if (rc != WS_Z_OK) {
                    *used = i + off;
                    return inflate_error(r, rc);
                }
                if (check_text(r) < 0) {
                    *used = i + off;
                    return fail(r, WS_CLOSE_INVALID_DATA,
                                "invalid UTF-8 in a text message");
                }
                off += n;
            }
        }
        else if (take > 0) {
            if (reserve(r, r->msg_len + take) < 0) {
                *used = i;
                return fail(r, WS_CLOSE_INTERNAL_ERROR, "out of memory");
            }
            if (r->msg_opcode == WS_OP_TEXT) {
                int bad = ws_unmask_copy_text(r->msg + r->msg_len, src, take,
                                              r->mask, (size_t)r->pdone,
                                              &r->utf8);
                r->msg_len += take;
                r->utf8_checked = r->msg_len;
                if (bad) {
                    *used = i + take;
                    return fail(r, WS_CLOSE_INVALID_DATA,
                                "invalid UTF-8 in a text message");
                }
            }
            else {
                ws_unmask_copy(r->msg + r->msg_len, src, take, r->mask,
                               (size_t)r->pdone);
                r->msg_len += take;
            }
        }
        i += take;
        r->pdone += take;
        if (r->pdone < r->plen) {
            *used = i;
            return WS_EV_MORE;
        }
        /* the frame is complete */
        r->state = S_HEADER;
        r->hlen = 0;
        r->hneed = 2;
        if (r->opcode >= 0x8) {
            r->ctl_len = (size_t)r->plen;
            *used = i;
            return end_control(r);
        }
        if (!r->fin)
            continue;
        if (r->msg_compressed) {
            int rc = ws_inflate(r->deflate, NULL, 0, 1, &r->msg, &r->msg_len,
                                &r->msg_cap, r->max_size);
            if (rc != WS_Z_OK) {
                *used = i;
                return inflate_error(r, rc);
            }
        }
        if (check_text(r) < 0 ||
            (r->msg_opcode == WS_OP_TEXT && ws_utf8_end(&r->utf8) < 0)) {
            *used = i;
            return fail(r, WS_CLOSE_INVALID_DATA,
                        "invalid UTF-8 in a text message");
        }
        r->msg_text = r->msg_opcode == WS_OP_TEXT;
        r->msg_ascii = r->msg_text && r->utf8.ascii;
        r->msg_done = 1;
        *used = i;
        return WS_EV_MESSAGE;
    }
}
