/* utf8.c: UTF-8 validation of text messages (RFC 3629 as RFC 6455 8.1
 * requires), incremental so that a message split over frames, or over
 * reads, is checked as its bytes come and rejected in the first chunk that
 * holds a byte that cannot be valid, not at its end.
 *
 * Three layers: a scalar state machine (the reference, and what finishes a
 * sequence cut by a chunk boundary), runs of ASCII skipped 16 bytes (SSE2)
 * or 8 at a time, and on CPUs with SSSE3 (checked once, at run time) the
 * table-lookup algorithm of Keiser and Lemire ("Validating UTF-8 in less
 * than one instruction per byte", 2021) over 16-byte blocks: three nibble
 * lookups classify each pair of adjacent bytes, and 3rd/4th bytes of a
 * sequence are checked against their lead 2 and 3 bytes back. */
#include "websocket.h"

#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <tmmintrin.h>
#define WS_HAVE_SSSE3_PATH 1
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

/* The state machine over p[*pos..n): stops at the end, or (boundary) as
 * soon as it is between sequences after at least one non-ASCII byte.
 * 0, or -1 at an impossible byte. */
static int
scalar(ws_utf8 *u, const uint8_t *p, size_t n, size_t *pos, int boundary)
{
    size_t i = *pos;
    unsigned need = u->need, lo = u->lo, hi = u->hi;
    int rc = 0;
    while (i < n) {
        if (need == 0) {
            if (boundary && i > *pos)
                break;
            i += ascii_run(p + i, n - i);
            if (i == n)
                break;
            u->ascii = 0;
            uint8_t b = p[i++];
            if (b < 0xC2 || b > 0xF4) {
                rc = -1; /* a continuation, an overlong C0/C1, past U+10FFFF */
                break;
            }
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
            if (b < lo || b > hi) {
                rc = -1;
                break;
            }
            need--;
            lo = 0x80;
            hi = 0xBF;
        }
    }
    u->need = (uint8_t)need;
    u->lo = (uint8_t)lo;
    u->hi = (uint8_t)hi;
    *pos = i;
    return rc;
}

#ifdef WS_HAVE_SSSE3_PATH
/* error classes of a pair of adjacent bytes (first, second) */
#define TOO_SHORT (1 << 0)   /* a lead then a lead or ASCII */
#define TOO_LONG (1 << 1)    /* ASCII then a continuation */
#define OVERLONG_3 (1 << 2)  /* E0 80..9F */
#define TOO_LARGE (1 << 3)   /* F4 90..BF */
#define SURROGATE (1 << 4)   /* ED A0..BF */
#define OVERLONG_2 (1 << 5)  /* C0/C1 then a continuation */
#define TOO_LARGE_1000 (1 << 6) /* F5..FF 80..8F */
#define OVERLONG_4 (1 << 6)  /* F0 80..8F */
#define TWO_CONTS (1 << 7)   /* a continuation then a continuation */
#define CARRY (TOO_SHORT | TOO_LONG | TWO_CONTS)

/* Validates whole 16-byte blocks of p[0..n) that start at a sequence
 * boundary: the bytes covered (a multiple of 16; a sequence cut at its end
 * is for the caller to finish), *ok = 0 at a block with an error. */
