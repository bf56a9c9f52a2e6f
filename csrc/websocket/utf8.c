/* utf8.c: UTF-8 validation of text messages (RFC 3629 as RFC 6455 8.1
 * requires), incremental so that a message split over frames, or over
 * reads, is checked as its bytes come and rejected at the first byte that
 * cannot be valid, not at its end.  Runs of ASCII are skipped 16 bytes at a
 * time (SSE2) or 8. */
#include "websocket.h"

#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define HIGH_BITS 0x8080808080808080ULL

/* The length of the ASCII run at the start of p[0..n). */
static inline size_t
ascii_run(const uint8_t *p, size_t n)
{
    size_t i = 0;
#ifdef __SSE2__
    for (; i + 64 <= n; i += 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)(p + i));
        __m128i b = _mm_loadu_si128((const __m128i *)(p + i + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(p + i + 32));
        __m128i d = _mm_loadu_si128((const __m128i *)(p + i + 48));
        __m128i o = _mm_or_si128(_mm_or_si128(a, b), _mm_or_si128(c, d));
        if (_mm_movemask_epi8(o))
            break;
    }
    for (; i + 16 <= n; i += 16) {
        __m128i a = _mm_loadu_si128((const __m128i *)(p + i));
        if (_mm_movemask_epi8(a))
            break;
    }
#endif
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        if (w & HIGH_BITS)
            break;
    }
    while (i < n && p[i] < 0x80)
        i++;
    return i;
}

int
ws_utf8_feed(ws_utf8 *u, const uint8_t *p, size_t n)
{
    size_t i = 0;
    unsigned need = u->need, lo = u->lo, hi = u->hi;
    while (i < n) {
        if (need == 0) {
            i += ascii_run(p + i, n - i);
            if (i == n)
                break;
            u->ascii = 0;
            uint8_t b = p[i++];
            if (b < 0xC2 || b > 0xF4)
                return -1; /* a continuation, an overlong C0/C1, past U+10FFFF */
            lo = 0x80;
            hi = 0xBF;
            if (b < 0xE0) {
                need = 1;
            }
            else if (b < 0xF0) {
                need = 2;
                if (b == 0xE0)
                    lo = 0xA0;     /* no overlong 3-byte forms */
                else if (b == 0xED)
                    hi = 0x9F;     /* no surrogates */
            }
            else {
                need = 3;
                if (b == 0xF0)
                    lo = 0x90;     /* no overlong 4-byte forms */
                else if (b == 0xF4)
                    hi = 0x8F;     /* nothing past U+10FFFF */
            }
        }
        else {
            uint8_t b = p[i++];
            if (b < lo || b > hi)
                return -1;
            need--;
            lo = 0x80;
            hi = 0xBF;
        }
    }
    u->need = (uint8_t)need;
    u->lo = (uint8_t)lo;
    u->hi = (uint8_t)hi;
    return 0;
}

int
ws_utf8_valid(const uint8_t *p, size_t n)
{
    ws_utf8 u;
    ws_utf8_init(&u);
    if (ws_utf8_feed(&u, p, n) < 0)
        return -1;
    return ws_utf8_end(&u);
}
