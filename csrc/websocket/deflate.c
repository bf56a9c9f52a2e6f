/* deflate.c: permessage-deflate (RFC 7692) on zlib.
 *
 * Negotiation takes the first acceptable offer of the client's
 * Sec-WebSocket-Extensions (7.1): unknown, repeated or malformed
 * parameters make an offer unacceptable, not the handshake.  As the
 * `websockets` server does, our own compressor uses at most a 4 KiB window
 * (12 bits) and memLevel 5, and a client that lets us choose its window
 * (client_max_window_bits without a value) is given 12 bits too: about
 * 8 KiB + 16 KiB per connection instead of 300 KiB.  A client asking us for
 * server_max_window_bits=8 is declined: zlib cannot compress raw deflate
 * with a 256-byte window.
 *
 * The inflater appends to the message buffer and never lets it grow past
 * the message size bound + 1, so a compression bomb ends with 1009 having
 * used at most that much memory. */
#include "websocket.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OUR_MAX_WINDOW 12
#define OUR_MEM_LEVEL 5

/* ------------------------------------------------------------------ */
/* Offers                                                               */

static int
is_tchar(char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
        (c >= '0' && c <= '9'))
        return 1;
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static void
skip_ws(const char *h, size_t n, size_t *i)
{
    while (*i < n && (h[*i] == ' ' || h[*i] == '\t'))
        (*i)++;
}

/* A token at *i: its start and length (0: none). */
static size_t
read_token(const char *h, size_t n, size_t *i, const char **start)
{
    *start = h + *i;
    size_t s = *i;
    while (*i < n && is_tchar(h[*i]))
        (*i)++;
    return *i - s;
}

/* A token or quoted-string value into out (at most outsize - 1 chars):
 * its length, or -1 when malformed or too long. */
static long
read_value(const char *h, size_t n, size_t *i, char *out, size_t outsize)
{
    size_t len = 0;
    if (*i < n && h[*i] == '"') {
        (*i)++;
        while (*i < n && h[*i] != '"') {
            char c = h[*i];
            if (c == '\\') {
                (*i)++;
                if (*i >= n)
                    return -1;
                c = h[*i];
            }
            if (len + 1 >= outsize)
                return -1;
            out[len++] = c;
            (*i)++;
        }
        if (*i >= n)
            return -1;
        (*i)++; /* the closing quote */
    }
    else {
        const char *s;
        size_t tl = read_token(h, n, i, &s);
        if (tl == 0 || tl + 1 > outsize)
            return -1;
        memcpy(out, s, tl);
        len = tl;
    }
    out[len] = '\0';
    return (long)len;
}

/* "8".."15" without leading zeros: the number, or -1. */
static int
window_bits(const char *v, long len)
{
    if (len == 1 && v[0] >= '8' && v[0] <= '9')
        return v[0] - '0';
    if (len == 2 && v[0] == '1' && v[1] >= '0' && v[1] <= '5')
        return 10 + (v[1] - '0');
    return -1;
}

static int
token_is(const char *s, size_t len, const char *name)
{
    size_t nl = strlen(name);
    if (len != nl)
        return 0;
    for (size_t k = 0; k < len; k++) {
        char c = s[k];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (c != name[k])
            return 0;
    }
    return 1;
}

/* Skips to just past the next top-level comma (or the end). */
static void
skip_offer(const char *h, size_t n, size_t *i)
{
    int quoted = 0;
    while (*i < n) {
        char c = h[*i];
        (*i)++;
        if (quoted && c == '\\')
            (*i)++;
        else if (c == '"')
            quoted = !quoted;
        else if (c == ',' && !quoted)
            return;
    }
}