__attribute__((target("ssse3"))) static size_t
blocks_ssse3(const uint8_t *p, size_t n, int *ok, int *ascii)
{
    const __m128i byte_1_high = _mm_setr_epi8(
        (char)(TOO_LONG),
        (char)(TOO_LONG),
        (char)(TOO_LONG),
        (char)(TOO_LONG),
        (char)(TOO_LONG),
        (char)(TOO_LONG),
        (char)(TOO_LONG),
        (char)(TOO_LONG),
        (char)(TWO_CONTS),
        (char)(TWO_CONTS),
        (char)(TWO_CONTS),
        (char)(TWO_CONTS),
        (char)(TOO_SHORT | OVERLONG_2),
        (char)(TOO_SHORT),
        (char)(TOO_SHORT | OVERLONG_3 | SURROGATE),
        (char)(TOO_SHORT | TOO_LARGE | TOO_LARGE_1000 | OVERLONG_4));
    const __m128i byte_1_low = _mm_setr_epi8(
        (char)(CARRY | OVERLONG_3 | OVERLONG_2 | OVERLONG_4),
        (char)(CARRY | OVERLONG_2),
        (char)(CARRY),
        (char)(CARRY),
        (char)(CARRY | TOO_LARGE),
        (char)(CARRY | TOO_LARGE | TOO_LARGE_1000),
        (char)(CARRY | TOO_LARGE | TOO_LARGE_1000),
        (char)(CARRY | TOO_LARGE | TOO_LARGE_1000),
        (char)(CARRY | TOO_LARGE | TOO_LARGE_1000),
        (char)(CARRY | TOO_LARGE | TOO_LARGE_1000),
        (char)(CARRY | TOO_LARGE | TOO_LARGE_1000),
        (char)(CARRY | TOO_LARGE | TOO_LARGE_1000),
        (char)(CARRY | TOO_LARGE | TOO_LARGE_1000),
        (char)(CARRY | TOO_LARGE | TOO_LARGE_1000 | SURROGATE),
        (char)(CARRY | TOO_LARGE | TOO_LARGE_1000),
        (char)(CARRY | TOO_LARGE | TOO_LARGE_1000));
    const __m128i byte_2_high = _mm_setr_epi8(
        (char)(TOO_SHORT),
        (char)(TOO_SHORT),
        (char)(TOO_SHORT),
        (char)(TOO_SHORT),
        (char)(TOO_SHORT),
        (char)(TOO_SHORT),
        (char)(TOO_SHORT),
        (char)(TOO_SHORT),
        (char)(TOO_LONG | OVERLONG_2 | TWO_CONTS | OVERLONG_3 | TOO_LARGE_1000 | OVERLONG_4),
        (char)(TOO_LONG | OVERLONG_2 | TWO_CONTS | OVERLONG_3 | TOO_LARGE),
        (char)(TOO_LONG | OVERLONG_2 | TWO_CONTS | SURROGATE | TOO_LARGE),
        (char)(TOO_LONG | OVERLONG_2 | TWO_CONTS | SURROGATE | TOO_LARGE),
        (char)(TOO_SHORT),
        (char)(TOO_SHORT),
        (char)(TOO_SHORT),
        (char)(TOO_SHORT));
    /* a lead in the last 3 bytes of a block wants bytes of the next */
    const __m128i incomplete_max = _mm_setr_epi8(
        -1,
        -1,
        -1,
        -1,
        -1,
        -1,
        -1,
        -1,
        -1,
        -1,
        -1,
        -1,
        -1,
        (char)(0xF0 - 1),
        (char)(0xE0 - 1),
        (char)(0xC0 - 1));
    const __m128i nibble = _mm_set1_epi8(0x0F);
    const __m128i third = _mm_set1_epi8((char)(0xE0 - 0x80));
    const __m128i fourth = _mm_set1_epi8((char)(0xF0 - 0x80));
    const __m128i high = _mm_set1_epi8((char)0x80);
    const __m128i zero = _mm_setzero_si128();
    __m128i prev = zero, prev_incomplete = zero, error = zero;
    int nonascii = 0, in_ascii = 1;
    size_t i = 0;
    while (i + 16 <= n) {
        /* in a run of ASCII, 64 bytes a step: only a sequence it cut
         * short can be wrong */
        if (in_ascii && i + 64 <= n) {
            __m128i a = _mm_loadu_si128((const __m128i *)(p + i));
            __m128i b = _mm_loadu_si128((const __m128i *)(p + i + 16));
            __m128i c = _mm_loadu_si128((const __m128i *)(p + i + 32));
            __m128i d = _mm_loadu_si128((const __m128i *)(p + i + 48));
            if (!_mm_movemask_epi8(_mm_or_si128(_mm_or_si128(a, b),
                                                _mm_or_si128(c, d)))) {
                error = _mm_or_si128(error, prev_incomplete);
                prev_incomplete = prev = zero;
                i += 64;
                continue;
            }
        }
        __m128i in = _mm_loadu_si128((const __m128i *)(p + i));
        in_ascii = _mm_movemask_epi8(in) == 0;
        if (in_ascii) {
            error = _mm_or_si128(error, prev_incomplete);
            prev_incomplete = zero;
        }
        else {
            nonascii = 1;
            __m128i prev1 = _mm_alignr_epi8(in, prev, 15);
            __m128i sc = _mm_and_si128(
                _mm_and_si128(
                    _mm_shuffle_epi8(byte_1_high,
                                     _mm_and_si128(_mm_srli_epi16(prev1, 4), nibble)),
                    _mm_shuffle_epi8(byte_1_low, _mm_and_si128(prev1, nibble))),
                _mm_shuffle_epi8(byte_2_high,
                                 _mm_and_si128(_mm_srli_epi16(in, 4), nibble)));
            __m128i prev2 = _mm_alignr_epi8(in, prev, 14);
            __m128i prev3 = _mm_alignr_epi8(in, prev, 13);
            __m128i must23 = _mm_or_si128(_mm_subs_epu8(prev2, third),
                                          _mm_subs_epu8(prev3, fourth));
            error = _mm_or_si128(error, _mm_xor_si128(_mm_and_si128(must23, high), sc));
            prev_incomplete = _mm_subs_epu8(in, incomplete_max);
        }
        prev = in;
        i += 16;
    }
    /* errors are gathered over the chunk (a few KiB: see frame.c) and
     * looked at once */
    if (_mm_movemask_epi8(_mm_cmpeq_epi8(error, zero)) != 0xFFFF)
        *ok = 0;
    if (nonascii)
        *ascii = 0;
    return i;
}

static int
have_ssse3(void)
{
    static int known = -1;
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("ssse3") ? 1 : 0;
    }
    return known;
}
#endif

int
ws_utf8_feed(ws_utf8 *u, const uint8_t *p, size_t n)
{
    size_t i = 0;
#ifdef WS_HAVE_SSSE3_PATH
    if (n >= 64 && have_ssse3()) {
        /* finish a sequence the last chunk cut */
        if (u->need && scalar(u, p, n, &i, 1) < 0)
            return -1;
        if (u->need == 0 && n - i >= 32) {
            int ok = 1, ascii = 1;
            size_t done = blocks_ssse3(p + i, n - i, &ok, &ascii);
            if (!ok)
                return -1;
            if (!ascii)
                u->ascii = 0;
            /* a sequence cut at the end of the blocks: the state machine
             * goes on from its lead byte */
            size_t j = i + done, back = 0;
            for (size_t k = 1; k <= 3 && k <= done; k++) {
                uint8_t b = p[j - k];
                if (b < 0x80)
                    break;
                if (b >= 0xC0) {
                    size_t len = b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : 2;
                    if (len > k)
                        back = k;
                    break;
                }
            }
            i = j - back;
        }
    }
#endif
    return scalar(u, p, n, &i, 0);
}

/* The state machine alone: what the fuzz harness checks the rest against. */
int
ws_utf8_valid_reference(const uint8_t *p, size_t n)
{
    ws_utf8 u;
    ws_utf8_init(&u);
    size_t i = 0;
    if (scalar(&u, p, n, &i, 0) < 0)
        return -1;
    return ws_utf8_end(&u);
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