int
ws_deflate_negotiate(const char *h, size_t n, ws_deflate_params *params,
                     char *response, size_t response_size)
{
    size_t i = 0;
    while (i < n) {
        skip_ws(h, n, &i);
        if (i < n && h[i] == ',') {
            i++;
            continue;
        }
        const char *name;
        size_t nl = read_token(h, n, &i, &name);
        if (nl == 0 || !token_is(name, nl, "permessage-deflate")) {
            skip_offer(h, n, &i);
            continue;
        }
        int ok = 1;
        int snct = 0, cnct = 0, smwb = 0, cmwb = 0; /* seen */
        int smwb_v = 15, cmwb_v = 0;                 /* 0: no value */
        for (;;) {
            skip_ws(h, n, &i);
            if (i >= n || h[i] == ',')
                break;
            if (h[i] != ';') {
                ok = 0;
                break;
            }
            i++;
            skip_ws(h, n, &i);
            const char *pn;
            size_t pl = read_token(h, n, &i, &pn);
            skip_ws(h, n, &i);
            char value[8];
            long vl = -2; /* no value */
            if (i < n && h[i] == '=') {
                i++;
                skip_ws(h, n, &i);
                vl = read_value(h, n, &i, value, sizeof(value));
                if (vl < 0) {
                    ok = 0;
                    break;
                }
            }
            if (pl == 0) {
                ok = 0;
            }
            else if (token_is(pn, pl, "server_no_context_takeover")) {
                if (snct++ || vl != -2)
                    ok = 0;
            }
            else if (token_is(pn, pl, "client_no_context_takeover")) {
                if (cnct++ || vl != -2)
                    ok = 0;
            }
            else if (token_is(pn, pl, "server_max_window_bits")) {
                if (smwb++ || vl == -2 || (smwb_v = window_bits(value, vl)) < 0)
                    ok = 0;
            }
            else if (token_is(pn, pl, "client_max_window_bits")) {
                if (cmwb++)
                    ok = 0;
                else if (vl != -2 && (cmwb_v = window_bits(value, vl)) < 0)
                    ok = 0;
            }
            else {
                ok = 0; /* an extension parameter we do not know */
            }
            if (!ok)
                break;
        }
        if (ok && smwb && smwb_v == 8)
            ok = 0; /* zlib has no 256-byte raw deflate window */
        if (!ok) {
            skip_offer(h, n, &i);
            continue;
        }
        params->server_no_context_takeover = snct;
        params->client_no_context_takeover = cnct;
        params->server_max_window_bits =
            smwb_v < OUR_MAX_WINDOW ? smwb_v : OUR_MAX_WINDOW;
        int client_bits = 15;
        if (cmwb)
            client_bits = cmwb_v && cmwb_v < OUR_MAX_WINDOW ? cmwb_v
                                                            : OUR_MAX_WINDOW;
        params->client_max_window_bits = client_bits;
        int w = snprintf(response, response_size, "permessage-deflate%s%s",
                         snct ? "; server_no_context_takeover" : "",
                         cnct ? "; client_no_context_takeover" : "");
        if (w < 0 || (size_t)w >= response_size)
            return -1;
        size_t used = (size_t)w;
        if (smwb) {
            w = snprintf(response + used, response_size - used,
                         "; server_max_window_bits=%d", smwb_v);
            if (w < 0 || (size_t)w >= response_size - used)
                return -1;
            used += (size_t)w;
        }
        if (cmwb) {
            w = snprintf(response + used, response_size - used,
                         "; client_max_window_bits=%d", client_bits);
            if (w < 0 || (size_t)w >= response_size - used)
                return -1;
        }
        return 1;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Streams                                                              */

void
ws_deflate_init(ws_deflate *d, const ws_deflate_params *params)
{
    memset(d, 0, sizeof(*d));
    d->params = *params;
}

void
ws_deflate_free(ws_deflate *d)
{
    if (d->inf_ready)
        inflateEnd(&d->inf);
    if (d->def_ready)
        deflateEnd(&d->def);
    d->inf_ready = d->def_ready = 0;
}

static int
inflate_segment(ws_deflate *d, const uint8_t *in, size_t n, uint8_t **buf,
                size_t *len, size_t *cap, size_t limit)
{
    while (n > 0 || d->inf.avail_in > 0) {
        if (d->inf.avail_in == 0) {
            uInt chunk = n > (1u << 30) ? (1u << 30) : (uInt)n;
            d->inf.next_in = (Bytef *)in;
            d->inf.avail_in = chunk;
            in += chunk;
            n -= chunk;
        }
        for (;;) {
            if (*len == *cap) {
                if (*cap > limit)
                    return WS_Z_TOO_BIG;
                size_t want = *cap < 4096 ? 4096 : *cap * 2;
                if (want > limit + 1)
                    want = limit + 1;
                uint8_t *p = realloc(*buf, want);
                if (p == NULL)
                    return WS_Z_NOMEM;
                *buf = p;
                *cap = want;
            }
            size_t room = *cap - *len;
            uInt out = room > (1u << 30) ? (1u << 30) : (uInt)room;
            d->inf.next_out = *buf + *len;
            d->inf.avail_out = out;
            int rc = inflate(&d->inf, Z_SYNC_FLUSH);
            *len += out - d->inf.avail_out;
            if (*len > limit)
                return WS_Z_TOO_BIG;
            if (rc == Z_STREAM_END) {
                /* a block with BFINAL: what follows is a new stream */
                if (inflateReset(&d->inf) != Z_OK)
                    return WS_Z_DATA;
            }
            else if (rc == Z_MEM_ERROR) {
                return WS_Z_NOMEM;
            }
            else if (rc != Z_OK && rc != Z_BUF_ERROR) {
                return WS_Z_DATA;
            }
            if (d->inf.avail_out != 0 && (d->inf.avail_in == 0 ||
                                          rc == Z_BUF_ERROR))
                break; /* all taken, all given out */
        }
        if (d->inf.avail_in != 0)
            return WS_Z_DATA; /* stuck: not a deflate stream */
    }
    return WS_Z_OK;
}

int
ws_inflate(ws_deflate *d, const uint8_t *in, size_t n, int final,
           uint8_t **buf, size_t *len, size_t *cap, size_t limit)
{
    static const uint8_t tail[4] = {0x00, 0x00, 0xff, 0xff};
    if (!d->inf_ready) {
        memset(&d->inf, 0, sizeof(d->inf));
        if (inflateInit2(&d->inf, -d->params.client_max_window_bits) != Z_OK)
            return WS_Z_NOMEM;
        d->inf_ready = 1;
    }
    int rc = inflate_segment(d, in, n, buf, len, cap, limit);
    if (rc == WS_Z_OK && final) {
        rc = inflate_segment(d, tail, 4, buf, len, cap, limit);
        if (rc == WS_Z_OK && d->params.client_no_context_takeover &&
            inflateReset(&d->inf) != Z_OK)
            rc = WS_Z_DATA;
    }
    if (rc != WS_Z_OK) {
        /* the stream is unusable: the connection closes */
        d->inf.avail_in = 0;
    }
    return rc;
}

int
ws_deflate_message(ws_deflate *d, const uint8_t *in, size_t n, uint8_t **out,
                   size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    if (!d->def_ready) {
        memset(&d->def, 0, sizeof(d->def));
        if (deflateInit2(&d->def, Z_DEFAULT_COMPRESSION, Z_DEFLATED,
                         -d->params.server_max_window_bits, OUR_MEM_LEVEL,
                         Z_DEFAULT_STRATEGY) != Z_OK)
            return WS_Z_NOMEM;
        d->def_ready = 1;
    }
    size_t cap = n + n / 8 + 64, len = 0;
    uint8_t *buf = malloc(cap);
    if (buf == NULL)
        return WS_Z_NOMEM;
    int rc = WS_Z_OK;
    for (;;) {
        if (d->def.avail_in == 0 && n > 0) {
            uInt chunk = n > (1u << 30) ? (1u << 30) : (uInt)n;
            d->def.next_in = (Bytef *)in;
            d->def.avail_in = chunk;
            in += chunk;
            n -= chunk;
        }
        if (len == cap) {
            uint8_t *p = realloc(buf, cap * 2);
            if (p == NULL) {
                rc = WS_Z_NOMEM;
                break;
            }
            buf = p;
            cap *= 2;
        }
        size_t room = cap - len;
        uInt o = room > (1u << 30) ? (1u << 30) : (uInt)room;
        d->def.next_out = buf + len;
        d->def.avail_out = o;
        int z = deflate(&d->def, n > 0 ? Z_NO_FLUSH : Z_SYNC_FLUSH);
        len += o - d->def.avail_out;
        if (z != Z_OK && z != Z_BUF_ERROR) {
            rc = WS_Z_DATA;
            break;
        }
        if (n == 0 && d->def.avail_in == 0 && d->def.avail_out != 0)
            break; /* flushed, with room to spare: nothing pending */
    }
    if (rc != WS_Z_OK) {
        free(buf);
        deflateEnd(&d->def);
        d->def_ready = 0;
        return rc;
    }
    if (len >= 4 && memcmp(buf + len - 4, "\x00\x00\xff\xff", 4) == 0)
        len -= 4;
    if (len == 0) {
        /* nothing new to flush (an empty message after a flush gives no
         * bytes): RFC 7692 7.2.3.6's empty block, or the peer would
         * inflate its own 00 00 ff ff tail as garbage */
        buf[0] = 0x00;
        len = 1;
    }
    if (d->params.server_no_context_takeover)
        deflateReset(&d->def);
    *out = buf;
    *out_len = len;
    return WS_Z_OK;
}
